"""Patch loading: a torch ``Dataset`` over the store's blocks, a global block sampler, pooled shuffling, torch.

* ``BlockDataset`` (a ``torch.utils.data.Dataset``): item ``k`` is the wanted rows of the k-th store block
  holding any (``store.blocks()``; one ``store.read`` = one decompression), after the normalization chain:
  ``(x uint8 (m, h, w, c), y int64 (m,), rows int64 (m,))``.
* ``BlockSampler`` (a ``torch.utils.data.Sampler``): every block of the rows once per epoch, in a random
  order over the *whole* row set, drawn from ``(seed, epoch)`` only (``set_epoch``), so a resumed training
  sees the batches the uninterrupted one would have.
* ``pool_batches``: takes the blocks as they arrive, ``pool_blocks`` at a time, shuffles all their rows
  together and cuts batches (rows left over join the next pool). With the default pool of 64 random blocks
  a batch of 16 holds rows of ~14 different blocks, i.e. ~14 slides (16 draws from 64 blocks:
  64 * (1 - (63/64)**16) = 14.3); the earlier loader mixed 8 blocks (~7). Memory: one pool of blocks.
* ``PatchLoader``: the three together, with ``workers`` threads reading and normalizing blocks ahead of the
  consumer (zarr codecs, numpy and the normalization plugins release the GIL for most of their work). While
  one pool is cut into batches the threads read the next (up to ``pool_blocks`` blocks ahead), so the
  consumer never waits for a whole pool; memory: two pools. Inference (``shuffle=False``) pools nothing
  and reads ``2 * workers`` blocks ahead. This is what the trainer and inference use.
* The same pieces with a ``torch.utils.data.DataLoader`` (worker processes instead of threads), e.g. for
  Lightning or MONAI::

      ds = BlockDataset(store, rows, chain)
      sampler = BlockSampler(ds, seed=0)
      blocks = DataLoader(ds, sampler=sampler, batch_size=None, num_workers=4, persistent_workers=True)
      for epoch in range(epochs):
          sampler.set_epoch(epoch)
          for x, y, rows in pool_batches(blocks, 16, rng=np.random.default_rng([0, epoch])): ...

* Tensors: ``to_tensor`` resizes to the network's input size (bilinear, antialiased) and standardises. GPU
  path (CUDA present and DALI importable): the same host batches enter a DALI pipeline through
  ``fn.external_source`` and are resized (linear, antialiased) and standardised on the GPU (``dali_epoch``);
  both paths give the same tensor within rounding (tests/test_loader.py). The CPU path never imports DALI.
"""
from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from . import config, registry

MEAN, STD = 0.45, 0.225  # input standardisation for every channel (ImageNet-like, gray-safe)
POOL_BLOCKS = 64  # blocks shuffled together (training.pool_blocks)


def norm_chain(pipeline: dict[str, Any], which: str = "classifier") -> tuple[list[tuple[Callable, dict]], int]:
    """The pipeline's ``normalization.<which>`` chain as ``[(apply, params)]`` and its output channels."""
    steps, channels = [], 3
    for ref in config.refs((pipeline.get("normalization") or {}).get(which)):
        plugin = registry.get("normalization", ref["name"])
        steps.append((plugin.apply, dict(ref.get("params") or {})))
        channels = min(channels, plugin.channels)  # once gray, later steps keep one channel
    return steps, channels


def frozen(pipeline: dict[str, Any]) -> dict[str, Any]:
    """``pipeline`` with every normalization step's params frozen by its plugin (``freeze``: a ``target`` image
    file replaced by its fitted statistics): what a bundle records, so prediction needs no file of training's."""
    norm = pipeline.get("normalization") or {}
    out = {}
    for which, section in norm.items():
        steps = []
        for ref in config.refs(section):
            fz = registry.get("normalization", ref["name"]).freeze
            steps.append({**ref, "params": fz(dict(ref.get("params") or {}))} if fz and ref.get("params") else ref)
        out[which] = steps if isinstance(section, list) else steps[0]
    return {**pipeline, "normalization": out} if norm else pipeline


def apply_chain(batch: np.ndarray, chain: list[tuple[Callable, dict]]) -> np.ndarray:
    for fn, params in chain:
        batch = np.asarray(fn(batch, **params))
    if batch.ndim == 3:
        batch = batch[..., None]
    return batch


def to_tensor(batch: np.ndarray, size: int | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (n, h, w, c) -> standardised float (n, c, size, size) on ``device`` (bilinear, antialiased resize)."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float().div_(255)
    if size and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.sub_(MEAN).div_(STD)


def flips(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random 90-degree rotations and flips per patch (histology has no orientation)."""
    out = np.empty_like(batch)
    for i, (k, f) in enumerate(zip(rng.integers(0, 4, len(batch)), rng.integers(0, 2, len(batch)))):
        p = np.rot90(batch[i], k)
        out[i] = p[:, ::-1] if f else p
    return out


class BlockDataset(Dataset):
    """Store ``rows`` grouped by store block: item ``k`` = ``(x uint8 (m,h,w,c), y int64 (m,), rows int64 (m,))``,
    the k-th block's wanted rows (sorted) after ``chain``. Picklable (worker processes reopen the store)."""

    def __init__(self, store, rows: np.ndarray, chain: list | None = None):
        self.store, self.path, self.chain = store, store.path, chain or []
        rows = np.sort(np.asarray(rows, np.int64))
        self.labels = store.column("label").astype(np.int64)
        blocks = store.blocks()
        bid = np.searchsorted(blocks[:, 1], rows, side="right")  # block of each row
        ids, starts = np.unique(bid, return_index=True)
        self.blocks = blocks[ids]  # [row0, row1) of each item
        self.groups = np.split(rows, starts[1:]) if len(rows) else []
        self.n_rows = len(rows)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.store is None:
            from .store import PatchStore

            self.store = PatchStore.open(self.path)
        (r0, r1), rows = self.blocks[k], self.groups[k]
        block = self.store.read(int(r0), int(r1))  # one block: one decompression
        return apply_chain(block[rows - r0], self.chain), self.labels[rows], rows

    def __getstate__(self):
        return {**self.__dict__, "store": None}


class BlockSampler(Sampler[int]):
    """Indices of a ``BlockDataset``, each once per epoch: a permutation over the whole dataset drawn from
    ``(seed, epoch)`` (``set_epoch``), or in store order with ``shuffle=False``."""

    def __init__(self, dataset: BlockDataset, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = len(dataset), int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist())


def pool_batches(blocks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], batch_size: int, pool_blocks: int = POOL_BLOCKS,
                 rng: np.random.Generator | None = None, drop_last: bool = False, augment: bool = False
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Batches ``(x, y, rows)`` from a stream of blocks: ``pool_blocks`` blocks at a time, their rows shuffled
    together by ``rng`` (None: kept in arrival order), cut into ``batch_size`` batches; the rows left over
    (fewer than a batch) join the next pool. ``augment``: random rotations/flips per patch (needs ``rng``)."""
    pool: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def cut(final: bool):
        sizes = np.array([len(b[2]) for b in pool])
        which = np.repeat(np.arange(len(pool)), sizes)  # (block, offset) of every pooled row
        where = np.concatenate([np.arange(s) for s in sizes])
        if rng is not None:
            p = rng.permutation(len(which))
            which, where = which[p], where[p]
        n = len(which) if final else len(which) - len(which) % batch_size
        for i in range(0, n, batch_size):
            if drop_last and i + batch_size > n:
                break
            w, o = which[i:i + batch_size], where[i:i + batch_size]
            x = np.stack([pool[b][0][j] for b, j in zip(w, o)])
            yield ((flips(x, rng) if augment and rng is not None else x),
                   np.array([pool[b][1][j] for b, j in zip(w, o)], np.int64),
                   np.array([pool[b][2][j] for b, j in zip(w, o)], np.int64))
        w, o = which[n:], where[n:]
        rest = [np.stack([pool[b][k][j] for b, j in zip(w, o)]) for k in range(3)] if len(w) else None
        pool.clear()
        if rest is not None:
            pool.append(tuple(rest))

    fresh = 0  # blocks in the pool besides the carried remainder
    for block in blocks:
        if len(block[2]):
            pool.append(block)
            fresh += 1
        if fresh >= pool_blocks and sum(len(b[2]) for b in pool) >= batch_size:
            yield from cut(final=False)
            fresh = 0
    if pool:
        yield from cut(final=True)


class PatchLoader:
    """Batches of ``(patches uint8 (n,h,w,c), labels int64 (n,), rows int64 (n,))`` from a PatchStore.

    ``rows``: the store rows to use (e.g. the train split); ``shuffle=False`` keeps store order (inference).
    Shuffled order depends only on ``(seed, epoch)``.
    """

    def __init__(self, store, rows: np.ndarray, batch_size: int = 16, chain: list | None = None, shuffle: bool = True,
                 seed: int = 0, workers: int = 2, pool_blocks: int = POOL_BLOCKS, augment: bool = False,
                 drop_last: bool = False):
        self.dataset = BlockDataset(store, rows, chain)
        self.sampler = BlockSampler(self.dataset, seed, shuffle)
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, int(seed)
        self.workers, self.pool_blocks = max(1, int(workers)), max(1, int(pool_blocks)) if shuffle else 1
        self.ahead = max(2 * self.workers, self.pool_blocks)  # blocks read ahead: the next pool
        self.augment, self.drop_last = augment, drop_last

    def __len__(self) -> int:
        n = self.dataset.n_rows
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _blocks(self, order: Iterable[int]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Dataset items in ``order``, read ahead by a thread pool (bounded look-ahead)."""
        with ThreadPoolExecutor(self.workers, thread_name_prefix="patchloader") as pool:
            pending: "queue.Queue" = queue.Queue()
            it = iter(order)
            for k in it:
                pending.put(pool.submit(self.dataset.__getitem__, int(k)))
                if pending.qsize() >= self.ahead:
                    break
            while not pending.empty():
                yield pending.get().result()
                k = next(it, None)
                if k is not None:
                    pending.put(pool.submit(self.dataset.__getitem__, int(k)))

    def epoch(self, epoch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """One pass over the rows; the order depends only on (seed, epoch)."""
        self.sampler.set_epoch(epoch)
        rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
        yield from pool_batches(self._blocks(self.sampler), self.batch_size, self.pool_blocks, rng,
                                self.drop_last, self.augment)

    def tensors(self, epoch: int = 0, size: int | None = None, device="cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
        """``epoch`` as ``(x float (n,c,s,s), y long (n,), rows)`` on ``device``: DALI on CUDA, torch otherwise."""
        if torch.device(device).type == "cuda" and dali_available():
            yield from dali_epoch(self, epoch, size, torch.device(device).index or 0)
            return
        for xb, yb, rb in self.epoch(epoch):
            yield to_tensor(xb, size, device), torch.from_numpy(yb).to(device), rb


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        return torch.cuda.is_available()
    except Exception:  # ImportError, or a DALI build without a usable driver
        return False


def dali_epoch(loader: PatchLoader, epoch: int, size: int | None, device_id: int | None = 0):
    """DALI path: host batches -> ``fn.external_source`` -> resize + standardisation (on GPU ``device_id``,
    or DALI's CPU operators when ``device_id`` is None) -> torch tensors ``(x, y, rows)``."""
    from nvidia.dali import fn, pipeline_def, types

    batches = loader.epoch(epoch)

    def source():
        xb, yb, rb = next(batches)  # StopIteration ends the DALI epoch
        return list(xb), [np.array([v], np.int64) for v in yb], [np.array([v], np.int64) for v in rb]

    @pipeline_def(batch_size=loader.batch_size, num_threads=2, device_id=device_id, prefetch_queue_depth=1)
    def pipe():
        imgs, labels, rows = fn.external_source(source=source, num_outputs=3, layout=["HWC", None, None],
                                                dtype=[types.UINT8, types.INT64, types.INT64], batch=True)
        x = imgs.gpu() if device_id is not None else imgs
        if size:  # float output: no rounding between resize and standardisation, as in ``to_tensor``
            x = fn.resize(x, resize_x=size, resize_y=size, antialias=True, interp_type=types.INTERP_LINEAR,
                          dtype=types.FLOAT)
        x = fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout="CHW", mean=MEAN * 255, std=STD * 255)
        return x, labels, rows

    p = pipe()
    p.build()
    while True:
        try:
            x, y, r = p.run()
        except StopIteration:
            return
        yb = torch.from_numpy(y.as_array().reshape(-1))
        rb = r.as_array().reshape(-1)
        if device_id is None:
            yield torch.from_numpy(x.as_array()), yb, rb
            continue
        from nvidia.dali.plugin.pytorch import feed_ndarray

        xt = x.as_tensor()
        tx = torch.empty(xt.shape(), dtype=torch.float32, device=f"cuda:{device_id}")
        feed_ndarray(xt, tx)
        yield tx, yb.to(tx.device), rb

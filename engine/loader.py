"""Streaming patch loader: chunk-aligned reads of the store's ``patches`` array -> normalization -> torch.

* Reads whole zarr chunks (one decompression per chunk), keeping only the wanted rows of each.
* Shuffles at two levels, from ``(seed, epoch)`` only, so an epoch's order is reproducible (a resumed
  training sees the same batches): the chunk order, then rows within a buffer of ``buffer_chunks`` chunks.
* ``workers`` threads read, decompress and normalize chunks ahead of the consumer (zarr codecs, numpy
  and the normalization plugins release the GIL for most of their work); at most ``2 * workers`` chunks
  are in flight, so memory is bounded by the buffer, not the store.
* CPU path: batches become float tensors here (``to_tensor``). GPU path (CUDA present and DALI
  importable): the same host batches enter a DALI pipeline through ``fn.external_source`` and are
  resized/normalized on the GPU (``dali_epoch``). The CPU path never imports DALI.
"""
from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import config, registry

MEAN, STD = 0.45, 0.225  # input standardisation for every channel (ImageNet-like, gray-safe)


def norm_chain(pipeline: dict[str, Any], which: str = "classifier") -> tuple[list[tuple[Callable, dict]], int]:
    """The pipeline's ``normalization.<which>`` chain as ``[(apply, params)]`` and its output channels."""
    steps, channels = [], 3
    for ref in config.refs((pipeline.get("normalization") or {}).get(which)):
        plugin = registry.get("normalization", ref["name"])
        steps.append((plugin.apply, dict(ref.get("params") or {})))
        channels = min(channels, plugin.channels)  # once gray, later steps keep one channel
    return steps, channels


def apply_chain(batch: np.ndarray, chain: list[tuple[Callable, dict]]) -> np.ndarray:
    for fn, params in chain:
        batch = np.asarray(fn(batch, **params))
    if batch.ndim == 3:
        batch = batch[..., None]
    return batch


def to_tensor(batch: np.ndarray, size: int | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (n, h, w, c) -> standardised float (n, c, size, size) on ``device``."""
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


class PatchLoader:
    """Batches of ``(patches uint8 (n,h,w,c), labels int64 (n,), rows int64 (n,))`` from a PatchStore.

    ``rows``: the store rows to use (e.g. the train split); ``shuffle=False`` keeps store order (inference).
    """

    def __init__(self, store, rows: np.ndarray, batch_size: int = 16, chain: list | None = None, shuffle: bool = True,
                 seed: int = 0, workers: int = 2, buffer_chunks: int = 8, augment: bool = False, drop_last: bool = False):
        self.store, self.batch_size, self.chain = store, int(batch_size), chain or []
        self.shuffle, self.seed, self.workers = shuffle, seed, max(1, int(workers))
        self.buffer_chunks, self.augment, self.drop_last = max(1, buffer_chunks), augment, drop_last
        self.rows = np.sort(np.asarray(rows, np.int64))
        self.labels = store.column("label").astype(np.int64)
        blocks = store.blocks()
        self.chunk = int(max(1, (blocks[:, 1] - blocks[:, 0]).max())) if len(blocks) else 1
        cid = np.searchsorted(blocks[:, 1], self.rows, side="right")  # block of each row
        self.chunks, starts = np.unique(cid, return_index=True)
        self.blocks = blocks
        self.groups = np.split(self.rows, starts[1:])  # rows of each block

    def __len__(self) -> int:
        n = len(self.rows)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _read(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        (r0, r1), rows = self.blocks[int(self.chunks[k])], self.groups[k]
        block = self.store.read(int(r0), int(r1))  # one block: one decompression
        return apply_chain(block[rows - r0], self.chain), rows

    def _chunks(self, order: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Chunk results in ``order``, read ahead by a thread pool (bounded look-ahead)."""
        with ThreadPoolExecutor(self.workers, thread_name_prefix="patchloader") as pool:
            pending: "queue.Queue" = queue.Queue()
            it = iter(order)
            for k in it:
                pending.put(pool.submit(self._read, int(k)))
                if pending.qsize() >= 2 * self.workers:
                    break
            while not pending.empty():
                yield pending.get().result()
                k = next(it, None)
                if k is not None:
                    pending.put(pool.submit(self._read, int(k)))

    def epoch(self, epoch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """One pass over the rows; the order depends only on (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.chunks)) if self.shuffle else np.arange(len(self.chunks))
        buf_x: list[np.ndarray] = []
        buf_r: list[np.ndarray] = []
        n_buf = 0

        def drain(final: bool):
            nonlocal buf_x, buf_r, n_buf
            x, r = np.concatenate(buf_x), np.concatenate(buf_r)
            if self.shuffle:
                p = rng.permutation(len(r))
                x, r = x[p], r[p]
            cut = len(r) if final else len(r) - len(r) % self.batch_size
            for i in range(0, cut, self.batch_size):
                xb, rb = x[i:i + self.batch_size], r[i:i + self.batch_size]
                if len(rb) < self.batch_size and self.drop_last:
                    break
                yield (flips(xb, rng) if self.augment else xb), self.labels[rb], rb
            buf_x, buf_r, n_buf = [x[cut:]], [r[cut:]], len(r) - cut

        for x, r in self._chunks(order):
            buf_x.append(x)
            buf_r.append(r)
            n_buf += len(r)
            if n_buf >= self.buffer_chunks * self.chunk and n_buf >= self.batch_size:
                yield from drain(final=False)
        if n_buf:
            yield from drain(final=True)

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
        if size:
            x = fn.resize(x, resize_x=size, resize_y=size, antialias=True)
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

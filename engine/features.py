"""The feature store: one encoder feature vector per patch, row-aligned with a patch store.

``slidestream features PIPELINE --store STORE --out FEATS.zarr`` runs the pipeline's ``encoder`` over every
committed patch (read through the store's ``records()``/``read()`` interface) and writes a plain zarr v3 group::

    FEATS.zarr/
      features           (N, dim) float16 (``features.dtype``), row i = patch row i of STORE
      meta/<column>      slide_id, patient_id, label, age, x, y, size0, synthetic: copied from STORE
      zarr.json          attrs["slidestream_features"]: encoder name/params, weights sha256, dim, dtype,
                         input transform, the patch store's path/extraction hash/rows, and ``done``:
                         the slides (and synthetic batches) written so far, with their row ranges

Resumable per slide like extraction: a slide's features are written, then it is added to ``done``; a
rerun skips the done ones (and refuses a store made with another encoder, weights or patch store).
Patches are resized to the encoder's ``input_size``, scaled to 0..1 and normalized by its mean/std, in
batches of ``features.batch_size``, on the GPU when there is one.

``slidestream extract PIPELINE --slides COHORT --out FEATS.zarr --features-only`` (:func:`extract_features_only`)
writes the same store with no patch store in between: each slide is tiled and filtered as by ``extract``, its
patch batches go straight into the encoder (``runner.process_slide``'s ``sink``), and only its feature rows and
meta columns are appended. The header then has ``features_only: true``, ``patch_store: null``, the pipeline's
``extraction_hash``, ``magnification`` and ``patch_size`` (what ``export`` needs of the pipeline), ``slides``/``errors``
(the records ``extract`` keeps) and ``pending`` (slides of the last run not yet attempted); ``rows`` grows with each slide (written before ``done`` names it: the commit point).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from . import registry
from .device import resolve_device
from .errors import ConfigError, StoreError

DEFAULTS: dict[str, Any] = {"batch_size": 64, "dtype": "float16", "device": "auto"}
CARRIED = ("slide_id", "patient_id", "label", "age", "x", "y", "size0", "synthetic")
FIXED_META = ("slide_id", "x", "y", "size0")  # never rewritten: each slide's CRC32s of them, in this order, in the
# header (meta_sums)
ATTR = "slidestream_features"
TRANSFORM = ("input_size", "mean", "std", "resize", "interpolation")  # the encoder's input transform (its plugin's)


def _checked() -> list:
    """zarr's default compressor (zstd level 0) with zstd's content checksum: a damaged chunk of a feature store
    is an error on reading (a StoreError), never other features."""
    from zarr.codecs import ZstdCodec

    return [ZstdCodec(level=0, checksum=True)]


def as_str(a: np.ndarray) -> np.ndarray:
    """A fixed-width unicode array from zarr's variable-length strings."""
    return np.asarray(a).astype(object).astype(str)


def settings(pipeline: dict[str, Any], **overrides) -> dict[str, Any]:
    s = {**DEFAULTS, **(pipeline.get("features") or {})}
    s.update({k: v for k, v in overrides.items() if v is not None})
    return s


def load_encoder(ref: dict[str, Any]):
    """Build the encoder a pipeline's ``encoder`` section names (random init seeded with 0 when it has no weights). Returns ``(module, spec)``, ``spec`` being
    ``{name, params, dim, input_size, mean, std}`` (module attributes override the plugin's declaration)."""
    if not ref or "name" not in ref:
        raise ConfigError("the pipeline has no encoder section; add e.g. "
                          '"encoder": {"name": "resnet50_trunc", "params": {"weights": "resnet50.pth"}}')
    import torch

    plugin = registry.get("encoder", ref["name"])
    params = dict(ref.get("params") or {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # an encoder without weights (tests, the demo) is the same random net every time
        module = plugin.build(**params)
    spec = {"name": plugin.name, "params": params}
    for k in ("dim", "input_size", "mean", "std", "resize", "interpolation"):
        v = getattr(module, k, None) or getattr(plugin, k)
        spec[k] = list(v) if isinstance(v, tuple) else v
    spec["interpolation"] = spec["interpolation"] or "bilinear"
    if not spec["dim"] or not spec["input_size"]:
        raise ConfigError(f"encoder {plugin.name!r} declares no output dim / input size")
    return module, spec


def preprocess(batch: np.ndarray, spec: dict[str, Any], device):
    """uint8 (n, S, S, 3) -> normalized float (n, 3, s, s) on ``device``: resized (to ``resize`` then
    centre-cropped to ``input_size``, or straight to ``input_size``), scaled to 0..1, ``(x - mean) / std``."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float().div_(255)
    s, r = int(spec["input_size"]), int(spec.get("resize") or 0)
    side = r if r > s else s
    if x.shape[-1] != side or x.shape[-2] != side:
        x = F.interpolate(x, size=(side, side), mode=spec.get("interpolation", "bilinear"), antialias=True,
                          align_corners=False).clamp_(0, 1)
    if side > s:  # centre crop
        o = (side - s) // 2
        x = x[..., o:o + s, o:o + s]
    mean = torch.tensor(spec["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec["std"], device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def _units(store) -> list[tuple[str, int, int]]:
    """(key, row0, row1) of every committed slide and synthetic batch, in row order."""
    out = []
    for section in ("slides", "synthetic"):
        for key, rec in store.records(section).items():
            r0, r1 = rec.get("rows", (0, 0))
            if r1 > r0:
                out.append((key if section == "slides" else f"synthetic/{key}", int(r0), int(r1)))
    return sorted(out, key=lambda u: u[1])


def extract_features(pipeline: dict[str, Any], store_path: str | Path, out: str | Path, *, device: str | None = None,
                     batch_size: int | None = None, progress: bool = True, log=print) -> dict[str, Any]:
    """Write (or resume) the feature store ``out`` for the patch store ``store_path``. Returns a summary."""
    import os
    import shutil

    from .store import PatchStore, acquire_lock, beside, live_writer, release_lock, writing

    cfg = settings(pipeline, device=device, batch_size=batch_size)
    store = PatchStore.open(store_path)
    holder = live_writer(store_path)
    if holder:
        raise StoreError(f"patch store {store_path} is being written by {holder} (`extract` still "
                         "running: its slides are not all in); wait for it to finish, then run `slidestream features`")
    n = len(store)
    if n == 0:
        raise StoreError(f"store {store_path} has no patches; run `slidestream extract` first")
    module, spec = load_encoder(pipeline.get("encoder"))
    header = _header(spec, cfg, patch_store=str(Path(store_path).resolve()),
                     extraction_hash=store.manifest.get("extraction_hash"), rows=n, patch_store_id=_store_id(store))
    out = Path(out)
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
    acquire_lock(out)  # one writer at a time, as for a patch store
    try:
        if (out / "zarr.json").exists():
            g = _resume_features(out, header)
        else:  # built beside --out and renamed into place when complete: a killed first run leaves no half store there
            if out.exists() and any(out.iterdir()):
                raise StoreError(f"{out} exists and is not a feature store; choose an empty or new --out")
            work = beside(out, "partial")
            try:
                g = _resume_features(work, header) if (work / "zarr.json").exists() else None
            except StoreError:  # an unfinished store of other settings: never a result, start over
                g = None
            if g is None:
                shutil.rmtree(work, ignore_errors=True)
                with writing(work):
                    g = _new_features(work, store, header, cfg, n)
        done = dict(g.attrs[ATTR].get("done", {}))
        todo, total, seconds, dev = _encode_units(g, store, module, spec, cfg, header, done, out, progress)
        if not (out / "zarr.json").exists():
            with writing(out):
                if out.exists():
                    out.rmdir()  # the empty folder a user made for it
                os.rename(work, out)
    finally:
        release_lock(out)
    summary = {"out": str(out), "encoder": spec["name"], "dim": header["dim"], "rows": n, "encoded": total,
               "skipped": len(done) - len(todo), "seconds": round(seconds, 3),
               "patches_per_s": round(total / seconds, 1) if total and seconds > 0 else None, "device": str(dev)}
    if log:
        log(f"features: {total} patches encoded ({summary['patches_per_s']} /s on {dev}), {n} rows in {out}")
    return summary


def _resume_features(path: Path, header: dict[str, Any]):
    """The feature store at ``path`` opened to resume, if it was made with the same encoder and patch store."""
    import zarr

    try:
        g = zarr.open_group(str(path), mode="r+")
    except Exception:  # noqa: BLE001 (a damaged zarr.json)
        raise StoreError(f"{path} exists and is not a readable feature store; choose a new --out") from None
    old = dict(g.attrs.get(ATTR) or {})
    if not old:
        raise StoreError(f"{path} exists and is not a slidestream feature store; choose a new --out")
    if old.get("features_only"):
        raise StoreError(f"{path} was written by `extract --features-only`, not from a patch store; choose a new --out")
    if old.get("patch_store_id", header["patch_store_id"]) != header["patch_store_id"]:  # older stores: none
        raise StoreError(f"feature store {path} was made from the patch store {old.get('patch_store')}, not "
                         f"{header['patch_store']} (other slides or another extraction); give that --store, or a new --out")
    for k in ("encoder", "weights_sha256", "dim", "dtype", "extraction_hash", "rows", "params", *TRANSFORM):
        if old.get(k) != header[k] and (k in old or k not in TRANSFORM):  # older stores: no transform recorded
            raise StoreError(f"feature store {path} was made with another {k} ({old.get(k)!r} vs {header[k]!r}); "
                             "use a new --out, or delete it to start over")
    _check_done(path, old)
    return g


def _values_crc(vals) -> int:
    """CRC32 of rows as stored (strings joined by NUL, numbers as their bytes): ``store._values_crc``."""
    from .store import _values_crc

    return _values_crc(vals)


def _check_done(path: Path, info: dict[str, Any]) -> None:
    """The header's ``done`` ranges lie inside its rows and never overlap (a range named twice, another slide's
    gone, passed ``complete()`` with that slide's rows unwritten: zeros)."""
    rows, done = info.get("rows"), info.get("done")
    why = None if type(rows) is int and isinstance(done, dict) else "has no row count or `done` table"
    end, last = 0, None
    def first(kv):
        return kv[1][0] if isinstance(kv[1], list) and kv[1] and type(kv[1][0]) is int else -1

    for key, r in sorted((done if why is None else {}).items(), key=first):
        if not (isinstance(r, list) and len(r) == 2 and all(type(v) is int for v in r)):
            why = f"gives {key!r} the rows {r!r}, not [first row, end]"
            break
        if not 0 <= r[0] <= r[1] <= rows:
            why = f"gives {key!r} the rows {r!r}, outside the store's {rows}"
            break
        if r[1] > r[0]:
            if r[0] < end:
                why = f"gives {key!r} and {last!r} the same rows {r[0]}..{min(end, r[1]) - 1}"
                break
            end, last = r[1], key
    if why:
        raise StoreError(f"feature store {path}: its header {why}; it was edited or is damaged: delete it and run "
                         "`slidestream features` again")


def _store_id(store) -> str:
    """What makes a patch store the same one wherever it lies: its creation time, its slides' row ranges and
    their shard files' sizes and CRC32s (same patches, same id)."""
    from .config import digest

    sums = [r.get("shards") for section in ("slides", "synthetic") for r in store.records(section).values()]
    return digest([store.manifest.get("created"), _units(store), sums])[:16]


def check_patch_store(fs, ps, path, features) -> None:
    """Refuse (one line) a patch store ``ps`` (at ``path``) the feature store ``fs`` was not computed from: other
    rows, slides or coordinates, or other patches of them (its ``patch_store_id``: re-extracted, shards replaced).
    Patients, labels, ages and splits may have changed since: they are read from the patch store."""
    same = len(ps) == len(fs) and all(np.array_equal(as_str(ps.column(c)) if c == "slide_id" else ps.column(c),
                                                     fs.column(c)) for c in ("slide_id", "x", "y"))
    if not same:
        raise ConfigError(f"the patch store {path} ({len(ps)} rows) is not the one the feature store {features} "
                          f"({len(fs)} rows) was computed from (other rows, slides or coordinates); give that patch store "
                          "(--store), or rerun `slidestream features` on this one")
    own = fs.info.get("patch_store_id")  # None: `extract --features-only`, or an older store
    if own and own != _store_id(ps):
        raise ConfigError(f"the feature store {features} is stale: the patch store {path} holds other patches of its "
                          "slides than those it was computed from (re-extracted, or shard files replaced); rerun "
                          f"`slidestream features` on {path} into a new --out")


def _new_features(path: Path, store, header: dict[str, Any], cfg: dict[str, Any], n: int):
    """A new feature store at ``path`` for the ``n`` rows of ``store``: features unwritten, meta columns copied."""
    import zarr

    g = zarr.open_group(str(path), mode="w")
    g.create_array("features", shape=(n, header["dim"]), dtype=cfg["dtype"], fill_value=0,
                   chunks=(min(n, 4096), header["dim"]), compressors=_checked())
    tab = store.table(list(CARRIED))
    for c in CARRIED:
        v = tab[c]
        a = g.create_array(f"meta/{c}", shape=(n,), dtype=str if v.dtype.kind in "UOT" else v.dtype,
                           chunks=(min(n, 65536),), compressors=_checked())
        a[:] = as_str(v) if v.dtype.kind in "UOT" else v
    meta_sums = {key: [_values_crc(tab[c][r0:r1]) for c in FIXED_META] for key, r0, r1 in _units(store)}
    g.attrs[ATTR] = {**header, "done": {}, "meta_sums": meta_sums}
    return g


HEADER_EVERY_S = 1.0  # a feature store's header (zarr.json) is rewritten at most this often while encoding


class Header:
    """The feature store's header (``g.attrs[ATTR]``, its commit point) written at most every ``HEADER_EVERY_S``
    seconds, and once more at the end or when encoding stops on an error. The header holds every slide's rows and
    checksums, so rewriting it per slide cost O(slides) each, O(slides²) in all (2,000 slides: 59 of 218 CPU-s,
    bench/README.md); a kill now loses at most the last second's slides, which a rerun encodes again."""

    def __init__(self, g, info: dict[str, Any]):
        import time

        self.g, self.info, self.clock = g, info, time.perf_counter
        self.last, self.dirty = self.clock(), False

    def put(self, info: dict[str, Any]) -> None:
        self.info, self.dirty = info, True
        if self.clock() - self.last >= HEADER_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self.dirty:
            self.g.attrs[ATTR] = self.info
            self.last, self.dirty = self.clock(), False

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb) -> None:
        if kind is None:
            self.flush()
        else:  # keep what is encoded; the error in flight is the one reported
            try:
                self.flush()
            except Exception:  # noqa: BLE001 (e.g. the full disk that stopped encoding): a rerun redoes those slides
                pass


def _encode_units(g, store, module, spec, cfg, header, done, out, progress):
    """Encode the store's slides and batches not in ``done`` into ``g``, each added to ``done`` once written.
    Returns (units encoded, patches encoded, seconds, device)."""
    import time

    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .store import writing

    dev = torch.device(resolve_device(cfg["device"]))
    module = module.to(dev).eval()
    feats = g["features"]
    sums = dict(g.attrs[ATTR].get("sums") or {})
    todo = [u for u in _units(store) if u[0] not in done]
    total = sum(r1 - r0 for _, r0, r1 in todo)
    t0, bs = time.perf_counter(), int(cfg["batch_size"])
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not progress, transient=False) as bar:
        task = bar.add_task(f"features ({spec['name']})", total=total)
        with Header(g, dict(g.attrs[ATTR])) as head:
            for key, r0, r1 in todo:
                sink = EncoderSink(module, spec, dev, bs, r1 - r0)
                for a in range(r0, r1, bs):
                    b = min(a + bs, r1)
                    sink.write(a - r0, store.read(a, b))
                    bar.advance(task, b - a)
                block = stored(sink.close(), cfg["dtype"], spec, key)
                with writing(out):  # a full disk: one line, exit 2; the slides in the header so far stay done
                    feats[r0:r1] = block
                    done[key], sums[key] = [r0, r1], _values_crc(block)
                    head.put({**head.info, **header, "done": done, "sums": sums})  # in once its rows are written
            with writing(out):
                head.flush()
    return todo, total, time.perf_counter() - t0, dev


def stored(block: np.ndarray, dtype: str, spec: dict[str, Any], key: str) -> np.ndarray:
    """A slide's float32 features as stored (``dtype``); NaN/inf features, and features beyond float16's range
    when stored as float16 (they would read as inf), refused naming the slide."""
    bad = ~np.isfinite(block).all(1)
    if bad.any():
        raise ConfigError(f"encoder {spec['name']!r} gave NaN/inf features for {int(bad.sum())} of {len(block)} patches "
                          f"of {key!r} (first: its patch {int(np.argmax(bad))}); fix the encoder or its weights, then rerun "
                          "(the slides written so far are kept)")
    top = float(np.abs(block).max(initial=0))
    if dtype == "float16" and top > 65504:  # float16's largest: stored as inf
        raise ConfigError(f"encoder {spec['name']!r} gave features up to {top:.4g} for {key!r}, beyond float16's "
                          '65504; set "features": {"dtype": "float32"} in the pipeline and write a new --out')
    return block.astype(dtype)


class FeatureStore:
    """A feature store opened for reading: ``features`` (zarr array), ``meta`` columns, ``info`` header."""

    def __init__(self, path: str | Path):
        import zarr

        path = Path(path)
        try:
            self.group = zarr.open_group(str(path), mode="r")
        except Exception:  # noqa: BLE001
            raise StoreError(f"{path} is not a feature store; run `slidestream features` first") from None
        self.info = copy.deepcopy(dict(self.group.attrs.get(ATTR) or {}))
        if not self.info:
            if "slidestream" in self.group.attrs:
                raise StoreError(f"{path} is a patch store (from `slidestream extract`), not a feature store: --features "
                                 f"wants one from `slidestream features PIPELINE --store {path} --out FEATS`")
            raise StoreError(f"{path} is not a slidestream feature store (no {ATTR} attrs)")
        self.path = path
        try:
            self.features = self.group["features"]
            for c in CARRIED:
                self.group[f"meta/{c}"]
        except KeyError as e:
            raise StoreError(f"feature store {path} has no {e.args[0]} array (damaged or not written by slidestream); "
                             "delete it and run `slidestream features` again") from None
        _check_done(path, self.info)
        self._check_chunks()

    def _check_chunks(self) -> None:
        """A chunk file of written rows that is missing (a damaged or partly copied store) would read as zeros
        (zarr's fill value): refuse it. No encoder writes a whole chunk of exact zeros."""
        a, cr = self.features, self.features.chunks[0]
        need = sorted({i for r0, r1 in (self.info.get("done") or {}).values() if r1 > r0
                       for i in range(r0 // cr, (r1 - 1) // cr + 1)})
        missing = [k for k in (a.metadata.encode_chunk_key((i, 0)) for i in need)
                   if not (self.path / "features" / k).is_file()]
        if missing:
            raise StoreError(f"feature store {self.path}: {len(missing)} chunk file(s) of written rows are missing "
                             f"(first: features/{missing[0]}); the store is damaged or incompletely copied: delete it "
                             "and run `slidestream features` (or `extract --features-only`) again")

    def __len__(self) -> int:
        return int(self.info["rows"])

    def column(self, name: str) -> np.ndarray:
        with self._damaged(f"its column {name!r}"):
            a = np.asarray(self.group[f"meta/{name}"][:])
        from .store import years

        a = as_str(a) if a.dtype.kind in "OT" else years(a) if name == "age" else a
        for key, want in (self.info.get("meta_sums") or {}).items() if name in FIXED_META else ():
            r0, r1 = self.info["done"].get(key, (0, 0))
            if r1 > r0 and _values_crc(a[r0:r1]) != want[FIXED_META.index(name)]:
                raise StoreError(f"feature store {self.path}: column {name!r} of {key!r} is not what was written (CRC32): "
                                 f"its chunk files (meta/{name}/c/...) were swapped or replaced; delete it and run "
                                 "`slidestream features` again")
        return a

    def rows(self, r0: int | None = None, r1: int | None = None) -> np.ndarray:
        """The features of rows ``r0 .. r1`` (all by default)."""
        a, b = r0 or 0, len(self) if r1 is None else r1
        with self._damaged(f"the features of rows {a}..{b}"):
            out = np.asarray(self.features[r0:r1])
        for key, want in (self.info.get("sums") or {}).items():  # each whole slide read: its CRC32 as written
            s0, s1 = self.info["done"].get(key, (0, 0))
            if a <= s0 < s1 <= b and _values_crc(out[s0 - a:s1 - a]) != want:
                raise StoreError(f"feature store {self.path}: the features of {key!r} (rows {s0}..{s1 - 1}) are not what "
                                 "was written (CRC32): its chunk files were swapped or replaced; delete it and run "
                                 "`slidestream features` again")
        return out

    def _damaged(self, what: str):
        from .store import damaged

        return damaged(f"feature store {self.path}", what, "delete it and run `slidestream features` again")

    def complete(self) -> bool:
        """Every row written (and, for ``extract --features-only``, every slide of its last run attempted)."""
        return (sum(r1 - r0 for r0, r1 in self.info["done"].values()) == len(self) == self.features.shape[0]
                and not self.info.get("pending"))


# ------------------------------------------------------------------------- extract --features-only
class EncoderSink:
    """One slide's patch batches (``write(row0, patches)``, rows in order) -> its ``(n, dim)`` float32
    features (``close()``). Patches are encoded in batches of ``batch_size`` rows counted from the slide's
    first row -- the batches ``extract_features`` makes from a patch store -- so both give the same numbers."""

    def __init__(self, module, spec: dict[str, Any], device, batch_size: int, n: int):
        self.module, self.spec, self.device, self.bs = module, spec, device, int(batch_size)
        self.out = np.zeros((n, int(spec["dim"])), np.float32)
        self.pending: list[np.ndarray] = []
        self.row = 0  # first row not encoded yet

    def write(self, row0: int, patches: np.ndarray) -> None:
        if row0 != self.row + sum(len(p) for p in self.pending):
            raise ValueError(f"patch rows out of order: {row0}")
        self.pending.append(patches)
        if sum(len(p) for p in self.pending) >= self.bs:
            self._encode(final=False)

    def _encode(self, final: bool) -> None:
        import torch

        if not self.pending:
            return
        buf = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        k = len(buf) if final else len(buf) // self.bs * self.bs
        for a in range(0, k, self.bs):
            n = min(a + self.bs, k) - a
            with torch.inference_mode():
                f = self.module(preprocess(buf[a:a + n], self.spec, self.device)).float().cpu().numpy()
            if f.shape != (n, self.out.shape[1]):  # one row per patch, or every later row is another patch's
                raise ConfigError(f"encoder {self.spec['name']!r} returned features of shape {f.shape[1:]} for {n} patches "
                                  f"({f.shape[0]} rows), declared ({self.out.shape[1]},) per patch; fix the encoder plugin")
            self.out[self.row:self.row + len(f)] = f
            self.row += len(f)
        self.pending = [buf[k:]] if k < len(buf) else []

    def close(self) -> np.ndarray:
        self._encode(final=True)
        return self.out


def _header(spec: dict[str, Any], cfg: dict[str, Any], **more) -> dict[str, Any]:
    """The feature store's header fields that name the encoder and its input transform, plus ``more``."""
    from .bundle import sha256_file

    weights = spec["params"].get("weights")
    return {"encoder": spec["name"], "params": spec["params"],
            "weights_sha256": sha256_file(weights) if weights is not None else None,
            "dim": int(spec["dim"]), "dtype": cfg["dtype"], "input_size": int(spec["input_size"]),
            "mean": spec["mean"], "std": spec["std"], "resize": spec["resize"], "interpolation": spec["interpolation"],
            **more}


def _meta_dtype(column: str):
    from .store import COLUMNS

    dtype = COLUMNS[column][0]
    return str if dtype is str else np.dtype(dtype)


def _values(a, v, n: int) -> np.ndarray:
    """``n`` values for the meta array ``a``: a column, or a scalar repeated (None -> NaN)."""
    v = np.asarray(v) if np.ndim(v) else np.full(n, np.nan if v is None else v, dtype=object)
    return v.astype(str) if a.dtype.kind in "OTU" else v.astype(a.dtype)


def extract_features_only(pipeline: dict[str, Any], cohort: list, out: str | Path, *, threads: int | None = None,
                          qa: bool = True, progress: bool = True, pipeline_path: str | None = None,
                          device: str | None = None, batch_size: int | None = None,
                          allow_corrupt_tiles: bool = False) -> dict[str, Any]:
    """``extract --features-only``: tile and filter ``cohort`` (``SlideRow`` list) like ``runner.extract`` and
    encode the patches straight into the feature store ``out`` (created, or resumed per slide). Returns
    ``runner.summarize``'s summary (``store`` = ``out``) plus encoder, dim, patches encoded and patches/s
    (tiles decoded and encoded, wall clock)."""
    import os
    import time

    import torch
    import zarr

    from . import config, runner
    from .progress import ExtractProgress
    from .store import acquire_lock, beside, release_lock, writing

    t_start = time.perf_counter()
    cfg = settings(pipeline, device=device, batch_size=batch_size)
    module, spec = load_encoder(pipeline.get("encoder"))
    header = _header(spec, cfg, patch_store=None, features_only=True, extraction_hash=config.extraction_hash(pipeline),
                     pipeline_file=pipeline_path, magnification=float(pipeline.get("magnification", 10)),
                     patch_size=int((pipeline.get("patches") or {}).get("size", 256)))  # for `export --format h5`
    out = Path(out)
    if (out / "zarr.json").exists():
        try:
            g = zarr.open_group(str(out), mode="r+")
        except Exception:  # noqa: BLE001
            raise StoreError(f"{out} exists and is not a feature store; choose a new --out") from None
        info = dict(g.attrs.get(ATTR) or {})
        if not info.get("features_only"):
            raise StoreError(f"{out} exists and is not a store of `extract --features-only`; choose a new --out")
        for k in ("encoder", "weights_sha256", "dim", "dtype", "params", "extraction_hash", *TRANSFORM):
            if info.get(k) != header[k] and (k in info or k not in TRANSFORM):
                why = config.made_before_dct_thumbnails(info.get(k), pipeline) if k == "extraction_hash" else ""
                if why:
                    raise StoreError(f"feature store {out} {why}")
                what = "pipeline (tiling, filters, patches)" if k == "extraction_hash" else k
                raise StoreError(f"feature store {out} was made with another {what} ({info.get(k)!r} vs {header[k]!r}); "
                                 "use a new --out, or delete it to start over")
        acquire_lock(out)
        for name in ("features", *(f"meta/{c}" for c in CARRIED)):  # rows of a slide killed mid-write: cut off
            a = g[name]
            if a.shape[0] != info["rows"]:
                a.resize((info["rows"], *a.shape[1:]))
    else:
        if out.exists() and any(out.iterdir()):
            raise StoreError(f"{out} exists and is not a feature store; choose an empty or new --out")
        acquire_lock(out)
        g = zarr.open_group(str(out), mode="w")
        g.create_array("features", shape=(0, header["dim"]), dtype=cfg["dtype"], fill_value=0,
                       chunks=(1024, header["dim"]), compressors=_checked())
        for c in CARRIED:
            g.create_array(f"meta/{c}", shape=(0,), dtype=_meta_dtype(c), chunks=(65536,), compressors=_checked())
        info = {**header, "rows": 0, "done": {}, "slides": {}, "errors": {}, "pending": []}
        g.attrs[ATTR] = info
    info = {**info, **{k: v for k, v in header.items() if k != "pipeline_file" or v}}
    done, records, errors = dict(info["done"]), dict(info.get("slides") or {}), dict(info.get("errors") or {})
    sums, meta_sums = dict(info.get("sums") or {}), dict(info.get("meta_sums") or {})
    try:
        results: dict[str, dict] = {}
        todo = []
        for r in cohort:
            if r.slide_id not in done:
                todo.append(r)
                continue
            again, changed, why = runner._cohort_changes(records[r.slide_id], r)
            if again:
                raise StoreError(f"slide {r.slide_id}: {'; '.join(why)} since its features were written to {out}; "
                                 "use a new --out for the new resolution")
            if changed:  # label, age, patient_id: the slide's meta rows and record
                r0, r1 = done[r.slide_id]
                for k, v in changed.items():
                    if k in CARRIED and r1 > r0:
                        g[f"meta/{k}"][r0:r1] = _values(g[f"meta/{k}"], v, r1 - r0)
                records[r.slide_id] = {**records[r.slide_id], **changed}
                results[r.slide_id] = {**records[r.slide_id], "status": "updated",
                                       "reason": "; ".join(why) or "patient_source updated", "seconds": 0.0}
        skipped = len(cohort) - len(todo) - len(results)
        pending = [r.slide_id for r in todo]
        g.attrs[ATTR] = info = {**info, "slides": records, "pending": pending}
        if threads is None:
            threads = max(1, os.cpu_count() or 1)
        qa_dir = beside(out, "qa") if qa else None
        if qa_dir:
            qa_dir.mkdir(exist_ok=True)
        dev = torch.device(resolve_device(cfg["device"]))
        module = module.to(dev).eval()
        encoded, t_enc = 0, time.perf_counter()

        def sink(n: int) -> EncoderSink:
            return EncoderSink(module, spec, dev, int(cfg["batch_size"]), n)

        def commit(row, rec: dict[str, Any]) -> None:
            nonlocal info, encoded
            feats, meta = rec.pop("staged", None), rec.pop("meta", None) or {}
            rec = {k: v for k, v in runner._record(rec, row).items() if k != "tiles"}
            rows = info["rows"]
            if rec["status"] == "error":
                errors[row.slide_id] = rec
            else:
                n = int(rec.get("n_patches", 0)) if rec["status"] == "done" else 0
                r0, rows = rows, rows + n
                if n:
                    cols = {**meta, "slide_id": row.slide_id, "patient_id": row.patient_id, "label": row.label,
                            "age": row.age, "synthetic": False}
                    block = stored(feats[:n], cfg["dtype"], spec, row.slide_id)
                    g["features"].resize((rows, header["dim"]))
                    g["features"][r0:rows] = block
                    sums[row.slide_id] = _values_crc(block)
                    for c in CARRIED:
                        a = g[f"meta/{c}"]
                        a.resize((rows,))
                        a[r0:rows] = vals = _values(a, cols[c], n)
                        if c in FIXED_META:
                            meta_sums.setdefault(row.slide_id, [0] * len(FIXED_META))[FIXED_META.index(c)] = _values_crc(vals)
                done[row.slide_id] = [r0, rows]
                records[row.slide_id] = rec
                errors.pop(row.slide_id, None)
                encoded += n
            pending.remove(row.slide_id)
            # the commit point: the slide's rows are in only once the header names them (written at most once a second)
            head.put(info := {**info, "rows": rows, "done": done, "slides": records, "errors": errors,
                              "pending": pending, "sums": sums, "meta_sums": meta_sums})
            results[row.slide_id] = rec

        with ExtractProgress(len(cohort), skipped + len(results), enabled=progress) as bar, Header(g, info) as head:
            for row, prepared in runner.planned_ahead(pipeline, todo, allow_corrupt_tiles):
                rec = runner.process_slide(pipeline, row, "", {}, str(qa_dir) if qa_dir else None, threads=threads,
                                           progress=bar.slide_started(row.slide_id), prepared=prepared,
                                           allow_corrupt=allow_corrupt_tiles, sink=sink)
                with writing(out):  # a full disk: one line, exit 2; a rerun resumes from the last commit
                    commit(row, rec)
                bar.slide_done(row.slide_id, rec)
            with writing(out):
                head.flush()
        t_enc = time.perf_counter() - t_enc
    finally:
        release_lock(out)
    slides = runner.summary_slides(cohort, results, records, errors)
    failed = sum(s["status"] == "error" for s in slides)
    return {"store": str(out), "rows": int(info["rows"]), "slides": slides, "failed": failed, "skipped": skipped,
            "seconds": round(time.perf_counter() - t_start, 3), "features_only": True, "encoder": spec["name"],
            "dim": header["dim"], "encoded": encoded, "device": str(dev),
            "patches_per_s": round(encoded / t_enc, 1) if encoded and t_enc > 0 else None}

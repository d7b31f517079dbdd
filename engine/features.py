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
ATTR = "slidestream_features"


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
    import time

    import torch
    import zarr

    from .store import PatchStore

    cfg = settings(pipeline, device=device, batch_size=batch_size)
    store = PatchStore.open(store_path)
    n = len(store)
    if n == 0:
        raise StoreError(f"store {store_path} has no patches; run `slidestream extract` first")
    module, spec = load_encoder(pipeline.get("encoder"))
    from .bundle import sha256_file

    weights = spec["params"].get("weights")
    header = {"encoder": spec["name"], "params": spec["params"], "weights_sha256": sha256_file(weights) if weights is not None else None,
              "dim": int(spec["dim"]), "dtype": cfg["dtype"], "input_size": int(spec["input_size"]),
              "mean": spec["mean"], "std": spec["std"], "resize": spec["resize"], "interpolation": spec["interpolation"],
              "patch_store": str(Path(store_path).resolve()),
              "extraction_hash": store.manifest.get("extraction_hash"), "rows": n}
    out = Path(out)
    if (out / "zarr.json").exists():
        g = zarr.open_group(str(out), mode="r+")
        old = dict(g.attrs.get(ATTR) or {})
        if not old:
            raise StoreError(f"{out} exists and is not a slidestream feature store; choose a new --out")
        for k in ("encoder", "weights_sha256", "dim", "dtype", "extraction_hash", "rows", "params"):
            if old.get(k) != header[k]:
                raise StoreError(f"feature store {out} was made with another {k} ({old.get(k)!r} vs {header[k]!r}); "
                                 "use a new --out, or delete it to start over")
        done = dict(old.get("done", {}))
    else:
        if out.exists() and any(out.iterdir()):
            raise StoreError(f"{out} exists and is not a feature store; choose an empty or new --out")
        g = zarr.open_group(str(out), mode="w")
        g.create_array("features", shape=(n, header["dim"]), dtype=cfg["dtype"], fill_value=0,
                       chunks=(min(n, 4096), header["dim"]))
        tab = store.table(list(CARRIED))
        for c in CARRIED:
            v = tab[c]
            a = g.create_array(f"meta/{c}", shape=(n,), dtype=str if v.dtype.kind in "UOT" else v.dtype,
                               chunks=(min(n, 65536),))
            a[:] = as_str(v) if v.dtype.kind in "UOT" else v
        done = {}
        g.attrs[ATTR] = {**header, "done": done}
    dev = torch.device(resolve_device(cfg["device"]))
    module = module.to(dev).eval()
    feats = g["features"]
    todo = [u for u in _units(store) if u[0] not in done]
    total = sum(r1 - r0 for _, r0, r1 in todo)
    t0, bs = time.perf_counter(), int(cfg["batch_size"])
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not progress, transient=False) as bar:
        task = bar.add_task(f"features ({spec['name']})", total=total)
        for key, r0, r1 in todo:
            parts = []
            for a in range(r0, r1, bs):
                b = min(a + bs, r1)
                with torch.inference_mode():
                    f = module(preprocess(store.read(a, b), spec, dev))
                parts.append(f.float().cpu().numpy())
                bar.advance(task, b - a)
            block = np.concatenate(parts)
            if block.shape != (r1 - r0, header["dim"]):
                raise ConfigError(f"encoder {spec['name']!r} returned features of shape {block.shape[1:]}, "
                                  f"declared ({header['dim']},)")
            feats[r0:r1] = block.astype(cfg["dtype"])
            done[key] = [r0, r1]
            g.attrs[ATTR] = {**header, "done": done}  # the slide is in only once its rows are written
    seconds = time.perf_counter() - t0
    summary = {"out": str(out), "encoder": spec["name"], "dim": header["dim"], "rows": n, "encoded": total,
               "skipped": len(done) - len(todo), "seconds": round(seconds, 3),
               "patches_per_s": round(total / seconds, 1) if total and seconds > 0 else None, "device": str(dev)}
    if log:
        log(f"features: {total} patches encoded ({summary['patches_per_s']} /s on {dev}), {n} rows in {out}")
    return summary


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
            raise StoreError(f"{path} is not a slidestream feature store (no {ATTR} attrs)")
        self.path = path
        self.features = self.group["features"]

    def __len__(self) -> int:
        return int(self.info["rows"])

    def column(self, name: str) -> np.ndarray:
        a = np.asarray(self.group[f"meta/{name}"][:])
        return as_str(a) if a.dtype.kind in "OT" else a

    def complete(self) -> bool:
        return sum(r1 - r0 for r0, r1 in self.info["done"].values()) == len(self)

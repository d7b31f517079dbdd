"""Exports of a patch store for the tools of the field: GeoJSON for QuPath, h5 in CLAM/TRIDENT's layout.

``slidestream export STORE --format geojson --out DIR`` writes ``DIR/<slide_id>.geojson`` per slide (:func:`file_name`
for ids that are no file name: ``/``, ``..``, spaces; each file's ``slide_id``/``name`` is the id itself): a
FeatureCollection with one Polygon per patch, its level-0 square (x, y) .. (x + size0, y + size0), with
properties ``objectType: "tile"``, ``slide_id``, ``patient_id``, ``row`` and, given a MIL bundle and its
feature store (``--mil OUT --features FEATS.zarr``), ``attention`` (the patch's weight in its patient's
bag) and ``probability`` (the patient's predicted probability of IDH-mutant), also under ``measurements``
(QuPath shows those as measurements).

``--format h5`` writes ``DIR/<slide_id>.h5`` as TRIDENT's ``extract_tissue_coords`` (and CLAM's
``create_patches_fp.py``) do: dataset ``coords`` (n, 2) int64 level-0 top-left (x, y) with attributes, read as:

* TRIDENT (its own layout, taken when ``patch_size``, ``level0_magnification`` and ``target_magnification`` are all
  there): ``patch_size`` = px at ``target_magnification`` (the patch as stored), ``patch_size_level0`` = the same
  square in level-0 px (= patch_size x level0_magnification / target_magnification; slide encoders such as TITAN
  read it), ``level0_magnification``, ``target_magnification``, ``overlap`` (0), ``name``.
* CLAM (``extract_features_fp.py`` reads ``read_region(coord, patch_level, (patch_size, patch_size))``:
  ``patch_size`` = px *at* ``patch_level``; ``downsample`` = that level's downsample from level 0): one
  ``patch_size`` cannot mean both when the patches were resampled (level-0 px != patch px, e.g. 10x patches of a 40x
  slide: CLAM would read a 4x too small field of view), so ``patch_level`` 0 and ``downsample`` (1, 1) are written
  only for patches cut at level-0 resolution, where both meanings agree; otherwise they are left out and CLAM stops
  (KeyError 'patch_level') instead of reading the wrong region.

With ``--features`` also dataset ``features`` (n, dim) float32, as CLAM's ``extract_features_fp.py`` writes it.

STORE may also be a feature store written by ``extract --features-only`` (no patch store): its own rows, meta
columns and header give the slides, coordinates, patch size and magnification, and its features go into the h5
(no ``--features``; ``--mil`` as above).

``--format png`` (with ``--mil`` and ``--features``) writes ``DIR/<slide_id>.png``: the attention heatmap over
the slide's thumbnail (the store's QA picture, ``STORE.qa/<slide_id>.png``; white when there is none), each
patch's square filled with its attention relative to the slide's highest (matplotlib ``inferno``), 60 % opaque.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .cohort import file_name  # noqa: F401 (export.file_name: where it was first)
from .errors import ConfigError
from .features import ATTR, FeatureStore, as_str, check_patch_store
from .store import PatchStore, beside

FORMATS = ("geojson", "h5", "png")


def _slides(store: PatchStore) -> list[tuple[str, int, int]]:
    out = [(k, int(r["rows"][0]), int(r["rows"][1])) for k, r in store.records("slides").items()
           if r.get("rows") and r["rows"][1] > r["rows"][0]]
    return sorted(out, key=lambda s: s[1])


def mil_scores(bundle: str | Path, fs: FeatureStore, patient_id: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per feature-store row: attention within its patient's bag and the patient's probability (NaN outside bags).
    ``patient_id``: the patch store's column (the patients `mil train --store` made its bags of)."""
    import torch

    from .mil import check_encoder, load_bundle, patient_bags

    model, meta = load_bundle(bundle)
    check_encoder(bundle, meta, fs)
    bags = patient_bags(fs, None, None if patient_id is None else {"patient_id": patient_id}, unlabeled_ok=True)
    att = np.full(len(fs), np.nan, np.float32)
    prob = np.full(len(fs), np.nan, np.float32)
    feats = fs.rows()  # all of them (small: N x dim), each slide checked against its CRC32
    with torch.no_grad():
        for rows in bags["rows"]:
            x = feats[rows]
            logit, a = model(torch.from_numpy(x).float())
            att[rows] = a.numpy()
            prob[rows] = float(torch.sigmoid(logit))
    return att, prob


def _is_feature_store(path: str | Path) -> bool:
    try:
        return ATTR in (json.loads((Path(path) / "zarr.json").read_text()).get("attributes") or {})
    except (OSError, ValueError, AttributeError):
        return False


def export(store_path: str | Path, fmt: str, out: str | Path, features: str | Path | None = None,
           mil: str | Path | None = None) -> list[Path]:
    """Write one file per slide of the store into ``out``; returns their paths. ``store_path`` is a patch store,
    or a feature store written by ``extract --features-only`` (no patch store: coordinates, slide rows and
    features come from it, so it needs no ``features``; the h5 then always holds ``features``)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if _is_feature_store(store_path):
        fs = FeatureStore(store_path)
        info = fs.info
        if not info.get("features_only"):
            raise ConfigError(f"{store_path} is a feature store of `slidestream features`: give its patch store "
                              f"({info.get('patch_store')}) as STORE and the feature store as --features")
        if features and Path(features).resolve() != Path(store_path).resolve():
            raise ConfigError(f"{store_path} (from `extract --features-only`) holds its own features; drop --features {features}")
        store, what = None, "rerun `slidestream extract --features-only` to finish it"
        slides = sorted(((k, int(r[0]), int(r[1])) for k, r in info["done"].items() if r[1] > r[0]), key=lambda s: s[1])
        tab = {c: fs.column(c) for c in ("slide_id", "patient_id", "x", "y", "size0")}
        records, target, patch = info.get("slides") or {}, info.get("magnification"), info.get("patch_size")
        if fmt == "h5" and (target is None or patch is None):
            raise ConfigError(f"{store_path} was written by an older slidestream that did not record the patch size and "
                              "magnification h5 needs; extract it again with --features-only into a new --out")
        scale = 32.0
    else:
        store = PatchStore.open(store_path)
        fs, what = (FeatureStore(features) if features else None), "rerun `slidestream features` to finish it"
        if fs is not None and (len(fs) != len(store) or fs.info.get("extraction_hash") != store.manifest.get("extraction_hash")):
            raise ConfigError(f"feature store {features} was not computed from the patch store {store_path} ({len(fs)} vs "
                              f"{len(store)} rows, or another extraction); give the feature store `slidestream features` "
                              "wrote for it, or run `slidestream features` on it")
        if fs is not None:
            check_patch_store(fs, store, store_path, features)
        slides = _slides(store)
        tab = store.table(["slide_id", "patient_id", "x", "y", "size0"])
        pipe = store.manifest.get("pipeline") or {}
        records, target = store.records("slides"), float(pipe.get("magnification", 10))
        patch = int(store.read(0, 0).shape[1]) if len(store) else int((pipe.get("patches") or {}).get("size", 256))
        scale = float(pipe.get("thumbnail", {}).get("scale", 32))
    if fs is not None and not fs.complete():  # unwritten rows read as zeros
        raise ConfigError(f"feature store {fs.path} is incomplete; {what}")
    if mil and fs is None:
        raise ConfigError("--mil needs --features (the feature store the MIL model was trained on)")
    if fmt == "png" and not mil:
        raise ConfigError("--format png draws attention: give --mil (a MIL bundle) and --features")
    att, prob = mil_scores(mil, fs, None if store is None else tab["patient_id"]) if mil else (None, None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for slide, r0, r1 in slides:
        x, y, s0 = tab["x"][r0:r1], tab["y"][r0:r1], tab["size0"][r0:r1]
        if np.any(x < 0) or np.any(s0 <= 0):
            raise ConfigError(f"slide {slide!r} of {store_path} has patches without level-0 coordinates; "
                              "export needs a store made by `slidestream extract`")
        name = file_name(slide)
        if fmt == "geojson":
            path = out / f"{name}.geojson"
            feats = []
            pids = as_str(tab["patient_id"][r0:r1])  # once per slide, not per patch
            for i in range(r1 - r0):
                xi, yi, si = int(x[i]), int(y[i]), int(s0[i])
                props: dict[str, Any] = {"objectType": "tile", "slide_id": slide,
                                         "patient_id": str(pids[i]), "row": r0 + i}
                if att is not None:
                    m = {"attention": float(att[r0 + i]), "probability": float(prob[r0 + i])}
                    props.update(m)
                    props["measurements"] = m
                feats.append({"type": "Feature", "properties": props, "geometry": {"type": "Polygon", "coordinates": [
                    [[xi, yi], [xi + si, yi], [xi + si, yi + si], [xi, yi + si], [xi, yi]]]}})
            path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
        elif fmt == "png":
            path = out / f"{name}.png"
            heatmap(beside(store_path, "qa"), records.get(slide, {}), scale, slide, x, y, s0, att[r0:r1]).save(path)
        else:
            import h5py

            path = out / f"{name}.h5"
            size0 = int(np.median(s0))
            with h5py.File(path, "w") as h:
                d = h.create_dataset("coords", data=np.stack([x, y], axis=1).astype(np.int64))
                d.attrs.update({"patch_size": patch, "patch_size_level0": size0, "target_magnification": target,
                                "level0_magnification": target * size0 / patch, "overlap": 0, "name": slide})
                if size0 == patch:  # CLAM reads patch_size px at patch_level: true only here (module docstring)
                    d.attrs.update({"patch_level": 0, "downsample": [1.0, 1.0]})
                if fs is not None:
                    h.create_dataset("features", data=fs.rows(r0, r1).astype(np.float32))
                if att is not None:
                    h.create_dataset("attention", data=att[r0:r1])
        written.append(path)
    return written


def heatmap(qa_dir: Path, rec: dict, scale: float, slide: str, x: np.ndarray, y: np.ndarray, size0: np.ndarray,
            attention: np.ndarray):
    """PIL image: the slide's QA thumbnail (``qa_dir/<slide>.png``: extract's QA pictures live beside the store,
    STORE.qa/; ``rec``: the slide's record, for its level-0 width) with each patch's square coloured by its
    attention; a white canvas at 1/``scale`` of level 0 when there is no thumbnail."""
    from matplotlib import colormaps
    from PIL import Image

    width0 = (rec.get("dimensions") or [None])[0]
    qa = Path(qa_dir) / f"{file_name(slide)}.png"  # as extract named it
    if qa.is_file() and width0:
        base = Image.open(qa).convert("RGB")
        scale = width0 / base.size[0]  # level-0 px per thumbnail px
    else:
        base = Image.new("RGB", (int(np.max(x + size0) / scale) + 1, int(np.max(y + size0) / scale) + 1), "white")
    img = np.asarray(base).astype(np.float32)
    a = np.nan_to_num(attention / np.nanmax(attention)) if np.nanmax(attention) > 0 else np.zeros(len(attention))
    colors = colormaps["inferno"](a)[:, :3] * 255
    for i in np.argsort(a):  # the most attended drawn last
        x0, y0 = int(x[i] / scale), int(y[i] / scale)
        x1, y1 = max(x0 + 1, int((x[i] + size0[i]) / scale)), max(y0 + 1, int((y[i] + size0[i]) / scale))
        img[y0:y1, x0:x1] = 0.4 * img[y0:y1, x0:x1] + 0.6 * colors[i]
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))

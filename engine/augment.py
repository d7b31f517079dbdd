"""GAN augmentation (Liu et al. 2020, "GAN for data augmentation"): the library behind ``slidestream gan``
(``engine/commands/gan.py``) and ``slidestream experiment gan-sweep`` (``engine/experiment.py``).

One generator per class is trained on that class's real training-split patches (never a validation or
test patient), after the pipeline's ``normalization.gan`` chain (default: per-channel RGB histogram
normalization, ``rgb_histogram``). The generator is any ``augmenter`` plugin (``pggan`` by default); the
GAN directory holds the plugin's files plus ``manifest.json``, written here::

    {"generator": "pggan", "generator_id": "pggan-mutant-1a2b3c4d", "label": "mutant", "params": {...},
     "store": ..., "rows": n, "patients": ["P003", ...], "patients_digest": "...", "normalization": [...],
     "status": "training" | "done", "swd": {...}}

``patients`` is the sorted list of the patients whose patches the generator learned from (``patients_digest``
its ``config.digest``). Synthetic patches go into the same store as rows flagged ``synthetic=True`` with
``split="train"``, the class ``label`` and the ``generator`` id; each ``gan sample`` batch's record in the
store's ``synthetic`` section repeats the generator's ``patients`` and ``patients_digest``. The classifier adds
synthetic rows with ``training.synthetic`` (see ``engine/train.py``), which is what ``experiment gan-sweep``
varies (paper Table 2, Fig. 3), and only from generators whose patients are all in the store's *current*
train split: after a re-split that moved one of them to val or test, that generator's rows are left out
(``train_synthetic_rows``), so no validation or test patient reaches training through a GAN.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import ConfigError
from .store import atomic_write_text

LABELS = {"mutant": 1, "wildtype": 0}


# ------------------------------------------------------------------------------------------- helpers
def _manifest_path(gan_dir: Path) -> Path:
    return Path(gan_dir) / "manifest.json"


def read_manifest(gan_dir: str | Path) -> dict[str, Any]:
    p = _manifest_path(Path(gan_dir))
    if not p.is_file():
        raise ConfigError(f"{gan_dir} is not a GAN directory (no manifest.json); make one with `slidestream gan train`")
    try:  # a damaged manifest was a JSONDecodeError, AttributeError or KeyError traceback in gan sample/grid/eval
        m = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:  # JSON or UTF-8
        m = e
    need = ("generator", "generator_id", "label", "label_value", "normalization", "status")
    if not isinstance(m, dict) or any(k not in m for k in need):
        why = type(m).__name__ if isinstance(m, Exception) else f"no {', '.join(k for k in need if k not in m)}" \
            if isinstance(m, dict) else f"a JSON {type(m).__name__}, not an object"
        raise ConfigError(f"GAN directory {gan_dir}: manifest.json is damaged ({why}); copy the folder again, or train "
                          "the generator again into a new --out")
    return m


def write_manifest(gan_dir: str | Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(_manifest_path(Path(gan_dir)), json.dumps(manifest, indent=1, default=str))


def read_rows(arr, rows: np.ndarray) -> np.ndarray:
    """``arr[rows]`` for sorted ``rows`` of a zarr array, reading each chunk once."""
    out = np.empty((len(rows), *arr.shape[1:]), dtype=arr.dtype)
    chunk = arr.chunks[0]
    cid = rows // chunk
    for c in np.unique(cid):
        lo, hi = np.searchsorted(cid, c), np.searchsorted(cid, c, side="right")
        block = np.asarray(arr[c * chunk:min((c + 1) * chunk, arr.shape[0])])
        out[lo:hi] = block[rows[lo:hi] - c * chunk]
    return out


def gan_chain(pipeline: dict[str, Any]) -> tuple[list, list[dict]]:
    """The ``normalization.gan`` chain (default ``rgb_histogram``, the paper's GAN input) and its refs."""
    from . import config, registry

    refs = config.refs((pipeline.get("normalization") or {}).get("gan")) or [{"name": "rgb_histogram"}]
    return [(registry.get("normalization", r["name"]).apply, dict(r.get("params") or {})) for r in refs], refs


def normalized_rows(store, rows: np.ndarray, chain: list, batch: int = 256) -> np.ndarray:
    """Patches at ``rows`` of the store after the normalization chain, uint8 (n, S, S, 3)."""
    from .loader import apply_chain

    out = None
    for i in range(0, len(rows), batch):
        x = apply_chain(read_rows(store.patches, rows[i:i + batch]), chain)
        if out is None:
            out = np.empty((len(rows), *x.shape[1:]), np.uint8)
        out[i:i + len(x)] = x
    return out if out is not None else np.zeros((0, *store.patches.shape[1:]), np.uint8)


def class_rows(store, label: int, splits: tuple[str, ...] = ("train",)) -> np.ndarray:
    """Real (non-synthetic) rows of one class in ``splits``; refuses a store without a split."""
    t = store.table(["label", "split", "synthetic"])
    if not np.any(t["split"] == "train"):
        raise ConfigError(f"store {store.path} has no train/val/test split yet; run `slidestream split PIPELINE --store "
                          f"{store.path}` first (generators learn from training-split patients only)")
    return np.nonzero(np.isin(t["split"], splits) & ~t["synthetic"].astype(bool) & (t["label"] == label))[0]


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """uint8 (n, h, w, 3) to (n, size, size, 3): box filter down, bilinear up."""
    if x.shape[1] == size:
        return x
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    if x.shape[1] > size and x.shape[1] % size == 0:
        t = F.avg_pool2d(t, x.shape[1] // size)
    else:
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _plugin(manifest: dict[str, Any]):
    from . import registry

    return registry.get("augmenter", manifest["generator"])


# ------------------------------------------------------------------------------------------- train
def train_gan(pipeline: dict[str, Any], store: str | Path, label: str, out: str | Path, progress: bool | None = None,
              log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Train (or resume) the pipeline's augmenter on one class's normalized training patches; returns the manifest."""
    from . import config, registry
    from .store import PatchStore

    if label not in LABELS:
        raise ConfigError(f"--label must be mutant or wildtype, not {label!r}")
    ref = pipeline.get("augmenter") or {"name": "pggan", "params": {}}
    plugin = registry.get("augmenter", ref["name"])
    params = dict(ref.get("params") or {})
    if "device" in plugin.params and "device" not in params:
        params["device"] = pipeline.get("device", "auto")
    seed = int(params.get("seed", pipeline.get("seed", 0)))
    st = PatchStore.open(store)
    rows = class_rows(st, LABELS[label])
    if len(rows) < 2:
        raise ConfigError(f"store {store} has {len(rows)} {label} training patches; a generator needs more")
    n_train = int(params.get("n_train", (plugin.params.get("n_train") or {}).get("default", len(rows))))
    if len(rows) > n_train:  # the paper: 12,000 random patches per class
        rows = np.sort(np.random.default_rng([seed, LABELS[label]]).choice(rows, n_train, replace=False))
    patients = sorted(set(st.column("patient_id")[rows].tolist()))
    chain, refs = gan_chain(pipeline)
    learned = {k: v for k, v in params.items() if k not in plugin.runtime_params}
    key = {"generator": ref["name"], "params": learned, "label": label, "store": st.manifest.get("extraction_hash"),
           "split": st.manifest.get("split"), "rows": config.digest(rows.tolist()), "normalization": refs}
    gid = f"{ref['name']}-{label}-{config.digest(key)[:8]}"
    out = Path(out)
    old = None
    if _manifest_path(out).is_file():
        old = read_manifest(out)
        if old.get("generator_id") != gid:
            raise ConfigError(f"{out} holds a generator trained with other settings, class or patches "
                              f"({old.get('generator_id')}); use a new --out")
        # "training" until the plugin returns: a finished generator resumed for more kimg and then killed (or
        # stopped by a full disk) stayed "done", and `gan sample` failed in the plugin with a traceback
        manifest = {**old, "params": params, "patients": patients, "patients_digest": config.digest(patients),
                    "status": "training"}
    else:
        out.mkdir(parents=True, exist_ok=True)
        manifest = {"generator": ref["name"], "generator_id": gid, "label": label, "label_value": LABELS[label],
                    "params": params, "store": str(Path(store).resolve()), "store_hash": key["store"],
                    "split": key["split"], "rows": int(len(rows)), "rows_digest": key["rows"], "patients": patients,
                    "patients_digest": config.digest(patients), "normalization": refs,
                    "status": "training", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_manifest(out, manifest)
    if log:
        log(f"{gid}: {len(rows)} {label} training patches of {store} -> {out}")
    patches = normalized_rows(st, rows, chain)
    try:
        result = plugin.train(patches, out, progress=progress, **params)
    except ConfigError:  # refused before training (e.g. a smaller total_kimg): the generator stays as it was
        if old is not None:
            write_manifest(out, old)
        raise
    manifest["status"] = "done"
    manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if isinstance(result, dict) and result.get("swd"):
        manifest["swd_training"] = result["swd"]  # the plugin's end-of-training SWD vs its training patches
    write_manifest(out, manifest)
    return manifest


# ------------------------------------------------------------------------------------------- sample
def sample_into_store(gan_dir: str | Path, n: int, store: str | Path, seed: int = 0) -> dict[str, Any]:
    """Append ``n`` synthetic patches of the generator to the store (``synthetic=True``, ``split="train"``)."""
    from .store import PatchStore

    m = read_manifest(gan_dir)
    if m.get("status") != "done":
        raise ConfigError(f"the generator in {gan_dir} has not finished training; rerun `slidestream gan train` to resume it")
    if not m.get("patients"):
        raise ConfigError(f"the generator in {gan_dir} does not record which patients it learned from (made by an older "
                          "slidestream); retrain it with `slidestream gan train` into a new --out")
    st = PatchStore.open(store, mode="r+")
    key = f"{m['generator_id']}/seed-{seed}/n-{n}"
    if st.done(key, "synthetic"):
        raise ConfigError(f"store {store} already holds {n} patches of {m['generator_id']} with seed {seed}; "
                          "use another --seed for more")
    x = np.asarray(_plugin(m).sample(str(gan_dir), int(n), int(seed)))
    size = int(st.patches.shape[1])
    record = {"generator": m["generator"], "generator_id": m["generator_id"], "gan_dir": str(Path(gan_dir).resolve()),
              "label": m["label"], "n": int(n), "seed": int(seed), "patients": m["patients"],
              "patients_digest": m["patients_digest"], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if x.shape[1] != size:
        record["resized_from"] = int(x.shape[1])
        x = _resize(x, size)
    meta = {"label": m["label_value"], "synthetic": True, "generator": m["generator_id"], "split": "train",
            "slide_id": m["generator_id"]}
    n0, n1 = st.append(key, x, meta, record, section="synthetic")
    return {**record, "rows": [n0, n1]}


# ------------------------------------------------------------------------------------------- leakage
def train_synthetic_rows(store, split: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Synthetic rows whose generator learned only from patients of the current train split, and
    ``{generator_id: [its patients now in val/test, or "unknown"]}`` for the generators left out.

    ``split`` is the store's split column (read when not given). A generator is known by the
    ``patients`` of its ``gan sample`` records in the store's ``synthetic`` section; rows of a
    generator with no such record are left out too (nothing says where they came from)."""
    t = store.table(["patient_id", "synthetic", "generator"])
    split = store.column("split") if split is None else split
    syn = t["synthetic"].astype(bool)
    real = ~syn
    train_patients = set(t["patient_id"][real & (split == "train")].tolist())
    seen: dict[str, set[str]] = {}
    for rec in store.records("synthetic").values():
        if rec.get("patients") is not None:
            seen.setdefault(rec["generator_id"], set()).update(rec["patients"])
    ok, bad = [], {}
    for gid in sorted(set(t["generator"][syn].tolist())):
        if gid not in seen:
            bad[gid] = ["unknown"]
            continue
        outside = sorted(seen[gid] - train_patients)
        if outside:
            bad[gid] = outside
        else:
            ok.append(gid)
    return np.nonzero(syn & np.isin(t["generator"], ok))[0], bad


# ------------------------------------------------------------------------------------------- grid
def sample_sheet(gan_dir: str | Path, out: str | Path, n: int = 8, seed: int = 0) -> Path:
    """A PNG with one row per resolution, coarse to fine, same latents per column (paper Fig. 1). Uses the
    plugin's ``stages`` when it has one, else one row of final samples."""
    from PIL import Image, ImageDraw

    m = read_manifest(gan_dir)
    plugin = _plugin(m)
    stages = getattr(plugin, "stages", None)
    rows = stages(str(gan_dir), n, seed) if stages else [("final", plugin.sample(str(gan_dir), n, seed))]
    if not rows:
        raise ConfigError(f"{gan_dir} has no snapshots yet; train longer")
    side = max(r[1].shape[1] for r in rows)
    gap, label_w = 4, 80
    sheet = Image.new("RGB", (label_w + n * (side + gap), len(rows) * (side + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, imgs) in enumerate(rows):
        f = side // imgs.shape[1]
        y = i * (side + gap)
        draw.text((4, y + side // 2 - 6), name, fill="black")
        for j, img in enumerate(imgs[:n]):
            big = img.repeat(f, axis=0).repeat(f, axis=1)  # nearest: shows the coarse pixels as they are
            sheet.paste(Image.fromarray(big), (label_w + j * (side + gap), y))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


# ------------------------------------------------------------------------------------------- eval
def evaluate_gan(gan_dir: str | Path, store: str | Path, n: int = 2048, seed: int = 0,
                 pipeline: dict[str, Any] | None = None) -> dict[str, Any]:
    """Multi-scale SWD of the generator's samples vs the class's training patches, next to the SWD of held-out
    (val + test) real patches of the same class vs the training patches (the floor a perfect generator reaches).
    Written to the manifest under ``swd``."""
    from slidestream.plugins.augmenters.swd import swd

    from . import registry
    from .store import PatchStore

    m = read_manifest(gan_dir)
    chain = [(registry.get("normalization", r["name"]).apply, dict(r.get("params") or {})) for r in m["normalization"]]
    st = PatchStore.open(store)
    rng = np.random.default_rng(seed)
    train_rows = class_rows(st, m["label_value"])
    held = class_rows(st, m["label_value"], ("val", "test"))
    k = min(n, len(train_rows))
    reals = normalized_rows(st, np.sort(rng.choice(train_rows, k, replace=False)), chain)
    fakes = np.asarray(_plugin(m).sample(str(gan_dir), k, seed))
    reals = _resize(reals, fakes.shape[1])
    res = {"n_images": k, "seed": seed, "store": str(Path(store).resolve()),
           "fake_vs_train": swd(reals, fakes, seed=seed), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if len(held) >= 2:
        kh = min(k, len(held))
        hx = _resize(normalized_rows(st, np.sort(rng.choice(held, kh, replace=False)), chain), fakes.shape[1])
        res["heldout_vs_train"] = swd(reals[:kh], hx, seed=seed)
    m["swd"] = res
    write_manifest(gan_dir, m)
    return res


def swd_table(res: dict[str, Any]) -> str:
    names = [k for k in ("fake_vs_train", "heldout_vs_train") if k in res]
    levels = list(res[names[0]]["levels"])
    lines = ["| SWD x1e3 | " + " | ".join(levels) + " | mean |", "|---" * (len(levels) + 2) + "|"]
    for k in names:
        r = res[k]
        lines.append(f"| {k} (n={r['n_images']}) | " + " | ".join(f"{r['levels'][lv]:.2f}" for lv in levels)
                     + f" | {r['mean']:.2f} |")
    return "\n".join(lines)

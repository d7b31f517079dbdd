"""Prediction with a model bundle: a whole patch store (-> predictions CSV for ``slidestream evaluate``),
or new slides / photos (extract in-process with the bundle's own pipeline -> probability + heatmap).

The patient / slide probability is the bundle's aggregation (paper: mean) of its patch probabilities.
With a fusion model in the bundle (``age_gda``, fitted by ``train`` on the val patients) and an age, the fused
age+image probability is printed too: the bundle's fitted fusion, the same one ``evaluate --bundle`` uses.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .aggregate import aggregate
from .bundle import Bundle, load
from .errors import ConfigError
from .loader import apply_chain, norm_chain
from .splits import check_assigned
from .store import PatchStore
from .train import infer, patient_table, pick_device, store_probs, write_predictions


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def predict_store(bundle: str | Path, store: str | Path, out: str | Path, device: str = "auto",
                  batch_size: int = 64, workers: int = 2, warn: Callable[[str], None] | None = _stderr) -> dict[str, Any]:
    """P(mutant) per patient for every real patient of ``store``; writes ``out`` (CSV:
    patient_id,label,age,split,image_prob). Refuses a store extracted by another pipeline. The split column is the
    bundle's record (``held_out_roles``), whatever the store's split says (a store re-split after training): its
    train patients train, its val patients val (train when the store holds only some of them: ``val_as_train``),
    every other patient test, so plain ``evaluate`` never counts a patient the bundle saw as held out. ``warn``
    (default: stderr) is told where the store's split differs (``trained_on``: its train patients outside the
    store's train split; ``selected_on``: its val patients in the store's test split). ``unsplit``: the store was
    never split. A bundle without that record (older) keeps the store's split, patients in no split test."""
    out = Path(out)
    if out.is_dir():  # the rename onto it failed after scoring the whole store, naming a temporary file
        raise ConfigError(f"--out {out} is a folder; give the CSV file to write, e.g. {out / 'predictions.csv'}")
    out.parent.mkdir(parents=True, exist_ok=True)  # before the work: a --out under a regular file fails now
    dev = pick_device(device)
    b = load(bundle, dev)
    st = PatchStore.open(store)
    b.check_extraction(st.manifest.get("extraction_hash"), f"store {store}")
    size = b.meta.get("patch_size")  # also when the store records no extraction hash (the check above cannot run)
    if size and int(st.patches.shape[1]) != int(size):
        raise ConfigError(f"bundle {b.path} was trained on {size} px patches, store {store} holds "
                          f"{int(st.patches.shape[1])} px ones; extract with the bundle's own {b.path / 'pipeline.json'}")
    chain, _ = norm_chain(b.pipeline)
    tab = st.table()
    # a patient's row takes the split of its first slide: refuse patients across splits (an unsplit store is fine)
    check_assigned(tab["split"], tab["patient_id"], tab["slide_id"], tab["synthetic"], store, unsplit_ok=True)
    rows = np.nonzero(~tab["synthetic"].astype(bool))[0]
    if not len(rows):  # was aggregate's "no patch probabilities; give at least one patch", naming no store
        raise ConfigError(f"store {store} holds no patches of real slides (every slide was empty or failed): nothing to "
                          "predict; check the slides, or the pipeline's tiling.min_tissue, and extract again")
    probs = store_probs(b.model, st, rows, chain, b.meta["input_size"], dev, batch_size, workers)
    table = patient_table(tab, rows, probs, b.meta["aggregation"])
    roles = held_out_roles(table, b.meta.get("patients") or {}, f"store {store}", warn)
    write_predictions(out, table)
    return {"patients": len(table["patient_id"]), "patches": len(rows), "out": str(out),
            "without_patches": without_patches(st, table["patient_id"]), **roles}


def without_patches(st: PatchStore, predicted) -> list[str]:
    """Patients of the store's cohort whose slides all gave no patches (empty, failed): not in the CSV, to be said."""
    listed = {str(r["patient_id"]) for sec in ("slides", "errors") for r in st.records(sec).values() if r.get("patient_id")}
    return sorted(listed - {str(p) for p in predicted})


def held_out_roles(table: dict[str, np.ndarray], own: dict[str, Any], what: str,
                   warn: Callable[[str], None] | None) -> dict[str, Any]:
    """The predictions ``table``'s split column for ``evaluate``, given the bundle's ``patients`` (``own``) and
    ``what`` the patients come from (a store, for the warnings). With the bundle's record, every patient's split
    is the bundle's, whatever the store's split says (a store re-split after training): its train patients
    ``train``, its val patients ``val`` when all of them are here, else ``train`` (``val_as_train``: never held
    out, in no metric), every other patient ``test``. Without a record (an older bundle) the store's split is
    kept, and patients in no split are ``test``. ``trained_on``: train patients outside the store's train split,
    ``selected_on``: val patients in its test split (both warned, as is any other patient the store put elsewhere)."""
    ids = [str(p) for p in table["patient_id"]]
    stored = {p: str(s) for p, s in zip(ids, table["split"])}  # the store's split ('' = in no split)
    blank = np.array([not stored[p] for p in ids], bool)
    unsplit = bool(blank.all())
    train = set((own.get("train") or {}).get("patients", []))
    val = set((own.get("val") or {}).get("patients", []))
    # the bundle's val patients, when the store holds only some of them: tuned on (never test), but a part of val
    # cannot judge the threshold (evaluate --bundle needs the whole val set): written train, in no metric
    seen_val = sorted(set(ids) & val) if not val <= set(ids) else []
    if train or val:  # the bundle's record decides every patient's role, not the store's split column
        role = {p: "train" if p in train or p in seen_val else "val" if p in val else "test" for p in ids}
    else:  # a bundle written before it recorded its patients: the store's split; patients in no split are held out
        role = {p: stored[p] or "test" for p in ids}
    table["split"] = np.array([role[p] for p in ids], dtype=object)
    trained_on = sorted(p for p in train if stored.get(p, "train") not in ("train", ""))
    selected_on = sorted(p for p in val if stored.get(p) == "test")
    if warn and blank.any() and not unsplit:
        warn(f"warning: {int(blank.sum())} patient(s) of {what} are in no split (slides extracted after `slidestream "
             f"split`?, e.g. {table['patient_id'][blank][0]}): written as test unless the bundle trained or "
             "selected on them")
    if warn and seen_val:
        warn(f"warning: {what} holds {len(seen_val)} of the bundle's {len(val)} val patients (e.g. "
             f"{seen_val[0]}; it chose its epoch on them): written with split train, not test (not held out) "
             "nor val (evaluate judges the threshold on the whole val set); they are in no metric")
    if warn and trained_on:  # a re-split store, another store: their probabilities are in-sample
        warn(f"warning: {len(trained_on)} patient(s) of {what} outside its train split were in the bundle's "
             f"training set (e.g. {trained_on[0]}, there {stored[trained_on[0]]}): written with split train (the "
             "bundle's), never as held out")
    if warn and selected_on:
        warn(f"warning: {len(selected_on)} patient(s) in the test split of {what} chose the bundle's epoch (its val "
             f"patients, e.g. {selected_on[0]}): written with the bundle's split, not as held out")
    moved = sorted(p for p in ids if stored[p] and stored[p] != role[p] and p not in trained_on + selected_on)
    if warn and moved and (train or val):  # e.g. the store's new val/train patients the bundle never saw: test
        warn(f"warning: {len(moved)} patient(s) of {what} have another split in it than in the bundle's record (e.g. "
             f"{moved[0]}: {stored[moved[0]]} there, written {role[moved[0]]}): predictions take the bundle's split")
    return {"trained_on": trained_on, "selected_on": selected_on, "unsplit": unsplit, "val_as_train": seen_val}


def fused(b: Bundle, image_prob: float, age: float | None) -> dict[str, float]:
    """The bundle fusion's outputs (e.g. ``age``, ``age+image``) for one patient; {} without fusion or age."""
    from .evaluate import apply_fusion

    f = b.meta.get("fusion")
    if not f or age is None:
        return {}
    if not 0 <= age <= 130:  # NaN fails this too; the CLI's --age check, for predict_slides(age=...) from Python
        raise ConfigError(f"age must be the patient's age in years (0 to 130), not {age:g}")
    out = apply_fusion(f, {"age": np.array([age], float), "image_prob": np.array([image_prob], float)})
    return {k: float(v[0]) for k, v in out.items()}


def heatmap(thumb: np.ndarray, table: dict[str, np.ndarray], probs: np.ndarray, thumb_scale: float, path: Path) -> Path:
    """Patch probabilities (blue = wildtype, red = mutant) over the slide thumbnail, with a colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = thumb.shape[:2]
    acc, cnt = np.zeros((h, w)), np.zeros((h, w))
    for x, y, s, p in zip(table["x"], table["y"], table["size0"], probs):
        x0, y0 = int(x / thumb_scale), int(y / thumb_scale)
        x1, y1 = max(x0 + 1, int((x + s) / thumb_scale)), max(y0 + 1, int((y + s) / thumb_scale))
        acc[y0:y1, x0:x1] += p
        cnt[y0:y1, x0:x1] += 1
    heat = np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)
    fig, ax = plt.subplots(figsize=(8, 8 * h / max(w, 1) + 0.6))
    ax.imshow(thumb)
    im = ax.imshow(np.ma.masked_invalid(heat), cmap="coolwarm", vmin=0, vmax=1, alpha=0.55, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.04, label="patch P(IDH-mutant)")
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def predict_slides(bundle: str | Path, paths: Sequence[str | Path], age: float | None = None, mpp: float | None = None,
                   out_dir: str | Path = ".", device: str = "auto", batch_size: int = 64) -> list[dict[str, Any]]:
    """Extract each slide/photo with the bundle's pipeline, classify its patches, aggregate, fuse with ``age``;
    writes ``<out_dir>/<name>_heatmap.png``. Returns one result dict per input (``call``: mutant when the image
    probability is at or above the bundle's ``threshold``, the one ``evaluate --bundle`` uses by default).
    The slide id is the file name's (``cohort.slide_id``): the patches, and so the probability, are those of
    ``extract`` + ``predict_store`` of a store listing the slide under that id; random patch positions are seeded
    by the slide id, so a cohort CSV's other ``slide_id`` cuts other (equally valid) patches."""
    from . import runner

    dev = pick_device(device)
    b = load(bundle, dev)
    if age is not None and not b.meta.get("fusion"):  # say so, rather than print the image probability alone
        raise ConfigError(f"--age {age:g} needs a bundle with a fitted fusion, but {b.path} has none (its pipeline had no "
                          '"fusion" section); leave out --age, or train with "fusion": {"name": "age_gda"}')
    chain, _ = norm_chain(b.pipeline)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: file not found")
        patches, table, thumb, _tiles, geometry = runner.extract_slide_patches(b.pipeline, str(path), default_mpp=mpp)
        if len(patches) == 0:
            results.append({"input": str(path), "patches": 0, "image_prob": None,
                            "note": "no tissue patches found (check the image, or --mpp)"})
            continue
        batches = (apply_chain(patches[i:i + batch_size], chain) for i in range(0, len(patches), batch_size))
        probs = infer(b.model, batches, b.meta["input_size"], dev)
        agg = b.meta["aggregation"]
        _, p = aggregate(np.zeros(len(probs), int), probs, agg.get("method", "mean"), agg.get("k_frac", 0.2))
        thr = float(b.meta.get("threshold", 0.5))  # the bundle's training threshold, as `evaluate --bundle` calls it
        res = {"input": str(path), "patches": int(len(probs)), "image_prob": float(p[0]), **fused(b, float(p[0]), age),
               "threshold": thr, "call": "mutant" if p[0] >= thr else "wildtype"}
        res["heatmap"] = str(heatmap(thumb, table, probs, geometry.thumb_scale, out_dir / f"{path.stem}_heatmap.png"))
        results.append(res)
    return results

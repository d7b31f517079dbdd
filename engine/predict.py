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
    patient_id,label,age,split,image_prob). Refuses a store extracted by another pipeline. ``warn`` (default:
    stderr) is told when patients the bundle trained on are outside the store's train split (``trained_on`` in
    the result: their probabilities are in-sample, not held out). A store that was never split (new patients)
    gets split ``test`` for every patient the bundle did not train or select on, the bundle's own split for
    those it did (``unsplit`` in the result), so ``evaluate`` reads the CSV as it is; its val patients only when the
    store holds all of them, else ``train`` (``val_as_train``: never held out, in no metric)."""
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
    ``what`` the patients come from (a store, for the warnings). A never-split table: ``test`` for every patient the
    bundle did not train or select on; its own keep their train/val, val only when all of its val patients are
    here, else train (``val_as_train``); likewise the patients in no split of a split table (warned). ``trained_on``: train patients outside the train split, ``selected_on``: val
    patients in the test split (both warned)."""
    blank = np.array([not s for s in table["split"]], bool)  # patients in no split
    unsplit = bool(blank.all())
    seen_val: list[str] = []
    if blank.any():  # a store of new patients, never split (or slides extracted after `split`): held out by definition,
        # so test (evaluate refused '' splits); patients the bundle trained or selected on are never test: they keep that
        # role, but val only when the store holds all of the bundle's val patients (evaluate --bundle judges the
        # threshold on that whole set); some of them are written as train (seen by the model, in no metric)
        ids = {str(p) for p in table["patient_id"]}
        val = set((own.get("val") or {}).get("patients", []))
        seen_val = sorted({str(p) for p in table["patient_id"][blank]} & val) if not val <= ids else []
        role = {str(p): sp for sp in ("val", "train") for p in (own.get(sp) or {}).get("patients", [])}
        role.update({p: "train" for p in seen_val})
        table["split"] = np.array([role.get(str(p), "test") if b else s for p, s, b in
                                   zip(table["patient_id"], table["split"], blank)], dtype=object)
        if not unsplit and warn:
            warn(f"warning: {int(blank.sum())} patient(s) of {what} are in no split (slides extracted after `slidestream "
                 f"split`?, e.g. {table['patient_id'][blank][0]}): written as test unless the bundle trained or "
                 "selected on them")
        if seen_val and warn:
            warn(f"warning: {what} holds {len(seen_val)} of the bundle's {len(val)} val patients (e.g. "
                 f"{seen_val[0]}; it chose its epoch on them): written with split train, not test (not held out) "
                 "nor val (evaluate judges the threshold on the whole val set); they are in no metric")
    # patients the bundle trained on that this store does not call train (a re-split, another store): their
    # probabilities are in-sample whatever the CSV's split says; `evaluate --bundle` refuses them in test
    split_of = {str(p): str(sp) for p, sp in zip(table["patient_id"], table["split"])}
    trained_on = sorted(p for p in (own.get("train") or {}).get("patients", []) if split_of.get(p, "train") != "train")
    if trained_on and warn:
        warn(f"warning: {len(trained_on)} patient(s) of {what} outside its train split were in the bundle's "
             f"training set (e.g. {trained_on[0]}, now {split_of[trained_on[0]] or 'in no split'}): their probabilities are in-sample, "
             "not held out; predict a store with the split the bundle was trained on")
    # the bundle's val patients (they chose its epoch) that a re-split store calls test: not held out either
    selected_on = sorted(p for p in (own.get("val") or {}).get("patients", []) if split_of.get(p) == "test")
    if selected_on and warn:
        warn(f"warning: {len(selected_on)} patient(s) in the test split of {what} chose the bundle's epoch (its val "
             f"patients, e.g. {selected_on[0]}): their test metrics are not held out; predict a store with the split "
             "the bundle was trained on")
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
    probability is at or above the bundle's ``threshold``, the one ``evaluate --bundle`` uses by default)."""
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
        patches, table, thumb, _tiles, geometry = runner.extract_slide_patches(b.pipeline, str(path), mpp=mpp)
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

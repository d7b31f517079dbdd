"""``slidestream demo``: the whole method on a synthetic cohort, on a CPU, in a few minutes.

synthetic slides (``engine/synthetic``, 160 patients: each slide mixes small round and large elongated nuclei in
a per-patient proportion whose distribution differs by class but overlaps, so a perfect reader would reach a
patient AUC of ~0.91, not 1.0; same colours; ages from the paper's Table 5, age-only AUC ~0.73) -> extraction
with the real runner (the paper's DPW filters, smaller tiles and patches) -> patient split 2:1:1 (not the
paper's 6:1:1: 40 test patients, enough for an AUC that chance cannot fake) -> small CNN training on grayscale
+ CLAHE + gamma patches (the paper's classifier normalization) -> predictions -> evaluation with age GDA fusion
-> report, plus a heatmap of one test slide. Deviations from the paper for speed are listed in
``demo_pipeline``; ``results`` reads the test numbers out of the evaluation.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import config


def demo_pipeline(epochs: int = 3, patch: int = 64, seed: int = 0) -> dict[str, Any]:
    """The paper's pipeline (``schemas/examples/liu2020.json``) scaled down for a CPU demo."""
    doc = json.loads(config.example("liu2020").read_text())
    doc.update({
        "name": "demo",
        "description": f"liu2020 scaled down: 128 px tiles, {patch} px patches at 10x, split 2:1:1, small CNN, few epochs",
        "seed": seed,
        "thumbnail": {"scale": 16},
        "filters": [f if f["name"] != "dpw.small_objects" else {"name": f["name"], "params": {"min_size": 50}}
                    for f in doc.get("filters", [])],
        "tiling": {"name": "grid", "params": {"size": 128, "min_tissue": 0.5, "max_tiles": 50, "scorer": "tissue"}},
        "patches": {"size": patch, "mode": "random", "per_tile": 6},
        "store": {"codec": "zstd", "level": 1, "chunk": 32, "batch_tiles": 8},
        "classifier": {"name": "small_cnn", "params": {"width": 16}},
        "training": {"epochs": epochs, "batch_size": 32, "lr": 2e-3, "dropout": 0.3,
                     "augment": True, "seed": seed, "num_workers": 2,
                     "split": {"ratios": [2, 1, 1], "seed": seed}, "aggregation": {"method": "mean"}},
        "fusion": {"name": "age_gda"},
    })
    doc.setdefault("normalization", {})["classifier"] = [
        {"name": "gray_clahe_gamma"}]
    return config.parse(doc, source="demo pipeline")


def _shuffle_labels(csv_path: Path, seed: int) -> None:
    """Permute the labels across patients (the null model of the shuffled-label check)."""
    rows = list(csv.DictReader(open(csv_path)))
    labels = np.random.default_rng([seed, 99]).permutation([r["label"] for r in rows])
    for r, lab in zip(rows, labels):
        r["label"] = lab
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _same_demo(out: Path, settings: dict[str, Any]) -> None:
    """Record the demo's settings in ``OUT/demo.json``, or refuse a rerun into ``out`` with other ones (before any
    work: it regenerated the cohort, extracted the new slides and re-split the store, then train refused the
    folder's checkpoint, and the first settings could not resume either)."""
    from .errors import ConfigError
    from .store import atomic_write_text

    f = out / "demo.json"
    if f.is_file():
        old = json.loads(f.read_text())
        diff = [f"{k} {old.get(k)!r} (now {v!r})" for k, v in settings.items() if old.get(k) != v]
        if diff:
            raise ConfigError(f"{out} holds a demo made with {', '.join(diff)}; use a new --out, or the same settings "
                              "to resume it")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(f, json.dumps(settings))


def run(out: str | Path = "slidestream-demo", n_patients: int = 160, size: tuple[int, int] = (2048, 1536),
        epochs: int = 3, seed: int = 0, shuffle_labels: bool = False, bootstrap: int = 1000, heatmap: bool = True,
        mpp: float = 0.25, gan: bool = False, mil: bool = False,
        log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Run the demo into ``out``; returns ``{"report", "metrics", "seconds", ...}``.

    With ``mil``, the encoder path instead of the patch CNN on the same synthetic cohort: :func:`engine.mil.demo`
    (extract -> weight-free ``morphometry`` features -> ABMIL -> evaluate with age fusion -> attention heatmap;
    ``epochs`` is the CNN's and does not apply: ABMIL trains its own 20).

    With ``gan``, also the paper's augmentation experiment in miniature: one tiny PG-GAN per class on the
    training patches, synthetic patches sampled into the store, a sample sheet, and a sweep retraining the
    classifier with 0, n and 2n synthetic patches (``OUT/gan-sweep/table.md``, Table 2-like)."""
    from . import evaluate as ev
    from . import predict, runner, splits, synthetic, train
    from .store import PatchStore

    if mil and (shuffle_labels or gan or mpp != 0.25):
        raise ValueError("demo --mil runs the default cohort (mpp 0.25) without --gan or shuffled labels")
    out = Path(out)
    _same_demo(out, {"patients": n_patients, "seed": seed, "size": list(size), "mpp": mpp, "epochs": None if mil else epochs,
                     "shuffle_labels": shuffle_labels, "gan": gan, "mil": mil})
    if mil:
        from .mil import demo as mil_demo

        return mil_demo(out, n_patients=n_patients, size=size, seed=seed, bootstrap=bootstrap, log=log)
    say = log or (lambda s: None)
    t0 = time.perf_counter()
    pipe = demo_pipeline(epochs, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(pipe, indent=1))
    cohort = synthetic.make_cohort(out / "slides", n_patients=n_patients, seed=seed, size=size, mpp=mpp,
                                   objective=10 / mpp, levels=(1, 4) if mpp >= 1 else (1, 4, 16))
    if shuffle_labels:
        _shuffle_labels(cohort, seed)
    say(f"[demo] {n_patients} synthetic slides in {out / 'slides'} ({time.perf_counter() - t0:.0f} s)")
    store = out / "store"
    summary = runner.extract(pipe, runner.read_cohort(cohort), store, progress=False)
    say(f"[demo] extracted {summary['rows']} patches into {store} ({time.perf_counter() - t0:.0f} s)")
    st = PatchStore.open(store, mode="r+")
    sp = pipe["training"]["split"]
    parts = splits.split_store(st, sp["ratios"], sp["seed"])
    say("[demo] split (patients): " + ", ".join(f"{k} {v['patients']}" for k, v in parts.items()))
    res = train.train_many(pipe, store, out / "model", log=say)
    bundle = Path(res["results"][0]["bundle"])
    preds = out / "predictions.csv"
    predict.predict_store(bundle, store, preds)
    from .bundle import read

    # threshold: Youden's J on the validation patients (a few CPU epochs leave the CNN's probabilities uncalibrated)
    bmeta = read(bundle)[1]  # the bundle's fusion, fitted by train on the val patients (as predict uses it)
    metrics = ev.evaluate(ev.load_predictions(preds), fitted=bmeta["fusion"], best_epoch=bmeta["best_epoch"],
                          trained=bmeta.get("patients"), threshold="youden", bootstrap=bootstrap, seed=seed)
    report_dir = out / "report"
    ev.write_report(metrics, report_dir)
    result = {"report": str(report_dir / "report.md"), "metrics": metrics, "bundle": str(bundle),
              "comparison": str(res["comparison"]["markdown"])}
    if heatmap:
        test = [r for r in csv.DictReader(open(cohort)) if r["patient_id"] in
                set(st.column("patient_id")[st.column("split") == "test"])]
        if test:
            r = predict.predict_slides(bundle, [Path(cohort).parent / test[0]["slide_path"]], age=float(test[0]["age"]), out_dir=out / "heatmaps")[0]
            result["heatmap"] = r.get("heatmap")
            say(f"[demo] {Path(test[0]['slide_path']).name} (label {test[0]['label']}): P(mutant) image "
                f"{r['image_prob']:.3f}" + (f", age+image {r['age+image']:.3f}" if "age+image" in r else "")
                + f"; heatmap {r.get('heatmap')}")
    if gan:
        result.update(_gan_experiment(pipe, store, out, epochs, seed, say))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


DEMO_GAN = {"resolution": 64, "start_resolution": 8, "fmap_base": 256, "fmap_max": 64, "total_kimg": 6,
            "training_kimg": 1, "transition_kimg": 1, "minibatch": {"8": 32, "16": 32, "32": 16, "64": 16},
            "n_train": 600, "swd_images": 128, "checkpoint_kimg": 2}


def _gan_experiment(pipe: dict[str, Any], store: Path, out: Path, epochs: int, seed: int, say) -> dict[str, Any]:
    from .augment import sample_into_store, sample_sheet, train_gan
    from .experiment import gan_sweep

    pipe = {**pipe, "augmenter": {"name": "pggan", "params": {**DEMO_GAN, "seed": seed}}}
    n = 100
    for label in ("mutant", "wildtype"):
        train_gan(pipe, store, label, out / "gan" / label, progress=False, log=None)
        sample_into_store(out / "gan" / label, n, store, seed=seed)
    sheet = sample_sheet(out / "gan" / "mutant", out / "gan" / "sheet.png", seed=seed)
    say(f"[demo] two PG-GANs trained, {2 * n} synthetic patches added; sample sheet {sheet}")
    sweep = gan_sweep(pipe, store, [0, n, 2 * n], out / "gan-sweep", epochs=max(2, epochs // 2), log=None)
    say(f"[demo] GAN sweep (Table 2-like): {sweep['markdown']}")
    return {"gan_sheet": str(sheet), "gan_table": str(sweep["markdown"])}


def results(metrics: dict[str, Any], split: str = "test") -> dict[str, dict[str, Any]]:
    """``{predictor: {"auc", "n"}}`` of one split of an ``evaluate`` metrics dict (image, age, age+image): the one
    place the demo, its command and its tests read the evaluation's output."""
    block = metrics.get(split) or {}
    return {k: {"auc": v.get("auc"), "n": v.get("n")} for k, v in block.items() if isinstance(v, dict) and "auc" in v}


def test_auc(metrics: dict[str, Any], predictor: str = "image") -> float | None:
    """The test-split AUC of ``predictor`` in an ``evaluate`` metrics dict."""
    return (results(metrics).get(predictor) or {}).get("auc")

"""``slidestream evaluate``: patient-level metrics, ROC curves and a report (Liu et al. 2020, Tables 3-4, Fig. 4).

A thin wrapper over :mod:`slidestream.engine.evaluate`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError


def evaluate_command(
    predictions: Path = typer.Argument(..., help="CSV with one row per patient: patient_id,label,age,split,image_prob "
                                                 "(label 1 = IDH-mutant, 0 = wildtype, or the cohort CSV's words; -1/empty = "
                                                 "unknown: left out, counted; split train/val/test)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for metrics.json, patients.csv, roc_val.png, roc_test.png "
                                                      "and report.md."),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Model bundle (from `slidestream train`, or a MIL bundle "
                                                                  "from `slidestream mil train`): use exactly its fitted fusion "
                                                                  "(val or out-of-fold, as `predict` does), record its best "
                                                                  "epoch, and refuse a test split holding a patient it trained "
                                                                  "or selected on."),
    pipeline: Optional[Path] = typer.Option(None, "--pipeline", help="Pipeline JSON: fit its fusion section on its "
                                                                      "training.fusion_split (default val)."),
    fusion: Optional[str] = typer.Option(None, help="Fusion plugin to fit here, e.g. age_gda (adds the age and age+image "
                                                    "predictors); default: the --pipeline's, else image only."),
    fusion_split: Optional[str] = typer.Option(None, "--fusion-split", help="Patients the fusion is fitted on: 'val' "
                                               "(default: out of sample) or 'train' (in sample); never test."),
    threshold: Optional[str] = typer.Option(None, help="Probability of mutant at or above which a patient is called "
                                                       "mutant: a number in (0, 1), or 'youden' (picked per predictor on "
                                                       "val, applied to test; a table without val rows takes the --bundle's, chosen on "
                                                       "its val patients); default: the --bundle's or --pipeline's "
                                                       "training threshold (mil.threshold for a MIL bundle), else 0.5."),
    bootstrap: int = typer.Option(1000, min=0, max=100_000, help="Patient resamples for the AUC's 95% BCa bootstrap interval (sensitivity, specificity, accuracy: Wilson score intervals; 0: no intervals; at most 100,000; drawn in blocks, memory stays flat)."),
    seed: int = typer.Option(0, min=0, help="Seed of the bootstrap resampling (AUC intervals)."),
    age_groups: str = typer.Option("test", help="Split(s) the age-group table uses: 'test', 'val' or 'val+test' "
                                                "(the paper's Table 4 counts validation and test patients)."),
) -> None:
    """Evaluate patient-level IDH predictions: sensitivity, specificity, accuracy, AUC with 95% intervals
    (Wilson; BCa bootstrap for the AUC); the fusion is fitted on val (or the bundle's is used); val metrics of
    choices made on val are labelled selection-set."""
    from rich.console import Console
    from rich.table import Table

    from .. import evaluate as ev

    splits = tuple(s.strip() for s in age_groups.split("+"))
    if not splits or any(s not in ev.EVAL_SPLITS for s in splits):
        raise ConfigError(f"--age-groups must be 'test', 'val' or 'val+test', got {age_groups!r}")
    thr: float | str | None = None
    if threshold is not None:
        thr = threshold.strip().lower()
        if thr != "youden":
            try:
                thr = float(thr)
            except ValueError:
                raise ConfigError(f"--threshold must be a number in (0, 1) or 'youden', got {threshold!r}") from None
    params, fitted, best_epoch, trained, own_thr, youden = None, None, None, None, None, None
    if bundle:
        if fusion or fusion_split or pipeline:
            raise ConfigError("--bundle uses the bundle's own fitted fusion; leave out --fusion, --fusion-split and --pipeline")
        if (bundle / "mil.json").is_file():  # a MIL bundle (`slidestream mil train --out`): a fusion when its pipeline had one
            from ..mil import read_bundle

            meta = read_bundle(bundle)
            best_epoch = meta["best_epoch"] - 1 if meta.get("best_epoch") else None  # mil.json counts epochs from 1
            own_thr = (meta.get("settings") or {}).get("threshold")
            fitted, youden = meta.get("fusion"), meta.get("youden")
        else:
            from .. import bundle as bundle_mod

            _, meta, _ = bundle_mod.read(bundle)
            fitted, best_epoch, own_thr = meta.get("fusion"), meta.get("best_epoch"), meta.get("threshold")
            youden = meta.get("youden")  # its val-chosen thresholds, for --threshold youden on held-out patients
        trained = meta.get("patients")
        if not trained:
            typer.echo(f"note: bundle {bundle} records no training patients (written by an older slidestream): "
                       "cannot check that the test split holds none of them; retrain to record them", err=True)
    elif pipeline:
        from .. import config
        from ..train import settings

        p = config.load(pipeline)
        training = settings(p)
        if training["fusion_cv"] and not fusion_split:
            raise ConfigError(f"{pipeline} sets training.fusion_cv: the out-of-fold fusion needs the fold networks, "
                              "which `slidestream train` fits; evaluate with --bundle OUT/<arch> (or pass --fusion-split val)")
        fref = p.get("fusion") or {}
        fusion = fusion or fref.get("name")
        params = fref.get("params") if fusion == fref.get("name") else None
        if fusion:  # a pipeline without a fusion section evaluates the image predictor alone
            fusion_split = fusion_split or training["fusion_split"]
        own_thr = training["threshold"]
    if fusion_split and not fusion:
        raise ConfigError("--fusion-split needs a fusion to fit: give --fusion age_gda or a --pipeline with a fusion section")
    if fusion_split not in (None, *ev.FUSION_SPLITS):
        raise ConfigError(f"--fusion-split must be val or train (the test split makes no choice), not {fusion_split!r}")
    if thr is None:  # the threshold training.json / mil.json metrics used, so evaluate reports the same calls
        thr = float(own_thr) if own_thr is not None else 0.5
    table = ev.load_predictions(predictions)
    metrics = ev.evaluate(table, fusion=fusion, threshold=thr, bootstrap=bootstrap, seed=seed, age_group_splits=splits,
                          fusion_params=params, fusion_split=fusion_split or "val", fitted=fitted, best_epoch=best_epoch,
                          trained=trained, val_thresholds=youden)
    ev.write_report(metrics, out)

    console = Console()
    t = Table(title=f"IDH prediction ({out})")
    for col in ("split", "predictor", "n", *ev.METRICS):
        t.add_column(col, justify="left" if col in ("split", "predictor") else "right")
    for split in ev.EVAL_SPLITS:
        label = f"{split} (selection)" if metrics["meta"]["selection"].get(split) else split
        for name, b in metrics.get(split, {}).items():
            t.add_row(label, ev.NAMES.get(name, name), str(b["n"]), *(ev._fmt(b[m]) for m in ev.METRICS))
    console.print(t)
    console.print(f"threshold: {metrics['meta']['threshold_rule']}"
                  + (" (the bundle's training threshold)" if bundle and threshold is None else ""))
    f = metrics["meta"].get("fusion")
    if f:
        console.print(f"fusion {f['name']} ({f['source']}): fitted on {f['fit_on']}, n = {f['n']}, ids {f['ids_digest']}")
    for note in metrics["meta"]["notes"]:
        console.print(f"note: {note}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)

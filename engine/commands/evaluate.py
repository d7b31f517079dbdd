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
                                                 "(label 1 = IDH-mutant, 0 = wildtype; split train/val/test)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for metrics.json, roc_val.png, roc_test.png and report.md."),
    fusion: Optional[str] = typer.Option(None, help="Fusion plugin fitted on the train split, e.g. age_gda "
                                                    "(adds the age and age+image predictors); default: image only."),
    threshold: str = typer.Option("0.5", help="Probability of mutant at or above which a patient is called mutant: "
                                              "a number in (0, 1), or 'youden' (picked per predictor on val, applied to test)."),
    bootstrap: int = typer.Option(1000, min=0, help="Patient resamples for the 95% confidence intervals (0: none)."),
    seed: int = typer.Option(0, help="Seed of the bootstrap resampling."),
    age_groups: str = typer.Option("test", help="Split(s) the age-group table uses: 'test', 'val' or 'val+test' "
                                                "(the paper's Table 4 counts validation and test patients)."),
) -> None:
    """Evaluate patient-level IDH predictions: sensitivity, specificity, accuracy, AUC with bootstrap CIs."""
    from rich.console import Console
    from rich.table import Table

    from .. import evaluate as ev

    splits = tuple(s.strip() for s in age_groups.split("+"))
    if not splits or any(s not in ev.EVAL_SPLITS for s in splits):
        raise ConfigError(f"--age-groups must be 'test', 'val' or 'val+test', got {age_groups!r}")
    thr: float | str = threshold.strip().lower()
    if thr != "youden":
        try:
            thr = float(thr)
        except ValueError:
            raise ConfigError(f"--threshold must be a number in (0, 1) or 'youden', got {threshold!r}") from None
    table = ev.load_predictions(predictions)
    metrics = ev.evaluate(table, fusion=fusion, threshold=thr, bootstrap=bootstrap, seed=seed, age_group_splits=splits)
    ev.write_report(metrics, out)

    console = Console()
    t = Table(title=f"IDH prediction ({out})")
    for col in ("split", "predictor", "n", *ev.METRICS):
        t.add_column(col, justify="left" if col in ("split", "predictor") else "right")
    for split in ev.EVAL_SPLITS:
        for name, b in metrics.get(split, {}).items():
            t.add_row(split, ev.NAMES.get(name, name), str(b["n"]), *(ev._fmt(b[m]) for m in ev.METRICS))
    console.print(t)
    for note in metrics["meta"]["notes"]:
        console.print(f"note: {note}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)

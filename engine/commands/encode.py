"""Commands of the encoder path: features (encoder -> feature store), mil train (attention-MIL), export."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from . import SEED_MAX


mil_app = typer.Typer(help="Attention-MIL on a feature store: one bag of patch features per patient.",
                      no_args_is_help=True)


def _load(pipeline: Path, encoder: Optional[str], weights: Optional[str]) -> dict:
    from .. import config

    p = config.load(pipeline)
    if encoder or weights:
        ref = dict(p.get("encoder") or {})
        if encoder and encoder != ref.get("name"):
            ref = {"name": encoder, "params": {}}
        if weights:
            ref["params"] = {**(ref.get("params") or {}), "weights": weights}
        p = config.parse({**p, "encoder": ref}, source=str(pipeline))
    return p


def features_command(
    pipeline: Path = typer.Argument(..., help="Pipeline JSON with an encoder section (and optionally features)."),
    store: Path = typer.Option(..., "--store", help="Patch store to encode (from `slidestream extract`)."),
    out: Path = typer.Option(..., "--out", help="Feature store (zarr) to write (built in OUT.partial, renamed when complete), "
                                                "or to resume if it or OUT.partial exists."),
    encoder: Optional[str] = typer.Option(None, help="Encoder plugin instead of the pipeline's (see `slidestream plugins --kind encoder`)."),
    weights: Optional[str] = typer.Option(None, help="Local weights file of the encoder (nothing is downloaded)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Patches per encoder call (default: features.batch_size, 64)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda (default: features.device)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Encode every patch of a store into a feature store (one row per patch, row-aligned); resumable per slide."""
    from ..device import check_option
    from ..features import extract_features

    check_option(device)
    p = _load(pipeline, encoder, weights)
    s = extract_features(p, store, out, device=device, batch_size=batch_size, progress=not (quiet or as_json),
                         log=(lambda m: None) if as_json else typer.echo)
    if as_json:
        sys.stdout.write(json.dumps(s) + "\n")


@mil_app.command("train")
def mil_train_command(
    pipeline: Path = typer.Argument(..., help="Pipeline JSON; its aggregator (default abmil) and mil sections."),
    features: Path = typer.Option(..., "--features", help="Feature store from `slidestream features`."),
    out: Path = typer.Option(..., "--out", help="Output folder: MIL bundle, predictions.csv (for `slidestream evaluate`)."),
    store: Optional[Path] = typer.Option(None, "--store", help="Patch store whose split column is used "
                                                                "(default: the one the features were computed from)."),
    folds: Optional[int] = typer.Option(None, "--folds", min=3, help="Patient-level stratified k-fold CV instead of the "
                                                                     "store's split; reports mean ± sd test AUC over folds (sample sd, ddof 1)."),
    aggregator: Optional[str] = typer.Option(None, help="Aggregator plugin instead of the pipeline's (abmil, clam_sb)."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Override mil.epochs."),
    seed: Optional[int] = typer.Option(None, min=0, max=SEED_MAX, help="Override mil.seed."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda (default: mil.device)."),
):
    """Train an attention-MIL aggregator on patient bags; rerun the same command to resume after an interruption."""
    from .. import config, mil
    from ..device import check_option

    from ..store import lock_output

    check_option(device)
    with lock_output(out):
        mil.train(config.load(pipeline), features, out, store=store, folds=folds, aggregator=aggregator, epochs=epochs,
                  seed=seed, device=device, log=typer.echo)


@mil_app.command("predict")
def mil_predict_command(
    bundle: Path = typer.Argument(..., help="MIL bundle (OUT of `slidestream mil train`)."),
    features: Path = typer.Option(..., "--features", help="Feature store of the patients to score, made with the "
                                                          "bundle's encoder, params and weights (others are refused)."),
    out: Path = typer.Option(Path("predictions.csv"), "--out", help="Predictions CSV for `slidestream evaluate`."),
    store: Optional[Path] = typer.Option(None, "--store", help="Patch store of the features: patients, labels, ages and "
                                                                "split (default: the one the features were computed from)."),
):
    """P(IDH-mutant) per patient with a MIL bundle, one row per patient (as `predict --store`): a store that was never
    split is held out (test), except the patients the bundle trained or selected on."""
    from .. import mil

    r = mil.predict(bundle, features, out, store=store)
    typer.echo(f"{r['patients']} patients ({r['patches']} patches) -> {r['out']}")
    if r["without_patches"]:
        typer.echo(f"note: {len(r['without_patches'])} patient(s) of the store have no patches (their slides were "
                   f"empty or failed) and are not in the CSV: {', '.join(r['without_patches'][:10])}", err=True)


@mil_app.command("demo")
def mil_demo_command(
    out: Path = typer.Option(Path("slidestream-mil-demo"), "--out", help="Output folder."),
    patients: int = typer.Option(160, min=16, help="Synthetic patients (one slide each; at least 16: the age fusion needs 2 val patients of each class); split 2:1:1, so 160 gives 40 "
                                 "test patients."),
    epochs: int = typer.Option(20, min=1, help="ABMIL's most epochs (early stopping after 5 without a better val AUC; weight decay 0.1)."),
    seed: int = typer.Option(0, min=0, max=SEED_MAX, help="Cohort, split and training seed."),
):
    """The encoder path on the synthetic demo cohort (CPU, a few minutes; the same as `slidestream demo --mil`):
    extract -> features -> ABMIL -> evaluate with age fusion -> report + attention heatmaps. The encoder is the
    weight-free `morphometry` one (nuclear shape, stain and texture statistics)."""
    from .. import mil

    mil.demo(out, n_patients=patients, epochs=epochs, seed=seed, log=typer.echo)


def export_command(
    store: Path = typer.Argument(..., help="Patch store (from `slidestream extract`), or the feature store of "
                                           "`extract --features-only` (then no --features: it holds them)."),
    fmt: str = typer.Option(..., "--format", help="geojson (QuPath: one polygon per patch, level-0 px), h5 "
                                                 "(CLAM/TRIDENT: coords [+ features]) or png (attention heatmap "
                                                 "over the thumbnail; needs --mil)."),
    out: Path = typer.Option(..., "--out", help="Folder: one <slide_id>.geojson / .h5 / .png per slide."),
    features: Optional[Path] = typer.Option(None, "--features", help="Feature store: adds `features` to the h5."),
    mil: Optional[Path] = typer.Option(None, "--mil", help="MIL bundle (OUT of `slidestream mil train`, with --features): "
                                                           "adds per-patch attention and the patient probability."),
):
    """Export patch coordinates (+ features, attention) per slide for QuPath, CLAM or TRIDENT, or attention heatmaps."""
    from ..export import export

    paths = export(store, fmt, out, features=features, mil=mil)
    typer.echo(f"{len(paths)} file(s) written to {out}")


def register(app: typer.Typer) -> None:
    app.command("features")(features_command)
    app.add_typer(mil_app, name="mil")
    app.command("export")(export_command)

"""Commands of the learning side: split, train, predict, demo."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import SEED_MAX
from ..errors import ConfigError


def split_command(
    pipeline: Path = typer.Argument(..., help="Pipeline JSON; its training.split gives ratios, seed and k-fold."),
    store: Path = typer.Option(..., "--store", help="Patch store whose `split` column is (re)written."),
    ratios: Optional[str] = typer.Option(None, help="train:val:test patient ratios, e.g. 6:1:1 (default: the pipeline's)."),
    seed: Optional[int] = typer.Option(None, min=0, max=SEED_MAX, help="Split seed (default: the pipeline's training.split.seed)."),
    kfold: Optional[int] = typer.Option(None, min=2, help="Stratified k-fold instead of ratios: fold --fold is test, the next val."),
    fold: Optional[int] = typer.Option(None, min=0, help="The test fold (0-based) of a k-fold split (--kfold, or the "
                                       "pipeline's training.split.kfold); default 0 with --kfold, else the pipeline's fold."),
    patient_from: Optional[str] = typer.Option(None, "--patient-from", help="Where patients come from when the cohort "
                                               "gave no patient_id (the store refuses otherwise): 'tcga' (first 12 "
                                               "characters of TCGA slide barcodes, e.g. TCGA-CS-4938) or 'slide' (each "
                                               "slide its own patient). Rewrites the store's patient_id column."),
):
    """Assign patients to train/val/test (label-stratified, patient-level: all slides of a patient share a split;
    synthetic patches -> train)."""
    from .. import config, splits
    from ..store import PatchStore
    from ..train import settings

    sp = settings(config.load(pipeline))["split"]
    try:
        r = [float(v) for v in ratios.split(":")] if ratios else sp["ratios"]
    except ValueError:
        raise ConfigError(f"--ratios {ratios}: give train:val:test as numbers, e.g. 6:1:1") from None
    if fold is not None and not (kfold or sp.get("kfold")):
        raise ConfigError(f"--fold is for a k-fold split: add --kfold K (or set training.split.kfold in {pipeline})")
    st = PatchStore.open(store, mode="r+")
    fold = fold if fold is not None else 0 if kfold else sp.get("fold", 0)
    out = splits.split_store(st, r, sp["seed"] if seed is None else seed, kfold or sp.get("kfold"), fold,
                             patient_from=patient_from)
    for name, v in out.items():
        typer.echo(f"{name}: {v['patients']} patients ({v['mutant']} mutant, {v['wildtype']} wildtype), {v['patches']} patches"
                   + (f" + {v['synthetic']} synthetic" if v.get("synthetic") else ""))
    for line in splits.thin_splits(out, None if kfold or sp.get("kfold") else r):
        typer.echo(line, err=True)


def train_command(
    pipeline: Path = typer.Argument(..., help="Pipeline JSON (classifier, normalization, training, fusion sections)."),
    store: Path = typer.Option(..., "--store", help="Patch store with a split (see `slidestream split`)."),
    out: Path = typer.Option(..., "--out", help="Output folder: one model bundle per architecture in OUT/<arch>, "
                                                "plus comparison.md/.json and roc.png."),
    arch: Optional[List[str]] = typer.Option(None, "--arch", help="Architecture(s) to train, repeatable "
                                             "(resnet50, inception_v3, inception_resnet_v2, vgg19, resnet18, small_cnn); "
                                             "default: the pipeline's classifier."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Override training.epochs."),
    synthetic: Optional[int] = typer.Option(None, min=0, help="Add this many synthetic (GAN) patches of the store to training."),
    seed: Optional[int] = typer.Option(None, min=0, max=SEED_MAX, help="Override training.seed (initialisation, batch order, dropout)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda (default: training.device)."),
    split: bool = typer.Option(False, "--split", help="Split the store first when it has no split yet."),
    patient_from: Optional[str] = typer.Option(None, "--patient-from", help="Where patients come from when the cohort "
                                               "gave no patient_id (the store refuses otherwise): 'tcga' (first 12 "
                                               "characters of TCGA slide barcodes, e.g. TCGA-CS-4938) or 'slide' (each "
                                               "slide its own patient). Must match the split's (see `slidestream split`)."),
    fusion_cv: Optional[int] = typer.Option(None, "--fusion-cv", min=2, help="K: fit the age fusion on out-of-fold "
                                            "image scores of every train+val patient instead of the val split: K extra "
                                            "networks, each trained like the main one (for its best epoch + 1 epochs) on "
                                            "K-1 folds and scoring the held-out fold; test untouched (training.fusion_cv)."),
    strict: bool = typer.Option(False, "--strict", help="Refuse synthetic patches of generators that learned from "
                                "patients outside the current train split (default: leave them out with a warning)."),
):
    """Train classifier(s) with per-epoch checkpoints; rerun the same command to resume after an interruption.
    Per architecture: a bundle with the fusion fitted on training.fusion_split (default val) or, with --fusion-cv K,
    on out-of-fold scores of the train+val patients; training.json, history.json, predictions.csv."""
    from .. import config, splits, train
    from ..device import check_option
    from ..store import PatchStore, lock_output

    p = config.load(pipeline)
    check_option(device)
    with lock_output(out):
        if split:
            st = PatchStore.open(store, mode="r+")
            if "train" not in set(st.column("split").tolist()):
                sp = train.settings(p)["split"]
                splits.split_store(st, sp["ratios"], sp["seed"], sp.get("kfold"), sp.get("fold", 0), patient_from)
        res = train.train_many(p, store, out, arch, epochs=epochs, synthetic=synthetic, seed=seed, device=device,
                               strict=strict, log=typer.echo, patient_from=patient_from, fusion_cv=fusion_cv)
    typer.echo(f"comparison: {res['comparison']['markdown']}, ROC: {res['comparison']['roc']}")


def predict_command(
    bundle: Path = typer.Argument(..., help="Model bundle (OUT/<arch> of `slidestream train`, or OUT with one bundle)."),
    inputs: Optional[List[Path]] = typer.Argument(None, help="Slides or photos to classify (omit with --store)."),
    store: Optional[Path] = typer.Option(None, "--store", help="Score every patient of this patch store instead."),
    out: Optional[Path] = typer.Option(None, "--out", help="With --store: predictions CSV (default predictions.csv); "
                                                            "with slides: folder for the heatmaps (default .)."),
    age: Optional[float] = typer.Option(None, "--age", help="Patient age in years: adds the age+image probability "
                                                             "with the bundle's fusion model (fitted on the val "
                                                             "patients, or out-of-fold with train --fusion-cv; the "
                                                             "one `evaluate --bundle` uses)."),
    mpp: Optional[float] = typer.Option(None, "--mpp", help="Level-0 µm/px for inputs without resolution metadata (photos)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Patches per network call (the probabilities do "
                                                                    "not depend on it beyond float rounding)."),
    workers: int = typer.Option(2, "--workers", min=1, help="With --store: threads reading store blocks ahead (order "
                                                            "and probabilities unchanged)."),
):
    """Predict IDH-mutant probability: per patient of a store (CSV for `slidestream evaluate`), or per slide/photo
    with a heatmap of patch probabilities."""
    from .. import predict

    if store and inputs:
        raise ConfigError("give either --store or slide files, not both")
    if store and age is not None:
        raise ConfigError("--age is for slide files; with --store every patient's age comes from the store "
                          "(the fused probabilities come from `slidestream evaluate --bundle`)")
    if age is not None and not 0 <= age <= 130:  # NaN fails this too
        raise ConfigError(f"--age must be the patient's age in years (0 to 130), not {age:g}")
    if store:
        r = predict.predict_store(bundle, store, out or Path("predictions.csv"), device, batch_size, workers)
        typer.echo(f"{r['patients']} patients ({r['patches']} patches) -> {r['out']}")
        if r["unsplit"]:
            typer.echo("note: the store has no split: its patients are written as test (held out), those the bundle "
                       "trained or selected on as its train/val (val only when all of its val patients are here, else "
                       "train: never test)", err=True)
        if r["without_patches"]:
            typer.echo(f"note: {len(r['without_patches'])} patient(s) of the store have no patches (their slides were "
                       f"empty or failed) and are not in the CSV: {', '.join(r['without_patches'][:10])}", err=True)
        return
    if not inputs:
        raise ConfigError("give slide/photo files to classify, or --store STORE")
    from ..cohort import check_mpp_option

    check_mpp_option(mpp)
    for r in predict.predict_slides(bundle, inputs, age, mpp, out or Path("."), device, batch_size):
        if r["image_prob"] is None:
            typer.echo(f"{r['input']}: {r['note']}")
            continue
        line = f"{r['input']}: P(IDH-mutant) = {r['image_prob']:.3f} from {r['patches']} patches"
        if "age+image" in r:
            line += f"; with age {age:g}: {r['age+image']:.3f}"
        line += f"; image call {r['call']} at the bundle's threshold {r['threshold']:g}"
        typer.echo(line + f"; heatmap {r['heatmap']}")


def demo_command(
    out: Path = typer.Option(Path("slidestream-demo"), "--out", help="Folder for the synthetic cohort, store, model and report."),
    patients: int = typer.Option(160, min=16, help="Synthetic patients (one slide each; at least 16: the age fusion needs 2 val patients of each class); split 2:1:1, so 160 gives 40 "
                                 "test patients."),
    epochs: int = typer.Option(3, min=1, help="Training epochs of the small CNN (not with --mil)."),
    seed: int = typer.Option(0, min=0, max=SEED_MAX, help="Seed of the cohort, split and training."),
    gan: bool = typer.Option(False, "--gan", help="Also train a tiny PG-GAN per class and run a small GAN-count sweep (adds ~7 min on 2 shared cores)."),
    mil: bool = typer.Option(False, "--mil", help="The encoder path instead of the patch CNN: weight-free morphometry "
                             "features -> attention-MIL (ABMIL) -> evaluate, on the same cohort (same as `mil demo`)."),
):
    """Run the whole method on a synthetic cohort on the CPU (a few minutes): slides -> extract -> split -> train ->
    predict -> evaluate with age fusion -> report."""
    from .. import demo

    if mil and gan:
        raise typer.BadParameter("--mil and --gan do not combine: the GAN experiment retrains the patch CNN")
    r = demo.run(out, n_patients=patients, epochs=epochs, seed=seed, gan=gan, mil=mil, log=typer.echo)
    res = demo.results(r["metrics"])
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    n = next(iter(res.values()), {}).get("n")
    typer.echo(f"test AUC ({n} patients): " + ", ".join(f"{k} {f(v['auc'])}" for k, v in res.items())
               + f" ({r['seconds']:.0f} s)")
    typer.echo(f"report: {r['report']}")


def register(app: typer.Typer) -> None:
    app.command("split")(split_command)
    app.command("train")(train_command)
    app.command("predict")(predict_command)
    app.command("demo")(demo_command)

"""``slidestream gan ...`` and ``slidestream experiment gan-sweep``: thin commands over ``engine/augment.py``
and ``engine/experiment.py``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import SEED_MAX
from ..errors import ConfigError

# ------------------------------------------------------------------------------------------- CLI
gan_app = typer.Typer(help="GAN augmentation: one generator per IDH class (Liu et al. 2020).", no_args_is_help=True)
experiment_app = typer.Typer(help="Experiments of the paper.", no_args_is_help=True)


@gan_app.command("train")
def train_command(
    pipeline: Path = typer.Argument(..., help="Pipeline JSON: `augmenter` (default pggan) and `normalization.gan`."),
    store: Path = typer.Option(..., "--store", help="Patch store with a split (see `slidestream split`)."),
    label: str = typer.Option(..., "--label", help="Class to model: mutant or wildtype."),
    out: Path = typer.Option(..., "--out", help="GAN directory (rerun the same command to resume after a kill)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar (default: on a terminal)."),
):
    """Train one class's generator on its training-split patches (resumes from the last checkpoint)."""
    from .. import config
    from ..augment import train_gan
    from ..store import lock_output

    with lock_output(out):
        m = train_gan(config.load(pipeline), store, label, out, progress=progress, log=typer.echo)
    if m.get("swd_training"):
        typer.echo(f"SWD x1e3 vs training patches: mean {m['swd_training']['mean']:.2f} "
                   f"(levels {', '.join(f'{k}: {v:.2f}' for k, v in m['swd_training']['levels'].items())})")
    typer.echo(f"{m['generator_id']} done -> {out}")


@gan_app.command("sample")
def sample_command(
    gan: Path = typer.Argument(..., help="GAN directory of `slidestream gan train`."),
    n: int = typer.Option(3000, "--n", min=1, help="Patches to generate from this one-class generator. The paper's "
                                                   "counts (3,000 helped most) are totals; `training.synthetic` and "
                                                   "gan-sweep take them half per class, so sample count/2 per class."),
    into: Path = typer.Option(..., "--into", help="Patch store to append the synthetic patches to."),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Latent seed (same seed, same patches)."),
):
    """Append synthetic patches to a store (synthetic=True, split=train, the GAN's label and generator id)."""
    from ..augment import sample_into_store

    r = sample_into_store(gan, n, into, seed)
    typer.echo(f"{r['n']} {r['label']} patches of {r['generator_id']} -> {into} rows {r['rows'][0]}..{r['rows'][1] - 1}")


@gan_app.command("grid")
def grid_command(
    gan: Path = typer.Argument(..., help="GAN directory."),
    out: Path = typer.Option(..., "--out", help="PNG sample sheet."),
    n: int = typer.Option(8, "--n", min=1, max=64, help="Samples per row (at most 64: the sheet is n x 7 patches)."),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Latent seed (same seed, same sheet)."),
):
    """Sample sheet from coarse to fine, one row per resolution (paper Fig. 1)."""
    from ..augment import sample_sheet

    typer.echo(f"sample sheet -> {sample_sheet(gan, out, n, seed)}")


@gan_app.command("eval")
def eval_command(
    gan: Path = typer.Argument(..., help="GAN directory."),
    store: Path = typer.Option(..., "--store", help="Patch store the GAN was trained from."),
    n: int = typer.Option(2048, "--n", min=2, help="Images per set (Karras et al.: 8192)."),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Seed of the latent samples, the real patches drawn and the SWD projections (same seed, same numbers)."),
):
    """Multi-scale sliced Wasserstein distance of the generator vs real patches (written to the manifest)."""
    from ..augment import evaluate_gan, swd_table

    typer.echo(swd_table(evaluate_gan(gan, store, n, seed)))


@experiment_app.command("gan-sweep")
def gan_sweep_command(
    pipeline: Path = typer.Argument(..., help="Pipeline JSON (classifier, normalization, training sections)."),
    store: Path = typer.Option(..., "--store", help="Split store holding enough synthetic patches (`gan sample`)."),
    counts: str = typer.Option("0,1000,2000,3000,4000,5000", "--counts", help="Synthetic patches added per run."),
    out: Path = typer.Option(..., "--out", help="Output folder: one training run per count, table and ROC figures."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Override training.epochs."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda."),
):
    """Retrain the classifier per number of GAN patches on identical splits and seeds (paper Table 2, Fig. 3)."""
    from .. import config, experiment

    try:
        cs = [int(c) for c in counts.split(",") if c.strip()]
    except ValueError:
        raise ConfigError(f"--counts must be comma-separated integers, not {counts!r}") from None
    r = experiment.gan_sweep(config.load(pipeline), store, cs, out, epochs=epochs, device=device, log=typer.echo)
    typer.echo(f"table: {r['markdown']}, ROC: {r['roc']}")


def register(app: typer.Typer) -> None:
    app.add_typer(gan_app, name="gan")
    app.add_typer(experiment_app, name="experiment")

"""Commands of the extraction engine: plugins, schema, validate, tissue, extract."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from .. import config, registry
from ..errors import ConfigError
from ..hookspecs import KINDS


def _print_table(*columns: str, rows, title: str | None = None) -> None:
    """A rich table on stdout; rich is imported here, not at start-up (an `extract --json` never imports it)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def plugins_cmd(kind: Optional[str] = typer.Option(None, "--kind", help=f"Only this kind: {', '.join(KINDS)}.")):
    """List installed plugins (built-in and from other packages), by kind."""
    _print_table("kind", "name", "source", "summary", rows=[
        (k, name, registry.source(k, name), p.summary or (p.__doc__ or "").split("\n")[0])
        for k in ([kind] if kind else KINDS) for name, p in sorted(registry.plugins(k).items())])


def schema_cmd():
    """Print the JSON Schema of pipeline files, assembled from the installed plugins."""
    sys.stdout.write(json.dumps(config.schema(), indent=2) + "\n")


def validate_cmd(pipeline: Path = typer.Argument(..., help="Pipeline JSON file.")):
    """Check a pipeline file; print every error with its JSON path. Exit 2 when invalid."""
    errors = config.validation_errors(config.read_json(pipeline))
    for e in errors:
        typer.echo(e, err=True)
    if errors:
        raise typer.Exit(2)
    typer.echo(f"{pipeline}: valid")


def _pipeline(path: Optional[Path]) -> dict:
    return config.load(path) if path else config.load(config.example("liu2020"))


def tissue_cmd(
    input: Path = typer.Argument(..., help="A slide, or with --thumbnail an image used as the thumbnail."),
    out: str = typer.Option(..., "--out", help="Output prefix: writes PREFIX_mask.png and PREFIX_overlay.png."),
    pipeline: Optional[Path] = typer.Option(None, "--pipeline", help="Pipeline whose filters to use (default: liu2020)."),
    thumbnail: bool = typer.Option(False, "--thumbnail", help="INPUT is already the low-resolution thumbnail."),
    mpp: Optional[float] = typer.Option(None, "--mpp", help="Level-0 µm/px for slides without resolution metadata."),
):
    """Segment tissue on a slide's thumbnail (1/32 by default) and write the mask and an overlay."""
    import numpy as np
    from PIL import Image

    from ..runner import overlay, readers_for, tissue_mask
    from ..slide import open_slide

    p = _pipeline(pipeline)
    if thumbnail:
        if not input.is_file():
            raise ConfigError(f"{input}: file not found")
        try:
            rgb = np.asarray(Image.open(input).convert("RGB"))
        except OSError as e:
            raise ConfigError(f"{input}: not an image ({e})") from None
    else:
        from ..chatter import CAPTURE

        with CAPTURE.on():  # decoders' chatter off the terminal; a damaged thumbnail level is an error
            slide = open_slide(input, order=readers_for(p), default_mpp=mpp if mpp else None)
            try:
                rgb = slide.thumbnail(float(p["thumbnail"]["scale"]), p["thumbnail"].get("decode", "dct"))
            finally:
                slide.close()
    mask = tissue_mask(p, rgb)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((mask * 255).astype(np.uint8)).save(f"{out}_mask.png")
    Image.fromarray(overlay(rgb, mask)).save(f"{out}_overlay.png")
    typer.echo(f"tissue {100 * mask.mean():.1f}% of {mask.shape[1]}x{mask.shape[0]}: {out}_mask.png, {out}_overlay.png")


def extract_cmd(
    pipeline: Path = typer.Argument(..., help="Pipeline JSON file (e.g. schemas/examples/liu2020.json)."),
    slides: Path = typer.Option(..., "--slides", help="Cohort CSV (slide_path,patient_id,label,age[,mpp][,slide_id]), a folder of slides or one slide."),
    out: Path = typer.Option(..., "--out", help="Patch store directory (created, or resumed if it exists); with --features-only the feature store."),
    workers: int = typer.Option(1, "--workers", min=1, help="Slides processed in parallel by worker processes on this machine (each compresses its own slides); at most 4 per CPU core."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Address of a dask.distributed scheduler to run on."),
    slide_timeout: Optional[float] = typer.Option(None, "--slide-timeout", min=0, help="Seconds one slide may take "
                                                  "before its worker is stopped and the slide recorded failed (default: "
                                                  "the pipeline's extract.slide_timeout_s; else 1800 with --workers > 1 and none serially; 0 = no limit)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Decode threads per worker (default: cores / workers)."),
    mpp: Optional[float] = typer.Option(None, "--mpp", help="Level-0 µm/px for slides without resolution metadata."),
    qa: bool = typer.Option(True, "--qa/--no-qa", help="Write STORE.qa/<slide>.png beside the store: mask overlay and kept tiles."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout (progress goes to stderr)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    unlabeled: bool = typer.Option(False, "--unlabeled", help="Accept a cohort CSV without label/patient_id/age "
                                   "columns (each slide its own patient; such a store cannot be split or trained on)."),
    allow_corrupt_tiles: bool = typer.Option(False, "--allow-corrupt-tiles", help="Drop tiles whose image data the "
                                             "decoder reports corrupt (listed per slide) instead of failing the slide."),
    features_only: bool = typer.Option(False, "--features-only", help="Keep no patches: encode them with the "
                                       "pipeline's encoder straight into a feature store at --out (the format of "
                                       "`slidestream features`), resumable per slide. One process (no --workers/--scheduler)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="With --features-only: patches per encoder call (default: features.batch_size, 64)."),
    device: Optional[str] = typer.Option(None, "--device", help="With --features-only: auto, cpu or cuda for the encoder (default: features.device)."),
):
    """Extract patches from slides into a zarr patch store.

    Exit status: 0 all slides done (slides without tissue are recorded, not errors), 1 some slides
    failed (see the summary; a rerun retries them and skips finished ones), 2 invalid input or the
    store is being written by another process (STORE.lock names it). A slide that takes longer than
    --slide-timeout (extract.slide_timeout_s; 1800 s by default with --workers > 1, none serially unless set) has its worker process stopped and is
    recorded failed. Ctrl-C or SIGTERM stops the run (exit 130 / 143), keeping the slides committed so far.

    A rerun updates the label, age and patient_id columns of finished slides whose cohort values
    changed, and extracts again a slide whose mpp changed or whose shard file changed since its commit.

    With --features-only no patch is kept: each slide's patches go through the pipeline's encoder and
    only their features and meta columns (slide_id, patient_id, label, age, x, y, size0, synthetic) are written
    to --out, the feature store `slidestream mil train --features` reads. A slide whose mpp changed
    needs a new --out there.
    """
    from ..cohort import identical_copies, read_cohort
    from ..runner import extract

    p = config.load(pipeline)
    if slide_timeout is not None:
        p["extract"] = {**(p.get("extract") or {}), "slide_timeout_s": slide_timeout}
    if features_only:
        if not p.get("encoder"):
            raise ConfigError(f"{pipeline} has no encoder section, which --features-only needs; add e.g. "
                              '"encoder": {"name": "resnet50_trunc", "params": {"weights": "resnet50.pth"}}')
        if workers > 1 or scheduler or slide_timeout is not None:
            raise ConfigError("--features-only runs in one process (one encoder, no time limit per slide); drop "
                              "--workers/--scheduler/--slide-timeout")
        from ..device import check_option

        check_option(device)
    elif batch_size is not None or device is not None:
        raise ConfigError("--batch-size and --device are for --features-only")
    cohort = read_cohort(slides, default_mpp=mpp, unlabeled=unlabeled)
    for a, b in identical_copies(cohort):  # `split` refuses such copies under different patients
        from ..progress import one_line

        typer.echo(f"warning {one_line(b.slide_path)}: a byte-identical copy of {one_line(a.slide_path)} (patients "
                   f"{a.patient_id!r}, {b.patient_id!r}); keep one: a copy under another patient puts the same pixels "
                   "in train and test", err=True)
    if features_only:
        from ..features import extract_features_only

        summary = extract_features_only(p, cohort, out, threads=threads, qa=qa, progress=not (quiet or as_json),
                                        pipeline_path=str(pipeline), device=device, batch_size=batch_size,
                                        allow_corrupt_tiles=allow_corrupt_tiles)
    else:
        summary = extract(p, cohort, out, workers=workers, scheduler=scheduler, threads=threads, qa=qa,
                          progress=not (quiet or as_json), pipeline_path=str(pipeline),
                          allow_corrupt_tiles=allow_corrupt_tiles)
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        from ..progress import plain

        what = f"{summary['dim']}-d {summary['encoder']} feature rows" if features_only else "patches"
        rows = []
        for s in summary["slides"]:
            color = {"done": "green", "skipped": "dim", "updated": "cyan", "empty": "yellow", "error": "red"}.get(s["status"], "")
            rows.append((plain(s["slide_id"]), f"[{color}]{s['status']}[/{color}]" if color else s["status"],
                         str(s["tiles"]), str(s["patches"]), f"{s['seconds']:.1f}", plain(s["reason"][:80])))
        _print_table("slide", "status", "tiles", "patches", "seconds", "note", rows=rows,
                     title=f"{out}: {summary['rows']} {what}")
    if summary["failed"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins_cmd)
    app.command("schema")(schema_cmd)
    app.command("validate")(validate_cmd)
    app.command("tissue")(tissue_cmd)
    app.command("extract")(extract_cmd)

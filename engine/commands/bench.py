"""``slidestream bench ...``: throughput on this machine (thin commands over ``engine/bench.py``), and
``bench make-slide``, the project's TCGA-size benchmark slide (``engine/benchslide.py``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from ..errors import ConfigError

bench_app = typer.Typer(help="Throughput benchmarks (tiles/s, patches/s, decode MP/s, memory) on this machine.",
                        no_args_is_help=True)

DEVICE = typer.Option("cpu", "--device", help="cpu or cuda (cuda without a visible GPU is an error).")
JSON = typer.Option(False, "--json", help="Print one JSON object instead of a table.")
SIZE = typer.Option((16384, 12288), "--size", help="Size of the built-in benchmark slide (W H, multiples of 1024, at least 4096); "
                                                   "made once into ~/.cache/slidestream or $SLIDESTREAM_CACHE.")

LABELS = {"tiles_per_s": "tiles/s", "patches_per_s": "patches/s", "decode_mp_per_s": "decode MP/s (bare cuCIM)",
          "engine_over_decode": "engine / decode", "peak_rss_mb": "peak RSS MB", "gpu_peak_mb": "GPU peak MB"}


def _check_device(device: str) -> str:
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: use cpu or cuda")
    return device


def _show(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"slidestream bench {result.get('bench', '')}", show_header=True)
    t.add_column("measure")
    t.add_column("value", justify="right")
    for k, v in result.items():
        if k != "bench":
            t.add_row(LABELS.get(k, k.replace("_", " ")), str(v))
    Console().print(t)


def _slides(slides: Optional[List[Path]], size: tuple[int, int], seed: int) -> list[str]:
    if slides:
        return [str(s) for s in slides]
    from ..benchslide import cached_slide

    return [str(cached_slide(tuple(size), seed))]


@bench_app.command("make-slide")
def make_slide_command(
    out: Path = typer.Argument(..., help="Output .svs path."),
    size: tuple[int, int] = typer.Option((98304, 65536), "--size", help="W H in level-0 pixels (multiples of 1024, at least 4096); "
                                                                        "the default is TCGA-size."),
    seed: int = typer.Option(0, "--seed", min=0, help="Same seed, same slide."),
    quality: int = typer.Option(80, "--quality", min=1, max=100, help="JPEG quality."),
    tissue: float = typer.Option(0.62, "--tissue", help="Fraction of the slide covered by tissue."),
    as_json: bool = JSON,
):
    """Write a deterministic 40x (0.25 um/px) JPEG-tiled pyramidal SVS with tissue, pen marks and debris."""
    from ..benchslide import make_slide

    _show({"bench": "make-slide", **make_slide(out, size, seed, quality, tissue)}, as_json)


@bench_app.command("extract")
def extract_command(
    slides: Optional[List[Path]] = typer.Argument(None, help="Slides (or cohort CSVs/folders); default: the "
                                                             "built-in benchmark slide."),
    device: str = DEVICE,
    pipeline: Optional[Path] = typer.Option(None, "--pipeline", help="Pipeline JSON (default: liu2020 example)."),
    repeat: int = typer.Option(3, "--repeat", min=1, help="Runs (interleaved with the bare decode); medians."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Decode threads (default: all cores)."),
    reader: Optional[str] = typer.Option(None, "--reader", help="Reader tried first, e.g. dali (DALI tile decoding)."),
    size: tuple[int, int] = SIZE,
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the built-in slide."),
    as_json: bool = JSON,
):
    """Extraction against the bare cuCIM decode of the same pixels, in one run."""
    from .. import config
    from ..bench import extract_bench

    pipe = config.load(pipeline) if pipeline else None
    _show(extract_bench(_slides(slides, size, seed), pipe, _check_device(device), repeat, threads, reader),
          as_json)


@bench_app.command("decode")
def decode_command(
    slides: Optional[List[Path]] = typer.Argument(None, help="One JPEG-tiled slide (default: the built-in one)."),
    device: str = DEVICE,
    level: int = typer.Option(1, "--level", min=0, help="Pyramid level read (1 = 10x on a 40x slide)."),
    n: int = typer.Option(32, "--n", min=1, help="Random square regions read."),
    region: int = typer.Option(1024, "--region", min=16, help="Region side in pixels."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Decode threads (default: all cores)."),
    repeat: int = typer.Option(3, "--repeat", min=1, help="Interleaved runs of each; medians."),
    size: tuple[int, int] = SIZE,
    as_json: bool = JSON,
):
    """Region reads: cuCIM against DALI tile decoding (same regions, same threads, one run)."""
    from ..bench import decode_bench

    _show(decode_bench(_slides(slides, size, 0)[0], level, region, n, threads, _check_device(device), repeat),
          as_json)


@bench_app.command("train")
def train_command(
    device: str = DEVICE,
    arch: Optional[List[str]] = typer.Option(None, "--arch", help="Classifier(s) (default: small_cnn, resnet18)."),
    patch: int = typer.Option(128, "--patch", min=32, help="Input side in pixels (the paper: 256)."),
    batch: int = typer.Option(16, "--batch", min=1, help="Training batch size (patches per step; inference is timed with batches of 64)."),
    steps: int = typer.Option(4, "--steps", min=1, help="Timed training steps per measurement."),
    as_json: bool = JSON,
):
    """Classifier training images/s (store loader vs in-memory) and inference patches/s."""
    from ..bench import train_bench

    _show(train_bench(_check_device(device), tuple(arch or ("small_cnn", "resnet18")), patch, batch, steps), as_json)


@bench_app.command("gan")
def gan_command(
    device: str = DEVICE,
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Timed steps per resolution (2 CPU, 20 GPU)."),
    max_resolution: int = typer.Option(32, "--max-resolution", help="Largest resolution timed (paper: 256)."),
    as_json: bool = JSON,
):
    """Paper-size PG-GAN training images/s per resolution and the schedule's hours on this device."""
    from ..bench import gan_bench

    _show(gan_bench(_check_device(device), steps, max_resolution), as_json)


@bench_app.command("features")
def features_command(
    slides: Optional[List[Path]] = typer.Argument(None, help="One slide (default: the built-in benchmark slide)."),
    device: str = DEVICE,
    encoder: Optional[str] = typer.Option(None, "--encoder", help="Encoder plugin (default resnet50_trunc; random "
                                                                  "init: throughput only)."),
    size: tuple[int, int] = SIZE,
    as_json: bool = JSON,
):
    """Encoder patches/s over one extracted slide."""
    from ..bench import features_bench

    _show(features_bench(_slides(slides, size, 0)[0], _check_device(device), encoder), as_json)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")

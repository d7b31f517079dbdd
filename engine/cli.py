"""The `slidestream` command line: compose plugins from a JSON pipeline and run them headless.

Each area's commands live in ``engine/commands/<area>.py`` and attach themselves with ``register(app)``.
"""
from __future__ import annotations

import sys

import typer

from .commands import bench, evaluate, extract, gan, learn

app = typer.Typer(
    name="slidestream",
    help="Whole-slide images to zarr patch stores, and IDH status prediction (Liu et al. 2020).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for module in (extract, learn, evaluate, gan, bench):
    module.register(app)


def main() -> None:
    from .errors import SlidestreamError

    try:
        app()
    except SlidestreamError as e:
        typer.secho(f"error: {e}", err=True, fg="red")
        sys.exit(e.exit_code)

"""The `slidestream` command line: compose plugins from a JSON pipeline and run them headless.

Each area's commands live in ``engine/commands/<area>.py`` and attach themselves with ``register(app)``.
"""
from __future__ import annotations

import sys

import typer

from .commands import bench, encode, evaluate, extract, gan, learn

app = typer.Typer(
    name="slidestream",
    help="Whole-slide images to zarr patch stores, and IDH status prediction (Liu et al. 2020).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for module in (extract, learn, evaluate, gan, encode, bench):
    module.register(app)


def main() -> None:
    from .errors import SlidestreamError

    try:
        app()
    except SlidestreamError as e:
        print_error(e)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print_error("interrupted; run the same command again to resume")
        sys.exit(130)
    except OSError as e:  # a path the user gave cannot be read or written (e.g. --out under a regular file)
        if e.filename is None:
            raise
        print_error(f"{e.filename}: {e.strerror or e}; check the path and its permissions, or choose another one")
        sys.exit(2)


def print_error(e) -> None:
    """``error: <one line>`` on stderr: red on a terminal, never wrapped (plain text when piped)."""
    line = "error: " + " ".join(str(e).split())
    if sys.stderr.isatty():
        typer.secho(line, err=True, fg="red")
    else:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

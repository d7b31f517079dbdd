"""The `slidestream` command line: compose plugins from a JSON pipeline and run them headless.

Each area's commands live in ``engine/commands/<area>.py`` and attach themselves with ``register(app)``.
"""
from __future__ import annotations

import errno
import sys

import typer

from .commands import bench, encode, evaluate, extract, gan, learn

app = typer.Typer(
    name="slidestream",
    help="Whole-slide images to zarr patch stores, and IDH status prediction (Liu et al. 2020).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)

for module in (extract, learn, evaluate, gan, encode, bench):
    module.register(app)


def main() -> None:
    """The console script. Ends with ``SystemExit`` like any click program; called from the top level of the
    ``__main__`` module (the ``slidestream`` script, ``python -m slidestream.engine``) it ends the process
    itself, without the interpreter's teardown (see ``exit_now``)."""
    from .errors import SlidestreamError

    try:
        try:
            app()
        except SlidestreamError as e:
            print_error(e)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            print_error("interrupted; run the same command again to resume")
            sys.exit(130)
        except OSError as e:  # a path the user gave cannot be read or written (e.g. --out under a regular file)
            from .store import write_error

            full = write_error(e, None) if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS) else None
            if e.filename is None and full is None:
                raise
            print_error(full or f"{e.filename}: {e.strerror or e}; check the path and its permissions, or choose another one")
            sys.exit(2)
    except SystemExit as e:
        if sys._getframe(1).f_globals.get("__name__") == "__main__":
            exit_now(e.code)
        raise


def exit_now(code) -> None:
    """End the process with ``code`` (as ``sys.exit``) but skip the interpreter's teardown: freeing ~1,100
    modules one by one and the last garbage collections took 0.2-0.3 s CPU after a one-slide ``extract``
    (bench/startup.py), more than the slide's commit. What teardown does that matters is done first:
    non-daemon threads are joined (idle thread pools), ``atexit`` handlers run (store locks, logging, temp
    files) and stdout/stderr are flushed; then ``os._exit``, as CPython's own ``multiprocessing`` workers end."""
    import atexit
    import os
    import threading

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    threading._shutdown()  # what Py_Finalize does first: join the non-daemon threads
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed pipe or stream: as at a normal exit, nothing more to write
            pass
    os._exit(status)


def print_error(e) -> None:
    """``error: <one line>`` on stderr: red on a terminal, never wrapped (plain text when piped)."""
    line = "error: " + " ".join(str(e).split())
    if sys.stderr.isatty():
        typer.secho(line, err=True, fg="red")
    else:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

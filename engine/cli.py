"""The `slidestream` command line: compose plugins from a JSON pipeline and run them headless.

Each area's commands live in ``engine/commands/<area>.py`` and attach themselves with ``register(app)``.
"""
from __future__ import annotations

import errno
import gc
import os
import signal
import sys
from pathlib import Path

if sys.argv[1:2] == ["extract"] and "--features-only" not in sys.argv and "numpy" not in sys.modules:
    # extract makes no BLAS call (--features-only runs an encoder: left alone); OpenBLAS starting its worker
    # threads as numpy is imported cost a one-slide process ~30 ms CPU and ~80 ms wall on 2 cores
    # (bench/README.md round 7). A value the user set is kept.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# The imports below ran ~70 garbage collections that freed nothing, and what they make lives as long as the
# process: collected neither while importing nor later (frozen). GC CPU of a one-slide extract: 30-36 -> 8-10 ms.
_GC = gc.isenabled()
gc.disable()
try:
    import typer

    from .commands import bench, encode, evaluate, extract, gan, learn
finally:  # also when an import fails: the collector is never left off
    if _GC:
        gc.freeze()
        gc.enable()

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


class _Coercion:
    """typer 0.29 coerces every non-flag parameter of the command it runs through a pydantic ``TypeAdapter``,
    built even for an option left at None, so every command imported pydantic (~55 ms CPU of a one-slide
    ``extract`` process, bench/README.md round 7). This returns, without pydantic, the values typer's
    adapters return unchanged: None, a ``str``, an ``int`` already of its type and within ``min``/``max``
    (a default), and a plain ``Path`` (typer's own path checks on the string, then ``Path``). Anything
    else (``--workers 2``, a float, a choice, a list) goes to typer's adapter, built on first use."""

    def __init__(self, descriptor, build):
        self.d, self.build, self.real = descriptor, build, None

    def coerce(self, value, param, ctx):
        d, info = self.d, self.d.parameter_info
        many = param.multiple or param.nargs == -1
        if value is None:  # typer's RuntimeParam.coerce
            return () if many else None
        if d.file_annotation is None and info.parser is None and not many:
            if d.annotation is str and type(value) is str:
                return value
            if d.annotation is int and type(value) is int and not info.clamp \
                    and (info.min is None or value >= info.min) and (info.max is None or value <= info.max):
                return value
            if d.annotation is Path and info.path_type is None and type(value) is str:
                return Path(coerce_cli_path(value, info, path_type=None, param=param, ctx=ctx))
        if self.real is None:
            self.real = self.build(d)
        return self.real.coerce(value, param=param, ctx=ctx)


try:  # typer 0.29's coercion layer; another typer is left as it is
    from typer import core as _typer_core
    from typer._param_types import coerce_cli_path

    _build = _typer_core.build_runtime_param
    _typer_core.build_runtime_param = lambda descriptor: _Coercion(descriptor, _build)
except (ImportError, AttributeError):
    pass


def main() -> None:
    """The console script. Ends with ``SystemExit`` like any click program; called from the top level of the
    ``__main__`` module (the ``slidestream`` script, ``python -m slidestream.engine``) it ends the process
    itself, without the interpreter's teardown (see ``exit_now``)."""
    from .errors import SlidestreamError

    try:  # typer 0.29 runs its own copy of click: its exceptions are these, not click's
        from typer._click import exceptions as click
    except ImportError:  # an older typer on plain click
        from click import exceptions as click
    signal.signal(signal.SIGTERM, _terminated)
    try:
        try:
            code = app(standalone_mode=False)  # click's usage errors come here, not as its multi-line box
            if code == 130:  # typer's Exit(130) for Ctrl-C (or SIGTERM: _terminated)
                print_error("interrupted; run the same command again to resume")
                code = 128 + _SIGNAL[0]
            sys.exit(code if isinstance(code, int) else 0)
        except click.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # `slidestream` alone: the help, as click prints it
                e.show()
                sys.exit(e.exit_code)
            print_error(usage_line(e))
            sys.exit(e.exit_code)
        except click.ClickException as e:
            print_error(e.format_message())
            sys.exit(e.exit_code)
        except typer.Abort:  # end of input at a prompt
            print_error("aborted")
            sys.exit(1)
        except SlidestreamError as e:
            print_error(e)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            print_error("interrupted; run the same command again to resume")
            sys.exit(128 + _SIGNAL[0])
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


_SIGNAL = [signal.SIGINT]  # the signal that interrupted the command


def _terminated(signum, frame) -> None:
    """SIGTERM (``kill``, a batch scheduler, a container stop) stops a command as Ctrl-C does: the same line,
    finished work kept (workers stopped, locks released), exit 143 (128 + 15) instead of 130."""
    _SIGNAL[0] = signum
    raise KeyboardInterrupt


def usage_line(e) -> str:
    """A command-line usage error as one line: where, what, and where the help is."""
    where = e.ctx.command_path if e.ctx is not None else "slidestream"
    return f"{where}: {e.format_message().rstrip('.')}; see '{where} --help'"


def exit_now(code) -> None:
    """End the process with ``code`` (as ``sys.exit``) but skip the interpreter's teardown: freeing ~1,100
    modules one by one and the last garbage collections took 0.2-0.3 s CPU after a one-slide ``extract``
    (bench/startup.py), more than the slide's commit. What teardown does that matters is done first:
    non-daemon threads are joined (idle thread pools; not after Ctrl-C or SIGTERM, 130 or 143: a thread stuck
    in a reader would never end), ``atexit`` handlers run (store locks, logging, temp files) and stdout/stderr
    are flushed; then ``os._exit``, as CPython's own ``multiprocessing`` workers end."""
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
    if status not in (130, 143):  # interrupted: a thread may be stuck in a reader; exit as at a kill
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

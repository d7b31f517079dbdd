"""Issue 11, round 7 (start-up): a one-slide ``extract`` process does not import pydantic (typer 0.29 built a
pydantic TypeAdapter for every non-flag parameter, even one left at None: ~55 ms CPU per process), and the
values and errors of the command line stay typer's own."""
import json
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import typer

from conftest import EXAMPLE
from slidestream.engine import cli


def test_extract_process_does_not_import_pydantic(tmp_path):
    from slidestream.engine.synthetic import make_slide

    make_slide(tmp_path / "slides" / "a.svs", size=(2048, 2048), label=1, seed=1, mpp=1.0, objective=10)
    code = ("import atexit, json, sys\n"
            "atexit.register(lambda: print(json.dumps([m for m in sys.modules if m.split('.')[0] == 'pydantic'])))\n"
            "from slidestream.engine.cli import main\nmain()\n")
    p = subprocess.run([sys.executable, "-c", code, "extract", str(EXAMPLE), "--slides", str(tmp_path / "slides"),
                        "--out", str(tmp_path / "store"), "--no-qa", "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    summary, imported = (json.loads(line) for line in p.stdout.strip().splitlines()[-2:])
    assert summary["slides"][0]["status"] == "done"
    assert imported == []


def _params():
    """The click parameters typer makes for a command with the annotations the CLI uses."""
    app = typer.Typer()

    @app.command()
    def cmd(path: Path = typer.Argument(...),
            text: str = typer.Option("x", "--text"),
            n: int = typer.Option(1, "--n", min=1),
            top: int = typer.Option(5, "--top", max=9),
            clamped: int = typer.Option(0, "--clamped", min=1, max=3, clamp=True),
            maybe: Optional[int] = typer.Option(None, "--maybe"),
            mpp: Optional[float] = typer.Option(None, "--mpp"),
            where: Optional[Path] = typer.Option(None, "--where"),
            must: Path = typer.Option(Path("."), "--must", exists=True, dir_okay=False),
            names: list[str] = typer.Option([], "--name")):
        pass

    return {p.name: p for p in typer.main.get_command(app).params}


def _outcome(runtime, value, param):
    try:
        out = runtime.coerce(value, param=param, ctx=None)
        return type(out), out
    except typer.BadParameter as e:  # typer's own click copy raises its BadParameter
        return "error", e.format_message()
    except Exception as e:  # noqa: BLE001
        return "error", f"{type(e).__name__}: {e}"


@pytest.mark.parametrize("name,value", [
    ("path", "a/b/"), ("path", ""), ("path", "-"), ("text", "hello"), ("text", None), ("n", 1), ("n", 0),
    ("n", "2"), ("n", "x"), ("n", True), ("top", 9), ("top", 10), ("clamped", 0), ("clamped", 2), ("maybe", None),
    ("maybe", "3"), ("mpp", "0.25"), ("mpp", "x"), ("where", None), ("where", "dir/"), ("must", str(EXAMPLE)),
    ("must", "no/such/file"), ("must", str(EXAMPLE.parent)), ("names", ("a", "b")), ("names", None)])
def test_values_and_errors_are_typers(name, value):
    """Each value comes out of the command line as typer's adapter gives it: same value and type, or the same
    error message."""
    if not hasattr(cli, "_build"):
        pytest.skip("another typer: its coercion is left as it is")
    param = _params()[name]
    ours = cli._Coercion(param.type_descriptor, cli._build)
    assert _outcome(ours, value, param) == _outcome(cli._build(param.type_descriptor), value, param)


@pytest.mark.parametrize("args, env, threads", [(["extract"], {}, "1"), (["validate"], {}, None),
                                                (["extract", "--features-only"], {}, None),
                                                (["extract"], {"OPENBLAS_NUM_THREADS": "3"}, "3")])
def test_extract_loads_numpy_with_one_blas_thread(args, env, threads):
    """An extract process loads numpy (OpenBLAS) with one thread (it makes no BLAS call; starting the worker
    threads cost ~30 ms CPU, ~80 ms wall); other commands, --features-only (an encoder runs), and a value the
    user set are left alone."""
    import os

    code = "import os, slidestream.engine.cli; print(os.environ.get('OPENBLAS_NUM_THREADS'))"
    base = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code, *args], env={**base, **env}, capture_output=True, text=True,
                         check=True).stdout
    assert out.split()[-1] == str(threads)


@pytest.mark.parametrize("enabled", [True, False])
def test_cli_imports_run_no_garbage_collection_and_are_frozen(enabled):
    """Importing the CLI runs no garbage collection over its imports (73 that freed nothing, and a full one later
    took 13-19 ms; one young collection may follow once it is back on) and freezes what they made; the
    collector is left on (or off, as it was)."""
    code = ("import gc, json\n" + ("" if enabled else "gc.disable()\n") +
            "before = sum(s['collections'] for s in gc.get_stats())\n"
            "import slidestream.engine.cli\n"
            "print(json.dumps([sum(s['collections'] for s in gc.get_stats()) - before, gc.isenabled(), "
            "gc.get_freeze_count() > 0]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    collections, on, frozen = json.loads(out.strip().splitlines()[-1])
    assert collections <= 2 and on == enabled and frozen == enabled

"""Start-up: the command line imports only what a command uses (issue 11). Loading the CLI must not import
the store (zarr), image libraries, torch or dask: each command imports them when it runs."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import EXAMPLE

HEAVY = ["zarr", "cupy", "skimage", "scipy", "torch", "timm", "dask", "distributed", "cucim",
         "slidestream.engine.store", "slidestream.engine.augment", "slidestream.engine.runner"]


def test_cli_import_is_light():
    code = ("import sys, json, slidestream.engine.cli; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []


NO_NVIDIA = not any(Path("/dev").glob("nvidia[0-9]*"))


def test_extract_process_imports_only_what_it_uses(tmp_path):
    """A one-slide ``extract --json`` (the liu2020 pipeline) does not import SciPy (DPW labels with cc3d, age_gda
    imports SciPy when it runs), rich (no progress bar, no table), zarr (the store writes its files itself:
    engine/zarr3.py), nor CuPy through cuCIM on a machine without an NVIDIA device."""
    from slidestream.engine.synthetic import make_slide

    make_slide(tmp_path / "slides" / "a.svs", size=(3072, 2048), label=1, seed=1, mpp=1.0, objective=10)
    heavy = ["scipy", "skimage", "torch", "dask", "distributed", "rich", "zarr"] + (["cupy"] if NO_NVIDIA else [])
    code = ("import atexit, json, sys\n"
            f"atexit.register(lambda: print(json.dumps([m for m in {heavy!r} if m in sys.modules])))\n"
            "from slidestream.engine.cli import main\nmain()\n")
    p = subprocess.run([sys.executable, "-c", code, "extract", str(EXAMPLE), "--slides", str(tmp_path / "slides"),
                        "--out", str(tmp_path / "store"), "--no-qa", "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    summary, imported = (json.loads(line) for line in p.stdout.strip().splitlines()[-2:])
    assert summary["slides"][0]["status"] == "done" and summary["slides"][0]["patches"] > 0
    assert imported == []


def test_console_script_exit_skips_teardown_but_not_atexit_or_output(tmp_path):
    """``main()`` called from ``__main__`` ends the process with ``os._exit`` (cli.exit_now): atexit handlers
    (store locks, logging) still run, stdout is flushed, the exit status is kept, and the interpreter's
    teardown (module clean-up: an object's ``__del__`` in ``__main__``) is skipped."""
    flag, gone = tmp_path / "atexit-ran", tmp_path / "teardown-ran"
    code = ("import atexit, sys\n"
            f"atexit.register(lambda: open({str(flag)!r}, 'w').close())\n"
            f"class Td:\n    def __del__(self, open=open): open({str(gone)!r}, 'w').close()\n"
            "td = Td()\n"
            "from slidestream.engine.cli import main\nmain()\n")
    p = subprocess.run([sys.executable, "-c", code, "validate", str(EXAMPLE)], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip().endswith("valid"), p.stderr
    assert flag.exists() and not gone.exists()
    flag.unlink()
    p = subprocess.run([sys.executable, "-c", code, "validate", str(tmp_path / "none.json")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("error: pipeline file")
    assert flag.exists()
    p = subprocess.run([sys.executable, "-c", code, "extract"], capture_output=True, text=True)  # click usage error
    assert p.returncode == 2 and "Missing argument" in p.stderr


def test_without_cupy_blocks_cupy_only_inside(monkeypatch):
    import pytest

    from slidestream.engine import device

    if "cupy" in sys.modules:  # zarr's pytest plugin imports zarr, and zarr CuPy, in the test process
        monkeypatch.delitem(sys.modules, "cupy")  # put back after the test
    monkeypatch.setattr(device, "nvidia_device_present", lambda: False)
    with device.without_cupy():
        with pytest.raises(ImportError):
            import cupy  # noqa: F401
    assert "cupy" not in sys.modules  # a later `import cupy` (a GPU stage) finds the real package
    monkeypatch.setattr(device, "nvidia_device_present", lambda: True)
    with device.without_cupy():
        assert "cupy" not in sys.modules  # with a device nothing is blocked

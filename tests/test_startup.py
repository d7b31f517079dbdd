"""Start-up: the command line imports only what a command uses (issue 11). Loading the CLI must not import
the store (zarr), image libraries, torch or dask: each command imports them when it runs."""

import json
import subprocess
import sys

HEAVY = ["zarr", "cupy", "skimage", "scipy", "torch", "timm", "dask", "distributed", "cucim",
         "slidestream.engine.store", "slidestream.engine.augment", "slidestream.engine.runner"]


def test_cli_import_is_light():
    code = ("import sys, json, slidestream.engine.cli; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []

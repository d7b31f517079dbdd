import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
WSI = DATA / "wsi"
ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "schemas" / "examples" / "liu2020.json"


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cli():
    """Run the CLI in-process: returns (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from slidestream.engine.cli import app
    from slidestream.engine.errors import SlidestreamError

    runner = CliRunner()

    def run(*args):
        res = runner.invoke(app, [str(a) for a in args])
        if isinstance(res.exception, SlidestreamError):
            return res.exception.exit_code, res.stdout, str(res.exception)
        if res.exception and not isinstance(res.exception, SystemExit):
            raise res.exception
        return res.exit_code, res.stdout, res.stderr

    return run


def slidestream_cmd():
    return [sys.executable, "-m", "slidestream.engine"]

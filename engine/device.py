"""Which device to run on: the pipeline's ``device`` setting (``auto`` | ``cpu`` | ``cuda``)."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError


def nvidia_device_present() -> bool:
    """Whether the machine shows an NVIDIA device node (no node: no driver, nothing CUDA can run)."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


@contextmanager
def without_cupy():
    """Import zarr or cuCIM inside this block: on a machine without an NVIDIA device CuPy is not imported.

    Both import CuPy whenever it is installed (zarr for its GPU buffer class, cuCIM for its GPU functions):
    ~0.1-0.2 s CPU of start-up (CuPy with cuda-python), with nothing CuPy could run without a driver.
    ``import cupy`` fails inside the block (a ``None`` entry in ``sys.modules``), so zarr's
    ``zarr.core.buffer.gpu`` and cuCIM's GPU functions stay off in this process; afterwards ``import cupy``
    works again. Where a device is present, or CuPy is already imported, nothing changes."""
    if "cupy" in sys.modules or nvidia_device_present():
        yield
        return
    sys.modules["cupy"] = None
    try:
        yield
    finally:
        if "cupy" in sys.modules and sys.modules["cupy"] is None:
            del sys.modules["cupy"]


def check_option(device: str | None) -> str | None:
    """A command's ``--device`` value (None: the pipeline's setting), refused in one line unless auto/cpu/cuda."""
    if device not in (None, "auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, not {device!r}")
    return device


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a CUDA device is usable, else ``cpu``; ``cuda`` without one is an error."""
    if device == "cpu":
        return "cpu"
    if device not in ("auto", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, not {device!r}")
    has_gpu = False
    if nvidia_device_present():  # no driver, no GPU: skip importing torch
        try:
            import torch

            has_gpu = torch.cuda.is_available()
        except Exception:
            has_gpu = False
    if device == "cuda" and not has_gpu:
        raise ConfigError("device 'cuda' was asked for but no CUDA device is visible; use 'auto' or 'cpu'")
    return "cuda" if has_gpu else "cpu"

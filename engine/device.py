"""Which device to run on: the pipeline's ``device`` setting (``auto`` | ``cpu`` | ``cuda``)."""
from __future__ import annotations

from pathlib import Path

from .errors import ConfigError


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a CUDA device is usable, else ``cpu``; ``cuda`` without one is an error."""
    if device == "cpu":
        return "cpu"
    if device not in ("auto", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, not {device!r}")
    has_gpu = False
    if any(Path("/dev").glob("nvidia[0-9]*")):  # no driver, no GPU: skip importing torch
        try:
            import torch

            has_gpu = torch.cuda.is_available()
        except Exception:
            has_gpu = False
    if device == "cuda" and not has_gpu:
        raise ConfigError("device 'cuda' was asked for but no CUDA device is visible; use 'auto' or 'cpu'")
    return "cuda" if has_gpu else "cpu"

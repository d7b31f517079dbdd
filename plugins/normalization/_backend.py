"""CPU/GPU dispatch shared by the normalization plugins.

Every plugin takes ``device`` = ``"auto"`` | ``"cpu"`` | ``"cuda"``. ``auto`` computes on the GPU when the batch
already is a CuPy array or a CUDA device is present, else on the CPU. The CPU path uses scikit-image and NumPy,
the GPU path the same functions from ``cucim.skimage`` and CuPy. The result comes back as the same kind of
array that went in (NumPy in, NumPy out; CuPy in, CuPy out), wherever it was computed.
"""
from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

from slidestream.engine.errors import ConfigError

DEVICE_PARAM = {"enum": ["auto", "cpu", "cuda"],
                "description": "auto: the GPU (cucim.skimage/CuPy) when present, else the CPU (scikit-image/NumPy)"}


@functools.lru_cache(maxsize=1)
def gpu_available() -> bool:
    """True when CuPy can see a CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, no driver, no device
        return False


def is_cupy(a: Any) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def backend(batch: Any, device: str = "auto", channels: tuple[int, ...] = (3,)) -> tuple[Any, SimpleNamespace, Callable]:
    """Check ``batch`` (n, h, w, c) uint8 and move it where ``device`` says.

    Returns ``(array, b, restore)``: ``b.xp`` is numpy or cupy, ``b.ski`` skimage or cucim.skimage (with
    ``exposure`` and ``color`` imported), ``b.gpu`` a bool, and ``restore(out)`` turns the result back into
    the input's array kind.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, not {device!r}")
    shape, dtype = getattr(batch, "shape", None), getattr(batch, "dtype", None)
    if shape is None or len(shape) != 4 or shape[-1] not in channels or dtype != np.uint8:
        want = " or ".join(str(c) for c in channels)
        raise ConfigError(f"normalization expects a (n, h, w, {want}) uint8 batch, got shape {shape} dtype {dtype}; "
                          "check the order of the normalization chain (stain and colour steps come before grayscale)")
    in_gpu = is_cupy(batch)
    if device == "cuda" and not gpu_available():
        raise ConfigError("device 'cuda' asked for but no CUDA device is visible to CuPy; use device 'auto' or 'cpu'")
    gpu = device == "cuda" or (device == "auto" and (in_gpu or gpu_available()))
    if gpu:
        import cupy
        import cucim.skimage
        import cucim.skimage.color
        import cucim.skimage.exposure

        b = SimpleNamespace(xp=cupy, ski=cucim.skimage, gpu=True)
        arr = cupy.asarray(batch)
    else:
        import skimage
        import skimage.color
        import skimage.exposure

        b = SimpleNamespace(xp=np, ski=skimage, gpu=False)
        arr = batch.get() if in_gpu else np.asarray(batch)

    def restore(out: Any) -> Any:
        if in_gpu == gpu:
            return out
        if in_gpu:
            import cupy

            return cupy.asarray(out)
        return out.get()

    return arr, b, restore


def to_uint8(xp: Any, x: Any) -> Any:
    """Float image in [0, 1] -> uint8 0..255 (rounded, clipped)."""
    return xp.clip(xp.rint(x * 255.0), 0, 255).astype(xp.uint8)

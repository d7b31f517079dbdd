"""Small helpers shared by the built-in readers (not a plugin)."""
from __future__ import annotations

import os
from typing import Callable

import numpy as np


def positive_float(v) -> float | None:
    """``float(v)`` when it is a positive number, else None (metadata values are often missing or '')."""
    try:
        f = float(v)
        return f if f > 0 else None
    except (TypeError, ValueError):
        return None


def to_rgb(a: np.ndarray) -> np.ndarray:
    """uint8 RGB from gray, RGB or RGBA (alpha composited over white, as glass looks)."""
    a = np.asarray(a)
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 4:
        alpha = a[..., 3:4].astype(np.uint16)
        rgb = (a[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha)) // 255
        return rgb.astype(np.uint8)
    if a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def read_clipped(read: Callable[[int, int, int, int], np.ndarray], location: tuple[int, int], level: int,
                 size: tuple[int, int], dims: tuple[int, int], downsample: float) -> np.ndarray:
    """Read ``size`` pixels at ``level`` from level-0 ``location``; the part outside the level is white.

    ``read(lx, ly, w, h)`` reads an in-bounds box in level coordinates.
    """
    w, h = size
    lx, ly = int(round(location[0] / downsample)), int(round(location[1] / downsample))
    out = np.full((h, w, 3), 255, np.uint8)
    x0, y0 = max(lx, 0), max(ly, 0)
    x1, y1 = min(lx + w, dims[0]), min(ly + h, dims[1])
    if x1 > x0 and y1 > y0:
        out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = to_rgb(read(x0, y0, x1 - x0, y1 - y0))
    return out


def check_tiff_complete(path: str) -> None:
    """Raise ValueError when a TIFF's strips/tiles point past the end of the file (a truncated copy).

    Some decoders (cuCIM among them) read such files silently, returning garbage for the missing tiles.
    """
    import tifffile

    import logging

    size = os.path.getsize(path)
    problems: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            problems.append(record.getMessage())

    log = logging.getLogger("tifffile")
    handler, propagate = Catch(level=logging.ERROR), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        with tifffile.TiffFile(path) as tf:
            for page in tf.pages:
                offs, counts = page.dataoffsets, page.databytecounts
                if len(offs) and max(o + c for o, c in zip(offs, counts)) > size:
                    raise ValueError("truncated file: image data runs past the end of the file")
    finally:
        log.removeHandler(handler)
        log.propagate = propagate
    if any("invalid page offset" in p or "truncated" in p.lower() for p in problems):
        raise ValueError("truncated file: TIFF directories point past the end of the file")


def mpp_from_tiff_tags(page) -> float | None:
    """Level-0 micrometres per pixel from TIFF resolution tags, when they are plausible for a slide."""
    try:
        xres = page.tags["XResolution"].value
        unit = int(page.tags["ResolutionUnit"].value)
    except KeyError:
        return None
    px_per_unit = xres[0] / xres[1] if isinstance(xres, tuple) else float(xres)
    if px_per_unit <= 0:
        return None
    um = {2: 25400.0, 3: 10000.0}.get(unit)  # inch, centimetre
    if um is None:
        return None
    mpp = um / px_per_unit
    return mpp if 0.05 <= mpp <= 20 else None  # 72-dpi photos etc. are not a resolution


JFIF = b"\xff\xd8\xff\xe0\x00\x10JFIF"


def tiff_jfif_marked_rgb(path: str) -> bool:
    """True when a JPEG TIFF says Photometric=RGB but its tiles are JFIF (YCbCr) streams.

    Decoders that trust the Photometric tag (cuCIM) then skip the YCbCr->RGB conversion and return
    false colours; libjpeg via tifffile/imagecodecs honours the JFIF marker and decodes correctly.
    """
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        if page.compression != 7 or page.photometric != 2 or not len(page.dataoffsets):
            return False
        tf.filehandle.seek(page.dataoffsets[0])
        return tf.filehandle.read(len(JFIF)) == JFIF


def dicom_jfif_marked_rgb(path: str) -> bool:
    """True when a DICOM-WSI file says RGB but its JPEG frames are JFIF (YCbCr) streams."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    i = head.find(b"\xff\xd8\xff")
    return i >= 0 and head[i:i + len(JFIF)] == JFIF


def ycbcr_to_rgb(a: np.ndarray) -> np.ndarray:
    """JPEG (JFIF, full-range BT.601) YCbCr to RGB, uint8."""
    f = a.astype(np.float32)
    y, cb, cr = f[..., 0], f[..., 1] - 128.0, f[..., 2] - 128.0
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def tiff_level_count(path: str) -> int:
    """Pyramid levels tifffile finds in a TIFF's first series (SubIFDs included); 0 if not a TIFF."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            return len(tf.series[0].levels) if tf.series else 1
    except Exception:
        return 0

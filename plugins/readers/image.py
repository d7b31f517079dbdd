"""Plain images: PNG/JPEG/TIFF photos and single cropped tiles (the paper's second cohort was one
cropped tile per patient). One level; the resolution usually has to come from ``--mpp`` or the
cohort's ``mpp`` column, since photo DPI values do not describe the microscope."""
from __future__ import annotations

import numpy as np

from slidestream.engine.hookspecs import ReaderPlugin, hookimpl

from .common import read_clipped, to_rgb


class ImageSlide:
    def __init__(self, path: str, device: str = "cpu"):
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as im:
            im.load()
            self._rgb = to_rgb(np.asarray(im.convert("RGBA") if im.mode in ("P", "LA", "RGBA", "PA") else im.convert("RGB")))
            dpi = im.info.get("dpi")
        self.path = path
        h, w = self._rgb.shape[:2]
        self.level_dimensions = [(w, h)]
        self.level_downsamples = [1.0]
        self.mpp = None
        if dpi and dpi[0] and 25400.0 / float(dpi[0]) <= 20:  # only a microscope-like resolution counts
            self.mpp = 25400.0 / float(dpi[0])
        self.objective_power = None

    def read_region(self, location, level, size):
        return read_clipped(lambda x, y, w, h: self._rgb[y:y + h, x:x + w], location, level, size,
                            self.level_dimensions[0], 1.0)

    def close(self) -> None:
        self._rgb = None


@hookimpl
def slidestream_readers():
    return [ReaderPlugin(name="image", open=ImageSlide, priority=40,
                         suffixes=(".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"),
                         summary="Pillow: PNG/JPEG/TIFF photos and cropped tiles (one level)")]

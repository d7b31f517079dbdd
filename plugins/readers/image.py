"""Plain images: PNG/JPEG/TIFF photos and single cropped tiles (the paper's second cohort was one
cropped tile per patient). One level; the resolution usually has to come from ``--mpp`` or the
cohort's ``mpp`` column, since photo DPI values do not describe the microscope.

Pillow's decompression-bomb limit stays in force (``Image.MAX_IMAGE_PIXELS``, about 179 Mpx refused): a
larger picture, or a header claiming one, is refused before it is decoded; convert such an image to a
tiled pyramidal TIFF. A truncated picture is an error, never a partly grey image; a JPEG is decoded once by
libjpeg-turbo with warnings as errors first (Pillow decodes damaged data silently)."""
from __future__ import annotations

import numpy as np

from slidestream.engine.errors import BrokenFile
from slidestream.engine.hookspecs import ReaderPlugin, hookimpl

from .common import check_claims, mpp_xy, read_clipped, strict_jpeg_problem, to_rgb


class ImageSlide:
    def __init__(self, path: str, device: str = "cpu"):
        import warnings

        from PIL import Image

        check_claims(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # between 1x and 2x the limit
                with Image.open(path) as im:
                    if im.format == "JPEG":  # Pillow decodes damaged JPEG data without a word
                        with open(path, "rb") as f:
                            why = strict_jpeg_problem(f.read(), components=len(im.getbands()))
                        if why:
                            raise BrokenFile(f"corrupt JPEG data ({why}); the file is damaged, copy it again")
                    im.load()
                    if im.mode.startswith(("I;16", "I", "F")):  # 16-bit / 32-bit gray: scaled, not clipped
                        self._rgb = to_rgb(np.asarray(im))
                    else:
                        self._rgb = to_rgb(np.asarray(im.convert("RGBA") if im.mode in ("P", "LA", "RGBA", "PA")
                                                      else im.convert("RGB")))
                    dpi = im.info.get("dpi")
        except Image.DecompressionBombError as e:
            raise BrokenFile(f"the image claims more pixels than Pillow's decompression-bomb limit "
                             f"({2 * Image.MAX_IMAGE_PIXELS:,} px); convert it to a tiled pyramidal TIFF: "
                             f"{str(e).split(', could be')[0]}") from None
        except OSError as e:
            if "truncated" in str(e):
                raise BrokenFile(f"truncated image: {e}") from None
            raise
        self.path = path
        h, w = self._rgb.shape[:2]
        self.level_dimensions = [(w, h)]
        self.level_downsamples = [1.0]
        self.mpp = self.mpp_y = None
        if dpi and dpi[0] and 25400.0 / float(dpi[0]) <= 20:  # only a microscope-like resolution counts
            self.mpp, self.mpp_y = mpp_xy(25400.0 / float(dpi[0]), 25400.0 / float(dpi[1]) if len(dpi) > 1 and dpi[1] else None)
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

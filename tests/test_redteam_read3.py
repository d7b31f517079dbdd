"""Red team of the reading side, round 3: bad slides that hung, allocated what a broken header claims, or passed
as good data."""
import numpy as np
import pytest
import tifffile

from slidestream.engine.errors import SlideError
from slidestream.engine.slide import open_slide

APERIO = "Aperio Image Library v12.0.0\r\n512x512 [0,0 512x512] (256x256) JPEG/RGB Q=85|AppMag = 20|MPP = 0.5"


def _rgb(seed=0, shape=(512, 512)):
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


@pytest.mark.parametrize("codec", ["png", "webp", "jpegxl"])
def test_png_webp_jxl_tile_of_another_size_is_refused_before_decoding(tmp_path, codec):
    """A PNG / WebP / JPEG XL tile whose header claims another size than the TIFF's tiles was decoded whole
    (the decoder allocates what the header claims), then a patch read raised tifffile's TiffFileError ('cannot
    be reshaped'), which is no BrokenFile: the extraction stopped instead of recording the bad tile."""
    import imagecodecs

    enc = {"png": imagecodecs.png_encode, "webp": lambda t: imagecodecs.webp_encode(t, lossless=True),
           "jpegxl": lambda t: imagecodecs.jpegxl_encode(t, lossless=True)}[codec]
    a = _rgb()
    tiles = [a[:256, :256], np.tile(a[:256, :256], (2, 2, 1)), a[256:, :256], a[256:, 256:]]  # tile 1: 512 x 512
    p = tmp_path / f"{codec}.svs"
    tifffile.imwrite(p, (enc(np.ascontiguousarray(t)) for t in tiles), shape=(512, 512, 3), dtype=np.uint8,
                     tile=(256, 256), compression=codec, photometric="rgb", description=APERIO)
    s = open_slide(p)
    try:
        rgb, why = s.read_checked(0, 0, 256, 256)  # a good tile
        assert np.array_equal(rgb, a[:256, :256])
        rgb, why = s.read_checked(256, 0, 256, 256)
        name = {"png": "PNG", "webp": "WebP", "jpegxl": "JPEG XL"}[codec]
        assert rgb is None and f"corrupt {name} tile 1" in why and "header says 512 x 512 px, the TIFF tile is 256 x 256" in why
    finally:
        s.close()

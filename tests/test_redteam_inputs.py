"""Red team, second pass: inputs that were silently accepted with wrong numbers, or ended in a traceback."""
import numpy as np
import pytest
import tifffile

from slidestream.engine.errors import SlideError
from slidestream.engine.slide import open_slide

APERIO = "Aperio Image Library v12.0.0\r\n512x512 [0,0 512x512] (256x256) JPEG/RGB Q=85|AppMag = 20|MPP = 0.5"


def _rgb(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (512, 512, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------ slide metadata
@pytest.mark.parametrize("old, new, match", [
    ("MPP = 0.5", "MPP = 1e9", r"says 1e\+09 µm/px, not a microscope resolution"),  # was read as 1 µm/px
    ("|MPP = 0.5", "", None),  # AppMag = 20 alone: 0.5 µm/px
    ("AppMag = 20|MPP = 0.5", "AppMag = 1e9", r"objective power 1e\+09x, not a microscope objective"),  # was 1x
])
def test_aperio_values_are_read_whole_by_every_reader(tmp_path, old, new, match):
    """tifffile's reader took the digits before an exponent ("MPP = 1e9" -> 1 µm/px, "AppMag = 1e9" -> 1x);
    cuCIM and OpenSlide refused such a slide, so it fell through to tifffile and was extracted at a made-up
    resolution."""
    p = tmp_path / "s.svs"
    tifffile.imwrite(p, _rgb(), tile=(256, 256), photometric="rgb", description=APERIO.replace(old, new))
    for order in (["tifffile"], None):
        if match:
            with pytest.raises(SlideError, match=match):
                open_slide(p, order=order)
        else:
            s = open_slide(p, order=order)
            assert (s.mpp, s.mpp_source) == (0.5, "objective power")
            s.close()


@pytest.mark.parametrize("unit, size, mpp", [("mm", 0.0005, 0.5), ("nm", 500, 0.5), ("pixel", 1, None),
                                             ("reference frame", 1, None)])
def test_ome_physical_size_units(tmp_path, unit, size, mpp):
    """PhysicalSizeXUnit 'pixel' (or any unit that is no length) was taken as µm: 1 µm/px, silently."""
    p = tmp_path / "s.ome.tif"
    tifffile.imwrite(p, _rgb(), tile=(256, 256), photometric="rgb", metadata={
        "axes": "YXS", "PhysicalSizeX": size, "PhysicalSizeXUnit": unit, "PhysicalSizeY": size, "PhysicalSizeYUnit": unit})
    if mpp is None:
        with pytest.raises(SlideError, match="no resolution metadata"):
            open_slide(p)
    else:
        s = open_slide(p)
        assert s.mpp == pytest.approx(mpp) and s.mpp_source == "file mpp"
        s.close()

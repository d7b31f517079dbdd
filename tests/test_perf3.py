"""Issue 11, round 4: the thumbnail is resized in bands (``Slide._shrink``) and stays byte for byte the one
Pillow resize of the whole level it was before; the level is no longer held whole in memory."""

import tracemalloc

import numpy as np
import pytest
from PIL import Image

import slidestream.engine.slide as sl
from conftest import DATA, EXAMPLE, WSI
from slidestream.engine import config
from slidestream.engine.errors import BrokenFile
from slidestream.engine.runner import tissue_mask
from slidestream.engine.slide import open_slide

CMU = WSI / "CMU-1-Small-Region.svs"  # one level, 2220 x 2967: two bands at level 0
TCGA = WSI / "tcga-cr-7395-01a-01-ts1.svs"  # level 1 downsample 2.0005: bands cut from the level read whole


def whole_resize(slide, scale):
    """The thumbnail as it was made before: the level read whole, one Pillow bilinear resize."""
    w0, h0 = slide.dimensions
    level = slide.best_level(scale)
    lw, lh = slide.reader.level_dimensions[level]
    rgb = slide.reader.read_region((0, 0), level, (lw, lh))
    return np.asarray(Image.fromarray(rgb).resize((int(w0 // scale), int(h0 // scale)), Image.BILINEAR))


@pytest.mark.parametrize("path, reader, band", [(CMU, "cucim", None), (CMU, "openslide", 2220 * 300),
                                                (TCGA, "cucim", 2221 * 300), (TCGA, "openslide", 2221 * 300)])
def test_thumbnail_and_mask_equal_the_whole_level_resize(monkeypatch, path, reader, band):
    if band:
        monkeypatch.setattr(sl, "BAND_PIXELS", band)  # several bands (and 2 threads) on these small slides
    s = open_slide(path, order=[reader], mpp=0.25)
    old, new = whole_resize(s, 32), s.thumbnail(32, "resize")
    assert new.shape == old.shape
    assert np.array_equal(new, old)  # byte for byte, so within 1 grey level
    pipeline = config.load(str(EXAMPLE))
    assert np.array_equal(tissue_mask(pipeline, new), tissue_mask(pipeline, old))


def test_banded_resize_is_pillows_for_any_geometry(monkeypatch):
    """96 random strips and sizes (shrinking more or less in either direction, a little upscaling, strips
    not starting at row 0, a column-first geometry) against one Pillow resize of the same pixels."""
    monkeypatch.setattr(sl, "BAND_PIXELS", 918 * 256)  # 256-row bands
    s = open_slide(DATA / "pen" / "histoqc-1k-pen_red.png", mpp=0.25)  # 918 x 1000, downsample 1
    level = s.reader.read_region((0, 0), 0, (918, 1000))
    rng = np.random.default_rng(11)
    for _ in range(96):
        top = int(rng.integers(0, 300))
        h = int(rng.integers(1, 1000 - top + 1))
        tw, th = int(rng.integers(1, 960)), int(rng.integers(1, h + 40))
        want = np.asarray(Image.fromarray(level[top:top + h]).resize((tw, th), Image.BILINEAR))
        assert np.array_equal(s._shrink(0, top, h, tw, th), want), (top, h, tw, th)


def test_thumbnail_does_not_hold_the_level_whole(monkeypatch):
    """Bands of BAND_PIXELS, two at a time: the 6.6 Mpx level (19.8 MB as RGB) is never in memory at once."""
    monkeypatch.setattr(sl, "BAND_PIXELS", 2220 * 512, raising=False)  # 6 bands
    s = open_slide(CMU)
    s.thumbnail(32, "resize")  # warm up
    tracemalloc.start()
    try:
        s.thumbnail(32, "resize")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * 2220 * 2967 * 3, peak


def test_dpw_counts_make_no_int64_copy_of_the_thumbnail():
    """np.bincount and np.take first copy their input to int64 (8 bytes a pixel): the green histogram is counted
    by Pillow, the component sizes and the kept components in blocks, so no such copy is made; thresholds and
    masks are unchanged."""
    from slidestream.plugins.filters import dpw

    rgb = np.tile(np.asarray(Image.open(DATA / "pen" / "histoqc-1k-pen_red.png").convert("RGB")), (2, 2, 1))
    px = rgb.shape[0] * rgb.shape[1]
    g = rgb[..., 1]
    for thresh in (200, 100, 30):  # none, one and several overmask retries
        hist = np.bincount(g.ravel(), minlength=256)
        cum, t = np.concatenate([[0], np.cumsum(hist)]), thresh
        while t < 255 and dpw._masked_percent(int(cum[t] - hist[0]), px) >= 90:
            t = int(np.ceil((255 - t) / 2 + t))
        assert dpw._green_thresh(g, thresh) == t, thresh
    mask = dpw.fused(rgb, np.ones(g.shape, bool), [{"name": n} for n in dpw.COLOUR_FILTERS])
    labels = __import__("cc3d").connected_components(mask, connectivity=4)
    keep = np.bincount(labels.ravel())[labels] >= 500
    assert np.array_equal(dpw.small_objects(rgb, mask, 500), mask & keep)
    for f in (lambda: dpw._green_thresh(g), lambda: dpw.small_objects(rgb, mask, 500)):
        tracemalloc.start()
        try:
            f()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 * px, peak  # labels (4 bytes a pixel), the mask (1) and blocks: no 8-byte copy (13 before)


def test_tiff_check_does_not_loop_over_tiles_in_python(tmp_path):
    """Opening a slide checks that every tile's bytes lie inside the file (common._check_page): with numpy, not
    one Python step per tile (a 98304x65536 slide has 111,480 tiles: 11 ms of the open's ~60 ms)."""
    import sys

    from slidestream.plugins.readers import common

    steps = []

    def count(frame, event, arg):
        if event == "call" and frame.f_code.co_filename == common.__file__:
            steps.append(frame.f_code.co_name)

    sys.setprofile(count)
    try:
        common.check_tiff(str(CMU))  # 10 x 13 tiles at level 0
    finally:
        sys.setprofile(None)
    assert steps.count("<genexpr>") < 10, steps
    import tifffile

    with tifffile.TiffFile(CMU) as tf:
        at = tf.pages[0].tags["TileOffsets"].valueoffset  # where the first tile's offset is written
    data = bytearray(CMU.read_bytes())
    data[at:at + 4] = (0xFFFFFFF0).to_bytes(4, "little")  # a tile past the end of the file: still refused
    bad = tmp_path / "bad.svs"
    bad.write_bytes(bytes(data))
    with pytest.raises(BrokenFile, match="truncated file: the data of image 0 .* runs past the end"):
        common.check_tiff(str(bad))

"""Issue 11, round 11: cuCIM's reader decodes JPEG tiles with libjpeg-turbo directly (plugins/readers/libjpeg.py),
cuts a kept tile's patches from only the JPEG tiles they touch (``read_patches``), and the patch writer reuses its
chunk and output buffers. Same pixels and the same outcome on damaged data as cuCIM's own decode."""
from __future__ import annotations


import numpy as np
import pytest

from slidestream.engine.store import RowWriter
from slidestream.engine.synthetic import make_slide
from slidestream.plugins.readers import libjpeg
from slidestream.plugins.readers.cucim import CucimSlide

from badinputs import flip_jpeg_bytes, same_as_cucim
from conftest import DATA

CMU = DATA / "wsi" / "CMU-1-Small-Region.svs"  # real Aperio SVS: RGB-coded JPEG, 240 px tiles, one level


@pytest.fixture(scope="module")
def ycc(tmp_path_factory):
    """YCbCr JPEG tiles of 240 px (patches straddle tiles), levels 1 and 4 with a non-integer downsample (4100 / 1025)."""
    return make_slide(tmp_path_factory.mktemp("ycc") / "ycc.svs", size=(4100, 3090), tile=240, levels=(1, 4), seed=3)


def _pair(path):
    fast, ref = CucimSlide(str(path)), CucimSlide(str(path))
    ref.direct_jpeg = False  # cuCIM decodes every tile
    return fast, ref


@pytest.mark.parametrize("which", ["ycc", "cmu"])
def test_libjpeg_path_gives_cucims_pixels(which, ycc):
    fast, ref = _pair(ycc if which == "ycc" else CMU)
    rng = np.random.default_rng(0)
    try:
        for level, (w, h) in enumerate(fast.level_dimensions):
            ds = fast.level_downsamples[level]
            boxes = [(0, 0, w, h), (w - 300, h - 200, 300, 200), (-50, -70, 400, 300), (w - 100, 10, 500, 500)]
            boxes += [(int(x), int(y), int(s), int(s)) for x, y, s in
                      zip(rng.integers(0, w - 64, 12), rng.integers(0, h - 64, 12), rng.integers(1, 700, 12))]
            for x, y, bw, bh in boxes:
                loc = (int(round(x * ds)), int(round(y * ds)))
                assert np.array_equal(fast.read_region(loc, level, (bw, bh)), ref.read_region(loc, level, (bw, bh))), (level, x, y)
            assert fast._direct[level] is not None  # the libjpeg path was taken, not cuCIM's
    finally:
        fast.close(), ref.close()


def test_read_patches_decodes_each_touched_tile_once(ycc, monkeypatch):
    fast, ref = _pair(ycc)
    decoded = []
    real = libjpeg.JpegLevel.tile
    monkeypatch.setattr(libjpeg.JpegLevel, "tile",  # the decodes, not the 1/8 checks of untouched tiles
                        lambda self, k, full=True: (full and decoded.append(k)) or real(self, k, full))
    offsets = [(0, 0), (0, 0), (700, 500), (250, 760), (768, 768)]  # (x, y) in the 1024 px region; one repeated
    loc, s, n = (1500, 900), 256, 1024
    try:
        got = fast.read_patches(loc, 0, (n, n), offsets, s)
        region = ref.read_region(loc, 0, (n, n))
    finally:
        fast.close(), ref.close()
    for j, (px, py) in enumerate(offsets):
        assert np.array_equal(got[j], region[py:py + s, px:px + s])
    # the tiles the patches touch, counted independently; the probe tile (_libjpeg) is decoded before them
    touched = {(r, c) for px, py in offsets for r in range((loc[1] + py) // 240, (loc[1] + py + s - 1) // 240 + 1)
               for c in range((loc[0] + px) // 240, (loc[0] + px + s - 1) // 240 + 1)}
    whole = {(r, c) for r in range(loc[1] // 240, (loc[1] + n - 1) // 240 + 1)
             for c in range(loc[0] // 240, (loc[0] + n - 1) // 240 + 1)}
    cols = -(-4100 // 240)
    assert sorted(decoded[1:]) == sorted(r * cols + c for r, c in touched)
    assert len(touched) < len(whole)


def test_read_patches_refuses_what_it_cannot_cut(ycc):
    fast = CucimSlide(str(ycc))
    try:
        assert fast.read_patches((4000, 0), 0, (1024, 1024), [(0, 0)], 256) is None  # runs off the level
        assert fast.read_patches((0, 0), 0, (1024, 1024), [(900, 0)], 256) is None  # patch outside the region
    finally:
        fast.close()


def test_probe_that_differs_from_cucim_leaves_the_level_to_cucim(ycc, monkeypatch):
    real = CucimSlide._cucim
    monkeypatch.setattr(CucimSlide, "_cucim", lambda self, *a: real(self, *a) // 2)  # stands for other rounding/colours
    fast = CucimSlide(str(ycc))
    try:
        fast.read_region((0, 0), 0, (300, 300))
        assert fast._direct[0] is None
        assert fast.read_patches((0, 0), 0, (1024, 1024), [(0, 0)], 256) is None
    finally:
        fast.close()


@pytest.mark.parametrize("seed", [None, 0, 1, 2])
def test_same_store_and_same_outcome_on_damaged_tiles(seed, ycc, tmp_path, monkeypatch):
    path = ycc if seed is None else flip_jpeg_bytes(ycc, tmp_path / f"flip{seed}.svs", n=12, seed=seed)
    recs = same_as_cucim(path, tmp_path, monkeypatch)
    if seed is None:
        assert next(iter(recs.values()))["n_patches"] > 0


def test_pooled_chunk_buffers_never_carry_rows_of_another_slide(tmp_path):
    cfg = {"codec": "zstd", "level": 1, "chunk": 4}
    full = RowWriter(tmp_path / "a", 8, 16, cfg)
    full.write(0, np.full((8, 16, 16, 3), 200, np.uint8))
    full.close()  # its chunk arrays go back to the pool
    gap = RowWriter(tmp_path / "b", 8, 16, cfg)
    gap.write(0, np.full((2, 16, 16, 3), 7, np.uint8))  # rows 2-3 never written (a dropped tile's)
    gap.write(4, np.full((3, 16, 16, 3), 9, np.uint8))  # row 7 past the last written one
    staged = gap.close()
    import zarr

    rows = np.asarray(zarr.open_array(staged, mode="r")[:])
    assert (rows[:2] == 7).all() and (rows[4:7] == 9).all()
    assert (rows[2:4] == 0).all() and (rows[7] == 0).all()  # zarr's fill value, not the first writer's 200s


def test_cucim_reads_the_level_pixels_asked_for(ycc):
    """Level 1 of the ycc slide has a downsample of 3.9987 (cuCIM's mean of 4100 / 1025 and 3090 / 773): the level's
    pixels at (x, y) must come back, as tifffile decodes them, not those at (x - 1, y) or (x, y - 1)."""
    import tifffile

    with tifffile.TiffFile(ycc) as tf:
        level = tf.pages[1].asarray()
    ref = CucimSlide(str(ycc))
    ref.direct_jpeg = False
    ds = ref.level_downsamples[1]
    rng = np.random.default_rng(5)
    try:
        for x, y in zip(rng.integers(0, 900, 40), rng.integers(0, 650, 40)):
            got = ref.read_region((int(round(x * ds)), int(round(y * ds))), 1, (64, 48))
            assert np.array_equal(got, level[y:y + 48, x:x + 64]), (x, y)
    finally:
        ref.close()


def test_chunks_reach_the_shard_file_while_later_rows_are_still_coming(tmp_path):
    """Each compressed chunk is appended to its shard file once every chunk before it is: the file is written
    while tiles decode, not all at close (24 MB in one go at the end of a bench40x slide)."""
    import time

    import zarr

    cfg = {"codec": "zstd", "level": 1, "chunk": 4}
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 255, (24, 16, 16, 3), dtype=np.uint8)
    w = RowWriter(tmp_path / "s", 24, 16, cfg)
    w.write(0, rows[:8])  # chunks 0 and 1 complete, handed to the compressor threads
    while not all(f.done() for f in w._chunks.values()):
        time.sleep(0.01)
    w.write(8, rows[8:10])  # chunk 2 half full: chunks 0 and 1 are written now
    files = [f for f in (tmp_path / "s").rglob("*") if f.is_file() and f.name != "zarr.json"]
    assert len(files) == 1 and files[0].stat().st_size > 0
    w.write(16, rows[16:24])  # rows 10-15 never written (chunk 3 absent, rows 10-11 fill)
    staged = w.close()
    got = np.asarray(zarr.open_array(staged, mode="r")[:])
    assert np.array_equal(got[:10], rows[:10]) and np.array_equal(got[16:], rows[16:])
    assert (got[10:16] == 0).all()


def test_a_tile_claiming_another_size_is_not_decoded(ycc, tmp_path, monkeypatch):
    """The JPEG header of a damaged tile may claim any size (60000² px: 10 GB of output): libjpeg.py reads the header
    first and leaves such a tile to cuCIM's path (whose tile check names it), without decoding it."""
    import simplejpeg
    import tifffile

    data = bytearray(ycc.read_bytes())
    with tifffile.TiffFile(ycc) as tf:
        off, n = int(tf.pages[0].dataoffsets[40]), int(tf.pages[0].databytecounts[40])
    sof = data.index(b"\xff\xc0", off, off + n)
    data[sof + 5:sof + 9] = (60000).to_bytes(2, "big") * 2  # frame height and width
    bad = tmp_path / "claim.svs"
    bad.write_bytes(bytes(data))
    decoded = []
    real = simplejpeg.decode_jpeg
    monkeypatch.setattr(simplejpeg, "decode_jpeg", lambda d, **k: decoded.append(simplejpeg.decode_jpeg_header(d)) or real(d, **k))
    fast = CucimSlide(str(bad))
    try:
        lv = libjpeg.jpeg_level(fast.path, fast._tiles, fast.level_dimensions[0])
        assert lv.tile(40) is None
        assert lv.tile(41) is not None
    finally:
        fast.close()
        lv.close()
    assert all(h[:2] == (240, 240) for h in decoded), decoded  # the 60000² tile never reached the decoder

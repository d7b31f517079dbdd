"""Readers on real slides: levels, resolution, regions, fallback and bad files."""

import numpy as np
import pytest

from conftest import WSI
from slidestream.engine.errors import SlideError
from slidestream.engine.slide import open_slide

CMU = WSI / "CMU-1-Small-Region.svs"
TCGA = WSI / "tcga-cr-7395-01a-01-ts1.svs"
OME = WSI / "OS-1-detail.ome.tif"
DICOM = WSI / "dicom-cmu-1-small-region"


@pytest.mark.parametrize("reader", ["cucim", "openslide", "tifffile"])
def test_svs_same_pixels_with_every_reader(reader):
    s = open_slide(CMU, order=[reader])
    assert s.reader_name == reader
    assert s.dimensions == (2220, 2967)
    assert s.mpp == pytest.approx(0.499, abs=1e-3)
    a = s.reader.read_region((1000, 1200), 0, (64, 48))
    assert a.shape == (48, 64, 3) and a.dtype == np.uint8
    ref = open_slide(CMU, order=["openslide"]).reader.read_region((1000, 1200), 0, (64, 48))
    assert np.abs(a.astype(int) - ref).mean() < 3  # same JPEG tiles, decoders may round differently


def test_default_order_prefers_cucim_and_edges_are_white():
    s = open_slide(CMU)
    assert s.reader_name == "cucim"
    a = s.reader.read_region((2200, 2950), 0, (64, 64))
    assert (a[30:, 30:] == 255).all()  # outside the slide
    assert s.factor(10) == pytest.approx(10 * 1.0 / 10 / 0.499 * 1.0, rel=1e-6)  # 20x slide -> 2 level-0 px per 10x px


def test_ome_tiff_resolution_from_ome_metadata():
    s = open_slide(OME)
    assert s.mpp == pytest.approx(0.2271, abs=1e-3)
    t = open_slide(OME, order=["tifffile"])
    assert t.mpp == pytest.approx(0.2271, abs=1e-3)
    assert np.array_equal(s.reader.read_region((100, 100), 0, (32, 32)), t.reader.read_region((100, 100), 0, (32, 32)))


def test_dicom_folder_and_file():
    for p in (DICOM, DICOM / "level-0-frames-0-30.dcm"):
        s = open_slide(p)
        assert s.reader_name == "dicom"  # OpenSlide leaves DICOM to it: it reports corrupt frames
        assert s.dimensions == (2220, 2967) and len(s.reader.level_dimensions) == 12
        assert s.mpp == pytest.approx(0.499, abs=1e-3)
    import openslide  # the same pixels as OpenSlide's (whose JFIF-coded frames tagged RGB need converting)

    from slidestream.plugins.readers.common import ycbcr_to_rgb

    o = openslide.OpenSlide(str(DICOM / "level-0-frames-0-30.dcm"))
    ours = s.reader.read_region((300, 500), 0, (700, 600)).astype(int)
    assert np.abs(ours - ycbcr_to_rgb(np.asarray(o.read_region((300, 500), 0, (700, 600)))[..., :3])).max() <= 1


def test_jpeg2000_svs_without_resolution_is_refused_with_the_fix():
    with pytest.raises(SlideError, match=r"no resolution metadata.*--mpp.*`mpp` column"):
        open_slide(TCGA)
    s = open_slide(TCGA, mpp=0.5)
    assert s.mpp_source == "cohort" and len(s.reader.level_dimensions) == 2
    thumb = s.thumbnail(32)
    assert thumb.shape == (3567 // 32, 4443 // 32, 3)
    assert thumb.std() > 5  # decoded JPEG 2000, not a blank


def test_plain_image_needs_mpp(tmp_path):
    from PIL import Image

    png = tmp_path / "crop.png"
    Image.fromarray(np.full((300, 400, 3), 200, np.uint8)).save(png)
    with pytest.raises(SlideError, match="--mpp"):
        open_slide(png)
    s = open_slide(png, mpp=0.5)
    assert s.reader_name == "image" and s.dimensions == (400, 300)


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "truncated"])
def test_bad_files_give_one_line_errors(tmp_path, kind):
    p = tmp_path / "broken.svs"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("this is not a slide\n")
    elif kind == "truncated":
        p.write_bytes(CMU.read_bytes()[:1_500_000])
    with pytest.raises(SlideError) as e:
        open_slide(p)
    msg = str(e.value)
    assert str(p) in msg and "\n" not in msg
    if kind == "truncated":
        assert "truncated" in msg


def test_thumbnail_in_strips_matches_whole(monkeypatch):
    import slidestream.engine.slide as sl

    s = open_slide(CMU)
    whole = s.thumbnail(32)
    monkeypatch.setattr(sl, "STRIP_PIXELS", 2220 * 200)  # force ~15 strips
    strips = s.thumbnail(32)
    assert whole.shape == strips.shape
    assert np.abs(whole.astype(int) - strips).mean() < 2


def test_false_colour_jpeg_files_are_decoded_right():
    """OS-1 (JFIF tiles tagged RGB) must not go through cuCIM; the DICOM copy of CMU-1 (JFIF frames
    tagged RGB) must come out close to the SVS it was made from, not in YCbCr false colours."""
    assert open_slide(OME).reader_name == "tifffile"
    dcm = open_slide(DICOM).thumbnail(8).astype(int)
    svs = open_slide(CMU).thumbnail(8).astype(int)
    assert dcm.shape == svs.shape
    assert np.abs(dcm - svs).mean() < 20
    assert dcm[:20, :20].mean() > 220  # glass is white, not pink


def test_cucim_decodes_on_the_cpu_on_every_device():
    """cuCIM's GPU decode gave wrong colours (RGB-coded JPEG, mean 54 levels off on this slide) and ran 160x
    slower on an H200 (bench/gpu_check.sh, 2026-12-04): with device="cuda" the reader decodes on the CPU and
    the slide's record says so (decode_device)."""
    cpu = open_slide(CMU, order=["cucim"], device="cpu").reader.read_region((500, 700), 0, (512, 512))
    r = open_slide(CMU, order=["cucim"], device="cuda").reader
    assert r.decode_device == "cpu"
    assert np.array_equal(r.read_region((500, 700), 0, (512, 512)), cpu)


def test_ome_subifd_pyramid_goes_to_tifffile(tmp_path):
    """An OME-TIFF whose reduced levels are SubIFDs: cuCIM sees one level, tifffile all three."""
    import tifffile

    rng = np.random.default_rng(0)
    base = (rng.integers(120, 230, (1024, 1536, 3))).astype(np.uint8)
    p = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(p, bigtiff=False) as tw:
        opts = dict(tile=(256, 256), photometric="rgb", compression="zlib",
                    metadata={"PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.5, "PhysicalSizeYUnit": "µm"})
        tw.write(base, subifds=2, **opts)
        tw.write(base[::2, ::2], subfiletype=1, tile=(256, 256), photometric="rgb", compression="zlib")
        tw.write(base[::4, ::4], subfiletype=1, tile=(256, 256), photometric="rgb", compression="zlib")
    s = open_slide(p)
    assert s.reader_name == "tifffile"
    assert [tuple(d) for d in s.reader.level_dimensions] == [(1536, 1024), (768, 512), (384, 256)]
    assert s.mpp == pytest.approx(0.5)
    assert np.array_equal(s.reader.read_region((512, 256), 1, (64, 32)), base[::2, ::2][128:160, 256:320])
    assert s.best_level(4.2) == 2


def test_nearly_matching_level_is_used_not_level_0(tmp_path):
    """A typical Aperio 40x slide (0.2527 µm/px): 10x tiles come from level 1 (downsample 4), resized 1 %."""
    from slidestream.engine.synthetic import make_slide

    p = make_slide(tmp_path / "a.svs", size=(4096, 3072), label=1, seed=3, mpp=0.2527)
    s = open_slide(p)
    f = s.factor(10)
    assert f == pytest.approx(3.957, abs=1e-3)
    assert s.best_level(f) == 1
    tile = s.read(0, 0, 1024 * f, 1024)
    assert tile.shape == (1024, 1024, 3)


@pytest.mark.parametrize("reader", ["cucim", "tifffile"])
def test_damaged_jpeg_tile_header_is_refused_before_decoding(tmp_path, reader):
    """A tile whose JPEG header says 288 px wide in a 256 px TIFF tile: cuCIM segfaults on it and tifffile
    decodes it silently; the readers look at the tile first and name it."""
    import tifffile

    from slidestream.engine.errors import BrokenFile
    from slidestream.engine.synthetic import make_slide

    p = make_slide(tmp_path / "a.svs", size=(1024, 768), label=1, seed=1, mpp=0.5, levels=(1, 4))
    data = bytearray(p.read_bytes())
    with tifffile.TiffFile(p) as tf:
        off, n = int(tf.pages[0].dataoffsets[5]), int(tf.pages[0].databytecounts[5])  # column 1, row 1
    sof = data.index(b"\xff\xc0", off, off + n)
    data[sof + 7:sof + 9] = (288).to_bytes(2, "big")  # frame width
    bad = tmp_path / "bad.svs"
    bad.write_bytes(bytes(data))
    s = open_slide(bad, order=[reader])
    assert s.reader.read_region((0, 0), 0, (256, 256)).shape == (256, 256, 3)  # other tiles read fine
    with pytest.raises(BrokenFile, match=r"corrupt JPEG tile 5 .*column 1, row 1.*says 288 x 256 px, the TIFF tile is 256 x 256"):
        s.reader.read_region((300, 300), 0, (64, 64))
    rgb, said = s.read_checked(256, 256, 512, 256)
    assert rgb is None and "corrupt JPEG tile 5" in said
    s.close()  # the reader's open TIFF, not left to the garbage collector (a ResourceWarning in a later test)

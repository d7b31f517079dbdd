"""Red team round 10: resolution metadata and magnification. The method tiles at 10x, so every number downstream
depends on the slide's µm/px: a slide read at the wrong scale, or made up to the scale asked for, must be refused
in one line, never extracted as if it were right."""
import json
import re

import numpy as np
import pytest
import tifffile
from PIL import Image

from slidestream.engine.errors import SlideError
from slidestream.engine.slide import open_slide
from slidestream.engine.synthetic import make_slide

PIPE = {"name": "t", "magnification": 10, "tiling": {"name": "grid", "params": {"size": 256, "min_tissue": 0.3, "max_tiles": 4}},
        "patches": {"size": 64, "mode": "random", "per_tile": 2}}


def _extract(cli, tmp_path, slide, magnification=10, mpp=""):
    pipe = tmp_path / "p.json"
    pipe.write_text(json.dumps({**PIPE, "magnification": magnification}))
    cohort = tmp_path / "c.csv"
    cohort.write_text(f"slide_path,patient_id,label,age,mpp\n{slide},P1,1,50,{mpp}\n")
    code, out, err = cli("extract", pipe, "--slides", cohort, "--out", tmp_path / "st", "--json", "--quiet")
    return code, json.loads(out)["slides"][0], err


# ------------------------------------------------------------------------------------ magnification
@pytest.mark.parametrize("mpp, magnification, refused", [
    (2.0, 10, "2 µm/px \\(file mpp\\), 5x, coarser than the 10x the pipeline asks for \\(its patches would be upsampled 2x\\)"),
    (0.5, 40, "0.5 µm/px \\(file mpp\\), 20x, coarser than the 40x"),
    (1.04, 10, None),  # within the 5 % a level may be coarser (as Aperio 20x slides at 0.504 µm/px for 20x)
    (0.5, 10, None),
])
def test_slide_coarser_than_the_pipeline_magnification_is_refused(cli, tmp_path, mpp, magnification, refused):
    """A 5x slide (2 µm/px) for the 10x pipeline was extracted ('done', no note): every tile upsampled 2x, blurred
    tissue stored as 10x patches. Up to 16x coarser passed."""
    slide = make_slide(tmp_path / "s.svs", size=(1024, 768), mpp=mpp, levels=(1, 4))
    code, rec, err = _extract(cli, tmp_path, slide, magnification)
    if refused:
        assert code == 1 and rec["status"] == "error" and rec["patches"] == 0
        assert f"{slide}: the slide is" in rec["reason"] and "\n" not in rec["reason"]
        assert re.search(refused, rec["reason"]), rec["reason"]
        assert "lower the pipeline's magnification" in rec["reason"]
    else:
        assert code == 0 and rec["status"] == "done" and rec["patches"] > 0, rec


# ------------------------------------------------------------------------------------ non-square pixels, wrong units
def _img(seed=0):
    rng = np.random.default_rng(seed)
    img = np.full((512, 768, 3), 235, np.uint8)
    img[100:400, 150:600] = rng.integers(60, 200, (300, 450, 3), dtype=np.uint8)
    return img


def _dicom(tmp_path, name, spacing_mm, power):
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from conftest import WSI

    ds = pydicom.dcmread(WSI / "pathml_small_dicom_TCGA-XK-AAJU_pen.dcm")
    pm, g, op = Dataset(), Dataset(), Dataset()
    pm.PixelSpacing = spacing_mm
    g.PixelMeasuresSequence = Sequence([pm])
    ds.SharedFunctionalGroupsSequence = Sequence([g])
    op.ObjectiveLensPower = power
    ds.OpticalPathSequence = Sequence([op])
    (tmp_path / name).mkdir()
    ds.save_as(tmp_path / name / f"{name}.dcm", enforce_file_format=False)
    return tmp_path / name / f"{name}.dcm"


@pytest.mark.parametrize("spacing, match", [
    ([0.00025, 0.0005], r"pixels are 0.5 µm wide and 0.25 µm high, not square \(patches would be stretched\)"),
    ([0.5, 0.5], r"the file says 500 µm/px, not a microscope resolution"),  # PixelSpacing written in µm, not mm
])
def test_dicom_pixel_spacing_that_cannot_be_used_is_not_replaced_by_the_objective_power(tmp_path, spacing, match):
    """A DICOM PixelSpacing the reader could not use (rows 0.25 µm, columns 0.5 µm; or 0.5 'mm' = 500 µm/px) was
    dropped as if absent, and the ObjectiveLensPower (20x) gave 0.5 µm/px: non-square pixels stretched 2:1 into
    square patches, or a file contradicting itself extracted, silently ('objective power')."""
    p = _dicom(tmp_path, "s", spacing, 20)
    with pytest.raises(SlideError, match=match) as e:
        open_slide(p)
    assert str(e.value).startswith(f"{p}: ") and "--mpp" in str(e.value)
    s = open_slide(p, mpp=0.5)  # the user's word wins, as README says
    assert (s.mpp, s.mpp_source) == (0.5, "cohort")
    s.close()


def test_tiff_resolution_tags_of_non_square_pixels_are_not_replaced_by_aperio_appmag(tmp_path):
    """X/YResolution of 0.5 x 1 µm pixels with an Aperio AppMag (no MPP): the tags were dropped, AppMag = 20 gave
    0.5 µm/px, and the slide was cut into squares 2x too tall."""
    p = tmp_path / "s.svs"
    tifffile.imwrite(p, _img(), tile=(128, 128), photometric="rgb", resolution=(2e4, 1e4), resolutionunit="CENTIMETER",
                     description="Aperio Image Library v12.0.0\r\n768x512 [0,0 768x512] (128x128) RAW|AppMag = 20")
    for order in (None, ["tifffile"], ["cucim"]):
        with pytest.raises(SlideError, match=r"pixels are 0.5 µm wide and 1 µm high, not square"):
            open_slide(p, order=order)


def _ome(path, x, y, unit, tags_um):
    tifffile.imwrite(path, _img(), tile=(128, 128), photometric="rgb", resolution=(1e4 / tags_um,) * 2,
                     resolutionunit="CENTIMETER", metadata={"axes": "YXS", "PhysicalSizeX": x, "PhysicalSizeXUnit": unit,
                                                            "PhysicalSizeY": y, "PhysicalSizeYUnit": unit})
    return path


def test_ome_physical_size_wins_over_tiff_tags_in_every_reader(tmp_path):
    """An OME-TIFF saying 0.0005 mm (0.5 µm) per pixel, its TIFF resolution tags 0.25 µm: cuCIM and OpenSlide (tried
    first) read the tags, tifffile the OME: the same file was extracted at 0.25 or 0.5 µm/px by the reader order."""
    p = _ome(tmp_path / "s.ome.tif", 0.0005, 0.0005, "mm", 0.25)
    for order in (None, ["cucim"], ["openslide"], ["tifffile"]):
        s = open_slide(p, order=order)
        assert (s.mpp, s.mpp_source) == (pytest.approx(0.5), "file mpp"), (order, s.reader_name)
        s.close()


def test_ome_non_square_pixels_are_refused_by_every_reader(tmp_path):
    """OME PhysicalSizeX 0.5 µm, PhysicalSizeY 1 µm, TIFF tags square 0.5 µm: tifffile found no resolution, so the
    next readers (OpenSlide, then Pillow's image reader) took the tags: patches stretched 2:1, silently."""
    p = _ome(tmp_path / "s.ome.tif", 0.5, 1.0, "µm", 0.5)
    for order in (None, ["openslide"], ["tifffile"], ["tifffile", "image"]):
        with pytest.raises(SlideError, match=r"pixels are 0.5 µm wide and 1 µm high, not square"):
            open_slide(p, order=order)


# ------------------------------------------------------------------------------------ levels
@pytest.mark.parametrize("aperio", [False, True])
def test_first_image_smaller_than_a_later_level_keeps_its_own_resolution(tmp_path, aperio):
    """A TIFF whose first image is 768 x 512 px at 1 µm/px (resolution tags, or Aperio MPP = 1), then the same
    tissue at 1536 x 1024 px, 0.5 µm/px: OpenSlide (generic TIFF) and cuCIM (Aperio) sort the levels and gave the
    1536 px level 0 the first image's 1 µm/px: the slide 1.5 mm wide instead of 0.77, 10x tiles cut at 20x.
    Every reader now gives a level 0 whose width in µm is the file's (768 µm)."""
    small = _img()  # 768 x 512
    big = np.asarray(Image.fromarray(small).resize((1536, 1024)))
    desc = "Aperio Image Library v12.0.0\r\n768x512 [0,0 768x512] (128x128) JPEG/RGB Q=85|AppMag = 10|MPP = 1"
    p = tmp_path / ("s.svs" if aperio else "s.tif")
    with tifffile.TiffWriter(p) as tw:
        for i, (lv, um) in enumerate([(small, 1.0), (big, 0.5), (np.asarray(Image.fromarray(big).reduce(4)), 2.0)]):
            tw.write(lv, tile=(128, 128), photometric="rgb", compression="jpeg", resolution=(1e4 / um,) * 2,
                     resolutionunit="CENTIMETER", metadata=None, subfiletype=1 if i else 0,
                     description=(desc if i == 0 else "Aperio Image Library v12.0.0\r\n768x512 -> x") if aperio else None)
    for order in (None, ["cucim", "tifffile"], ["openslide", "tifffile"], ["tifffile"]):
        s = open_slide(p, order=order)
        assert s.mpp * s.dimensions[0] == pytest.approx(768), (order, s.reader_name, s.mpp, s.dimensions)
        s.close()


# ------------------------------------------------------------------------------------ Aperio values
@pytest.mark.parametrize("values", ["MPP = 0,25", "AppMag = 20|MPP = 0,25"])
def test_aperio_mpp_with_a_decimal_comma_is_read_alike_by_every_reader(tmp_path, values):
    """'MPP = 0,25' (a scanner set to a German locale): OpenSlide read 0.25 µm/px, cuCIM and tifffile no MPP, so
    the same slide was 0.25 µm/px (OpenSlide), 0.5 (AppMag 20, cuCIM: the default reader) or refused (tifffile)."""
    p = tmp_path / "s.svs"
    head = "Aperio Image Library v12.0.0\r\n768x512 [0,0 768x512] (128x128) JPEG/RGB Q=85"
    with tifffile.TiffWriter(p) as tw:  # two levels: OpenSlide reads a one-image file as a generic TIFF
        for lv, desc in [(_img(), f"{head}|{values}"), (_img()[::4, ::4], f"{head} -> 192x128")]:
            tw.write(lv, tile=(128, 128), photometric="rgb", compression="jpeg", description=desc, metadata=None)
    for order in (None, ["cucim"], ["openslide"], ["tifffile"]):
        s = open_slide(p, order=order)
        assert (s.mpp, s.mpp_source) == (0.25, "file mpp"), (order, s.reader_name)
        s.close()


# ------------------------------------------------------------------------------------ --mpp
def test_mpp_option_is_for_slides_that_do_not_say_not_over_the_files_own(cli, tmp_path):
    """`extract --slides DIR --mpp 0.5` ('Level-0 µm/px for slides without resolution metadata'): a 40x slide whose
    file says 0.25 µm/px was extracted at 0.5 too (source 'cohort'): its 10x tiles cut at 20x, silently. The
    cohort's `mpp` column still overrides the file (it names the slide)."""
    from slidestream.engine.store import PatchStore
    from slidestream.engine.synthetic import render

    d = tmp_path / "slides"
    make_slide(d / "a40x.svs", size=(2048, 1536), mpp=0.25, levels=(1, 4))
    tifffile.imwrite(d / "b.tif", render((1024, 768), 1, seed=2, mpp=0.5), tile=(256, 256), photometric="rgb",
                     metadata=None)  # no resolution metadata at all
    pipe = tmp_path / "p.json"
    pipe.write_text(json.dumps(PIPE))
    code, out, err = cli("extract", pipe, "--slides", d, "--out", tmp_path / "st", "--mpp", "0.5", "--json", "--quiet")
    assert code == 0, err
    recs = PatchStore.open(tmp_path / "st").records()
    assert (recs["a40x"]["mpp"], recs["a40x"]["mpp_source"], recs["a40x"]["factor"]) == (0.25, "file mpp", 4.0)
    assert (recs["b"]["mpp"], recs["b"]["mpp_source"]) == (0.5, "--mpp")
    cohort = tmp_path / "c.csv"
    cohort.write_text(f"slide_path,patient_id,label,age,mpp\n{d / 'a40x.svs'},P1,1,50,0.5\n{d / 'b.tif'},P2,0,60,\n")
    code, out, err = cli("extract", pipe, "--slides", cohort, "--out", tmp_path / "st2", "--mpp", "1.0", "--json", "--quiet")
    recs = PatchStore.open(tmp_path / "st2").records()
    assert (recs["a40x"]["mpp"], recs["a40x"]["mpp_source"]) == (0.5, "cohort")  # the column, over the file
    assert (recs["b"]["mpp"], recs["b"]["mpp_source"]) == (1.0, "--mpp")  # an empty cell: --mpp


def test_mpp_option_still_covers_a_resolution_the_file_gives_wrong(tmp_path):
    """The messages refusing a file's resolution (non-square, out of range) name --mpp as the way out: it still is."""
    p = tmp_path / "s.tif"
    tifffile.imwrite(p, _img(), tile=(128, 128), photometric="rgb", resolution=(2e4, 1e4), resolutionunit="CENTIMETER")
    with pytest.raises(SlideError, match="not square.*give --mpp"):
        open_slide(p)
    s = open_slide(p, default_mpp=0.5)
    assert (s.mpp, s.mpp_source) == (0.5, "--mpp")
    s.close()


def test_dicom_levels_that_disagree_on_the_pixel_spacing_are_refused(tmp_path):
    """The CMU DICOM series with level 0's PixelSpacing set to its level 1's (0.998 µm where the 1110 px level also
    says 0.998 and the 555 px level 1.996): only level 0's was read, so the 0.499 µm/px slide was extracted at 0.998
    (20x tissue as 10x tiles), 'file mpp', silently. The levels as written (each its downsample times level 0's)
    still open, and so do levels that all repeat level 0's spacing (a converter's habit: level 0's is right)."""
    import shutil

    import pydicom

    from conftest import WSI

    src = WSI / "dicom-cmu-1-small-region"
    s = open_slide(src)
    assert (s.mpp, s.mpp_source) == (0.499, "file mpp")
    s.close()
    d = tmp_path / "cmu"
    shutil.copytree(src, d)
    f = d / "level-0-frames-0-30.dcm"
    ds = pydicom.dcmread(f)
    ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [0.000998, 0.000998]
    ds.save_as(f)
    with pytest.raises(SlideError, match=r"cmu: the DICOM levels disagree on the resolution: level 0 \(2220 px wide\) says "
                                         r"PixelSpacing 0.998 µm, the level of 555 px \(level-2-frames-0-4.dcm\) 1.996 µm.*"
                                         r"--mpp or an `mpp` column"):
        open_slide(d)
    s = open_slide(d, mpp=0.499)
    assert (s.mpp, s.mpp_source) == (0.499, "cohort")
    s.close()
    for f in d.glob("*.dcm"):  # every level repeats level 0's 0.499 µm: level 0 is right
        ds = pydicom.dcmread(f)
        ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [0.000499, 0.000499]
        ds.save_as(f)
    s = open_slide(d)
    assert (s.mpp, s.mpp_source) == (0.499, "file mpp")
    s.close()


def test_tiff_resolution_without_a_unit_tag_is_in_inches_as_the_tiff_default(tmp_path):
    """X/YResolution 50800 px with no ResolutionUnit tag (the TIFF default is inch: 0.5 µm/px): OpenSlide read
    0.5 µm/px, the tifffile reader (the one for SubIFD pyramids, which OpenSlide leaves) found no resolution."""
    import struct

    p = tmp_path / "s.tif"
    tifffile.imwrite(p, _img(), tile=(128, 128), photometric="rgb", compression="jpeg", resolution=(50800, 50800),
                     resolutionunit="INCH", metadata=None)
    with tifffile.TiffFile(p) as tf:
        off = tf.pages[0].tags["ResolutionUnit"].offset
    data = bytearray(p.read_bytes())
    data[off:off + 2] = struct.pack("<H", 297)  # the tag becomes PageNumber: no ResolutionUnit left
    p.write_bytes(bytes(data))
    for order in (None, ["openslide"], ["tifffile"]):
        s = open_slide(p, order=order)
        assert (s.mpp, s.mpp_source) == (0.5, "file mpp"), order
        s.close()


def test_72_dpi_tags_do_not_hide_an_aperio_appmag(tmp_path):
    """An Aperio slide with AppMag = 20 (no MPP) and 72-dpi TIFF tags (352.8 µm/px, a writer's default): cuCIM, the
    default reader, took the tags as the slide's resolution and the slide was refused ('352.778 µm/px, not a
    microscope resolution'), while OpenSlide and tifffile skip such tags and read 0.5 µm/px from AppMag."""
    p = tmp_path / "s.svs"
    head = "Aperio Image Library v12.0.0\r\n768x512 [0,0 768x512] (128x128) JPEG/RGB Q=85"
    with tifffile.TiffWriter(p) as tw:
        for lv, desc in [(_img(), f"{head}|AppMag = 20"), (_img()[::4, ::4], f"{head} -> 192x128")]:
            tw.write(lv, tile=(128, 128), photometric="rgb", compression="jpeg", description=desc, metadata=None,
                     resolution=(72, 72), resolutionunit="INCH")
    for order in (None, ["cucim"], ["openslide"], ["tifffile"]):
        s = open_slide(p, order=order)
        assert (s.mpp, s.mpp_source) == (0.5, "objective power"), order
        s.close()


def test_aperio_without_mpp_takes_the_tiff_tags_in_every_reader(tmp_path):
    """An Aperio slide with AppMag = 20, no MPP, and resolution tags of 0.25 µm/px: cuCIM (the default) and tifffile
    took the tags (0.25), OpenSlide the AppMag (0.5): the slide's scale was 2x apart by the reader order."""
    p = tmp_path / "s.svs"
    head = "Aperio Image Library v12.0.0\r\n768x512 [0,0 768x512] (128x128) JPEG/RGB Q=85"
    with tifffile.TiffWriter(p) as tw:
        for lv, desc, um in [(_img(), f"{head}|AppMag = 20", 0.25), (_img()[::4, ::4], f"{head} -> 192x128", 1.0)]:
            tw.write(lv, tile=(128, 128), photometric="rgb", compression="jpeg", description=desc, metadata=None,
                     resolution=(1e4 / um, 1e4 / um), resolutionunit="CENTIMETER")
    for order in (None, ["cucim"], ["openslide"], ["tifffile"]):
        s = open_slide(p, order=order)
        assert (s.mpp, s.mpp_source) == (0.25, "file mpp"), (order, s.mpp)
        s.close()


def test_dicom_pixel_spacing_given_per_frame_is_read(tmp_path):
    """PixelMeasuresSequence in the per-frame functional groups (not the shared ones), as some converters write it:
    the slide was refused ('no resolution metadata') though its file says 0.5 µm/px."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from conftest import WSI

    ds = pydicom.dcmread(WSI / "pathml_small_dicom_TCGA-XK-AAJU_pen.dcm")  # no resolution of its own
    pm, frame = Dataset(), Dataset()
    pm.PixelSpacing = [0.0005, 0.0005]
    frame.PixelMeasuresSequence = Sequence([pm])
    ds.PerFrameFunctionalGroupsSequence = Sequence([frame])  # no positions: the frames stay a grid
    (tmp_path / "d").mkdir()
    ds.save_as(tmp_path / "d" / "s.dcm", enforce_file_format=False)
    s = open_slide(tmp_path / "d" / "s.dcm")
    assert (s.mpp, s.mpp_source) == (pytest.approx(0.5), "file mpp") and s.reader.frame_order == ["column"]
    s.close()

"""Red team of the reading side, round 6: a deterministic fuzzer (tests/fuzzread.py) over the small real SVS,
OME-TIFF and DICOM slides of tests/data. Each damaged copy must be refused in one line naming the file, or read
with the file's own pixels (other pixels only after damage inside one tile's compressed data that still
decodes), within 10 s, without a traceback, a crash or more than 2 GB. ``python tests/fuzzread.py`` runs the
whole campaign; the cases kept here are one or more of each kind of damage, and every one that failed."""
import numpy as np
import pytest
from PIL import Image

import fuzzread
from slidestream.engine.errors import SlideError
from slidestream.engine.slide import open_slide

KEEP = {
    "svs": ["svs-ifd0-flip0", "svs-ifd0-flip1", "svs-ifd0-flip2", "svs-header-flip2", "svs-ifd1-flip0",
            "svs-offsets0-flip0", "svs-counts0-flip2", "svs-jpegtables0-flip0", "svs-jpegtables0-flip3",
            "svs-tile-flip0", "svs-tile-flip4", "svs-tilehead-flip1", "svs-trunc0.5", "svs-trunc-last-tile",
            "svs-zero4k-1", "svs-zerotile0", "svs-zero-tail", "svs-dup-entry2", "svs-count324-ffffffff",
            "svs-ifd-count-ffff", "svs-entry262-0", "svs-entry322-1"],
    "ome": ["ome-ifd0-flip3", "ome-tile-flip2", "ome-trunc0.9", "ome-zerotile1", "ome-counts0-flip1",
            "ome-entry259-0"],
    "dicom": ["dicom0-header-flip14", "dicom0-header-flip23", "dicom0-item-flip1", "dicom0-trunc0.9",
              "dicom1-frame-flip2", "dicom1-zero-tail", "dicom0-tag-Rows", "dicom0-tag-Columns",
              "dicom0-tag-TotalPixelMatrixRows", "dicom1-tag-TotalPixelMatrixRows", "dicom0-tag-SeriesInstanceUID"],
    "dcm1": ["dcm1-header-flip3", "dcm1-bot-flip0", "dcm1-frame-flip0", "dcm1-trunc0.5"],
    "omepyr": ["omepyr-tilehead-flip2", "omepyr-ifd0-flip6", "omepyr-ifd1-flip0", "omepyr-trunc0.5", "omepyr-offsets1-flip1"],
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    out = {}
    for kind, names in KEEP.items():
        ref = fuzzread.read_all(str(fuzzread.source(kind)))
        for name, path in fuzzread.cases(kind, folder / kind, only=set(names)).items():
            out[name] = (path, ref)
    return out


@pytest.mark.parametrize("name", [n for names in KEEP.values() for n in names])
def test_damaged_copy_is_refused_in_one_line_or_read_right(corpus, name):
    path, ref = corpus[name]
    res = fuzzread.run(path, ref)
    assert fuzzread.acceptable(name, res), res


@pytest.mark.parametrize("name", ["svs-ifd0-flip2", "ome-ifd0-flip3"])
def test_tiff_without_photometric_is_refused(corpus, name):
    """One damaged directory entry (the tag code, or its type) lost the PhotometricInterpretation tag: cuCIM read
    the SVS as other colours (20 of 30 boxes off, mean up to 46 grey levels), the tifffile reader the OME-TIFF
    as inverted gray (all 9 boxes, mean 111), without a word."""
    path, ref = corpus[name]
    res = fuzzread.run(path, ref)
    assert res["outcome"] == "refused", res
    assert res["why"].endswith("has no PhotometricInterpretation tag (how its samples are colours): a broken header")


def test_jpeg_tile_with_a_damaged_header_marker_is_refused_before_decoding(corpus):
    """A flipped byte turned a marker in a JPEG tile's header into FF81 (of an OME-TIFF pyramid in SubIFDs): the
    tile check walked the header's segments without asking what they were, libjpeg-turbo's strict decode said
    'Unsupported marker type' (not 'corrupt', so not taken as damage), and imagecodecs raised Jpeg8Error from the
    tifffile reader's read: a traceback out of read_checked (extract failed the slide with libjpeg's words, and
    --allow-corrupt-tiles could not leave the tile out). Only header markers may come before the scan."""
    path, ref = corpus["omepyr-tilehead-flip2"]
    res = fuzzread.run(path, ref)
    assert res["outcome"] == "refused", res
    assert res["why"].endswith("corrupt JPEG tile 15 of the 1101 x 1101 px level (column 0, row 3): JPEG marker FF81 "
                               "where a header segment belongs, at byte 20")


def test_ome_tiff_taller_than_its_ome_metadata_is_refused(corpus):
    """A flipped byte made the OME-TIFF's level 0 1101 x 1183 px (ImageLength), still 5 rows of 256 px tiles, so the
    tile count was right: tifffile dropped the SubIFD levels ('OME series cannot handle discontiguous storage',
    a log line), cuCIM then saw all the levels there were and read the slide 82 rows taller, the rows from the
    tiles' padding. The OME metadata says 1101 x 1101: refused."""
    path, ref = corpus["omepyr-ifd0-flip6"]
    res = fuzzread.run(path, ref)
    assert res["outcome"] == "refused", res
    assert res["why"].endswith("image 0 is 1101 x 1183 px, its OME metadata says 1101 x 1101: a broken or patched header")


@pytest.mark.parametrize("name", ["dicom0-header-flip14", "dicom0-header-flip23", "dicom0-tag-Rows",
                                  "dicom0-tag-TotalPixelMatrixRows"])
def test_dicom_level_file_with_damaged_sop_class_is_refused_not_skipped(corpus, name):
    """A flipped byte in a level-0 file's header (a length that swallows the rest of the header) also damaged
    its MediaStorageSOPClassUID: the file was skipped as no whole-slide image and the folder opened with
    level 1 (1110 x 1483) as its level 0, silently: patches at twice the asked scale. Likewise a damaged tag number
    of its Rows, Columns or TotalPixelMatrixRows (only TotalPixelMatrixColumns was asked for)."""
    path, ref = corpus[name]
    res = fuzzread.run(path, ref)
    assert res["outcome"] == "refused", res
    assert "level-0-frames-0-30.dcm: a whole-slide DICOM file without a readable header or pixel data" in res["why"]


APERIO = "Aperio Image Library v12.0.0\r\n512x512 [0,0 512x512] (256x256) JPEG/RGB Q=85|AppMag = 20|MPP = 0.5"


def _pyramid(path, level0, level1):
    import tifffile

    with tifffile.TiffWriter(path) as tw:
        for im in (level0, level1):
            tw.write(im, tile=(128, 128), photometric="rgb", compression="jpeg", description=APERIO, metadata=None,
                     subfiletype=0 if im is level0 else 1)


def _cmu(w, h):
    import tifffile

    return np.ascontiguousarray(tifffile.imread(fuzzread.SOURCES["svs"])[:h, :w])


@pytest.mark.parametrize("order", [None, ["openslide"]])
@pytest.mark.parametrize("claimed", [(512, 384), (384, 512)])
def test_square_slide_with_a_level_of_other_aspect_is_refused(tmp_path, order, claimed):
    """A square slide (2048 x 2048) whose level 1 header claims 512 x 384 (or 384 x 512) px, the first rows (columns)
    of the true 512 x 512: sides that are multiples of 128 are not judged (tile padding), a square level 0 has
    no orientation to compare, and the content check saw the same tissue at the same place, so the slide opened
    and any read of level 1 past row (column) 384 came back as white glass, silently. Rounding and square-tile
    padding keep a square's levels square: refused."""
    a = np.full((2048, 2048, 3), 235, np.uint8)
    a[256:768, 256:768] = _cmu(512, 512)  # tissue in the part both levels hold
    reduced = np.asarray(Image.fromarray(a).reduce(4))
    p = tmp_path / "cut.svs"
    _pyramid(p, a, np.ascontiguousarray(reduced[:claimed[1], :claimed[0]]))
    with pytest.raises(SlideError, match=rf"cut.svs: pyramid level 1 is {claimed[0]} x {claimed[1]} px, not square "
                                         r"where level 0 \(2048 x 2048 px\) is: a broken or patched header"):
        open_slide(p, order=order)


def test_subifd_claiming_millions_of_tiles_is_refused_before_reading_its_tables(tmp_path):
    """An OME-TIFF pyramid in SubIFDs whose level 1 claims 2^27 tile offsets and byte counts (inside the file: a
    1 GB sparse tail): the raw walk that refuses such tables before tifffile reads them (MAX_TILES) walked only
    the main chain of directories, so tifffile read both tables whole: 2.6 GB peak, 4.4 s, before the tile-count
    check refused the slide. SubIFDs are walked too."""
    import struct

    import tifffile

    a = _cmu(1024, 1024)
    p = tmp_path / "sub.ome.tif"
    with tifffile.TiffWriter(p, ome=True) as tw:
        tw.write(a, subifds=1, tile=(128, 128), compression="jpeg", photometric="rgb",
                 metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        tw.write(np.asarray(Image.fromarray(a).reduce(2)), subfiletype=1, tile=(128, 128), compression="jpeg",
                 photometric="rgb")
    with tifffile.TiffFile(p) as tf:
        sub = tf.pages[0].tags[330].value[0]
    data = bytearray(p.read_bytes())
    size, n = len(data), struct.unpack("<H", data[sub:sub + 2])[0]
    for k in range(n):
        e = sub + 2 + 12 * k
        tag = struct.unpack("<H", data[e:e + 2])[0]
        if tag in (324, 325):  # 2^27 LONGs each, after the file's own bytes
            data[e + 4:e + 12] = struct.pack("<II", 1 << 27, size + (0 if tag == 324 else 1 << 29))
    with open(p, "wb") as f:
        f.write(data)
        f.truncate(size + (1 << 30))
    res = fuzzread.run(p, None)
    assert res["outcome"] == "refused", res
    assert res["why"].endswith("a broken TIFF header: a SubIFD image (pyramid level) claims 134,217,728 tiles or "
                               "strips (at most 4,194,304)")
    assert res["seconds"] < 2 and res["rss"] < 1 << 30


@pytest.mark.parametrize("order", [None, ["openslide"]])
def test_square_slide_with_a_transposed_pale_level_is_refused(tmp_path, order):
    """A square slide (2048 x 2048) whose level 1 holds its own reduced image transposed, where the tissue is pale and
    fine-grained (random shades: reduced 8x for the comparison, its std falls under 10 grey levels): the level-content
    check compared tissue (mean 128) with glass (235), a mean difference of 107, but let it pass because neither
    box had a std over 10 ('flat boxes prove nothing'). The level's size says nothing for a square, so the slide
    opened and patches read from level 1 came from the mirrored place, silently."""
    a = np.full((2048, 2048, 3), 235, np.uint8)
    a[256:768, 1024:1536] = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    p = tmp_path / "transposed.svs"
    _pyramid(p, a, np.ascontiguousarray(np.asarray(Image.fromarray(a).reduce(4)).transpose(1, 0, 2)))
    with pytest.raises(SlideError, match=r"transposed.svs: pyramid level 1 \(512 x 512 px\) does not show what level 0 "
                                         r"shows at the same place \(mean difference \d+ grey levels"):
        open_slide(p, order=order)


@pytest.mark.parametrize("order", [None, ["tifffile"], ["openslide"]])
def test_a_tiff_is_parsed_once_per_reader(monkeypatch, order):
    """tifffile parsed the same TIFF 5 times per open (claims check, JFIF check, cuCIM's own checks, tile check,
    level count; 3 in the tifffile reader, 2 in OpenSlide's): now the claims check's parse is handed on."""
    import tifffile

    parses = []
    init = tifffile.TiffFile.__init__

    def counted(self, *args, **kwargs):
        parses.append(args[0] if args else kwargs)
        init(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffFile, "__init__", counted)
    open_slide(fuzzread.SOURCES["svs"], order=order).close()
    assert len(parses) == 1, parses


@pytest.mark.parametrize("name, why", [
    ("j2k-dup259-first", "cannot decode the image data: 33260 is not a known COMPRESSION"),
    ("j2k-dup262-first", "cannot decode the image data: This format (compression: 33005, sample_per_pixel: 3, "
                         "planar_config: 1, photometric: 259) is not supported yet!")])
def test_box_the_decoder_gives_up_on_is_a_refused_box_not_a_traceback(tmp_path, name, why):
    """The Aperio J2K SVS with its level-0 Compression (or Photometric) entry twice, the first copy damaged: the
    slide opened (the thumbnail came from level 1), then every level-0 read raised the decoder's ValueError (tifffile)
    or RuntimeError (cuCIM) out of read_checked: a traceback for the library user, the whole slide failed in
    extract, and --allow-corrupt-tiles could not drop the tiles. Such a box is now refused with the decoder's
    words, as the thumbnail's reads were."""
    (path,) = fuzzread.cases("j2k", tmp_path, only={name}).values()
    res = fuzzread.run(path, None)
    assert res["outcome"] == "refused", res
    assert why in res["why"] and "box (0, 0)" in res["why"]


def test_subifd_levels_chained_after_the_listed_one_are_levels(tmp_path):
    """An OME-TIFF pyramid whose SubIFDs tag lists only its first level, the others chained from it (next-directory
    offsets): tifffile reads only the SubIFDs listed, so the slide had 2 of its 4 levels (thumbnails and patches
    read from 4x the pixels; a large slide's thumbnail was refused as having no pyramid). The chain is followed."""
    import struct

    import tifffile

    a = _cmu(2048, 2048)
    full, p = tmp_path / "listed.ome.tif", tmp_path / "chained.ome.tif"
    with tifffile.TiffWriter(full, ome=True) as tw:  # tifffile lists all 3 SubIFDs and chains them too
        tw.write(a, subifds=3, tile=(128, 128), compression="jpeg", photometric="rgb",
                 metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        for f in (2, 4, 8):
            tw.write(np.asarray(Image.fromarray(a).reduce(f)), subfiletype=1, tile=(128, 128), compression="jpeg",
                     photometric="rgb")
    with tifffile.TiffFile(full) as tf:
        tag = tf.pages[0].tags[330]
        entry, first = tag.offset, tag.value[0]
    data = bytearray(full.read_bytes())
    data[entry + 4:entry + 12] = struct.pack("<II", 1, first)  # the tag lists the first SubIFD only
    p.write_bytes(data)
    for order in (None, ["tifffile"]):
        s, ref = open_slide(p, order=order), open_slide(full, order=order)
        try:
            assert s.reader.level_dimensions == ref.reader.level_dimensions == [(2048, 2048), (1024, 1024), (512, 512),
                                                                                (256, 256)]
            assert np.array_equal(s.reader.read_region((512, 512), 2, (200, 200)),
                                  ref.reader.read_region((512, 512), 2, (200, 200)))
        finally:
            s.close()
            ref.close()


def test_tiff_check_ignores_another_threads_tifffile_warnings():
    """extract parses the next slide in a thread while this one is checked: a truncated slide's tifffile warnings
    (another thread) made a good slide 'truncated file' in the full suite. Only this thread's warnings count."""
    import logging
    import threading

    from slidestream.plugins.readers.common import check_tiff

    stop = threading.Event()

    def spam():
        log = logging.getLogger("tifffile")
        while not stop.is_set():
            log.warning("<TiffFile 'broken.svs'> invalid page offset 99999999 (truncated file)")

    t = threading.Thread(target=spam, daemon=True)
    t.start()
    try:
        for _ in range(30):
            check_tiff(str(fuzzread.source("svs")))
    finally:
        stop.set()
        t.join()


def test_fuzz_memory_counts_what_the_read_adds_not_the_parent(tmp_path):
    """A forked case starts with its parent's memory: a test process holding 2.5 GB made every case 'memory'."""
    ballast = np.ones(int(2.5 * 2**30), np.uint8)  # touched: resident
    res = fuzzread.run(fuzzread.source("svs"), None)
    assert res["outcome"] == "same" and res["rss"] < 1 << 30, res
    del ballast

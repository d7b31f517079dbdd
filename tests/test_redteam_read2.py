"""Red team of the reading side, round 2: slide files that were refused as damaged although they are fine, or
read as other pixels than they hold."""
import io
import re

import numpy as np
import pytest
import tifffile
from PIL import Image

from slidestream.engine.errors import SlideError
from slidestream.engine.slide import open_slide

APERIO = "Aperio Image Library v12.0.0\r\n512x512 [0,0 512x512] (256x256) JPEG/RGB Q=85|AppMag = 20|MPP = 0.5"


def _rgb(seed=0):
    a = np.random.default_rng(seed).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    a[:, :256] = (200, 150, 220)  # half flat: JPEG keeps it nearly exact
    return a


def _tiles(a, t=256):
    for y in range(0, a.shape[0], t):
        for x in range(0, a.shape[1], t):
            yield a[y:y + t, x:x + t]


def _read(path, order=None, mpp=None):
    s = open_slide(path, order=order, mpp=mpp)
    try:
        thumb = s.thumbnail(16)  # the engine's first read: a damaged tile is a SlideError here
        return s.reader_name, s.reader.read_region((0, 0), 0, (512, 512)), thumb
    finally:
        s.close()


@pytest.mark.parametrize("order", [None, ["tifffile"]])
def test_progressive_jpeg_tiles_are_read_not_called_damaged(tmp_path, order):
    """A TIFF of progressive JPEG tiles (each scan has its own header: DHT and SOS markers after the first scan)
    was refused as 'corrupt JPEG tile 0 ... a stray JPEG marker FFC4; the file is damaged, copy it again',
    although cuCIM and tifffile decode it; a copy would be refused the same way."""
    def progressive():
        for t in _tiles(_rgb()):
            b = io.BytesIO()
            Image.fromarray(t).save(b, "JPEG", progressive=True, quality=95)
            yield b.getvalue()
    p = tmp_path / "prog.svs"
    tifffile.imwrite(p, progressive(), shape=(512, 512, 3), dtype=np.uint8, tile=(256, 256), compression="jpeg",
                     photometric="ycbcr", description=APERIO)
    name, got, _ = _read(p, order)
    assert np.abs(got[:, :256].astype(int) - _rgb()[:, :256]).max() <= 3, name


def test_damaged_progressive_jpeg_tile_is_still_refused(tmp_path):
    """Only the scan headers of a progressive JPEG may follow its first scan: another marker (here an SOF in the
    compressed data) is still a damaged tile."""
    from slidestream.plugins.readers.common import jpeg_tile_problem

    b = io.BytesIO()
    Image.fromarray(_rgb()[:256, :256]).save(b, "JPEG", progressive=True)
    data = bytearray(b.getvalue())
    assert jpeg_tile_problem(bytes(data), 256, 256, 3) == ""
    k = data.index(b"\xff\xda") + 200  # inside the first scan's data
    data[k:k + 2] = b"\xff\xc0"
    assert "stray JPEG marker FFC0" in jpeg_tile_problem(bytes(data), 256, 256, 3)


@pytest.mark.parametrize("bits, dtype", [(12, np.uint16), (4, np.uint8)])
def test_samples_of_fewer_bits_than_their_dtype_are_scaled(tmp_path, bits, dtype):
    """12-bit samples (tifffile returns them in uint16, 0..4095) read as the top 8 bits of 16: a nearly black
    slide (mean 9 for a mean-163 image); 4-bit in uint8 alike. Now scaled to the full range."""
    rgb = _rgb()
    top = (1 << bits) - 1
    p = tmp_path / "s.tif"
    if bits == 12:  # 12-bit JPEG tiles
        import imagecodecs

        enc = [imagecodecs.jpeg8_encode(t.astype(np.uint16) * 16, level=95, bitspersample=12) for t in _tiles(rgb)]
        tifffile.imwrite(p, iter(enc), shape=(512, 512, 3), dtype=dtype, tile=(256, 256), compression="jpeg",
                         photometric="rgb", bitspersample=12, description=APERIO)
    else:  # 4-bit gray, packed, uncompressed
        tifffile.imwrite(p, (rgb[..., 0] >> 4), tile=(256, 256), photometric="minisblack", bitspersample=4,
                         description=APERIO)
        rgb = np.repeat((rgb[..., :1] >> 4) * 17, 3, axis=2)  # 15 -> 255
    with tifffile.TiffFile(p) as tf:
        assert tf.pages[0].bitspersample == bits and tf.pages[0].asarray().max() <= top
    name, got, thumb = _read(p)
    assert name == "tifffile"
    assert np.abs(got[:, :256].astype(int) - rgb[:, :256]).max() <= 17, got[0, 0]
    assert abs(float(thumb.mean()) - float(rgb.mean())) < 8


def _alpha_tiff(path, samples, photometric):
    a = np.dstack([samples, np.full(samples.shape[:2], 128, np.uint8)])
    tifffile.imwrite(path, a, tile=(256, 256), photometric=photometric, extrasamples=[2])  # unassociated alpha
    c, al = samples.astype(int), a[..., -1:].astype(int)
    want = (c * al + 255 * (255 - al)) // 255  # over white glass
    return want if want.shape[2] == 3 else np.repeat(want, 3, axis=2)


def test_rgba_with_unassociated_alpha_is_not_darkened(tmp_path):
    """cuCIM returned RGBA with unassociated alpha multiplied by its alpha; composited over white again, colours
    came out up to 64 grey levels too dark, without a word. cuCIM now leaves such files to the next reader."""
    p = tmp_path / "rgba.tif"
    want = _alpha_tiff(p, _rgb(), "rgb")
    name, got, _ = _read(p, mpp=0.5)
    assert name != "cucim" and np.abs(got.astype(int) - want).max() <= 1, name


def test_gray_plus_alpha_is_read_by_the_tifffile_reader(tmp_path):
    """Gray + alpha (2 samples) failed every tifffile read ('could not broadcast ... (512,512,2) into
    (512,512,3)'), reported as damaged image data."""
    p = tmp_path / "ga.tif"
    want = _alpha_tiff(p, _rgb()[..., :1], "minisblack")
    name, got, _ = _read(p, order=["tifffile"], mpp=0.5)
    assert np.array_equal(got, want)


def _pyramid(path, level1, level2=None):
    """A 2048 x 1536 synthetic slide written as three levels (1, 1/4, 1/16) whose level 1 (and 2) may hold
    another image of the right size; returns level 0."""
    from slidestream.engine.synthetic import render

    a = render((2048, 1536), 1, 1, 0.5, False)
    opts = dict(tile=(256, 256), compression="jpeg", photometric="rgb", metadata=None)
    with tifffile.TiffWriter(path) as tw:
        tw.write(a, description=APERIO, **opts)
        tw.write(level1(a), description="Aperio Image Library v12.0.0\r\nlevel", **opts)
        tw.write(level2(a) if level2 else np.asarray(Image.fromarray(a).reduce(16)), description="Aperio", **opts)
    return a


def _other(a, f=4):
    from slidestream.engine.synthetic import render

    return np.asarray(Image.fromarray(render((2048, 1536), 0, 7, 0.5, False)).reduce(f))


@pytest.mark.parametrize("case, level", [
    ("another slide", 1), ("macro picture", 1), ("another scale", 1), ("shifted copy", 1), ("level 2 of another", 2)])
def test_pyramid_level_holding_another_image_is_refused(tmp_path, case, level):
    """A level of exactly the right size (1/4 of level 0) holding another image: every header check passed and
    the 10x patches (read from level 1 of a 20x slide) came from another slide or place, silently."""
    lv1 = {"another slide": _other,
           "macro picture": lambda a: np.asarray(Image.fromarray(_other(a, 2)).resize((512, 384))),
           "another scale": lambda a: np.asarray(Image.fromarray(a).crop((0, 0, 1024, 768)).reduce(2)),
           "shifted copy": lambda a: np.roll(np.asarray(Image.fromarray(a).reduce(4)), 40, axis=1),
           "level 2 of another": lambda a: np.asarray(Image.fromarray(a).reduce(4))}[case]
    p = tmp_path / "lie.svs"
    _pyramid(p, lv1, (lambda a: _other(a, 16)) if level == 2 else None)
    # tifffile takes an SVS's second image for its thumbnail, not a level: it sees only a lying level 2
    for order in (None, ["openslide"]) + ((["tifffile"],) if level == 2 else ()):
        n = level - (order == ["tifffile"])  # tifffile numbers the levels without the thumbnail
        with pytest.raises(SlideError, match=rf"lie.svs: pyramid level {n} \(\d+ x \d+ px\) does not show what "
                                             rf"level {n - 1} shows .*convert or copy the slide again"):
            open_slide(p, order=order)


def test_real_pyramids_pass_the_level_content_check(tmp_path):
    """The check passes the honest pyramids at hand: synthetic (factor 4), Aperio JPEG 2000 (factor 2) and the
    CMU DICOM series (10 levels, factor 2: its scanner's reduction differs most from a box filter)."""
    from conftest import WSI

    p = tmp_path / "honest.svs"
    _pyramid(p, lambda a: np.asarray(Image.fromarray(a).reduce(4)))
    for path in (p, WSI / "tcga-cr-7395-01a-01-ts1.svs", WSI / "dicom-cmu-1-small-region"):
        s = open_slide(path, mpp=0.5)
        assert len(s.reader.level_dimensions) > 1
        s.close()


def _damaged(tmp_path, name, compression, flips=8, seed=0, **layout):
    """A 512 x 512 TIFF of ``compression`` (tiles or strips per ``layout``) with ``flips`` bytes XORed in each
    tile/strip, and the undamaged original; returns (damaged, good)."""
    good = tmp_path / f"good_{name}.svs"
    tifffile.imwrite(good, _rgb(), photometric="rgb", compression=compression, description=APERIO, **layout)
    data = bytearray(good.read_bytes())
    with tifffile.TiffFile(good) as tf:
        chunks = list(zip(tf.pages[0].dataoffsets, tf.pages[0].databytecounts))
    rng = np.random.default_rng(seed)
    for o, n in chunks:
        for k in rng.integers(o + (n // 4 if compression == "jpeg" else 0), o + n, flips):  # JPEG: past its header
            data[int(k)] ^= int(rng.integers(1, 256))
    bad = tmp_path / f"{name}.svs"
    bad.write_bytes(bytes(data))
    return bad, good


@pytest.mark.parametrize("order", [None, ["tifffile"]])
def test_damaged_jpeg_strips_are_refused(tmp_path, order):
    """A TIFF in JPEG strips (no tiles) with flipped bytes: the tifffile reader (imagecodecs) returned garbage
    without a word, even with decoder output captured (4 of 5 seeds; the tile check skipped strips). cuCIM
    now leaves strips to the next reader (it reads them through libtiff, whose complaints about damaged data
    are only words on stderr, and it cannot read Deflate strips at all), and the tile check covers strips."""
    from slidestream.engine.chatter import CAPTURE

    bad, good = _damaged(tmp_path, "jpeg", "jpeg", seed=1, rowsperstrip=64)
    name, got, _ = _read(good, order)
    assert np.abs(got[:, :240].astype(int) - _rgb()[:, :240]).max() <= 3, name  # the flat half, off its edge
    with CAPTURE.on():  # as in extract
        with pytest.raises(SlideError, match=r"corrupt JPEG strip \d+ of the 512 x 512 px level .*libjpeg: Corrupt"):
            _read(bad, order)


def test_deflate_strips_are_read(tmp_path):
    """cuCIM opened a Deflate TIFF in strips, then failed every read ('This format (compression: 8, ...) is not
    supported yet'): a good slide failed."""
    _, good = _damaged(tmp_path, "zip", "zlib", flips=0, rowsperstrip=64)
    name, got, _ = _read(good)
    assert np.array_equal(got, _rgb()), name


def test_openslide_decode_errors_are_the_slides_error(tmp_path):
    """OpenSlide's own error on a damaged LZW tile (OpenSlideError, no subclass of what the engine catches) left
    read_region as a raw library exception; it is now the reader's 'damaged' error, like the other readers'."""
    bad, _ = _damaged(tmp_path, "lzw", "lzw", tile=(256, 256))
    with pytest.raises(SlideError, match=r"lzw.svs: OpenSlide cannot decode level 0 at \(0, 0\): .*copy it again"):
        _read(bad, order=["openslide"], mpp=0.5)


@pytest.mark.parametrize("slide, cut", [("CMU-1-Small-Region.svs", 100), ("CMU-1-Small-Region.svs", 250),
                                        ("tcga-cr-7395-01a-01-ts1.svs", 20)])
def test_copy_cut_short_in_its_last_directory_is_called_truncated(tmp_path, slide, cut):
    """The last bytes of these SVS files are tag values of the last directory (the macro image's, the last
    level's tile byte counts): a copy missing them opened as a good slide (CMU) or was 'needs 63 data offsets but
    the file lists 63: a broken or patched header' (TCGA). tifffile's 'invalid value offset' now counts as
    truncation, and it is named before any consequence of it."""
    from conftest import WSI

    p = tmp_path / slide
    p.write_bytes((WSI / slide).read_bytes()[:-cut])
    with pytest.raises(SlideError, match=rf"{slide}: truncated file: TIFF directories point past the end of the file"):
        _read(p, mpp=0.5)


def test_cucim_error_is_reported_with_libjpegs_words(tmp_path):
    """A JPEG tile whose frame names a quantisation table it does not define: cuCIM prints 'ERROR in line 205
    while decompressing JPEG image:' and libjpeg's reason on the next line, which sounds like no damage; the
    slide failed with only the preamble as its reason. The reason now carries libjpeg's words."""
    from slidestream.engine.chatter import CAPTURE

    def tiles():
        for t in _tiles(_rgb()):
            b = io.BytesIO()
            Image.fromarray(t).save(b, "JPEG", quality=90)
            d = bytearray(b.getvalue())
            sof = d.index(b"\xff\xc0")
            d[sof + 10 + 3 * 2 + 2] = 3  # the third component's quantisation table: 3, never defined
            yield bytes(d)
    p = tmp_path / "dqt.svs"
    tifffile.imwrite(p, tiles(), shape=(512, 512, 3), dtype=np.uint8, tile=(256, 256), compression="jpeg",
                     photometric="ycbcr", description=APERIO)
    with CAPTURE.on():
        s = open_slide(p)
        assert s.reader_name == "cucim"
        with pytest.raises(SlideError, match=r"dqt.svs: corrupt image data in level 0 \(read for the thumbnail\): "
                                             r"Quantization table 0x03 was not defined \(cuCIM: ERROR in line \d+"):
            s.thumbnail(16)
        s.close()


def _thumbnail_in_4gb(p):
    """``open_slide(p).thumbnail(16)`` in a child process under a 4 GB address-space limit: its output (the
    SlideError, if any) and ``maxrss <MB>``, its peak RSS from VmHWM (ru_maxrss would count pytest's own, from
    fork)."""
    import subprocess
    import sys

    code = ("import resource\nresource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
            "from slidestream.engine.chatter import CAPTURE\nfrom slidestream.engine.slide import open_slide\n"
            "from slidestream.engine.errors import SlideError\n"
            f"with CAPTURE.on():\n    s = open_slide({str(p)!r}, mpp=0.5)\n"
            "    try:\n        s.thumbnail(16)\n    except SlideError as e:\n        print(e)\n"
            "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0]\n"
            "print('maxrss', int(hwm.split()[1]) // 1024)\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_jpeg2000_tile_claiming_a_huge_image_is_refused_before_decoding(tmp_path):
    """One flipped byte in a JPEG 2000 tile's SIZ header made OpenJPEG inside cuCIM allocate and decode the
    image it claims: fuzzing the TCGA slide's tile headers (60 files), one took 24 GB and the kernel killed
    the process with the whole batch. Here one tile claims 256 x 2,000,000 px (1.5 GB): 2.1 GB peak memory
    before the error without the check, 56 MB with it. Each JPEG 2000 tile's header is now checked against
    the TIFF's tile first. Run under a 4 GB address-space limit, so that a regression cannot exhaust the
    machine."""
    import struct

    from conftest import WSI

    src = WSI / "tcga-cr-7395-01a-01-ts1.svs"
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tf:
        first = tf.pages[2].dataoffsets[0]  # the smallest level's first tile: the thumbnail reads it
    struct.pack_into(">I", data, first + 12, 2_000_000)  # Ysiz
    p = tmp_path / "siz.svs"
    p.write_bytes(bytes(data))
    r = _thumbnail_in_4gb(p)
    assert r.returncode == 0 and re.search(r"siz.svs: corrupt JPEG 2000 tile 0 of the 2221 x 1783 px level .*"
                                           r"the JPEG 2000 header says 256 x 2000000 px, the TIFF tile is 256 x 256",
                                           r.stdout), (r.returncode, r.stdout, r.stderr[-400:])
    assert int(r.stdout.split("maxrss")[-1]) < 1500, r.stdout  # MB: 2,100 + the baseline without the check


def test_dicom_jpeg2000_frame_claiming_a_huge_image_is_refused_before_decoding(tmp_path):
    """The same SIZ damage in a DICOM-WSI JPEG 2000 frame: imagecodecs decoded what it claims (2.1 GB peak for
    256 x 2,000,000 px), then failed with every codec's complaint in one line ('APNG_DECODE: not a PNG image
    AVIF_DECODE: ...'). Now refused before decoding, naming the frame. Under a 4 GB address-space limit."""
    import struct

    import imagecodecs
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    frames = [imagecodecs.jpeg2k_encode(np.ascontiguousarray(t), level=0, codecformat="J2K") for t in _tiles(_rgb())]
    f = bytearray(frames[0])
    struct.pack_into(">I", f, 12, 2_000_000)  # Ysiz of the first frame
    frames[0] = bytes(f)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality, ds.ImageType = "1.2.3.4", "SM", ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.Rows = ds.Columns = 256
    ds.TotalPixelMatrixColumns = ds.TotalPixelMatrixRows = 512
    ds.NumberOfFrames, ds.DimensionOrganizationType = len(frames), "TILED_FULL"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].is_undefined_length = True
    (tmp_path / "s").mkdir()
    p = tmp_path / "s" / "j2k.dcm"
    ds.save_as(p, enforce_file_format=True)
    r = _thumbnail_in_4gb(p)
    assert r.returncode == 0 and re.search(r"j2k.dcm: corrupt JPEG 2000 frame 0 of j2k.dcm \(512 x 512 px\): the JPEG "
                                           r"2000 header says 256 x 2000000 px, the DICOM frame is 256 x 256", r.stdout), \
        (r.returncode, r.stdout, r.stderr[-400:])
    assert int(r.stdout.split("maxrss")[-1]) < 1500, r.stdout  # MB


def test_uncompressed_tiles_must_hold_exactly_their_pixels(tmp_path):
    """A 512 x 512 uncompressed TIFF in 256 x 256 tiles whose header was patched to 400 x 400 px in 200 x 200 tiles
    (as many tiles: the tile table check passes): cuCIM read each tile's first 120,000 bytes as its pixels, rows
    shifted, without an error. An uncompressed tile's byte count must now equal its pixels."""
    import struct

    p = tmp_path / "patched.svs"
    tifffile.imwrite(p, _rgb(), tile=(256, 256), photometric="rgb", description=APERIO)
    data = bytearray(p.read_bytes())
    with tifffile.TiffFile(p) as tf:
        tags = tf.pages[0].tags
        for name, v in (("ImageWidth", 400), ("ImageLength", 400), ("TileWidth", 200), ("TileLength", 200)):
            struct.pack_into("<H" if tags[name].dtype == 3 else "<I", data, tags[name].valueoffset, v)
    p.write_bytes(bytes(data))
    with pytest.raises(SlideError, match=r"patched.svs: image 0 \(400 x 400 px\): uncompressed tile 0 holds 196,608 "
                                         r"bytes, its pixels 120,000: a broken or patched header"):
        open_slide(p)


def test_extract_over_a_folder_of_this_rounds_bad_slides(tmp_path):
    """One `extract` over a folder of this file's cases beside a good slide: it finishes, each bad slide fails
    with one line naming it and the cause, the readable ones are done, nothing else reaches the terminal."""
    import json
    import struct
    import subprocess
    import sys

    from badinputs import good_slide
    from conftest import EXAMPLE, WSI

    d = tmp_path / "slides"
    d.mkdir()
    good_slide(d / "good.svs")
    _pyramid(d / "lie.svs", _other)
    _damaged(d, "lzw", "lzw", tile=(256, 256))
    _damaged(d, "jpegstrips", "jpeg", seed=1, rowsperstrip=64)
    for f in d.glob("good_*.svs"):  # _damaged's undamaged originals: no tissue in them
        f.unlink()
    (d / "cut.svs").write_bytes((WSI / "CMU-1-Small-Region.svs").read_bytes()[:-100])
    data = bytearray((WSI / "tcga-cr-7395-01a-01-ts1.svs").read_bytes())
    with tifffile.TiffFile(WSI / "tcga-cr-7395-01a-01-ts1.svs") as tf:
        struct.pack_into(">I", data, tf.pages[2].dataoffsets[0] + 12, 2_000_000)
    (d / "siz.svs").write_bytes(bytes(data))
    doc = json.loads(EXAMPLE.read_text())
    doc["tiling"]["params"].update(size=256, min_tissue=0.3, max_tiles=4)
    doc["patches"], doc["thumbnail"] = {"size": 64, "mode": "random", "per_tile": 2}, {"scale": 16}
    (tmp_path / "p.json").write_text(json.dumps(doc))
    r = subprocess.run([sys.executable, "-m", "slidestream.engine", "extract", str(tmp_path / "p.json"), "--slides",
                        str(d), "--out", str(tmp_path / "out"), "--json", "--mpp", "0.5"],
                       capture_output=True, text=True, timeout=300)
    by = {s["slide_id"]: s for s in json.loads(r.stdout.strip().splitlines()[-1])["slides"]}
    want = {"good": ("done", ""), "lie": ("error", "pyramid level 1 .* does not show what level 0 shows"),
            "lzw": ("error", "corrupt image data .*Wrong length of decoded string"),  # libtiff's words, captured
            "jpegstrips": ("error", "corrupt JPEG strip"),
            "cut": ("error", "truncated file"), "siz": ("error", "corrupt JPEG 2000 tile 0")}
    assert r.returncode == 1 and set(by) == set(want), (r.returncode, sorted(by), r.stderr[-500:])
    for name, (status, pattern) in want.items():
        s = by[name]
        assert s["status"] == status and re.search(pattern, s.get("reason", "")), (name, s["status"], s.get("reason"))
        assert status == "done" or (f"{name}.svs: " in s["reason"] and "\n" not in s["reason"]), s["reason"]
    assert all(ln.startswith(("error ", "warning ")) for ln in r.stderr.splitlines()), r.stderr[-500:]


def test_gray_plus_alpha_is_not_darkened_by_openslide(tmp_path):
    """OpenSlide (first in a pipeline's reader.order, or after cuCIM declined) returned gray + alpha with the
    gray multiplied by the alpha: composited over white again, 64 grey levels too dark at alpha 128. It now
    leaves such TIFFs to the next reader."""
    p = tmp_path / "ga.tif"
    want = _alpha_tiff(p, _rgb()[..., :1], "minisblack")
    name, got, _ = _read(p, order=["openslide", "tifffile"], mpp=0.5)
    assert name == "tifffile" and np.array_equal(got, want), name


def test_damaged_jpeg_tiles_in_separate_colour_planes_are_refused(tmp_path):
    """JPEG tiles stored as separate colour planes (one gray JPEG per plane and tile) were not checked at all:
    with 5 bytes flipped in each, the tifffile reader returned 3 of 5 such files as slightly other colours
    without a word (cuCIM leaves planar files to it). Each plane's tile is now checked like any JPEG tile."""
    from slidestream.engine.chatter import CAPTURE

    good = tmp_path / "planar.svs"
    tifffile.imwrite(good, np.moveaxis(_rgb(), -1, 0), tile=(256, 256), photometric="rgb", planarconfig="separate",
                     compression="jpeg", description=APERIO)
    name, got, _ = _read(good)
    assert np.abs(got[:, :240].astype(int) - _rgb()[:, :240]).max() <= 3, name
    data = bytearray(good.read_bytes())
    with tifffile.TiffFile(good) as tf:
        chunks = list(zip(tf.pages[0].dataoffsets, tf.pages[0].databytecounts))
    rng = np.random.default_rng(0)
    for o, n in chunks:
        for k in rng.integers(o + n // 4, o + n, 5):
            data[int(k)] ^= int(rng.integers(1, 256))
    bad = tmp_path / "bad.svs"
    bad.write_bytes(bytes(data))
    with CAPTURE.on(), pytest.raises(SlideError, match=r"bad.svs: corrupt JPEG tile \d+ of the 512 x 512 px level"):
        _read(bad)

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
        assert rgb is None and f"corrupt {name} tile 1" in why
        assert "header says 512 x 512 px, the TIFF tile is 256 x 256" in why
    finally:
        s.close()


def _flipped_pyramid(path, shape=(1536, 2048), f=4):
    """Level 0 of ``shape`` (glass with a texture symmetric about the diagonal), and a level 1 holding its 1/``f``
    copy transposed (width and height swapped, all sides multiples of 128): the textured box of the level-content
    check looks the same in both, so only the level's shape shows the lie."""
    a = np.full((*shape, 3), 235, np.uint8)
    t = _rgb(3, (512, 512))
    a[512:1024, 512:1024] = np.maximum(t, t.transpose(1, 0, 2))  # symmetric: the transpose shows the same there
    from PIL import Image

    lv1 = np.ascontiguousarray(np.asarray(Image.fromarray(a).reduce(f)).transpose(1, 0, 2))
    with tifffile.TiffWriter(path) as tw:
        for im in (a, lv1):
            tw.write(im, tile=(128, 128), photometric="rgb", compression="jpeg", description=APERIO, metadata=None,
                     subfiletype=0 if im is a else 1)


@pytest.mark.parametrize("order, shape, f, level", [(None, (1536, 2048), 4, "384 x 512"),
                                                     (["openslide"], (1536, 2048), 4, "384 x 512"),
                                                     (None, (1024, 2048), 8, "128 x 256")])  # a ~128 px smallest level
def test_pyramid_level_with_width_and_height_swapped_is_refused(tmp_path, order, shape, f, level):
    """A 2048 x 1536 slide whose level 1 is 384 x 512 (its sides swapped): the size check skipped levels whose
    sides are both multiples of 128 (tile padding) and the content check looked at one box where the swapped
    level looks the same, so the slide opened and patches read from level 1 came from the wrong place. Padding
    and rounding never turn a landscape level into a portrait one: refused, at no cost."""
    p = tmp_path / "flip.svs"
    _flipped_pyramid(p, shape, f)
    with pytest.raises(SlideError, match=rf"flip.svs: pyramid level 1 is {level} px, portrait where level 0 "
                                         rf"\({shape[1]} x {shape[0]} px\) is landscape: a broken or patched header"):
        open_slide(p, order=order)


@pytest.mark.parametrize("order, gray", [(None, False), (["tifffile"], False), (["tifffile"], True)])
def test_premultiplied_alpha_is_composited_as_premultiplied(tmp_path, order, gray):
    """RGBA (or gray + alpha) with associated alpha: the colours are already multiplied by the alpha, so over white
    they are colour + (255 - alpha). cuCIM (the first reader) and the tifffile reader composited them as straight
    alpha: up to 64 grey levels off at alpha 128 (mean 16), without a word. cuCIM now leaves any RGBA to the next
    reader (OpenSlide composites it right) and the tifffile reader composites premultiplied samples as such."""
    c = _rgb()[..., :1] if gray else _rgb()
    alpha = np.full((512, 512, 1), 128, np.uint8)
    alpha[:, :128], alpha[:, 128:256] = 255, 0
    pm = (c.astype(int) * alpha // 255).astype(np.uint8)
    p = tmp_path / "pm.tif"
    tifffile.imwrite(p, np.dstack([pm, alpha]), tile=(256, 256), photometric="minisblack" if gray else "rgb",
                     extrasamples=[1])
    want = np.broadcast_to(pm.astype(int) + 255 - alpha, (512, 512, 3))
    s = open_slide(p, order=order, mpp=0.5)
    try:
        got = s.reader.read_region((0, 0), 0, (512, 512))
        assert np.abs(got.astype(int) - want).max() <= 1, (s.reader_name, np.abs(got.astype(int) - want).max())
    finally:
        s.close()


@pytest.mark.parametrize("order", [None, ["openslide"], ["tifffile"]])
@pytest.mark.parametrize("ome", [False, True])
def test_non_square_pixels_give_no_mpp(tmp_path, order, ome):
    """0.5 µm/px across, 1.0 µm/px down: cuCIM took its first spacing, which is Y (1.0 µm/px: patches of twice the
    area), OpenSlide and the tifffile reader the x resolution (0.5): patches stretched 2x, without a word. Now no
    reader gives an mpp when x and y differ by more than 5 %, and the slide asks for --mpp."""
    p = tmp_path / ("ns.ome.tif" if ome else "ns.tif")
    kw = (dict(metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 1.0}) if ome else
          dict(resolution=(20000, 10000), resolutionunit="CENTIMETER"))  # px per cm
    tifffile.imwrite(p, _rgb(), tile=(256, 256), photometric="rgb", **kw)
    with pytest.raises(SlideError, match=r"ns(\.ome)?\.tif: the file says its pixels are 0.5 µm wide and 1 µm high, not "
                                         r"square .*give --mpp"):
        open_slide(p, order=order)
    s = open_slide(p, order=order, mpp=0.5)  # the way out it names
    s.close()
    q = tmp_path / "sq.tif"  # square pixels within 5 % still count
    tifffile.imwrite(q, _rgb(), tile=(256, 256), photometric="rgb", resolution=(20000, 19400), resolutionunit="CENTIMETER")
    s = open_slide(q, order=order)
    assert s.mpp == pytest.approx(0.5)
    s.close()


@pytest.mark.parametrize("order", [None, ["openslide"], ["tifffile"]])
def test_aperio_mpp_and_appmag_far_apart_are_refused(tmp_path, order):
    """An Aperio header saying MPP = 0.05 and AppMag = 20 (0.5 µm/px): one of them is wrong by 10x and the MPP
    was taken silently (10x patches read from 20 level-0 px instead of 2). Now refused, naming both; a scanner's
    own pair (0.2527 at 40x, 0.4990 at 20x) is within 1.3x."""
    p = tmp_path / "lie.svs"
    tifffile.imwrite(p, _rgb(), tile=(256, 256), photometric="rgb", metadata=None,
                     description=APERIO.replace("MPP = 0.5", "MPP = 0.05"))
    with pytest.raises(SlideError, match=r"lie.svs: the file says 0.05 µm/px but objective power 20x \(0.5 µm/px\), "
                                         r"more than 3x apart; give the right one with --mpp"):
        open_slide(p, order=order)
    open_slide(p, order=order, mpp=0.5).close()


def _tile_table_claim(path, cols, rows):
    """A TIFF whose one image claims cols x rows tiles of 16 x 16 px, all absent (offsets and byte counts 0): a
    sparse file with room for both tables, so every count and offset is inside the file."""
    import struct

    tifffile.imwrite(path, _rgb(), tile=(256, 256), photometric="rgb", description=APERIO)
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tf:
        tags = {t.name: t.offset for t in tf.pages[0].tags}
    n, base = cols * rows, 1 << 20
    for name, typ, count, v in (("ImageWidth", 4, 1, cols * 16), ("ImageLength", 4, 1, rows * 16),
                                ("TileWidth", 3, 1, 16), ("TileLength", 3, 1, 16),
                                ("TileOffsets", 4, n, base), ("TileByteCounts", 4, n, base + 4 * n)):
        data[tags[name] + 2:tags[name] + 12] = struct.pack("<HII", typ, count, v)
    with open(path, "wb") as f:
        f.write(bytes(data))
        f.truncate(base + 8 * n)


@pytest.mark.parametrize("order", [None, ["tifffile"]])
def test_tiff_claiming_millions_of_tiles_is_refused_before_reading_its_tables(tmp_path, order):
    """A TIFF claiming 10^8 tiles (a sparse 800 MB file) opened after 49.9 s and 6.5 GB of memory (cuCIM; 10^7
    tiles: 4.4 s, 700 MB): tifffile reads both tables whole before any check. The raw directory walk now refuses
    more than 2^22 tiles from the tag's count: 0.04 s. Here 8.4 million tiles (a 67 MB sparse file)."""
    p = tmp_path / "many.svs"
    _tile_table_claim(p, 4096, 2048)
    with pytest.raises(SlideError, match=r"many.svs: a broken TIFF header: image 0 claims 8,388,608 tiles or strips "
                                         r"\(at most 4,194,304\)"):
        open_slide(p, order=order)


def _ifd_chain(path, n, loop_to=None):
    """A TIFF of ``n`` 16 x 16 gray images (directories) sharing one strip; the last points back to image
    ``loop_to`` (a loop) or ends the chain."""
    import struct

    tags = [(256, 3, 16), (257, 3, 16), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, None), (277, 3, 1),
            (278, 3, 16), (279, 4, 256)]
    size = 2 + 12 * len(tags) + 4
    strip = 8 + n * size
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    for i in range(n):
        nxt = 8 + (i + 1) * size if i + 1 < n else 0 if loop_to is None else 8 + loop_to * size
        out += struct.pack("<H", len(tags))
        for tag, typ, v in tags:
            out += struct.pack("<HHI", tag, typ, 1) + (struct.pack("<I", strip if v is None else v) if typ == 4
                                                        else struct.pack("<HH", v, 0))
        out += struct.pack("<I", nxt)
    path.write_bytes(bytes(out + bytes(range(256))))


@pytest.mark.parametrize("n, loop_to, why", [(3, 0, r"its directories form a loop \(directory 2 points back to the "
                                                       r"one at byte 8\)"),
                                              (10_001, None, r"more than 10,000 images \(directories\) in one TIFF")])
def test_tiff_directory_loop_or_endless_chain_is_refused(tmp_path, n, loop_to, why):
    """A TIFF whose last directory points back to its first opened as a good slide (tifffile follows the chain,
    warns and stops); 20,000 directories took 8.3 s to open (tifffile loads each), 10^6 would take minutes.
    Both are now refused by a raw walk of the chain before tifffile parses it."""
    p = tmp_path / "chain.tif"
    _ifd_chain(p, n, loop_to)
    with pytest.raises(SlideError, match=rf"chain.tif: a broken TIFF header: {why}"):
        open_slide(p, mpp=0.5)


def _native_dicom(path, frames):
    """The CMU level-4 DICOM file (one 138 x 185 JPEG frame) stored uncompressed, claiming ``frames`` frames."""
    import pydicom
    from conftest import WSI

    ds = pydicom.dcmread(WSI / "dicom-cmu-1-small-region" / "level-4-frames-0-1.dcm")
    rgb = ds.pixel_array
    ds.PixelData, ds.PhotometricInterpretation = rgb.tobytes(), "RGB"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.NumberOfFrames = frames
    ds.save_as(path, enforce_file_format=True)
    return rgb


@pytest.mark.parametrize("frames, why", [
    (10 ** 8, r"138 x 185 px in 138 x 185 frames claims 100,000,000 frames \(at most 4,194,304\): a broken header"),
    (10 ** 6, r"truncated file: the 1,000,000 frames of 138 x 185 px run past the end of f.dcm")])
def test_dicom_claiming_millions_of_frames_is_refused_before_indexing_them(tmp_path, frames, why):
    """An uncompressed DICOM slide claiming 10^7 frames took 2.5 s and 1.3 GB to refuse (every frame's byte range
    was listed before the file size was compared; 10^8: ten times that). Now at most 2^22 frames, and the file
    size is compared first: 0.04 s."""
    p = tmp_path / "f.dcm"
    rgb = _native_dicom(p, 1)
    s = open_slide(p, order=["dicom"], mpp=0.5)  # the honest file reads
    assert np.array_equal(s.reader.read_region((0, 0), 0, (138, 185)), rgb)
    s.close()
    _native_dicom(p, frames)
    with pytest.raises(SlideError, match=rf"f.dcm: {why}"):
        open_slide(p, order=["dicom"], mpp=0.5)


def test_pipe_in_a_mirax_or_vms_slide_folder_is_refused_not_waited_on(tmp_path):
    """A named pipe (FIFO) where a MIRAX slide's Slidedat.ini or a VMS slide's JPEG should be: OpenSlide opened it
    and waited forever for a writer (the extraction hung, no error). The files the reader opens besides the slide
    file are now checked for their type first, as the DICOM folder's were."""
    import os
    import subprocess
    import sys

    (tmp_path / "s.mrxs").write_text("[GENERAL]\nSLIDE_VERSION = 01.02\n")
    (tmp_path / "s").mkdir()
    os.mkfifo(tmp_path / "s" / "Slidedat.ini")
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "v.vms").write_text("[Virtual Microscope Specimen]\nNoLayers=1\nNoJpegColumns=1\n"
                                          "NoJpegRows=1\nImageFile=a.jpg\nMapFile=a.jpg\n")
    os.mkfifo(tmp_path / "v" / "a.jpg")
    code = ("from slidestream.engine.slide import open_slide\n"
            f"for p in ({str(tmp_path / 's.mrxs')!r}, {str(tmp_path / 'v' / 'v.vms')!r}):\n"
            "    try:\n        open_slide(p, mpp=0.5)\n    except Exception as e:\n        print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "s.mrxs: the MIRAX folder holds Slidedat.ini, which is not a regular file (a pipe" in r.stdout, r.stdout
    assert "v.vms: the VMS folder holds a.jpg, which is not a regular file" in r.stdout, r.stdout


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.70"])  # JPEG-LS, JPEG lossless
def test_dicom_jpeg_ls_or_lossless_frame_of_another_size_is_refused(tmp_path, syntax):
    """A JPEG-LS (or lossless JPEG) frame coded at 276 x 370 px in a DICOM of 138 x 185 px frames: imagecodecs
    decoded it at the size its header claims and the reader cropped it, so the slide read as other pixels (mean
    difference 55 grey levels) without a word. The frame header's size is now checked like a JPEG frame's."""
    import imagecodecs
    import pydicom
    from conftest import WSI
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(WSI / "dicom-cmu-1-small-region" / "level-4-frames-0-1.dcm")
    rgb = ds.pixel_array
    enc = imagecodecs.jpegls_encode if syntax.endswith(".80") else lambda a: imagecodecs.jpeg8_encode(a, lossless=True)
    ds.file_meta.TransferSyntaxUID, ds.PhotometricInterpretation = syntax, "RGB"
    p = tmp_path / "f.dcm"
    for frame in (rgb, np.ascontiguousarray(np.repeat(np.repeat(rgb, 2, 0), 2, 1))):
        ds.PixelData = encapsulate([enc(frame)])
        ds["PixelData"].is_undefined_length = True
        ds.save_as(p, enforce_file_format=True)
        s = open_slide(p, order=["dicom"], mpp=0.5)
        rgb_read, why = s.read_checked(0, 0, 138, 138)
        s.close()
        if frame is rgb:  # the honest frame reads as it is
            assert np.array_equal(rgb_read, rgb[:138, :138]), why
    assert rgb_read is None and ("corrupt JPEG-LS/lossless frame 0 of f.dcm (138 x 185 px): its header says 276 x 370 "
                                 "px, 3 components, the DICOM frame is 138 x 185 px, 3 components") in why


@pytest.mark.parametrize("order", [None, ["tifffile"]])
def test_tile_byte_count_far_over_its_pixels_is_refused(tmp_path, order):
    """A JPEG tile whose byte count says 10^9 (a 256 x 256 RGB tile holds 196,608 bytes of pixels; the file is
    long enough, sparse): each read of it read 1 GB (cuCIM 5.0 s, tifffile 3.4 s, 1 GB RSS) and decoded it
    as good data (the zeros after the JPEG passed as padding). More than 4x its pixels (+ 64 KiB) is now a
    broken header; 10^7 bytes here."""
    import struct

    p = tmp_path / "big.svs"
    tifffile.imwrite(p, _rgb(), tile=(256, 256), photometric="rgb", compression="jpeg", description=APERIO)
    data = bytearray(p.read_bytes())
    with tifffile.TiffFile(p) as tf:
        where, last = tf.pages[0].tags["TileByteCounts"].valueoffset, int(tf.pages[0].dataoffsets[3])
    struct.pack_into("<I", data, where + 4 * 3, 10 ** 7)
    with open(p, "wb") as f:
        f.write(bytes(data))
        f.truncate(last + 10 ** 7)
    with pytest.raises(SlideError, match=r"big.svs: image 0 \(512 x 512 px\): tile 3 claims 10,000,000 bytes, more "
                                         r"than 4x its 196,608 bytes of pixels: a broken or patched header"):
        open_slide(p, order=order)


def test_dicom_frame_of_millions_of_bytes_is_refused(tmp_path):
    """A 138 x 185 px JPEG frame followed by 10^7 zero bytes in its fragment (a patched length over a sparse file
    does the same): each read of the frame read the whole fragment and decoded it as good data (the zeros passed
    as padding); 10^9 would be 1 GB per read. A fragment over 4x its frame's pixels (+ 64 KiB) is now refused."""
    import pydicom
    from conftest import WSI
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(WSI / "dicom-cmu-1-small-region" / "level-4-frames-0-1.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame + bytes(10 ** 7)])
    p = tmp_path / "f.dcm"
    ds.save_as(p, enforce_file_format=True)
    with pytest.raises(SlideError, match=r"f.dcm: f.dcm: a DICOM pixel data item of 10,0\d\d,\d+ bytes, more than 4x a "
                                         r"138 x 185 px frame's pixels: a broken header"):
        open_slide(p, order=["dicom"], mpp=0.5)


def test_synthetic_slide_of_any_mpp_states_a_matching_objective(tmp_path):
    """make_slide wrote AppMag = 40 whatever its mpp: a 1.0 µm/px synthetic slide said 40x (4x apart) and is
    refused since mpp and objective power may differ at most 3x. Its objective now follows its mpp."""
    from slidestream.engine.synthetic import make_slide

    s = open_slide(make_slide(tmp_path / "a.svs", size=(1024, 768), mpp=1.0, levels=(1, 4)))
    assert (s.mpp, s.reader.objective_power) == (1.0, 10.0)
    s.close()

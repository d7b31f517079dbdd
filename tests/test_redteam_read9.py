"""Red team, round 9: the DCT-scaled thumbnail (Slide._dct_thumbnail) on TIFF variants a lab may have, each made
here with tifffile from pre-encoded JPEG tiles: the DCT thumbnail runs and stays within the fidelity bound of the
reader's path (tissue mask within 0.5 % of pixels, mean within 4 grey levels), or it gives way to that path (then
the two are equal); never an error of its own. And the Python API without the CLI's capture names damage."""
import io

import numpy as np
import pytest
import tifffile
from PIL import Image

import json

from conftest import EXAMPLE
from slidestream.engine.chatter import CAPTURE
from slidestream.engine.errors import SlideError
from slidestream.engine.runner import tissue_mask
from slidestream.engine.slide import open_slide
from slidestream.engine.synthetic import make_slide, render

PIPE = json.loads(EXAMPLE.read_text())


def _split_tables(stream: bytes) -> tuple[bytes, bytes]:
    """A complete JPEG as (JPEGTables: SOI + DQT + DHT + EOI, the abbreviated tile)."""
    i, tables, rest = 2, b"", b"\xff\xd8"
    while stream[i + 1] != 0xDA:
        n = 2 + int.from_bytes(stream[i + 2:i + 4], "big")
        if stream[i + 1] in (0xDB, 0xC4):
            tables += stream[i:i + n]
        else:
            rest += stream[i:i + n]
        i += n
    return b"\xff\xd8" + tables + b"\xff\xd9", rest + stream[i:]


def _write(path, img, levels=(1, 4), tile=256, subsampling=2, restart=0, tables=False, gray=False,
           bigtiff=False, subifds=False):
    """A JPEG-tiled TIFF (YCbCr, JFIF tiles from Pillow; edge tiles padded with black) with Aperio's mpp."""
    desc = f"Aperio Image Library v12\r\n{img.shape[1]}x{img.shape[0]} JPEG|AppMag = 40|MPP = 0.25"
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
        for i, ds in enumerate(levels):
            lv = img if ds == 1 else np.asarray(Image.fromarray(img).reduce(ds))
            streams = []
            for y in range(0, lv.shape[0], tile):
                for x in range(0, lv.shape[1], tile):
                    t = np.zeros((tile, tile) + lv.shape[2:], np.uint8)
                    part = lv[y:y + tile, x:x + tile]
                    t[:part.shape[0], :part.shape[1]] = part
                    buf = io.BytesIO()
                    Image.fromarray(t).save(buf, "JPEG", quality=85, subsampling=subsampling,
                                            **({"restart_marker_blocks": restart} if restart else {}))
                    streams.append(buf.getvalue())
            extra = []
            if tables:
                pairs = [_split_tables(s) for s in streams]
                streams = [p[1] for p in pairs]
                extra = [(347, 7, len(pairs[0][0]), pairs[0][0], True)]
            kw = dict(shape=lv.shape, dtype="uint8", tile=(tile, tile), compression=7, extratags=extra,
                      photometric="minisblack" if gray else "ycbcr", metadata=None, software=False)
            if not gray:
                kw["subsampling"] = (subsampling, subsampling) if subsampling else (1, 1)
            if subifds:
                kw.update({"subifds": len(levels) - 1} if i == 0 else {"subfiletype": 1})
            tw.write(iter(streams), description=desc if i == 0 else None, **kw)
    return path


def _patch_tile_table(path, tag: str, index: int, value: int):
    """Set entry ``index`` of the first page's TileOffsets or TileByteCounts (LONG) to ``value``."""
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tf:
        t = tf.pages[0].tags[tag]
        assert t.dtype == 4
        data[t.valueoffset + 4 * index:t.valueoffset + 4 * index + 4] = value.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def img():
    return render((2000, 1500), 1, seed=3, mpp=0.25)  # 2000 / 4 = 500: edge tiles on both levels


VARIANTS = {  # name: (writer arguments, whether the DCT path runs)
    "jfif-420": (dict(), True),
    "jfif-444": (dict(subsampling=0), True),
    "jpegtables": (dict(tables=True), True),
    "restart-markers": (dict(restart=1, tables=True), True),
    "tile-16": (dict(tile=16), True),
    "tile-240": (dict(tile=240), True),
    "tile-1024": (dict(tile=1024), True),
    "bigtiff": (dict(bigtiff=True), True),
    "ome-subifds": (dict(subifds=True), True),
    "no-pyramid": (dict(levels=(1,)), True),
    "grayscale": (dict(gray=True), False),  # one sample: the reader's path
    "sparse-tiles": (dict(levels=(1,)), False),  # byte count 0: absent, white in every reader
    "offset-0": (dict(levels=(1,)), False),  # a tile at offset 0 is the TIFF header: both refuse it alike
    "shared-offset": (dict(levels=(1,)), True),  # two tiles, one stream: both readers show it twice
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_dct_thumbnail_is_the_readers_or_within_the_bound(name, img, tmp_path):
    kw, runs = VARIANTS[name]
    p = _write(tmp_path / (f"{name}.ome.tif" if kw.get("subifds") else f"{name}.svs"),
               img[..., 0] if kw.get("gray") else img, **kw)
    if name == "sparse-tiles":
        for k in (0, 5, 9):
            _patch_tile_table(p, "TileByteCounts", k, 0)
    if name == "offset-0":
        _patch_tile_table(p, "TileOffsets", 3, 0)
    if name == "shared-offset":
        with tifffile.TiffFile(p) as tf:
            o, c = tf.pages[0].dataoffsets[0], tf.pages[0].databytecounts[0]
        _patch_tile_table(_patch_tile_table(p, "TileOffsets", 1, o), "TileByteCounts", 1, c)
    with CAPTURE.on():
        s = open_slide(p, mpp=0.25)
        w, h = s.dimensions
        assert (s._dct_thumbnail(s.best_level(32), w // 32, h // 32) is not None) == runs
        got = []
        for decode in ("dct", "resize"):
            try:
                got.append(s.thumbnail(32, decode))
            except SlideError as e:
                got.append(str(e))
        s.close()
    dct, resize = got
    if name == "offset-0":
        assert dct == resize and "tile 3 of the 2000 x 1500 px level" in dct
        return
    assert dct.shape == resize.shape == (h // 32, w // 32) + (() if dct.ndim == 2 else (3,))
    if not runs:
        assert np.array_equal(dct, resize)
    else:
        assert np.abs(dct.astype(int) - resize).mean() < 4
        assert np.mean(tissue_mask(PIPE, dct) != tissue_mask(PIPE, resize)) < 0.005
        # the last column and row, where the edge tiles' black padding was decoded into the last reduced pixel
        assert np.abs(dct[:, -1].astype(int) - resize[:, -1]).mean() < 4
        assert np.abs(dct[-1].astype(int) - resize[-1]).mean() < 4


def test_python_api_names_damage_without_the_clis_capture(tmp_path):
    """One byte flipped in the entropy-coded data of the thumbnail level's first tile: cuCIM decodes it, printing
    "Corrupt JPEG data: premature end of data segment" on the terminal. Without the CLI's capture on,
    ``open_slide(p).thumbnail(32)`` returned those pixels silently; checked_read now turns capture on itself."""
    src = make_slide(tmp_path / "a.svs", size=(2048, 1536), seed=2)
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tf:
        data[tf.pages[2].dataoffsets[0] + 1435] ^= 0x5A
    bad = tmp_path / "bad.svs"
    bad.write_bytes(bytes(data))
    assert CAPTURE._depth == 0
    for decode in ("dct", "resize"):
        with pytest.raises(SlideError, match=r"bad.svs: corrupt image data in level 2 .*Corrupt JPEG data"):
            open_slide(bad, mpp=0.25).thumbnail(32, decode)
    assert CAPTURE._depth == 0  # off again


def _strip_app_markers(stream: bytes) -> bytes:
    i, out = 2, b"\xff\xd8"
    while stream[i + 1] != 0xDA:
        n = 2 + int.from_bytes(stream[i + 2:i + 4], "big")
        out += b"" if 0xE0 <= stream[i + 1] <= 0xEF else stream[i:i + n]
        i += n
    return out + stream[i:]


@pytest.mark.parametrize("marked", ["adobe", "component-ids"])
def test_rgb_coded_jpeg_tiles_marked_rgb_are_read_in_their_colours(marked, img, tmp_path):
    """JPEG tiles whose stream says RGB (an Adobe marker, transform 0; without it, components named 'R', 'G', 'B')
    in a TIFF tagged YCbCr, as tifffile tags pre-encoded RGB tiles: cuCIM and OpenSlide followed the tag and
    converted them as YCbCr, 45 grey levels off the encoded pixels, without a word, in the thumbnail (resize) and
    every patch; the DCT thumbnail followed the stream, so the two disagreed on 58 % of the mask. Both readers now
    leave such a file to the tifffile reader, which follows the stream. (tifffile's own RGB JPEG, tagged RGB, is
    cuCIM's as before.)"""
    import imagecodecs

    p = tmp_path / f"{marked}.tif"
    tile, lv = 256, img[:1024, :1536]
    streams = []
    for y in range(0, lv.shape[0], tile):
        for x in range(0, lv.shape[1], tile):
            s = imagecodecs.jpeg8_encode(lv[y:y + tile, x:x + tile], level=90, colorspace="rgb", outcolorspace="rgb")
            streams.append(s if marked == "adobe" else _strip_app_markers(s))
    tifffile.imwrite(p, iter(streams), shape=lv.shape, dtype="uint8", tile=(tile, tile), compression=7,
                     photometric="rgb", metadata=None)
    with tifffile.TiffFile(p) as tf:
        assert tf.pages[0].photometric == 6  # tifffile's tag for pre-encoded JPEG tiles
    with CAPTURE.on():
        s = open_slide(p, mpp=0.25)
        px = s.reader.read_region((0, 0), 0, lv.shape[1::-1])
        dct, resize = s.thumbnail(32), s.thumbnail(32, "resize")
        name = s.reader_name
        s.close()
    assert name == "tifffile"
    assert np.abs(px.astype(int) - lv).mean() < 3
    assert np.abs(dct.astype(int) - resize).mean() < 4


@pytest.mark.parametrize("kind", ["planar-separate", "cmyk"])
def test_dct_thumbnail_gives_way_on_planes_and_four_samples(kind, img, tmp_path):
    """Separate colour planes (a grayscale JPEG per plane) and CMYK JPEG tiles: not decoded by the DCT path; the
    thumbnail is the reader's, byte for byte."""
    p = tmp_path / f"{kind}.tif"
    if kind == "cmyk":
        tifffile.imwrite(p, np.concatenate([255 - img[:768, :1024], np.zeros((768, 1024, 1), np.uint8)], 2),
                         tile=(256, 256), photometric="separated", compression="jpeg")
    else:
        tifffile.imwrite(p, np.moveaxis(img[:768, :1024], 2, 0).copy(), tile=(256, 256), photometric="rgb",
                         planarconfig="separate", compression="jpeg")
    with CAPTURE.on():
        s = open_slide(p, mpp=0.25)
        assert s._dct_thumbnail(0, 1024 // 32, 768 // 32) is None
        assert np.array_equal(s.thumbnail(32), s.thumbnail(32, "resize"))
        s.close()


def test_a_12_bit_jpeg_tiff_is_read_not_called_damaged(img, tmp_path):
    """12-bit JPEG tiles: cuCIM leaves them to the next reader; OpenSlide opened the file and then failed every
    read ("can not handle images with 12-bit samples"), so the slide was refused as damaged on both thumbnail
    paths. OpenSlide now leaves it to the tifffile reader; the DCT path gives way (not 8-bit)."""
    p = tmp_path / "12bit.tif"
    tifffile.imwrite(p, img[:768, :1024].astype(np.uint16) * 16, tile=(256, 256), photometric="rgb",
                     compression="jpeg", bitspersample=12)
    with CAPTURE.on():
        s = open_slide(p, mpp=0.25)
        dct, resize = s.thumbnail(32), s.thumbnail(32, "resize")
        name = s.reader_name
        s.close()
    assert name == "tifffile" and np.array_equal(dct, resize)
    ref = np.asarray(Image.fromarray(img[:768, :1024]).resize((32, 24), Image.BILINEAR))
    assert np.abs(dct.astype(int) - ref).mean() < 4

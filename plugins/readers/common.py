"""Small helpers shared by the built-in readers (not a plugin)."""
from __future__ import annotations

import os
import re
import struct
import threading
from contextlib import contextmanager
from typing import Callable

import numpy as np

from slidestream.engine.errors import BrokenFile


def positive_float(v) -> float | None:
    """``float(v)`` when it is a positive number, else None (metadata values are often missing or ''). A decimal
    comma ("0,2527", scanners set to a German locale) is a decimal point, as OpenSlide reads it."""
    if isinstance(v, str) and v.count(",") == 1 and "." not in v:
        v = v.replace(",", ".")
    try:
        f = float(v)
        return f if f > 0 else None
    except (TypeError, ValueError):
        return None


def to_rgb(a: np.ndarray) -> np.ndarray:
    """uint8 RGB from gray, gray + alpha, RGB or RGBA (alpha composited over white, as glass looks)."""
    a = np.asarray(a)
    if a.dtype == np.uint16 or (a.dtype.kind in "iu" and a.dtype.itemsize > 1 and a.max(initial=0) > 255):
        a = (np.clip(a, 0, 65535) >> 8).astype(np.uint8)  # 16-bit samples: keep the top 8 bits, never clip
    elif a.dtype.kind == "f":
        a = np.clip(np.nan_to_num(a) * (255 if a.size and np.nanmax(a) <= 1 else 1), 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 2:  # gray + alpha
        a = a[..., [0, 0, 0, 1]]
    if a.shape[2] == 4:
        alpha = a[..., 3:4].astype(np.uint16)
        rgb = (a[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha)) // 255
        return rgb.astype(np.uint8)
    if a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def premultiplied_over_white(a: np.ndarray) -> np.ndarray:
    """Gray or RGB samples followed by a premultiplied (TIFF: associated) alpha, over white: colour + (max - alpha).
    ``to_rgb`` composites straight (unassociated) alpha; on premultiplied colours it was up to 64 levels off."""
    top = int(np.iinfo(a.dtype).max)
    c, alpha = a[..., :-1].astype(np.int64), a[..., -1:].astype(np.int64)
    return np.clip(c + (top - alpha), 0, top).astype(a.dtype)


def read_clipped(read: Callable[[int, int, int, int], np.ndarray], location: tuple[int, int], level: int,
                 size: tuple[int, int], dims: tuple[int, int], downsample: float) -> np.ndarray:
    """Read ``size`` pixels at ``level`` from level-0 ``location``; the part outside the level is white.

    ``read(lx, ly, w, h)`` reads an in-bounds box in level coordinates.
    """
    w, h = size
    lx, ly = int(round(location[0] / downsample)), int(round(location[1] / downsample))
    out = np.full((h, w, 3), 255, np.uint8)
    x0, y0 = max(lx, 0), max(ly, 0)
    x1, y1 = min(lx + w, dims[0]), min(ly + h, dims[1])
    if x1 > x0 and y1 > y0:
        out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = to_rgb(read(x0, y0, x1 - x0, y1 - y0))
    return out


MAX_LEVEL_PIXELS = 2 ** 36  # 262144² px: no scanner writes more; larger claims are broken headers
MAX_TILE_BYTES = 2 ** 28  # decompressed bytes of one tile or strip
MAX_COMPRESSED = 4  # a compressed tile (strip) may hold at most this many times its pixels' bytes (+ 64 KiB)


def file_kind(path: str) -> str:
    """"tiff", "dicom" or "" from the first bytes (suffixes lie)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return ""
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return "dicom" if head[128:132] == b"DICM" else ""


def check_claims(path: str, keep: bool = False):
    """Refuse a file whose header claims do not add up, before any pixel is read (BrokenFile, one line).

    The shared gate of every reader: TIFFs are checked here (:func:`check_tiff`); DICOM frame tables are
    checked by the DICOM reader as it indexes the frames (``dicom._Level``); plain images by Pillow's
    decompression-bomb limit (``image.ImageSlide``). ``keep``: return the TIFF as parsed for the check, open
    (the caller closes it; None for other files), so a reader parses it once."""
    if os.path.isfile(path) and file_kind(path) == "tiff":
        return check_tiff(path, keep)
    return None


@contextmanager
def tiff_file(path: str, tf=None):
    """``tf`` (a TIFF parsed already, left open) when given, else ``path`` parsed for the block."""
    if tf is not None:
        yield tf
        return
    import tifffile

    with tifffile.TiffFile(path) as own:
        yield own


def tiff_pages(tf) -> list:
    """Every image of a TIFF: its directories, and the SubIFD pyramid levels of its first series (not in tf.pages).
    SubIFDs chained after the last one the SubIFDs tag lists are added to it first: tifffile reads only those
    listed (a tag listing the first level of a chain gave 2 of 4 levels)."""
    pages = list(tf.pages)  # before any tf.pages[i]: after one, a circular IFD chain is iterated forever
    for page in pages:
        if page.subifds:
            page.subifds = _subifd_chain(tf, list(page.subifds))
    for series in tf.series[:1]:
        for lv in series.levels[1:]:
            pages += [p for p in lv.pages if p is not None and p not in pages]
    return pages


def _subifd_chain(tf, chain: list[int]) -> tuple[int, ...]:
    """``chain`` followed on from its last directory's next-directory offset (no loops, at most ``MAX_IFDS``)."""
    t, fh = tf.tiff, tf.filehandle
    while len(chain) < MAX_IFDS:
        fh.seek(chain[-1])
        n = struct.unpack(t.tagnoformat, fh.read(t.tagnosize))[0]
        fh.seek(chain[-1] + t.tagnosize + n * t.tagsize)
        raw = fh.read(t.offsetsize)
        nxt = struct.unpack(t.offsetformat, raw)[0] if len(raw) == t.offsetsize else 0
        if not nxt or nxt in chain or nxt >= fh.size:
            break
        chain.append(nxt)
    return tuple(chain)


MAX_IFDS = 10_000  # images (directories) in one TIFF: slides have < 20; tifffile took 8 s to open 20,000
MAX_TILES = 2 ** 22  # tiles or strips of one image: a MAX_LEVEL_PIXELS level in 128 x 128 tiles


def tiff_directory_problem(path: str) -> str:
    """What is wrong with a TIFF's chain of directories (IFDs), '' when nothing: a loop, more than ``MAX_IFDS``
    of them, or a tile/strip table of more than ``MAX_TILES`` entries. Walks the raw chain before tifffile parses
    it: tifffile follows a loop quietly (a warning), loads every directory of a long chain (8 s for 20,000) and
    reads each table whole (10^8 tile offsets: 800 MB). SubIFDs (tag 330: OME-TIFF pyramid levels) and their own
    chains are walked too (one listed twice, or chained and listed, as tifffile writes them, is read once).
    Cost: one small read per directory."""
    with open(path, "rb") as f:
        head = f.read(16)
        bo = "<" if head[:2] == b"II" else ">"
        big = struct.unpack(bo + "H", head[2:4])[0] == 43  # BigTIFF: 8-byte counts and offsets
        count, word, entry = ("Q", "Q", 20) if big else ("H", "I", 12)
        wsize = struct.calcsize(word)
        offset = struct.unpack(bo + word, head[8:16] if big else head[4:8])[0]
        seen: set[int] = set()
        subifds: list[int] = []

        def directory(offset: int, what: str) -> tuple[str, int]:
            """(problem, next offset) of the directory at ``offset``; its SubIFDs go into ``subifds``."""
            f.seek(offset)
            raw = f.read(struct.calcsize(count))
            if len(raw) < struct.calcsize(count):
                return "", 0  # past the end of the file: check_tiff names it
            n = min(struct.unpack(bo + count, raw)[0], 65535)
            body = f.read(n * entry + wsize)
            if len(body) < n * entry + wsize:
                return "", 0
            for k in range(n):
                tag, kind, values = struct.unpack(bo + "HH" + word, body[k * entry:k * entry + 4 + wsize])
                if tag in (273, 279, 324, 325) and values > MAX_TILES:  # Strip/Tile Offsets/ByteCounts
                    return f"{what} claims {values:,} tiles or strips (at most {MAX_TILES:,})", 0
                if tag == 330 and 0 < values <= MAX_IFDS:  # SubIFDs: LONG/IFD (4 bytes) or LONG8/IFD8 (8 bytes)
                    item = "Q" if kind in (16, 18) else "I"
                    data = body[k * entry + 4 + wsize:(k + 1) * entry]
                    if values * struct.calcsize(item) > wsize:  # not in the entry: at the offset it holds
                        f.seek(struct.unpack(bo + word, data)[0])
                        data = f.read(values * struct.calcsize(item))
                        f.seek(offset + struct.calcsize(count) + n * entry + wsize)
                    subifds.extend(struct.unpack(bo + item * (len(data) // struct.calcsize(item)), data)[:values])
            return "", struct.unpack(bo + word, body[-wsize:])[0]

        while offset:
            if offset in seen:
                return f"its directories form a loop (directory {len(seen) - 1} points back to the one at byte {offset:,})"
            if len(seen) >= MAX_IFDS:
                return f"more than {MAX_IFDS:,} images (directories) in one TIFF"
            seen.add(offset)
            why, offset = directory(offset, f"image {len(seen) - 1}")
            if why:
                return why
        while subifds:
            offset = subifds.pop()
            if not offset or offset in seen:
                continue
            if len(seen) >= MAX_IFDS:
                return f"more than {MAX_IFDS:,} images (directories) in one TIFF"
            seen.add(offset)
            why, nxt = directory(offset, "a SubIFD image (pyramid level)")
            if why:
                return why
            subifds.append(nxt)
    return ""


_QUIET_LOCK = threading.Lock()
_QUIET = [0, True]  # checks running, the tifffile logger's own propagate (restored by the last one out)


def check_tiff(path: str, keep: bool = False):
    """Every TIFF image (pyramid level, label, macro): its size, its tile/strip count and where its data lies
    (``keep``: return the parsed TiffFile, open, instead of closing it).

    * level size at most ``MAX_LEVEL_PIXELS`` and one tile/strip at most ``MAX_TILE_BYTES`` decompressed;
    * as many tile (strip) offsets and byte counts as the size needs: ceil(W/tw) x ceil(H/th) (x samples
      when planar);
    * every tile's bytes inside the file (a truncated copy);
    * no directory pointing past the end of the file (tifffile logs those; collected, not printed).
    """
    import logging

    import tifffile

    why = tiff_directory_problem(path)
    if why:
        raise BrokenFile(f"a broken TIFF header: {why}")
    size = os.path.getsize(path)
    problems: list[str] = []

    me = threading.get_ident()

    class Catch(logging.Handler):
        def emit(self, record):
            if record.thread == me:  # another slide parsed meanwhile (extract plans the next slide) is not this one
                problems.append(record.getMessage())

    log = logging.getLogger("tifffile")
    handler = Catch(level=logging.WARNING)
    log.addHandler(handler)
    with _QUIET_LOCK:  # two slides checked at once: the first in sets propagate off, the last out restores it
        if not _QUIET[0]:
            _QUIET[1] = log.propagate
            log.propagate = False
        _QUIET[0] += 1
    tf = None
    try:
        tf = tifffile.TiffFile(path)
        for k, page in enumerate(tiff_pages(tf)):
            _check_page(page, k, size)
        why = ome_size_problem(tf)
        if why:
            raise BrokenFile(why)
    except BrokenFile as e:
        broken = e
    except (tifffile.TiffFileError, struct.error, ValueError, IndexError, KeyError) as e:
        broken = BrokenFile(f"not a readable TIFF: {e}")
    else:
        broken = None
    finally:
        log.removeHandler(handler)
        with _QUIET_LOCK:
            _QUIET[0] -= 1
            if not _QUIET[0]:
                log.propagate = _QUIET[1]
    # a table or directory past the end of the file: the cause of what else is wrong (a truncated copy)
    truncated = any(w in p for p in problems for w in ("invalid page offset", "invalid offset", "invalid value offset")) \
        or any("truncated" in p.lower() for p in problems)
    if tf is not None and (truncated or broken is not None or not keep):
        tf.close()
    if truncated:
        raise BrokenFile("truncated file: TIFF directories point past the end of the file")
    if broken is not None:
        raise broken
    return tf if keep else None


def ome_size_problem(tf) -> str:
    """Why an OME-TIFF's first image is not the size its OME metadata gives it ('' when it is, or not OME): a size
    changed within the last row or column of tiles keeps the tile count right, and the rows or columns added
    came from the tiles' padding (black), silently; tifffile then also drops the SubIFD levels."""
    import re

    if not tf.is_ome:
        return ""
    image = re.search(r"<(?:\w+:)?Image\b.*?</(?:\w+:)?Image>", tf.ome_metadata or "", re.S)
    pixels = image and re.search(r"<(?:\w+:)?Pixels\b([^>]*)>", image.group(0))
    ifd = image and re.search(r"<(?:\w+:)?TiffData\b[^>]*?\bIFD=\"(\d+)\"", image.group(0))
    if not pixels or (ifd and ifd.group(1) != "0"):
        return ""
    size = [re.search(rf'\bSize{a}="(\d+)"', pixels.group(1)) for a in "XY"]
    page = tf.pages.first
    if None in size or (int(size[0].group(1)), int(size[1].group(1))) == (page.imagewidth, page.imagelength):
        return ""
    return (f"image 0 is {page.imagewidth} x {page.imagelength} px, its OME metadata says {size[0].group(1)} x "
            f"{size[1].group(1)}: a broken or patched header")


def _check_page(page, k: int, file_size: int) -> None:
    import math

    w, h = int(page.imagewidth), int(page.imagelength)
    what = f"image {k} ({w} x {h} px)"
    spp = int(page.samplesperpixel)
    item = int(page.bitspersample) * spp // 8 or 1
    planes = spp if page.planarconfig == 2 else 1
    if page.is_tiled:
        tw, th, td = int(page.tilewidth), int(page.tilelength), int(page.tiledepth or 1)
        need = math.ceil(w / tw) * math.ceil(h / th) * math.ceil(int(page.imagedepth or 1) / td) * planes
        raw, unit = tw * th * td * item // planes, f"{tw} x {th} tiles"
    else:
        rps = min(int(page.rowsperstrip or h), h) or h
        need = math.ceil(h / rps) * planes
        raw, unit = w * rps * item // planes, f"strips of {rps} rows"
    if 262 not in page.tags:  # required: without it each reader guesses the colours (cuCIM: RGB, tifffile: inverted gray)
        raise BrokenFile(f"{what} has no PhotometricInterpretation tag (how its samples are colours): a broken header")
    offsets, counts = page.dataoffsets, page.databytecounts
    if len(offsets) != need or len(counts) != need:
        counted = f" and {len(counts):,} byte counts" if len(counts) != len(offsets) else ""
        raise BrokenFile(f"{what} in {unit} needs {need:,} data offsets but the file lists {len(offsets):,}{counted}: "
                         "a broken or patched header")
    if w * h > MAX_LEVEL_PIXELS:
        raise BrokenFile(f"{what} claims more than {MAX_LEVEL_PIXELS:,} px: a broken header")
    if raw > MAX_TILE_BYTES:
        raise BrokenFile(f"{what}: one of its {unit} would decompress to {raw:,} bytes (a broken header)")
    ends = np.asarray(offsets, np.uint64), np.asarray(counts, np.uint64)  # each <= file_size: their sum cannot wrap
    if need and (ends[0].max() > file_size or ends[1].max() > file_size or (ends[0] + ends[1]).max() > file_size):
        raise BrokenFile(f"truncated file: the data of {what} runs past the end of the file ({file_size:,} bytes)")
    if need and page.compression != 1 and int(max(counts)) > MAX_COMPRESSED * raw + 2 ** 16:
        # compressed data is at most a little larger than its pixels (plus headers: 64 KiB); a larger count would
        # be read whole for each read of the tile (10^9 bytes: 1 GB and 3-5 s each)
        i = int(np.argmax(np.asarray(counts)))
        raise BrokenFile(f"{what}: {'tile' if page.is_tiled else 'strip'} {i} claims {int(counts[i]):,} bytes, more than "
                         f"{MAX_COMPRESSED}x its {raw:,} bytes of pixels: a broken or patched header")
    if page.compression == 1 and int(page.bitspersample) % 8 == 0 and need:
        # uncompressed: each tile (strip) holds exactly its pixels; another count means a patched size or layout,
        # read as shifted or other pixels without an error
        full = np.full(need, raw, np.int64)
        if not page.is_tiled:  # the last strip of each plane may hold only the remaining rows
            per_plane = need // planes
            last = w * (h - (per_plane - 1) * rps) * item // planes
            ok = (np.asarray(counts) == full) | ((np.arange(need) % per_plane == per_plane - 1) & (np.asarray(counts) == last))
        else:
            ok = np.asarray(counts) == full
        ok |= np.asarray(counts) == 0  # absent (sparse)
        if not ok.all():
            i = int(np.argmin(ok))
            raise BrokenFile(f"{what}: uncompressed {'tile' if page.is_tiled else 'strip'} {i} holds {int(counts[i]):,} "
                             f"bytes, its pixels {raw:,}: a broken or patched header")


SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (DHT, JPG, DAC are not)
PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}  # start-of-frame markers of progressive JPEG
HEADER = {*range(0xC0, 0xD0), *range(0xDA, 0xF0), 0xFE}  # SOFn, DHT, DAC, SOS, DQT, DNL, DRI, DHP, EXP, APPn, COM
BETWEEN_SCANS = [0xC4, 0xCC, 0xDA, 0xDB, 0xDD, *range(0xE0, 0xF0), 0xFE]  # DHT, DAC, SOS, DQT, DRI, APPn, COM


def jpeg_tile_problem(data: bytes, width: int, height: int, components: int, tables: bytes | None = None) -> str:
    """What is wrong with one JPEG tile's bytes ('' when nothing is seen), without decoding it.

    Checks what a decoder may not report, or may crash on: SOI at the start and EOI at the end, quantisation
    tables in the tile or (``tables``, a TIFF's JPEGTables; None: not checked) beside it, a
    well-formed chain of header segments, a frame size equal to the TIFF tile size and the right number of
    colour components, and in the entropy-coded data no marker but byte stuffing (FF 00), restarts
    (FF D0..D7) and fill bytes (and, in a progressive JPEG, the headers of its later scans). Cost: one pass
    of numpy over the compressed bytes."""
    if data[:2] != b"\xff\xd8":
        return "the tile does not start with a JPEG SOI marker"
    end = data.rstrip(b"\x00")  # some writers pad tiles with zeros
    if end[-2:] != b"\xff\xd9":
        return "the tile does not end with a JPEG EOI marker (cut short or overwritten)"
    i, n, sof, dqt, progressive = 2, len(end), False, False, False
    while True:
        if i + 4 > n or end[i] != 0xFF:
            return f"malformed JPEG header at byte {i}"
        m = end[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
            continue
        if m not in HEADER:  # a damaged marker: libjpeg stops with 'Unsupported marker type', uncaught
            return f"JPEG marker FF{m:02X} where a header segment belongs, at byte {i}"
        length = int.from_bytes(end[i + 2:i + 4], "big")
        if length < 2 or i + 2 + length > n:
            return f"JPEG header segment at byte {i} has a bad length ({length})"
        if m == 0xDB:
            dqt = True
        if m in SOF:
            h, w, nc = int.from_bytes(end[i + 5:i + 7], "big"), int.from_bytes(end[i + 7:i + 9], "big"), end[i + 9]
            if (w, h) != (width, height):
                return f"the JPEG header says {w} x {h} px, the TIFF tile is {width} x {height}"
            if nc != components:
                return f"the JPEG header says {nc} colour components, the TIFF {components}"
            sof, progressive = True, m in PROGRESSIVE
        i += 2 + length
        if m == 0xDA:  # start of scan: entropy-coded data follows
            break
    if not sof:
        return "the JPEG tile has no frame header (SOF)"
    if tables is not None and not dqt and b"\xff\xdb" not in tables:
        return "the JPEG tile has no quantisation tables and the TIFF no JPEGTables tag (a broken or stripped header)"
    body = np.frombuffer(end, np.uint8, count=n - 2 - i, offset=i)
    ff = np.flatnonzero(body[:-1] == 0xFF)
    nxt = body[ff + 1]
    bad = (nxt != 0) & (nxt != 0xFF) & ((nxt < 0xD0) | (nxt > 0xD7))
    if progressive:  # several scans, each with its own header: Huffman tables, restart interval, start of scan
        bad &= ~np.isin(nxt, BETWEEN_SCANS)
    if bad.any():
        k = int(ff[np.argmax(bad)])
        return f"a stray JPEG marker FF{int(nxt[np.argmax(bad)]):02X} inside the compressed data at byte {i + k}"
    return ""


def jpeg_frame_size(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) of a JPEG-family stream's frame header (SOFn, also lossless; JPEG-LS SOF55),
    None when its headers hold none before the first scan."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        m = data[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
            continue
        if (m in SOF or m == 0xF7) and i + 10 <= len(data):
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big"), data[i + 9]
        if m == 0xDA:
            return None
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def strict_jpeg_problem(data: bytes, tables: bytes = b"", components: int = 3) -> str:
    """libjpeg-turbo's own warning about one JPEG tile ('' when none): it is decoded once through simplejpeg
    with warnings as errors ("Corrupt JPEG data: premature end of data segment", which imagecodecs, and so
    tifffile, swallow). ``tables``: a TIFF's JPEGTables, merged in front of an abbreviated tile."""
    import simplejpeg

    if tables[:2] == b"\xff\xd8" and tables.rstrip(b"\x00")[-2:] == b"\xff\xd9":
        data = tables.rstrip(b"\x00")[:-2] + data[2:]
    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY" if components == 1 else "RGB", strict=True)
    except ValueError as e:
        if "corrupt" in str(e).lower() or "premature" in str(e).lower():
            return f"libjpeg: {e}"
    return ""


class TiffTileCheck:
    """Checks each JPEG, JPEG 2000, PNG, WebP or JPEG XL tile (or strip) of a TIFF once, before a decoder sees it.

    JPEG: ``jpeg_tile_problem`` (and ``strict_jpeg_problem`` with ``decode``); JPEG 2000: ``j2k_tile_problem``
    (its header only); PNG, WebP, JPEG XL: ``sized_tile_problem`` (the size in its header). Damaged LZW/Deflate
    data is left to the decoders' errors (libtiff's words on stderr
    for cuCIM, captured per slide; imagecodecs raises). ``check(dims, x, y, w, h)`` takes a level by its size
    and a box in its pixels; it raises ``BrokenFile`` naming the first bad tile the box touches (with separate
    colour planes, each plane's tile). Other compressions are not checked."""

    def __init__(self, path: str, decode: bool = False, tf=None):
        self.path = path
        self.decode = decode  # also decode each JPEG tile once with libjpeg warnings as errors (strict_jpeg_problem)
        self.tables: dict[tuple[int, int], bytes] = {}
        self.pages: dict[tuple[int, int], tuple] = {}
        self.photometric: dict[tuple[int, int], int] = {}  # of the page each entry of ``pages`` is (libjpeg.py)
        self.bits: dict[tuple[int, int], int] = {}
        with tiff_file(path, tf) as tf:
            for page in tiff_pages(tf):
                if page.compression in (7,) + J2K_CODECS + tuple(SIZED_CODECS):
                    w, h = int(page.imagewidth), int(page.imagelength)
                    if (w, h) not in self.pages:
                        self.photometric[(w, h)], self.bits[(w, h)] = int(page.photometric), int(page.bitspersample)
                    tw, th = ((int(page.tilewidth), int(page.tilelength)) if page.is_tiled
                              else (w, min(int(page.rowsperstrip or h), h) or h))  # a strip: a tile of whole rows
                    planes = int(page.samplesperpixel) if page.planarconfig == 2 else 1  # one tile per colour plane
                    self.pages.setdefault((w, h), (tw, th, int(page.samplesperpixel) // planes,
                                                   np.asarray(page.dataoffsets, np.int64),
                                                   np.asarray(page.databytecounts, np.int64), int(page.compression),
                                                   page.is_tiled, planes))
                    self.tables.setdefault((w, h), bytes(page.jpegtables or b""))
        self._seen: set = set()
        self._fd = os.open(path, os.O_RDONLY) if self.pages else None

    def check(self, dims, x: int, y: int, w: int, h: int) -> None:
        dims = (int(dims[0]), int(dims[1]))
        page = self.pages.get(dims)
        if page is None or w <= 0 or h <= 0:
            return
        tw, th, spp, offs, counts, codec, tiled, planes = page
        cols = -(-int(dims[0]) // tw)
        per_plane = len(counts) // planes
        boxes = [(r, c) for r in range(max(y, 0) // th, min(y + h - 1, int(dims[1]) - 1) // th + 1)
                 for c in range(max(x, 0) // tw, min(x + w - 1, int(dims[0]) - 1) // tw + 1)]
        for plane in range(planes):
            for r, c in boxes:
                # the last strip may hold only the remaining rows; a tile always has its full size
                heights = {th} if tiled else {min(th, dims[1] - r * th), th}
                k = plane * per_plane + r * cols + c
                if (dims, k) in self._seen or k >= len(counts) or not counts[k]:
                    continue
                tables = self.tables.get(dims, b"")
                if codec in J2K_CODECS:  # its main header only: the first 42 bytes
                    data = os.pread(self._fd, min(int(counts[k]), 64), int(offs[k]))
                    if not data.startswith(b"\xff\x4f"):  # a JP2 file around the codestream: find it
                        data = os.pread(self._fd, int(counts[k]), int(offs[k]))
                        data = data[max(data.find(b"\xff\x4f\xff\x51"), 0):]
                    whys = [j2k_tile_problem(data, tw, t, spp) for t in sorted(heights)]
                elif codec in SIZED_CODECS:  # its header only
                    data = os.pread(self._fd, min(int(counts[k]), 4096), int(offs[k]))
                    whys = [sized_tile_problem(data, codec, tw, t) for t in sorted(heights)]
                else:
                    data = os.pread(self._fd, int(counts[k]), int(offs[k]))
                    whys = [jpeg_tile_problem(data, tw, t, spp, tables) for t in sorted(heights)]
                why = "" if "" in whys else whys[0]
                if not why and self.decode and codec == 7:
                    why = strict_jpeg_problem(data, tables, spp)
                if why:
                    kind = {7: "JPEG", **SIZED_CODECS}.get(codec, "JPEG 2000")
                    raise BrokenFile(f"corrupt {kind} {'tile' if tiled else 'strip'} {k} "
                                     f"of the {dims[0]} x {dims[1]} px level (column {c}, row {r}): {why}")
                self._seen.add((dims, k))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


J2K_CODECS = (33003, 33005, 34712)  # Aperio JPEG 2000 (YCbCr, RGB), JPEG 2000


def j2k_tile_problem(data: bytes, width: int, height: int, components: int, unit: str = "the TIFF tile") -> str:
    """What is wrong with one JPEG 2000 tile's main header ('' when nothing is seen), without decoding it:
    SOC and SIZ first, an image of the TIFF tile's size and samples, and at most 4096 codestream tiles.
    A damaged SIZ made OpenJPEG (cuCIM, imagecodecs) allocate and decode what it claims: one flipped byte
    claiming a 3,439,329,536 x 256 px tile took 24 GB and the process was killed (no error, the batch lost)."""
    if data[:4] != b"\xff\x4f\xff\x51" or len(data) < 42:
        return "the tile does not start with a JPEG 2000 codestream header (SOC, SIZ)"
    x, y, xo, yo, xt, yt, xto, yto, c = struct.unpack(">IIIIIIIIH", data[8:42])
    if (x - xo, y - yo) != (width, height) or xo >= x or yo >= y:
        return f"the JPEG 2000 header says {x - xo} x {y - yo} px, {unit} is {width} x {height}"
    if c != components:
        return f"the JPEG 2000 header says {c} components, {unit} has {components}"
    if not xt or not yt or xto > xo or yto > yo or -(-(x - xto) // xt) * -(-(y - yto) // yt) > 4096:
        return f"the JPEG 2000 header's tiling ({xt} x {yt} px from {xto}, {yto}) does not fit its image"
    return ""


SIZED_CODECS = {34933: "PNG", 50001: "WebP", 50002: "JPEG XL", 52546: "JPEG XL"}  # TIFF compression: name
JXL_RATIO = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}  # width / height


def image_header_size(data: bytes, codec: int) -> tuple[int, int] | None:
    """(width, height) the header of a PNG, WebP or JPEG XL stream declares (``codec``: its TIFF compression),
    None when there is no such header."""
    if codec == 34933:
        return struct.unpack(">II", data[16:24]) if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 else None
    if codec == 50001:
        if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or len(data) < 30:
            return None
        if data[12:16] == b"VP8 ":  # lossy: 14-bit sizes after the start code 9D 01 2A
            w, h = struct.unpack("<HH", data[26:30])
            return (w & 0x3FFF, h & 0x3FFF) if data[23:26] == b"\x9d\x01\x2a" else None
        if data[12:16] == b"VP8L":  # lossless: signature 2F, then 14 + 14 bits of size - 1
            v = int.from_bytes(data[21:25], "little")
            return ((v & 0x3FFF) + 1, ((v >> 14) & 0x3FFF) + 1) if data[20] == 0x2F else None
        if data[12:16] == b"VP8X":  # extended: 24-bit canvas size - 1
            return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
        return None
    if data[:2] != b"\xff\x0a":  # a JPEG XL container: the codestream is in a jxlc (or jxlp) box
        i, j = data.find(b"jxlc"), data.find(b"jxlp")
        data = data[i + 4:] if i >= 0 else data[j + 8:] if j >= 0 else b""
        if data[:2] != b"\xff\x0a":
            return None
    bits, pos = int.from_bytes(data[2:20], "little"), 0  # the SizeHeader, read least significant bit first

    def u(n):
        nonlocal pos
        pos += n
        return (bits >> (pos - n)) & ((1 << n) - 1)

    def u32():
        return 1 + u((9, 13, 18, 30)[u(2)])

    small = u(1)
    h = (u(5) + 1) * 8 if small else u32()
    ratio = u(3)
    if ratio:
        return h * JXL_RATIO[ratio][0] // JXL_RATIO[ratio][1], h
    return ((u(5) + 1) * 8 if small else u32()), h


def sized_tile_problem(data: bytes, codec: int, width: int, height: int) -> str:
    """What is wrong with a PNG, WebP or JPEG XL tile's header ('' when nothing is seen): a size other than the
    TIFF tile's (the decoder allocates and decodes whatever size the header claims)."""
    name, size = SIZED_CODECS[codec], image_header_size(data, codec)
    if size is None:
        return f"the tile does not start with a {name} header"
    if tuple(size) != (width, height):
        return f"the {name} header says {size[0]} x {size[1]} px, the TIFF tile is {width} x {height}"
    return ""


def mpp_xy(x, y) -> tuple[float | None, float | None]:
    """A reader's ``(mpp, mpp_y)``: the width and height of a pixel in µm as the file says them, (None, None) without
    a positive width; a missing height is the width. The engine refuses pixels that are not square (patches
    would be stretched), also where the file gives an objective power."""
    x = positive_float(x)
    return (x, positive_float(y) or x) if x else (None, None)


# µm per OME PhysicalSizeXUnit; other units (pixel, reference frame, ...) are no physical size
OME_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "pm": 1e-6, "Å": 1e-4}


def ome_mpp(tf) -> tuple[float | None, float | None] | None:
    """``mpp_xy`` from an OME-TIFF's PhysicalSizeX/Y (in their units; µm when none is given), None when the file is
    no OME-TIFF or its PhysicalSizeX is no length. It is the OME-TIFF's resolution: every reader takes it before
    the TIFF resolution tags (which OME does not read, and converters may leave at another scale)."""
    if not tf.is_ome:
        return None
    sizes = []
    for a in "XY":
        m = re.search(rf'PhysicalSize{a}="([0-9.eE+-]+)"', tf.ome_metadata or "")
        unit = re.search(rf'PhysicalSize{a}Unit="([^"]+)"', tf.ome_metadata or "")
        scale = OME_UM.get(unit.group(1) if unit else "µm")  # "pixel", "reference frame": no resolution
        size = positive_float(m.group(1)) if m else None
        sizes.append(size * scale if size and scale else None)
    return mpp_xy(*sizes) if sizes[0] else None


def first_image(tf) -> tuple[int, int] | None:
    """(width, height) of a TIFF's first image, for ``levels_out_of_order``; None for no TIFF."""
    return None if tf is None else (int(tf.pages[0].imagewidth), int(tf.pages[0].imagelength))


def levels_out_of_order(first, level0) -> str:
    """Why a reader's level 0 (``(w, h)``) cannot take the resolution of the TIFF's first image ``first`` ('' when
    it can): cuCIM (Aperio MPP) and OpenSlide (Aperio MPP, generic TIFF resolution tags) sort the levels by size
    and take the resolution of the first image, so a first image smaller than the largest gave that level the small
    image's µm/px (2x off for a half-size one)."""
    if first is None or (first[0] >= level0[0] and first[1] >= level0[1]):
        return ""
    return (f"the TIFF's first image is {first[0]} x {first[1]} px, smaller than the level 0 of {level0[0]} x {level0[1]}: "
            "levels out of order, its resolution is not level 0's; left to the tifffile reader")


TAG_MPP = (0.05, 20.0)  # µm/px TIFF resolution tags may give: others are a photo's (72 dpi) or a default (1 px/mm)


def tag_mpp_xy(x, y) -> tuple[float | None, float | None]:
    """``mpp_xy`` of a width from TIFF resolution tags: (None, None) outside ``TAG_MPP`` (no resolution, so an
    Aperio AppMag or --mpp is taken, as by every reader)."""
    x = positive_float(x)
    return mpp_xy(x, y) if x and TAG_MPP[0] <= x <= TAG_MPP[1] else (None, None)


def mpp_from_tiff_tags(page) -> tuple[float | None, float | None]:
    """Level-0 ``mpp_xy`` from TIFF resolution tags, when the width is plausible for a slide (72-dpi photos are
    no resolution). Without a ResolutionUnit tag the unit is the TIFF default, inch (as libtiff: OpenSlide)."""
    try:
        xres = page.tags["XResolution"].value
    except KeyError:
        return None, None
    unit = int(page.tags["ResolutionUnit"].value) if "ResolutionUnit" in page.tags else 2
    yres = page.tags["YResolution"].value if "YResolution" in page.tags else xres
    px_per_unit, py_per_unit = ((r[0] / r[1] if r[1] else 0.0) if isinstance(r, tuple) else float(r) for r in (xres, yres))
    um = {2: 25400.0, 3: 10000.0}.get(unit)  # inch, centimetre
    if um is None or px_per_unit <= 0:
        return None, None
    return tag_mpp_xy(um / px_per_unit, um / py_per_unit if py_per_unit > 0 else None)


JFIF = b"\xff\xd8\xff\xe0\x00\x10JFIF"


def tiff_jfif_marked_rgb(path: str, tf=None) -> bool:
    """True when a JPEG TIFF says Photometric=RGB but its tiles are JFIF (YCbCr) streams.

    Decoders that trust the Photometric tag (cuCIM) then skip the YCbCr->RGB conversion and return
    false colours; libjpeg via tifffile/imagecodecs honours the JFIF marker and decodes correctly.
    """
    with tiff_file(path, tf) as tf:
        page = tf.pages[0]
        if page.compression != 7 or page.photometric != 2 or not len(page.dataoffsets):
            return False
        tf.filehandle.seek(page.dataoffsets[0])
        return tf.filehandle.read(len(JFIF)) == JFIF


def tiff_rgb_marked_jpeg(path: str, tf=None) -> bool:
    """True when a JPEG TIFF tagged YCbCr has tiles whose stream says RGB: an Adobe APP14 marker with transform 0,
    or frame components named 'R', 'G', 'B' (libjpeg-turbo's RGB output; tifffile tags pre-encoded RGB tiles
    YCbCr). cuCIM and OpenSlide follow the tag and convert the samples as YCbCr: 45 grey levels off on average,
    without a word (tests/test_redteam_read9.py); libjpeg via tifffile/imagecodecs follows the stream, as the DCT
    thumbnail does, and gives the pixels that were encoded."""
    with tiff_file(path, tf) as tf:
        page = tf.pages[0]
        if page.compression != 7 or page.photometric != 6 or not len(page.dataoffsets):
            return False
        tf.filehandle.seek(page.dataoffsets[0])
        head = tf.filehandle.read(min(int(page.databytecounts[0]), 4096))
    i = 2
    while head[:2] == b"\xff\xd8" and i + 4 <= len(head) and head[i] == 0xFF and head[i + 1] != 0xDA:
        m, n = head[i + 1], int.from_bytes(head[i + 2:i + 4], "big")
        if m == 0xEE and head[i + 4:i + 9] == b"Adobe" and head[i + 15:i + 16] == b"\x00":
            return True
        if m in SOF and head[i + 9] == 3 and head[i + 10:i + 17:3] == b"RGB":
            return True
        i += 2 + n
    return False


def ycbcr_to_rgb(a: np.ndarray) -> np.ndarray:
    """JPEG (JFIF, full-range BT.601) YCbCr to RGB, uint8."""
    f = a.astype(np.float32)
    y, cb, cr = f[..., 0], f[..., 1] - 128.0, f[..., 2] - 128.0
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def tiff_level_count(path: str, tf=None) -> int:
    """Pyramid levels tifffile finds in a TIFF's first series (SubIFDs included); 0 if not a TIFF."""
    try:
        with tiff_file(path, tf) as tf:
            return len(tf.series[0].levels) if tf.series else 1
    except Exception:
        return 0


def openslide_misread(path: str, tf=None) -> str:
    """Why OpenSlide would return other colours than a TIFF's first image holds ('' when none, or not a TIFF):
    signed samples come back as their raw bytes (-100 as 156); gray + alpha as the gray multiplied by the
    alpha, then composited over white again (64 grey levels too dark at alpha 128)."""
    import tifffile

    if file_kind(path) != "tiff":
        return ""
    try:
        with tiff_file(path, tf) as tf:
            pages = list(tf.pages)  # before any tf.pages[i]: see CucimSlide
    except Exception:  # noqa: BLE001 - not readable by tifffile: the readers' own errors follow
        return ""
    if not pages:
        return ""
    if pages[0].sampleformat == tifffile.SAMPLEFORMAT.INT:
        return "signed samples: OpenSlide would return their raw bytes as colours"
    if pages[0].bitspersample == 12:  # libtiff's RGBA interface: "Sorry, can not handle images with 12-bit samples"
        return "12-bit samples: OpenSlide cannot decode them (the tifffile reader scales them to 8 bits)"
    if tiff_rgb_marked_jpeg(path, tf):
        return "JPEG tiles tagged YCbCr whose stream says RGB: OpenSlide would convert them as YCbCr (false colours)"
    if pages[0].samplesperpixel == 2 and pages[0].photometric in (0, 1):
        return "gray + alpha: OpenSlide would return the gray multiplied by the alpha (too dark)"
    return ""

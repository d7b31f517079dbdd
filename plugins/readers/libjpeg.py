"""A TIFF level's JPEG tiles decoded straight by libjpeg-turbo (simplejpeg), for the cuCIM reader.

cuCIM decodes the same tiles with the same library, so the pixels are the same, byte for byte (ISLOW IDCT,
fancy upsampling; bench40x, CMU-1-Small-Region and the checks in tests/test_libjpeg11.py), at ~40 % less
CPU: cuCIM spends ~4.9 ms of CPU on a 1024² region of 256² tiles, this ~3.4 ms (bench/README.md, round 11).
Each tile is read with one ``pread`` and decoded with libjpeg's warnings as errors (``strict``); a tile that
does not decode cleanly, or that is not the TIFF tile's size, makes ``read`` return None, and the caller
reads the region with cuCIM, whose complaint names the damage as before. Before a level is decoded here,
one of its tiles is decoded both ways and must come out equal (``usable``): a file whose tiles cuCIM
decodes differently (another colour space, a libjpeg with other rounding) is left to cuCIM.
"""
from __future__ import annotations

import os

import numpy as np

from slidestream.engine.dali_decode import dct_frame

SMALLEST = {"min_width": 1, "min_height": 1}  # simplejpeg's smallest DCT scale, 1/8
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"  # APP14, transform 0: the samples are RGB


class JpegLevel:
    """One level's JPEG tiles (from ``TiffTileCheck``'s table of the file's pages): ``read(x, y, w, h)`` in the
    level's pixels, or None where libjpeg did not decode a tile cleanly."""

    def __init__(self, path: str, tile_w: int, tile_h: int, width: int, height: int, offsets: np.ndarray,
                 counts: np.ndarray, tables: bytes, rgb: bool):
        tables = tables.rstrip(b"\x00")
        if tables and (tables[:2] != b"\xff\xd8" or tables[-2:] != b"\xff\xd9"):
            raise ValueError("JPEGTables is not a JPEG tables stream")
        # an abbreviated tile gets the tables after its SOI; RGB-coded samples (TIFF photometric RGB, Aperio's
        # "JPEG/RGB") an APP14 marker saying so, as libtiff and cuCIM decode them from the tag
        self.prefix = (ADOBE_RGB if rgb else b"") + tables[2:-2]
        self.tile_w, self.tile_h, self.width, self.height = tile_w, tile_h, width, height
        self.cols = -(-width // tile_w)
        self.offsets, self.counts = offsets, counts
        self.space = None  # libjpeg's reading of the first (probe) tile's colour space: a tile whose markers say
        # another (an Adobe transform, RGB component ids, 1 or 4 components) is left to cuCIM, which reads it otherwise
        self._fd = os.open(path, os.O_RDONLY)

    def tile(self, k: int, full: bool = True) -> np.ndarray | None:
        """Tile ``k`` (row-major) decoded, or None. ``full=False``: only whether it decodes cleanly (None if not),
        at 1/8 scale: the same entropy-coded data and warnings, ~45 % of the CPU."""
        import simplejpeg

        if k >= len(self.counts) or not self.counts[k]:
            return None
        raw = os.pread(self._fd, int(self.counts[k]), int(self.offsets[k]))
        if raw[:2] != b"\xff\xd8":
            return None
        stream = raw[:2] + self.prefix + raw[2:]
        try:  # a header claiming another size is not decoded (a damaged one may claim 60000² px); libjpeg's
            # warnings (corrupt data, premature end) are errors here
            head = simplejpeg.decode_jpeg_header(stream)
            self.space = self.space or head[2]
            if head[:3] != (self.tile_h, self.tile_w, self.space) or not dct_frame(stream):
                return None  # lossless or arithmetic-coded: cuCIM's libjpeg refuses it (and 1/8 scale crashed)
            px = simplejpeg.decode_jpeg(stream, colorspace="RGB", strict=True, **({} if full else SMALLEST))
        except Exception:  # noqa: BLE001 - any problem: cuCIM reads the region and says what is wrong
            return None
        return px if not full or px.shape == (self.tile_h, self.tile_w, 3) else None

    def read(self, x: int, y: int, w: int, h: int, tiles: dict | None = None, out: np.ndarray | None = None):
        """The box ``(x, y, w, h)`` of the level (in bounds), into ``out`` when given, or None when a tile it
        needs did not decode. ``tiles``: decoded tiles by index, kept between calls (several boxes that share
        tiles decode each once)."""
        tw, th = self.tile_w, self.tile_h
        out = np.empty((h, w, 3), np.uint8) if out is None else out
        for r in range(y // th, (y + h - 1) // th + 1):
            for c in range(x // tw, (x + w - 1) // tw + 1):
                k = r * self.cols + c
                px = tiles.get(k) if tiles is not None else None
                if px is None:
                    px = self.tile(k)
                    if px is None:
                        return None
                    if tiles is not None:
                        tiles[k] = px
                ty, tx = r * th, c * tw
                a0, a1, b0, b1 = max(ty, y), min(ty + th, y + h), max(tx, x), min(tx + tw, x + w)
                out[a0 - y:a1 - y, b0 - x:b1 - x] = px[a0 - ty:a1 - ty, b0 - tx:b1 - tx]
        return out

    def intact(self, x: int, y: int, w: int, h: int, done: dict) -> bool:
        """Whether the box's tiles not in ``done`` decode cleanly (``tile(k, full=False)``): patches cut from a few
        of a region's tiles must not hide damage in the others, which cuCIM's read of the region names."""
        tw, th = self.tile_w, self.tile_h
        return all(k in done or self.tile(k, full=False) is not None
                   for r in range(y // th, (y + h - 1) // th + 1) for k in range(r * self.cols + x // tw, r * self.cols + (x + w - 1) // tw + 1))

    def probe(self) -> tuple[int, int, int, int]:
        """A box to compare with cuCIM's decode before the level is used: the tile at the level's centre (tissue
        more often than glass), clipped to the level."""
        c, r = (self.width // 2) // self.tile_w, (self.height // 2) // self.tile_h
        x, y = c * self.tile_w, r * self.tile_h
        return x, y, min(self.tile_w, self.width - x), min(self.tile_h, self.height - y)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def jpeg_level(path: str, check, dims: tuple[int, int]) -> JpegLevel | None:
    """The level of size ``dims`` as a ``JpegLevel`` when its tiles are 8-bit, 3-sample, interleaved JPEG
    (TIFF compression 7, photometric YCbCr or RGB), else None. ``check``: the reader's ``TiffTileCheck``."""
    page = check.pages.get(dims)
    if page is None:
        return None
    tw, th, spp, offsets, counts, codec, tiled, planes = page
    photometric = check.photometric.get(dims)
    if codec != 7 or not tiled or planes != 1 or spp != 3 or photometric not in (2, 6) or check.bits.get(dims) != 8:
        return None
    try:
        return JpegLevel(path, tw, th, dims[0], dims[1], offsets, counts, check.tables.get(dims, b""), photometric == 2)
    except (ValueError, OSError):
        return None

"""DALI tile decoding: a level's raw JPEG tiles read straight from the TIFF, decoded in batches by DALI.

The same code on both devices: ``device="cpu"`` decodes with DALI's CPU backend (libjpeg-turbo),
``device="mixed"`` with nvJPEG on the GPU (the hardware decoder where there is one); regions are then
assembled and cropped with NumPy, or with CuPy on the GPU (``read_regions(..., keep_on_device=True)``
returns CuPy arrays there; otherwise one host copy per region).

How a tile becomes a decodable JPEG: TIFF JPEG tiles (compression 7) are abbreviated streams whose
quantization and Huffman tables sit once in the page's ``JPEGTables`` tag; they are spliced in after the
tile's SOI marker. Tiles whose TIFF photometric is RGB (Aperio's ``JPEG/RGB``) carry RGB samples, not
YCbCr, with nothing in the stream saying so; an Adobe APP14 marker with transform 0 is inserted so the
decoder does no colour conversion (as libtiff and cuCIM do from the tag). Levels in another codec (JPEG
2000 in many SVS files, LZW, ...) raise ``NotJpegTiled``: read those with cuCIM.

    tiles = DaliTiles("slide.svs")                   # raises NotJpegTiled if a level is not JPEG-tiled
    rgb = tiles.read_region((x0, y0), level, (w, h))  # like the readers: level-0 location, level size
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"  # APP14, transform 0: samples are RGB


def dct_frame(stream: bytes) -> bool:
    """Whether the JPEG stream's frame (its first SOF marker) is DCT-coded with Huffman tables (SOF0-2), the
    frames libjpeg may decode scaled: a lossless frame (SOF3) decoded at 1/8 scale crashed the process (simplejpeg
    1.9, segmentation fault)."""
    i = 2
    while i + 4 <= len(stream) and stream[i] == 0xFF:
        m = stream[i + 1]
        if m == 0xFF:
            i += 1
        elif 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):
            return m in (0xC0, 0xC1, 0xC2)
        elif m == 0xDA:
            return False
        else:
            i += 2 + int.from_bytes(stream[i + 2:i + 4], "big")
    return False


class NotJpegTiled(ValueError):
    """DALI cannot decode the slide (on this device): a level that is not JPEG-tiled (e.g. JPEG 2000), or
    RGB-coded JPEG tiles on the GPU. Decode it with cuCIM."""


@dataclass
class Level:
    width: int
    height: int
    tile_w: int
    tile_h: int
    offsets: np.ndarray
    counts: np.ndarray
    prefix: bytes  # inserted after each tile's SOI: APP14 (RGB) + the tables (without SOI/EOI)
    rgb: bool = False  # RGB-coded samples (TIFF photometric RGB), not YCbCr

    @property
    def grid(self) -> tuple[int, int]:  # tiles across, down
        return -(-self.width // self.tile_w), -(-self.height // self.tile_h)


def jpeg_levels(path: str | os.PathLike) -> list[Level]:
    """The pyramid levels of a JPEG-tiled TIFF (tifffile's view: Aperio thumbnail/label/macro excluded)."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        pages = [lv.keyframe for lv in tf.series[0].levels]
        w0, h0 = pages[0].imagewidth, pages[0].imagelength
        # tiled pages of the same aspect are levels too: tifffile takes an SVS's page 1 for the thumbnail
        # even when it is a tiled pyramid level (as cuCIM and OpenSlide read it; bench40x.svs has one)
        have = {(p.imagewidth, p.imagelength) for p in pages}
        for p in tf.pages:
            same_aspect = abs(p.imagelength - h0 * p.imagewidth / w0) <= 1 + 0.01 * p.imagelength
            if p.is_tiled and same_aspect and p.imagewidth < w0 and (p.imagewidth, p.imagelength) not in have:
                pages.append(p)
                have.add((p.imagewidth, p.imagelength))
        pages.sort(key=lambda p: -p.imagewidth)
        levels = []
        for p in pages:
            if not p.is_tiled or p.compression != 7 or p.samplesperpixel != 3 or p.bitspersample != 8:
                raise NotJpegTiled(f"{path}: level {len(levels)} is {p.compression.name}"
                                   f"{'' if p.is_tiled else ', not tiled'}; DALI decodes JPEG tiles only, use cuCIM")
            tables = bytes(p.jpegtables or b"")
            prefix = (ADOBE_RGB if p.photometric == 2 else b"") + (tables[2:-2] if tables else b"")
            levels.append(Level(p.imagewidth, p.imagelength, p.tilewidth, p.tilelength,
                                np.asarray(p.dataoffsets, np.int64), np.asarray(p.databytecounts, np.int64), prefix,
                                p.photometric == 2))
    return levels


def jpeg_level(path: str | os.PathLike, width: int, height: int) -> Level | None:
    """The JPEG-tiled RGB page of a TIFF that is ``width`` x ``height`` px (a reader's level), or None (not a
    TIFF, no such page, another codec): only that page's tile offsets are read, not every level's."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        for p in tf.pages:
            if (p.imagewidth, p.imagelength) == (width, height) and p.is_tiled:
                if p.compression != 7 or p.samplesperpixel != 3 or p.bitspersample != 8 or p.planarconfig != 1:
                    return None
                tables = bytes(p.jpegtables or b"")
                prefix = (ADOBE_RGB if p.photometric == 2 else b"") + (tables[2:-2] if tables else b"")
                return Level(p.imagewidth, p.imagelength, p.tilewidth, p.tilelength,
                             np.asarray(p.dataoffsets, np.int64), np.asarray(p.databytecounts, np.int64), prefix,
                             p.photometric == 2)
    return None


class DaliTiles:
    """Batched DALI decoding of a JPEG-tiled TIFF's tiles; ``read_region(s)`` like the readers."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", batch: int = 32, threads: int | None = None,
                 decoder_args: dict | None = None):
        if device not in ("cpu", "mixed"):
            raise ValueError(f"DALI decode device {device!r}: use cpu or mixed")
        self.path, self.device, self.batch = str(path), device, int(batch)
        # nvJPEG's default chroma upsampling differs from libjpeg-turbo's "fancy" one by up to 14 grey levels
        # (measured on an H200); DALI's jpeg_fancy_upsampling makes ``mixed`` upsample as the CPU does
        self.decoder_args = {"jpeg_fancy_upsampling": True, **(decoder_args or {})}
        self.threads = threads or os.cpu_count() or 1
        self.levels = jpeg_levels(path)
        if device == "mixed" and any(lv.rgb for lv in self.levels):
            # nvJPEG ignores the APP14 marker and converts them as YCbCr: mean 51 grey levels off on
            # CMU-1-Small-Region.svs on an H200 (bench/gpu_decode_diag.py), with or without the hardware decoder
            raise NotJpegTiled(f"{path}: RGB-coded JPEG tiles, which DALI's GPU decoder (nvJPEG) turns into wrong "
                               "colours; decode them with cuCIM on the CPU")
        w0 = self.levels[0].width
        self.level_dimensions = [(lv.width, lv.height) for lv in self.levels]
        self.level_downsamples = [w0 / lv.width for lv in self.levels]
        self._fd = os.open(self.path, os.O_RDONLY)
        self._pipe = None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._pipe = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- decoding
    def stream(self, level: int, index: int) -> bytes:
        """Tile ``index`` of ``level`` as a complete JPEG stream."""
        lv = self.levels[level]
        raw = os.pread(self._fd, int(lv.counts[index]), int(lv.offsets[index]))
        if raw[:2] != b"\xff\xd8":
            raise ValueError(f"{self.path}: level {level} tile {index} is not a JPEG stream")
        return raw[:2] + lv.prefix + raw[2:]

    def _pipeline(self):
        if self._pipe is None:
            from nvidia.dali import fn, pipeline_def, types

            @pipeline_def(batch_size=self.batch, num_threads=self.threads,
                          device_id=None if self.device == "cpu" else 0, prefetch_queue_depth=1)
            def decode():
                data = fn.external_source(name="jpeg", dtype=types.UINT8, device="cpu")
                return fn.decoders.image(data, device=self.device, output_type=types.RGB, **self.decoder_args)

            self._pipe = decode()
            self._pipe.build()
        return self._pipe

    def batches(self, streams: Sequence[bytes], on_device: bool = False):
        """Decode JPEG streams in batches; yields ``(first index, tiles)`` where the tiles are views into
        DALI's output, valid until the next batch: NumPy arrays, or with ``mixed`` and ``on_device`` CuPy
        arrays on the GPU (else one host copy per batch)."""
        pipe = self._pipeline()
        for i in range(0, len(streams), self.batch):
            chunk = [np.frombuffer(s, np.uint8) for s in streams[i:i + self.batch]]
            pipe.feed_input("jpeg", chunk)
            try:
                (tl,) = pipe.run()
            except RuntimeError:  # DALI's multi-line report, its pipeline "no longer valid": build a new one
                self._pipe = None
                raise ValueError(f"DALI's {self.device} decoder gave up on a JPEG tile (damaged data)") from None
            if self.device == "mixed" and on_device:
                import cupy

                yield i, [cupy.asarray(tl[k]) for k in range(len(chunk))]
            else:
                tl = tl.as_cpu() if self.device == "mixed" else tl
                yield i, [np.asarray(tl[k]) for k in range(len(chunk))]

    # ---------------------------------------------------------------- regions
    def read_regions(self, requests: Sequence[tuple[tuple[int, int], int, tuple[int, int]]],
                     keep_on_device: bool = False) -> list:
        """Regions ``(location, level, (w, h))`` (level-0 location, like the readers), every tile they
        need decoded once, in batches, and copied straight from DALI's output into the regions. Pixels
        outside the level are 0."""
        on_device = self.device == "mixed" and keep_on_device
        xp = np
        if on_device:
            import cupy as xp  # noqa: N813
        need: dict[tuple[int, int], list] = {}  # tile -> [(region, destination slices, source slices)]
        out = []
        for (x0, y0), level, (w, h) in requests:
            lv, ds = self.levels[level], self.level_downsamples[level]
            x, y = int(round(x0 / ds)), int(round(y0 / ds))
            nx, ny = lv.grid
            out.append(xp.zeros((h, w, 3), np.uint8))
            for r in range(max(0, y // lv.tile_h), min(ny, -(-(y + h) // lv.tile_h))):
                for c in range(max(0, x // lv.tile_w), min(nx, -(-(x + w) // lv.tile_w))):
                    tx, ty = c * lv.tile_w, r * lv.tile_h
                    # the part of this tile inside both the region and the level
                    a0, a1 = max(ty, y, 0), min(ty + lv.tile_h, y + h, lv.height)
                    b0, b1 = max(tx, x, 0), min(tx + lv.tile_w, x + w, lv.width)
                    if a0 < a1 and b0 < b1:
                        need.setdefault((level, r * nx + c), []).append(
                            (len(out) - 1, (slice(a0 - y, a1 - y), slice(b0 - x, b1 - x)),
                             (slice(a0 - ty, a1 - ty), slice(b0 - tx, b1 - tx))))
        keys = list(need)
        for i0, tiles in self.batches([self.stream(lv, i) for lv, i in keys], on_device):
            for key, t in zip(keys[i0:i0 + len(tiles)], tiles):
                for k, dst, src in need[key]:
                    out[k][dst] = t[src][..., :3]
        return out

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]):
        return self.read_regions([(location, level, size)])[0]

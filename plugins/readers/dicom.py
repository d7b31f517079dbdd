"""DICOM reader: VL Whole Slide Microscopy images (pydicom + imagecodecs); OpenSlide leaves them to it.

Give one ``.dcm`` file or a folder. The slide is the series (SeriesInstanceUID) of that file, or the
one series with whole-slide images in the folder; its levels are the VOLUME instances (those without an
ImageType, too) sorted by TotalPixelMatrixColumns, largest first. LABEL, OVERVIEW and THUMBNAIL
instances are skipped. A DICOM file without a total pixel matrix is refused (the engine moves on).

Frame positions, in this order:

* PerFrameFunctionalGroupsSequence / PlanePositionSlideSequence (Column/RowPositionInTotalImagePixelMatrix,
  TILED_SPARSE; first frame at a position wins, so only one focal plane / optical path is read);
* DimensionOrganizationType TILED_FULL: row-major, as the standard defines;
* no DimensionOrganizationType (older converters, e.g. the pathml test file, which is column-major):
  both orders are tried on a few frame borders along the grid's diagonal, and the one with the
  smaller mean absolute difference across the seams (pixels either side of a border) wins; a tie (blank
  glass) keeps row-major.

Frames are read with ``os.pread`` and decoded only when a region touches them (a small LRU cache keeps
the last ones). JPEG frames are checked like TIFF JPEG tiles (``jpeg_tile_problem``) and decoded by
libjpeg-turbo through simplejpeg with its warnings as errors (``Corrupt JPEG data…`` fails the frame;
imagecodecs decodes such frames without a word, and OpenSlide too, which is why it leaves DICOM to this
reader); the pixels equal imagecodecs' on the test slides. libjpeg honours the JFIF marker: frames
coded as JFIF (YCbCr) but tagged RGB come out right; RGB-tagged frames without a JFIF/Adobe marker are
decoded as untransformed RGB, as DICOM defines. Other codecs (JPEG 2000, HTJ2K, JPEG-LS, JPEG XL) go
through ``imagecodecs.imread`` (JPEG-LS and lossless JPEG frames after their header's size is checked against the
frame's); uncompressed frames are read as they are.

Resolution: PixelSpacing of Shared- (else the first frame's PerFrame-) FunctionalGroupsSequence/PixelMeasuresSequence
(mm -> µm; column spacing = mpp, row spacing = mpp_y; the engine refuses pixels that are not square within 5 % and a
width outside 0.05..20 µm/px, as a PixelSpacing written in µm, not mm, naming --mpp), else
ImagedVolumeWidth/TotalPixelMatrixColumns when it agrees with ImagedVolumeHeight/TotalPixelMatrixRows within 5 % and
lies in 0.05..20 µm/px, otherwise mpp is None. Levels whose
PixelSpacing is not level 0's times their downsample (``_levels_disagree``) leave the scale in doubt: refused.
Objective power: OpticalPathSequence ObjectiveLensPower. Not supported: concatenations (an instance
split over several files), RLE and deflated transfer syntaxes.
"""
from __future__ import annotations

import os
import re
import threading
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from slidestream.engine.hookspecs import ReaderPlugin, hookimpl

from slidestream.engine.errors import BrokenFile

from .common import (MAX_COMPRESSED, MAX_LEVEL_PIXELS, MAX_TILE_BYTES, MAX_TILES, j2k_tile_problem, jpeg_frame_size,
                     jpeg_tile_problem, mpp_xy, positive_float, read_clipped, to_rgb, ycbcr_to_rgb)

SKIP_TYPES = {"LABEL", "OVERVIEW", "THUMBNAIL"}
NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}  # implicit / explicit VR little endian
JPEG8 = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}
OTHER_CODECS = {  # decoded by imagecodecs.imread (format sniffed from the stream)
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",  # JPEG lossless
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",  # JPEG-LS
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112",  # JPEG XL
}
J2K = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
       "1.2.840.10008.1.2.4.203"}  # JPEG 2000 and HTJ2K: frames whose header is checked before decoding
JPEG_LS_LOSSLESS = {"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
                    "1.2.840.10008.1.2.4.81"}  # JPEG lossless and JPEG-LS: frames whose header size is checked
COLOUR_MARKER = re.compile(rb"\xff\xe0..JFIF|\xff\xee..Adobe", re.S)  # APP0 JFIF (YCbCr) / APP14 Adobe
CACHE_FRAMES = 32  # decoded frames kept (32 x 500² RGB = 24 MB)
SEAM_SAMPLES = 4  # grid positions sampled per order when detecting the frame order


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


@contextmanager
def _lenient():
    """Read headers without warnings: over-long UIDs and names are common in converted slides (pydicom
    checks values when they are first used, so the whole header walk runs inside this)."""
    from pydicom import config

    mode = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        config.settings.reading_validation_mode = mode


def _header(path: Path):
    import pydicom

    return pydicom.dcmread(str(path), defer_size=256)


WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage


def _check_wsi_file(path: Path, ds) -> None:
    """A file that says it is a whole-slide image but has no readable pixel matrix is damaged (pydicom stops
    quietly where a header is cut short or overwritten); skipping it would silently drop a pyramid level.
    Checked for the files of a folder; a single file given opens with the readable siblings of its series
    (its own header describes its own level, so a damaged sibling costs a level, not correctness)."""
    uid = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    # a SOP class that is no UID is a damaged header too (it hid a level-0 file: the slide opened at level 1)
    wsi = WSI_SOP_CLASS in (uid, str(ds.get("SOPClassUID", ""))) or not re.fullmatch(r"[0-9]+(\.[0-9]+)*", uid)
    if wsi and any(k not in ds for k in ("PixelData", "TotalPixelMatrixColumns", "TotalPixelMatrixRows", "Rows", "Columns")):
        raise BrokenFile(f"{path.name}: a whole-slide DICOM file without a readable header or pixel data: "
                         "truncated or damaged")


def _image_type(ds) -> str:
    t = ds.get("ImageType")
    return str(t[2]).upper() if t is not None and len(t) > 2 else ""


def _is_wsi_level(ds) -> bool:
    return ("TotalPixelMatrixColumns" in ds and "TotalPixelMatrixRows" in ds and "Rows" in ds and "Columns" in ds
            and _image_type(ds) not in SKIP_TYPES)


class _Level:
    """One instance: frame byte ranges in its file and frame positions in the total pixel matrix."""

    def __init__(self, path: Path, ds):
        self.path = str(path)
        self.width, self.height = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
        self.tw, self.th = int(ds.Columns), int(ds.Rows)
        self.n = int(ds.get("NumberOfFrames", 1) or 1)
        self.spp = int(ds.get("SamplesPerPixel", 1))
        self.photometric = str(ds.get("PhotometricInterpretation", "RGB")).upper()
        self.planar = int(ds.get("PlanarConfiguration", 0) or 0)
        self.syntax = str(ds.file_meta.TransferSyntaxUID)
        if self.syntax not in NATIVE | JPEG8 | OTHER_CODECS:
            raise ValueError(f"DICOM transfer syntax {self.syntax} is not supported")
        if self.syntax in NATIVE and int(ds.get("BitsAllocated", 8)) != 8:
            raise ValueError("only 8-bit uncompressed DICOM frames are supported")
        self._check_claims()
        self.fd = os.open(self.path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.frames = self._frame_ranges(ds)
        last = max((p + n for r in self.frames for p, n in ([r] if isinstance(r, tuple) else r)), default=0)
        if last > self.size:
            raise BrokenFile(f"truncated file: the frames of {self.width} x {self.height} px run past the end of "
                             f"{Path(self.path).name} ({self.size:,} bytes)")
        self.cols, self.rows = -(-self.width // self.tw), -(-self.height // self.th)
        self.px = self.py = None  # per-frame positions (level pixels), when the file gives them
        self.order = "row"
        pos = self._sparse_positions(ds)
        if pos is not None:
            self.order = "sparse"
            self.px, self.py = pos
        elif len(self.frames) < self.cols * self.rows:
            raise ValueError(f"{len(self.frames)} frames cannot tile a {self.width}x{self.height} matrix "
                             f"of {self.tw}x{self.th} frames")
        else:  # more frames than the matrix holds: a matrix size that lies (only its first frames would be read)
            planes = int(ds.get("TotalPixelMatrixFocalPlanes", 1) or 1) * int(ds.get("NumberOfOpticalPaths", 1) or 1)
            if len(self.frames) > self.cols * self.rows * planes:
                raise BrokenFile(f"{Path(self.path).name}: {len(self.frames)} frames, but a {self.width} x {self.height} "
                                 f"px matrix of {self.tw} x {self.th} frames holds {self.cols * self.rows}"
                                 + (f" (x {planes} focal planes / optical paths)" if planes > 1 else "")
                                 + ": a broken header")

    def _check_claims(self) -> None:
        what = f"{Path(self.path).name}: {self.width} x {self.height} px in {self.tw} x {self.th} frames"
        if min(self.width, self.height, self.tw, self.th, self.n, self.spp) <= 0:
            raise BrokenFile(f"{what}, {self.n} frames: sizes must be positive")
        if self.width * self.height > MAX_LEVEL_PIXELS:
            raise BrokenFile(f"{what} claims more than {MAX_LEVEL_PIXELS:,} px: a broken header")
        if self.tw * self.th * self.spp > MAX_TILE_BYTES:
            raise BrokenFile(f"{what}: one frame would decompress to {self.tw * self.th * self.spp:,} bytes")
        if self.n > MAX_TILES:  # indexing 10^8 frames took GBs before the file size was compared
            raise BrokenFile(f"{what} claims {self.n:,} frames (at most {MAX_TILES:,}): a broken header")

    # -- where the frames are
    def _frame_ranges(self, ds) -> list[tuple[int, int]]:
        el = ds.get_item(0x7FE00010, keep_deferred=True)
        if el is None or getattr(el, "value_tell", None) is None:
            raise BrokenFile("a DICOM file without pixel data: truncated or damaged (or not an image)")
        start = el.value_tell
        if self.syntax in NATIVE:
            size = self.tw * self.th * self.spp
            if start + self.n * size > self.size:  # before listing them: the caller's check, without the list
                raise BrokenFile(f"truncated file: the {self.n:,} frames of {self.width} x {self.height} px run past "
                                 f"the end of {Path(self.path).name} ({self.size:,} bytes)")
            return [(start + i * size, size) for i in range(self.n)]
        frags, pos = [], start
        limit = max(MAX_COMPRESSED * self.tw * self.th * self.spp + 2 ** 16, 8 * self.n)  # 8 * n: the offset table
        bot = None
        while True:  # encapsulated: items (FFFE,E000) until the sequence delimiter (FFFE,E0DD)
            head = os.pread(self.fd, 8, pos)
            if len(head) < 8:
                raise BrokenFile("truncated file: the DICOM pixel data ends early")
            tag, length = head[:4], int.from_bytes(head[4:], "little")
            if tag == b"\xfe\xff\xdd\xe0":
                break
            if pos + 8 + length > self.size:
                raise BrokenFile(f"truncated file: a DICOM pixel data item of {length:,} bytes runs past the end "
                                 f"of the file ({self.size:,} bytes)")
            if tag != b"\xfe\xff\x00\xe0":
                raise ValueError("malformed encapsulated DICOM pixel data")
            if length > limit:  # compressed data is at most a little larger than its pixels; read whole per frame
                raise BrokenFile(f"{Path(self.path).name}: a DICOM pixel data item of {length:,} bytes, more than "
                                 f"{MAX_COMPRESSED}x a {self.tw} x {self.th} px frame's pixels: a broken header")
            if bot is None:  # the first item is the basic offset table
                raw = os.pread(self.fd, length, pos + 8)
                bot = np.frombuffer(raw, "<u4").astype(np.int64) if length else np.zeros(0, np.int64)
                first = pos + 8 + length
            else:
                frags.append((pos, length))
            pos += 8 + length
        if len(frags) == self.n:  # one fragment per frame: the usual case
            return [(p + 8, n) for p, n in frags]
        if len(bot) == self.n:  # offsets (from the first fragment's item tag) to each frame's first fragment
            starts = [first + int(o) for o in bot]
        else:  # JPEG-family frames start with an SOI marker
            starts = [p for p, n in frags if os.pread(self.fd, 2, p + 8) == b"\xff\xd8"]
            if len(starts) != self.n:
                raise ValueError(f"cannot split {len(frags)} fragments into {self.n} frames")
        starts.append(pos)
        ranges = []
        for a, b in zip(starts[:-1], starts[1:]):
            ranges.append([(p + 8, n) for p, n in frags if a <= p < b])
        return ranges  # lists of fragments; see _bytes

    def _sparse_positions(self, ds):
        per = ds.get("PerFrameFunctionalGroupsSequence")
        if not per or len(per) != self.n:
            return None
        xs, ys = np.empty(self.n, np.int64), np.empty(self.n, np.int64)
        for i, item in enumerate(per):
            plane = item.get("PlanePositionSlideSequence")
            if not plane or "ColumnPositionInTotalImagePixelMatrix" not in plane[0]:
                return None
            xs[i] = int(plane[0].ColumnPositionInTotalImagePixelMatrix) - 1  # 1-based in DICOM
            ys[i] = int(plane[0].RowPositionInTotalImagePixelMatrix) - 1
        return xs, ys

    # -- frames
    def _bytes(self, i: int) -> bytes:
        r = self.frames[i]
        if isinstance(r, tuple):
            return os.pread(self.fd, r[1], r[0])
        return b"".join(os.pread(self.fd, n, p) for p, n in r)

    def decode(self, i: int) -> np.ndarray:
        import imagecodecs

        data = self._bytes(i)
        if self.syntax in NATIVE:
            a = np.frombuffer(data, np.uint8)
            if self.spp == 1:
                return a.reshape(self.th, self.tw)
            a = a.reshape(self.spp, self.th, self.tw).transpose(1, 2, 0) if self.planar else \
                a.reshape(self.th, self.tw, self.spp)
            return ycbcr_to_rgb(a) if self.photometric == "YBR_FULL" else a
        if self.syntax in JPEG8:
            why = jpeg_tile_problem(data, self.tw, self.th, self.spp)  # what libjpeg may decode without a word
            if why:
                raise BrokenFile(f"corrupt JPEG frame {i} of {Path(self.path).name} ({self.width} x {self.height} px): {why}")
            if self.photometric == "RGB" and self.spp == 3 and not COLOUR_MARKER.search(data[:4096]):
                return imagecodecs.jpeg8_decode(data, colorspace="RGB", outcolorspace="RGB")
            if self.spp == 3:  # libjpeg-turbo with warnings as errors: imagecodecs decodes damaged data silently
                import simplejpeg

                try:
                    return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
                except ValueError as e:
                    if "corrupt" in str(e).lower() or "premature" in str(e).lower():
                        raise BrokenFile(f"corrupt JPEG frame {i} of {Path(self.path).name}: {e}") from None
            return imagecodecs.jpeg8_decode(data)
        if self.syntax in JPEG_LS_LOSSLESS:  # decoded at the size its header claims, then cropped: other pixels
            size = jpeg_frame_size(data)
            if size != (self.tw, self.th, self.spp):
                said = f"{size[0]} x {size[1]} px, {size[2]} components" if size else "nothing (no frame header)"
                raise BrokenFile(f"corrupt JPEG-LS/lossless frame {i} of {Path(self.path).name} ({self.width} x "
                                 f"{self.height} px): its header says {said}, the DICOM frame is {self.tw} x {self.th} "
                                 f"px, {self.spp} components")
        if self.syntax in J2K:  # OpenJPEG allocates and decodes the size a damaged header claims (GBs)
            soc = data.find(b"\xff\x4f\xff\x51")  # the codestream, also inside a JP2 wrapper
            why = j2k_tile_problem(data[soc:] if soc >= 0 else data, self.tw, self.th, self.spp, "the DICOM frame")
            if why:
                raise BrokenFile(f"corrupt JPEG 2000 frame {i} of {Path(self.path).name} "
                                 f"({self.width} x {self.height} px): {why}")
        return imagecodecs.imread(data)

    def grid(self, order: str) -> tuple[np.ndarray, np.ndarray]:
        """Level-pixel positions of the frames for a ``row``- or ``column``-major full tiling."""
        i = np.arange(self.cols * self.rows)
        c, r = (i % self.cols, i // self.cols) if order == "row" else (i // self.rows, i % self.rows)
        return c * self.tw, r * self.th

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class DicomSlide:
    def __init__(self, path: str, device: str = "cpu"):
        with _lenient():
            self._open(path)

    def _open(self, path: str) -> None:
        p = Path(path)
        self.path = path
        if p.is_dir():
            candidates = sorted(f for f in p.iterdir() if f.is_file() and _is_dicom(f))
            if not candidates:
                raise ValueError("folder holds no DICOM files")
            headers = [(f, _header(f)) for f in candidates]
            for f, ds in headers:
                _check_wsi_file(f, ds)
        else:
            if not _is_dicom(p):
                raise ValueError("not a DICOM file (no DICM marker)")
            own = _header(p)
            if "PixelData" not in own:  # pydicom stops quietly where a cut-short header ends
                raise BrokenFile("a DICOM file without pixel data: truncated or damaged (or not an image)")
            if not _is_wsi_level(own):
                raise ValueError("DICOM file is not a whole-slide image (no TotalPixelMatrixColumns)")
            series = own.get("SeriesInstanceUID")
            siblings = [f for f in sorted(p.parent.glob("*.dcm")) if f != p] if series else []
            headers = [(p, own)]
            tag = str(series).encode()
            for f in siblings:  # the other levels of the same series, as OpenSlide does
                try:
                    with open(f, "rb") as fh:  # cheap pre-check, so a flat folder of slides stays fast
                        if tag not in fh.read(1 << 16):
                            continue
                    ds = _header(f)
                except Exception:
                    continue
                if ds.get("SeriesInstanceUID") == series:
                    headers.append((f, ds))
        levels = [(f, ds) for f, ds in headers if _is_wsi_level(ds)]
        if not levels:
            raise ValueError("no whole-slide image among the DICOM files (no TotalPixelMatrixColumns)")
        series = {ds.get("SeriesInstanceUID") for _, ds in levels}
        if len(series) > 1:
            raise ValueError(f"folder holds {len(series)} DICOM slide series; give one file or one series' folder")
        by_width = {}
        for f, ds in sorted(levels, key=lambda t: (-int(t[1].TotalPixelMatrixColumns), int(t[1].get("InstanceNumber") or 0))):
            by_width.setdefault(int(ds.TotalPixelMatrixColumns), (f, ds))  # one instance per level
        self._levels: list[_Level] = []
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        try:
            for i, (f, ds) in enumerate(by_width.values()):
                lv = _Level(f, ds)
                self._levels.append(lv)
                if lv.order != "sparse":
                    org = str(ds.get("DimensionOrganizationType", "")).upper()
                    lv.order = "row" if org == "TILED_FULL" else self.detect_order(i)
                    lv.px, lv.py = lv.grid(lv.order)
        except Exception:
            self.close()
            raise
        ds0 = next(iter(by_width.values()))[1]
        w0 = self._levels[0].width
        self.level_dimensions = [(lv.width, lv.height) for lv in self._levels]
        self.level_downsamples = [w0 / lv.width for lv in self._levels]
        self.mpp, self.mpp_y = _mpp(ds0)
        self.objective_power = _objective(ds0)
        self.mpp_problem = _levels_disagree([(f, ds, lv.width) for (f, ds), lv in zip(by_width.values(), self._levels)])

    # -- frame order
    def seam_score(self, level: int, order: str) -> float:
        """Mean absolute difference across frame borders (the pixel rows/columns either side), frames placed
        in ``order`` ("row" or "column" major), at up to SEAM_SAMPLES grid positions along the diagonal, each
        with its right and lower neighbour; lower = more continuous. NaN when there are no borders."""
        lv = self._levels[level]
        if lv.cols < 2 and lv.rows < 2:
            return float("nan")

        def frame_at(c, r):
            k = r * lv.cols + c if order == "row" else c * lv.rows + r
            return self._frame(level, k).astype(np.int16)

        cs = np.unique(np.linspace(0, max(lv.cols - 2, 0), SEAM_SAMPLES).round().astype(int))
        rs = np.unique(np.linspace(0, max(lv.rows - 2, 0), SEAM_SAMPLES).round().astype(int))
        diffs = []
        for c, r in zip(np.resize(cs, max(len(cs), len(rs))), np.resize(rs, max(len(cs), len(rs)))):
            a = frame_at(c, r)
            if c + 1 < lv.cols:  # vertical border with the right neighbour
                diffs.append(np.abs(a[:, -1] - frame_at(c + 1, r)[:, 0]).mean())
            if r + 1 < lv.rows:  # horizontal border with the frame below
                diffs.append(np.abs(a[-1] - frame_at(c, r + 1)[0]).mean())
        return float(np.mean(diffs)) if diffs else float("nan")

    def detect_order(self, level: int) -> str:
        lv = self._levels[level]
        if lv.cols < 2 or lv.rows < 2:
            return "row"  # a single row or column: both orders are the same
        row, col = self.seam_score(level, "row"), self.seam_score(level, "column")
        return "column" if col < row else "row"

    @property
    def frame_order(self) -> list[str]:
        """Per level: "row", "column" (major) or "sparse" (per-frame positions)."""
        return [lv.order for lv in self._levels]

    def _frame(self, level: int, k: int) -> np.ndarray:
        key = (level, k)
        with self._lock:
            a = self._cache.get(key)
            if a is not None:
                self._cache.move_to_end(key)
                return a
        a = self._levels[level].decode(k)
        with self._lock:
            self._cache[key] = a
            while len(self._cache) > CACHE_FRAMES:
                self._cache.popitem(last=False)
        return a

    # -- regions
    def read_region(self, location, level, size):
        lv = self._levels[level]

        def read(x, y, w, h):
            out = np.full((h, w, 3), 255, np.uint8)
            hit = np.flatnonzero((lv.px < x + w) & (lv.px + lv.tw > x) & (lv.py < y + h) & (lv.py + lv.th > y))
            seen = set()
            for k in hit:
                fx, fy = int(lv.px[k]), int(lv.py[k])
                if (fx, fy) in seen:  # several focal planes / optical paths: the first frame wins
                    continue
                seen.add((fx, fy))
                f = to_rgb(self._frame(level, int(k)))
                x0, y0 = max(x, fx), max(y, fy)
                x1, y1 = min(x + w, fx + lv.tw, lv.width), min(y + h, fy + lv.th, lv.height)
                if x1 > x0 and y1 > y0:
                    out[y0 - y:y1 - y, x0 - x:x1 - x] = f[y0 - fy:y1 - fy, x0 - fx:x1 - fx]
            return out

        return read_clipped(read, location, level, size, self.level_dimensions[level], self.level_downsamples[level])

    def close(self) -> None:
        for lv in getattr(self, "_levels", []):
            lv.close()
        if hasattr(self, "_cache"):
            self._cache.clear()


def _spacing(ds) -> tuple[float | None, float | None]:
    """PixelSpacing (row, column) in mm: of the shared functional groups, else of the first frame's (converters
    that write PixelMeasuresSequence per frame), else (None, None)."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        try:
            spacing = ds.get(groups)[0].PixelMeasuresSequence[0].PixelSpacing
            return positive_float(spacing[0]), positive_float(spacing[1])
        except (AttributeError, IndexError, KeyError, TypeError):
            continue
    return None, None


def _mpp(ds) -> tuple[float | None, float | None]:
    """``(mpp, mpp_y)`` in µm: PixelSpacing (row, column) in mm, as it says; else the imaged volume (mm) over the
    matrix where that gives square pixels of 0.05..20 µm (converters write a square placeholder volume: the pathml
    file's 15 x 15 mm for 3236 x 2638 px), else none."""
    row, col = _spacing(ds)
    if col:
        return mpp_xy(col * 1000, row * 1000 if row else None)
    w, h = positive_float(ds.get("ImagedVolumeWidth")), positive_float(ds.get("ImagedVolumeHeight"))
    if not w or not h:
        return None, None
    mx, my = w * 1000 / int(ds.TotalPixelMatrixColumns), h * 1000 / int(ds.TotalPixelMatrixRows)
    return (mx, mx) if abs(mx - my) <= 0.05 * max(mx, my) and 0.05 <= mx <= 20 else (None, None)


def _levels_disagree(levels) -> str:
    """Why the levels' PixelSpacing cannot all be true ('' when they agree): each level's spacing is level 0's
    times its downsample (up to the rounding of its width, and 5 %). Only level 0's is used: a level 0 that says
    1 µm/px where its quarter-size level says 2 leaves the slide's scale in doubt (2x). A level that repeats
    level 0's spacing is not judged (converters copy it to every level: level 0's is then right)."""
    w0, spacing = levels[0][2], [_spacing(ds)[1] for _, ds, _ in levels]
    for (f, ds, w), sp in list(zip(levels, spacing))[1:]:
        lo, hi = w0 / (w + 1) / 1.05, w0 / max(w - 1, 0.5) * 1.05  # downsamples that round to this width, 5 % slack
        if spacing[0] and sp and sp != spacing[0] and not lo <= sp / spacing[0] <= hi:
            return (f"the DICOM levels disagree on the resolution: level 0 ({w0} px wide) says PixelSpacing "
                    f"{spacing[0] * 1000:g} µm, the level of {w} px ({Path(f).name}) {sp * 1000:g} µm, where "
                    f"{spacing[0] * 1000 * w0 / w:.4g} µm would fit")
    return ""


def _objective(ds) -> float | None:
    for item in ds.get("OpticalPathSequence") or []:
        power = positive_float(item.get("ObjectiveLensPower"))
        if power:
            return power
    return None


@hookimpl
def slidestream_readers():
    return [ReaderPlugin(name="dicom", open=DicomSlide, priority=25, suffixes=(".dcm", ""),
                         summary="pydicom: DICOM-WSI files and folders, every frame's decoder errors reported")]

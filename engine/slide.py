"""Opening slides with reader fallback, and the geometry of levels, resolution and magnification.

Magnification is resolution: ``mpp = 10 / magnification`` (40x = 0.25 µm/px, 10x = 1.0 µm/px). A slide's
level-0 resolution comes, in this order, from the cohort's ``mpp`` column, the file's mpp, its objective power,
or ``--mpp`` (``default_mpp``: for slides that do not say); a slide with none of them is refused.

Reads are bounded by what is asked for: a thumbnail is read in strips from the smallest level that is
detailed enough, and refused when that level has more than ``MAX_THUMBNAIL_SOURCE`` px (a slide without a
pyramid, or a broken header). Reads go through ``chatter.checked_read``: when the decoder complains about
damaged data (libjpeg's ``Corrupt JPEG data``), the thumbnail fails the slide and a tile read reports it.
"""
from __future__ import annotations

import errno
import math
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from . import registry
from .chatter import checked_read, complaint
from .errors import BrokenFile, SlideError
from .hookspecs import Geometry, SlideReader

REFERENCE_MPP_AT_10X = 1.0  # µm per pixel at 10x objective
LEVEL_SLACK = 1.05  # a level may be this much coarser than asked for (then resized up a little)
STRIP_PIXELS = 64_000_000  # level pixels read at once when building a thumbnail
BAND_PIXELS = 4_000_000  # level pixels a thumbnail holds at once within a strip (Slide._shrink)
MAX_THUMBNAIL_SOURCE = 2 ** 28  # level pixels a thumbnail may be built from (16384² without a pyramid: < 30 s)
DCT_THUMBNAIL_BYTES = 2 ** 28  # the level decoded at 1/2..1/8 by DCT scaling for a thumbnail, at most
FILE_MPP = (0.05, 20.0)  # a resolution a file may claim for a microscope slide, µm/px
MPP_POWER_SLACK = 3  # a file's mpp and objective power (10x = 1 µm/px) may disagree this much (scanners: <= 1.3x)


@dataclass
class Slide:
    """An open slide with its reader and resolved level-0 resolution."""

    path: str
    reader: SlideReader
    reader_name: str
    mpp: float  # level-0 µm/px used for all geometry
    mpp_source: str  # "cohort", "file mpp", "objective power", "--mpp"
    allow_corrupt: bool = False  # a thumbnail the decoder complained about is kept (the complaint is logged)
    log: list = field(default_factory=list)  # what decoders said while this slide was read

    @property
    def dimensions(self) -> tuple[int, int]:
        return tuple(self.reader.level_dimensions[0])

    def factor(self, magnification: float) -> float:
        """Level-0 pixels per output pixel at ``magnification`` (4.0 for a 40x slide at 10x)."""
        return (REFERENCE_MPP_AT_10X * 10.0 / magnification) / self.mpp

    def best_level(self, downsample: float) -> int:
        """The most reduced level that is still about as detailed as ``downsample``.

        5 % slack: a 40x Aperio slide at 0.2527 µm/px needs downsample 3.96 for 10x; its level 1
        (downsample 4.0) is read and upscaled 1 %, instead of decoding 16x the pixels at level 0."""
        best = 0
        for i, ds in enumerate(self.reader.level_downsamples):
            if ds <= downsample * LEVEL_SLACK and ds >= self.reader.level_downsamples[best]:
                best = i
        return best

    def read(self, x: int, y: int, size0: float, out_size: int) -> np.ndarray:
        """A square of level-0 side ``size0`` at (x, y), as ``out_size``² RGB, from the best level;
        resized (Pillow, antialiased) only when no level matches the requested scale exactly."""
        ds_needed = size0 / out_size
        level = self.best_level(ds_needed)
        ds = self.reader.level_downsamples[level]
        n = int(round(size0 / ds))
        rgb = self.reader.read_region((int(x), int(y)), level, (n, n))
        if n != out_size:
            rgb = np.asarray(Image.fromarray(rgb).resize((out_size, out_size), Image.BILINEAR))
        return rgb

    def read_checked(self, x: int, y: int, size0: float, out_size: int) -> tuple[np.ndarray, str]:
        """``read`` and the decoder's complaint about damaged data in it ('' when none)."""
        try:
            rgb, said = checked_read(lambda: self.read(x, y, size0, out_size))
        except BrokenFile as e:  # the reader saw a damaged tile before decoding it
            self.log.append(str(e))
            return None, str(e)
        except (RuntimeError, ValueError, OSError) as e:  # the decoder gave up on it (as for the thumbnail: _region)
            why = f"cannot decode the image data: {plain(e)}"
            self.log.append(why)
            return None, why
        if said:
            self.log.append(said)
        return rgb, complaint(said)

    def read_patches_checked(self, x: int, y: int, size0: float, out_size: int, offsets, s: int) -> tuple[np.ndarray, str]:
        """The ``s``² patches at ``offsets`` ((x, y) in the square's ``out_size`` pixels) of the square
        ``read_checked`` reads, and the decoder's complaint ('' when none; the patches are None with one).
        A reader with ``read_patches`` (cuCIM's: only the JPEG tiles the patches touch are decoded) cuts them
        where no resize is needed; where it cannot, or anything goes wrong, the square is read whole."""
        level = self.best_level(size0 / out_size)
        n = int(round(size0 / self.reader.level_downsamples[level]))
        cut = getattr(self.reader, "read_patches", None)
        if cut is not None and n == out_size:
            try:
                got, said = checked_read(lambda: cut((int(x), int(y)), level, (n, n), offsets, s))
            except (RuntimeError, ValueError, OSError):  # BrokenFile, the decoder gave up: read_checked names it
                got, said = None, ""
            if got is not None and not complaint(said):
                if said:
                    self.log.append(said)
                return got, ""
        rgb, said = self.read_checked(x, y, size0, out_size)
        if rgb is None:
            return None, said
        out = np.empty((len(offsets), s, s, 3), np.uint8)
        for j, (px, py) in enumerate(offsets):
            out[j] = rgb[py:py + s, px:px + s]
        return out, said

    def read_batch_checked(self, boxes) -> list[tuple[np.ndarray, str]]:
        """``read_checked`` of several squares ``(x, y, size0, out_size)``: in one call when the reader
        decodes batches (``read_regions``, the DALI reader) and no resize is needed, else one by one. A batch
        with a damaged tile or a decoder complaint is read again one by one, so each square gets its own."""
        batch = getattr(self.reader, "read_regions", None)
        reqs = []
        for x, y, size0, out_size in boxes:
            level = self.best_level(size0 / out_size)
            n = int(round(size0 / self.reader.level_downsamples[level]))
            reqs.append(((int(x), int(y)), level, (n, n)) if n == out_size else None)
        if batch is not None and reqs and None not in reqs:
            try:
                rgbs, said = checked_read(lambda: batch(reqs))
            except (RuntimeError, ValueError, OSError):  # BrokenFile, or the decoder gave up: read one by one
                rgbs, said = None, ""
            if rgbs is not None and not complaint(said):
                if said:
                    self.log.append(said)
                return [(rgb, "") for rgb in rgbs]
        return [self.read_checked(*b) for b in boxes]

    def _region(self, location, level, size) -> np.ndarray:
        try:
            rgb, said = checked_read(lambda: self.reader.read_region(location, level, size))
        except BrokenFile as e:
            raise SlideError(f"{self.path}: {e} (read for the thumbnail); the file is damaged, copy it again") from None
        except (RuntimeError, ValueError, OSError) as e:  # the decoder gave up ("[Error] Failed to decode image")
            raise SlideError(f"{self.path}: cannot decode the image data of level {level} (read for the thumbnail): "
                             f"{plain(e)}; the file is damaged, copy it again") from None
        if said:
            self.log.append(said)
            if complaint(said) and not self.allow_corrupt:
                raise SlideError(f"{self.path}: corrupt image data in level {level} (read for the thumbnail): "
                                 f"{complaint(said)}; the file is damaged, copy it again")
        return rgb

    def thumbnail(self, scale: float, decode: str = "dct") -> np.ndarray:
        """The whole slide at ``1/scale`` of level 0 (DPW: floor(W/32) x floor(H/32), bilinear). ``decode``:
        "dct" decodes a JPEG-tiled level at a reduced size first (``_dct_thumbnail``), "resize" reads the level
        whole and resizes it as DPW does (also where "dct" cannot)."""
        w0, h0 = self.dimensions
        tw, th = max(1, int(w0 // scale)), max(1, int(h0 // scale))
        level = self.best_level(scale)
        lw, lh = self.reader.level_dimensions[level]
        if lw * lh > MAX_THUMBNAIL_SOURCE:
            raise SlideError(f"{self.path}: the 1/{scale:g} thumbnail would be read from level {level} of {lw} x {lh} px "
                             f"(more than {MAX_THUMBNAIL_SOURCE:,}); the slide has no smaller level: "
                             "save it as a pyramidal TIFF")
        if (lw, lh) == (tw, th):
            return self._region((0, 0), level, (lw, lh))
        if decode == "dct":
            fast = self._dct_thumbnail(level, tw, th)
            if fast is not None:
                return fast
        # read in strips so memory stays bounded on slides without a pyramid
        out = np.empty((th, tw, 3), np.uint8)
        rows = max(1, int(STRIP_PIXELS // max(lw, 1) * th / max(lh, 1)))  # thumbnail rows per strip
        for t0 in range(0, th, rows):
            t1 = min(th, t0 + rows)
            l0, l1 = int(round(t0 * lh / th)), min(lh, int(round(t1 * lh / th)))
            out[t0:t1] = self._shrink(level, l0, max(1, l1 - l0), tw, t1 - t0)
        return out

    def _dct_thumbnail(self, level: int, tw: int, th: int) -> np.ndarray | None:
        """The thumbnail from the level's JPEG tiles decoded at 1/2, 1/4 or 1/8 of their size by libjpeg's DCT
        scaling (the largest that keeps at least the thumbnail's size), then Pillow's bilinear resize of that
        to the thumbnail (none when it is the size). None (the caller reads and resizes the level as DPW does)
        when the level is not JPEG-tiled in a TIFF, or any tile does not decode cleanly: libjpeg's warnings
        are errors here (simplejpeg ``strict``), so damaged data is reported by the reader's own path.

        Against that path (bench/README.md): masks within 0.3 % of pixels, the same tiles kept, on bench40x,
        the TCGA-size bench slide and CMU-1-Small-Region; 5x less CPU (TCGA-size: 361 -> 68 ms)."""
        lw, lh = self.reader.level_dimensions[level]
        k = 8
        while k > 1 and (lw / k < tw or lh / k < th):
            k //= 2
        if k == 1 or (lw // k) * (lh // k) * 3 > DCT_THUMBNAIL_BYTES:
            return None
        try:
            import simplejpeg

            from .dali_decode import dct_frame, jpeg_level

            lv = jpeg_level(self.path, lw, lh)
            if lv is None or lv.tile_w % k or lv.tile_h % k:
                return None
            gx, gy = lv.grid
            sw, sh = lv.tile_w // k, lv.tile_h // k
            if len(lv.offsets) < gx * gy:
                return None
            out = np.empty((gy * sh, gx * sw, 3), np.uint8)
            fd = os.open(self.path, os.O_RDONLY)

            def decode(tiles: range) -> bool:  # tiles into ``out``; False at the first one that is not clean
                for i in tiles:
                    raw = os.pread(fd, int(lv.counts[i]), int(lv.offsets[i]))
                    stream = raw[:2] + lv.prefix + raw[2:]
                    if (raw[:2] != b"\xff\xd8" or not dct_frame(stream)  # a lossless frame is not decoded scaled (a crash)
                            or simplejpeg.decode_jpeg_header(stream)[:2] != (lv.tile_h, lv.tile_w)):
                        return False  # a header claiming another size is not decoded (the reader's path names it)
                    px = simplejpeg.decode_jpeg(stream, colorspace="RGB", min_width=sw, min_height=sh, strict=True)
                    if px.shape != (sh, sw, 3):
                        return False
                    r, c = divmod(i, gx)
                    out[r * sh:(r + 1) * sh, c * sw:(c + 1) * sw] = px
                return True

            try:  # simplejpeg releases the GIL: two threads halve the wall time (TCGA-size level: 69 -> 41 ms)
                n = gx * gy
                halves = [range(0, n // 2), range(n // 2, n)] if n >= 64 else [range(n)]
                with ThreadPoolExecutor(len(halves)) as pool:
                    if not all(pool.map(decode, halves)):
                        return None
            finally:
                os.close(fd)
        except Exception:  # not a TIFF, a damaged tile, ...: the reader's path says what is wrong
            return None
        ow, oh = -(-lw // k), -(-lh // k)
        # a level side that is no multiple of k: its last reduced pixel is partly the edge tiles' padding (black
        # from tifffile/libtiff), a dark line along the edge (the last
        # thumbnail column 60 grey levels darker than the resize's on a 2000 x 1500 slide): the last
        # whole pixel is taken instead, as the resize repeats an edge pixel
        if lw % k and ow > 1:
            out[:oh, ow - 1] = out[:oh, ow - 2]
        if lh % k and oh > 1:
            out[oh - 1, :ow] = out[oh - 2, :ow]
        if (ow, oh) == (tw, th):
            return out if out.shape[:2] == (oh, ow) else out[:oh, :ow].copy()
        return np.asarray(Image.fromarray(out[:oh, :ow]).resize((tw, th), Image.BILINEAR, box=(0, 0, lw / k, lh / k)))

    def _shrink(self, level: int, top: int, h: int, tw: int, th: int) -> np.ndarray:
        """Level rows ``top .. top + h`` resized to ``tw`` x ``th``: byte for byte Pillow's bilinear resize of the
        whole strip in one call. A strip of more than ``BAND_PIXELS`` is read and resized in bands of 256-row
        multiples, two at a time (2 threads), each about ``BAND_PIXELS / 2``, so it is never in memory whole.

        Pillow resizes each row first (to 8 bits) and then each column, unless the height shrinks more than
        twice as much as the width (``Resample.c``): so each band's rows are resized alone, with the strip's
        own coefficients, into one image whose columns are then resized in one call. Bands are read from the
        slide only on a level whose downsample is a whole number (elsewhere a reader may shift a band by a row:
        cuCIM rounds down, OpenSlide interpolates), else cut from the strip read whole."""
        lw = self.reader.level_dimensions[level][0]
        ds = self.reader.level_downsamples[level]
        y0 = int(round(top * ds))
        if lw * h <= BAND_PIXELS or (h - th > 0 and h - th > (lw - tw) * 2):  # one call, as Pillow resizes it
            return np.asarray(Image.fromarray(self._region((0, y0), level, (lw, h))).resize((tw, th), Image.BILINEAR))
        whole = None if float(ds).is_integer() else self._region((0, y0), level, (lw, h))
        band = 256 * max(1, BAND_PIXELS // 2 // (lw * 256))
        rows = Image.new("RGB", (tw, h))  # every row resized; then every column

        def row_band(r0):
            r1 = min(h, r0 + band)
            px = self._region((0, y0 + int(r0 * ds)), level, (lw, r1 - r0)) if whole is None else whole[r0:r1]
            rows.paste(Image.fromarray(px).resize((tw, r1 - r0), Image.BILINEAR), (0, r0))

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(row_band, range(0, h, band)))
        return np.asarray(rows.resize((tw, th), Image.BILINEAR))

    def geometry(self, thumb_scale: float, magnification: float) -> Geometry:
        """Level-0 size and scale at ``magnification``. A slide coarser than that (a 5x slide for a 10x pipeline) is
        refused: its patches would be upsampled, blurred tissue passing as the magnification asked for. The
        ``LEVEL_SLACK`` a level may have is allowed (an Aperio 20x slide at 0.504 µm/px for 20x: 1 %)."""
        w, h = self.dimensions
        f = self.factor(magnification)
        if f * LEVEL_SLACK < 1:
            raise SlideError(f"{self.path}: the slide is {self.mpp:g} µm/px ({self.mpp_source}), "
                             f"{REFERENCE_MPP_AT_10X * 10 / self.mpp:.3g}x, coarser than the {magnification:g}x the "
                             f"pipeline asks for (its patches would be upsampled {1 / f:.3g}x); leave the slide out, "
                             "lower the pipeline's magnification, or give its right mpp in an `mpp` column if the "
                             "file's is wrong")
        return Geometry(width=w, height=h, thumb_scale=float(thumb_scale), factor=f)

    def close(self) -> None:
        try:
            self.reader.close()
        except Exception:
            pass


class MaskArea:
    """Tissue fraction of level-0 boxes, read off a thumbnail mask through a summed-area table built once;
    ``fractions`` answers for any number of boxes at once (arrays of x, y)."""

    _last: tuple = (None, None)  # (mask, area): the tiler and the patch planner share one table

    def __init__(self, mask: np.ndarray, scale: float):
        self.scale = float(scale)
        self.shape = h, w = mask.shape
        t = np.zeros((h + 1, w + 1), np.int32 if mask.size < 2 ** 31 else np.int64)
        t[1:, 1:] = mask
        np.cumsum(t, axis=1, out=t)
        for i in range(1, h + 1):  # row by row: numpy's cumsum along axis 0 is 10x slower
            np.add(t[i], t[i - 1], out=t[i])
        self.table = t

    @classmethod
    def of(cls, mask: np.ndarray, scale: float) -> "MaskArea":
        """The area of this very mask array, built once (the mask must not change afterwards)."""
        m, area = cls._last
        if m is not mask or area.scale != float(scale):
            area = cls(mask, scale)
            cls._last = (mask, area)
        return area

    def boxes(self, x, y, side: float) -> tuple[np.ndarray, ...]:
        """Thumbnail pixels (x0, y0, x1, y1) covering the level-0 squares at (x, y); never empty."""
        s, (h, w) = self.scale, self.shape
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        x0, y0 = np.minimum((x / s).astype(np.int64), w - 1), np.minimum((y / s).astype(np.int64), h - 1)
        x1 = np.minimum(np.maximum(np.ceil((x + side) / s).astype(np.int64), x0 + 1), w)
        y1 = np.minimum(np.maximum(np.ceil((y + side) / s).astype(np.int64), y0 + 1), h)
        return x0, y0, x1, y1

    def fractions(self, x, y, side: float) -> np.ndarray:
        x0, y0, x1, y1 = self.boxes(x, y, side)
        t = self.table
        return (t[y1, x1] - t[y0, x1] - t[y1, x0] + t[y0, x0]) / ((x1 - x0) * (y1 - y0))

    def fraction(self, x: float, y: float, side: float) -> float:
        return float(self.fractions(x, y, side))


def _check_path(path: str) -> Path:
    """The path exists and is something a reader can open; else SlideError in plain words."""
    p = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SlideError(f"{path}: symbolic link loop (the link points back to itself); fix the link") from None
        if e.errno == errno.EACCES:
            raise SlideError(f"{path}: permission denied; make the slide readable") from None
        if os.path.islink(path):
            raise SlideError(f"{path}: broken symbolic link (its target is missing); fix the link") from None
        raise SlideError(f"{path}: file not found; check slide_path in the cohort table") from None
    if p.is_dir():
        if p.suffix.lower() not in ("", ".dcm") and not any(p.glob("*.dcm")):
            raise SlideError(f"{path}: a folder, not a slide file (only a DICOM slide is a folder); "
                             "check slide_path in the cohort table")
    elif not p.is_file():
        raise SlideError(f"{path}: not a regular file (a device, pipe or socket); give the slide file")
    elif st.st_size == 0:
        raise SlideError(f"{path}: empty file (0 bytes); copy the slide again")
    elif not os.access(path, os.R_OK):
        raise SlideError(f"{path}: permission denied; make the slide readable")
    kind = "DICOM" if p.is_dir() else FOLDER_FORMATS.get(p.suffix.lower())
    if kind:  # the reader opens other files: those of the folder (MIRAX: of the folder named like the slide)
        odd = _special_file(p if p.is_dir() else p.with_suffix("") if kind == "MIRAX" else p.parent)
        if odd:
            raise SlideError(f"{path}: the {kind} folder holds {odd.name}, which is not a regular file (a pipe, device "
                             "or socket: opening it would wait forever); move it out of the folder")
    return p


FOLDER_FORMATS = {".dcm": "DICOM", ".mrxs": "MIRAX", ".vms": "VMS", ".vmu": "VMU", ".ndpis": "NDPIS"}  # multi-file


def _special_file(folder: Path) -> Path | None:
    """A pipe, device or socket in ``folder`` (followed through links), or None."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return None
    for e in entries:
        try:
            mode = os.stat(e.path).st_mode
        except OSError:  # broken link: nothing to wait on
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return Path(e.path)
    return None


def open_slide(path: str | os.PathLike, order: Sequence[str] | None = None, mpp: float | None = None,
               device: str = "cpu", default_mpp: float | None = None) -> Slide:
    """Open ``path`` with the first reader that can; raise SlideError naming the file and the cause. ``mpp`` (the
    cohort's column) overrides the file's resolution; ``default_mpp`` (``--mpp``) is used only where no reader finds
    one, or where the one the file gives is refused (not square, out of range: the messages name --mpp).

    A reader raising ``BrokenFile`` (the file itself is broken) ends the search: no reader would do better."""
    path = str(path)
    default_mpp = None if default_mpp is None or default_mpp != default_mpp else float(default_mpp)  # NaN: not given
    if default_mpp is not None and default_mpp <= 0:
        raise SlideError(f"{path}: mpp must be positive, got {default_mpp}")
    p = _check_path(path)
    table = registry.plugins("reader")
    names = list(order) if order else sorted(table, key=lambda n: (table[n].priority, n))
    suffix = "".join(s.lower() for s in p.suffixes[-1:]) if p.is_file() else ""
    failures = []
    unresolved: tuple[str, SlideError] | None = None  # first reader that opened the file but found no resolution
    for name in names:
        plugin = registry.get("reader", name)
        if plugin.suffixes and suffix not in plugin.suffixes:
            continue
        try:
            reader = plugin.open(path, device=device)
        except BrokenFile as e:
            raise SlideError(f"{path}: {plain(e)}") from None
        except MemoryError:
            raise SlideError(f"{path}: the header claims more memory than there is ({name}); the file is broken") from None
        except Exception as e:  # a reader that cannot read this file: try the next one
            failures.append(f"{name}: {plain(e)}")
            continue
        lie = _level_lie(reader)
        if lie:
            reader.close()
            raise SlideError(f"{path}: {lie}: a broken or patched header; copy the slide again")
        lie = _level_content_lie(reader)
        if lie:
            reader.close()
            raise SlideError(f"{path}: {lie}; convert or copy the slide again from the scanner's file")
        try:
            level_mpp, source = _resolution(reader, mpp)
        except SlideError as e:  # another reader may find the resolution in metadata this one ignores
            if reader.mpp or reader.objective_power:  # but the file gives one, refused: a reader that ignores it does
                # not make it right (OME non-square pixels, read as square from the TIFF tags by the image reader)
                if default_mpp is None:
                    reader.close()
                    raise
                return Slide(path=path, reader=reader, reader_name=name, mpp=default_mpp, mpp_source="--mpp")
            reader.close()
            unresolved = unresolved or (name, e)
            continue
        return Slide(path=path, reader=reader, reader_name=name, mpp=level_mpp, mpp_source=source)
    if unresolved is not None:
        name, e = unresolved
        if default_mpp is None:
            raise e
        return Slide(path=path, reader=registry.get("reader", name).open(path, device=device), reader_name=name,
                     mpp=default_mpp, mpp_source="--mpp")
    if not failures:
        raise SlideError(f"{path}: no reader handles '{suffix or 'folder'}' files; readers: {', '.join(names)}")
    if len({f.split(": ", 1)[1] for f in failures}) == 1:  # every reader said the same
        failures = [f"{', '.join(f.split(': ', 1)[0] for f in failures)}: {failures[0].split(': ', 1)[1]}"]
    raise SlideError(f"{path}: not a readable slide or image ({'; '.join(failures)})")


def _level_lie(reader: SlideReader) -> str | None:
    """Why the pyramid's level sizes cannot be true, or None: a level is a scaled-down level 0, so one
    downsample (up to the rounding of each side) must give both its width and its height. A level whose
    header claims another size was read with the wrong scale: patches from the wrong place, silently. Levels
    whose sides are both multiples of 128 are not judged: some formats (Philips TIFF) pad levels to whole tiles;
    but no level may have width and height the other way round than level 0 (portrait vs landscape), and the
    levels of a square level 0 are square (both sides rounded, or padded with square tiles, alike)."""
    dims = [tuple(int(v) for v in d) for d in reader.level_dimensions]
    if not dims or min(min(d) for d in dims) < 1:
        return f"a pyramid level of {dims} has no pixels"
    w0, h0 = dims[0]
    for i, (w, h) in enumerate(dims[1:], 1):
        lo = max(w0 / (w + 1), h0 / (h + 1))  # downsamples that round to this width and this height
        hi = min(w0 / (w - 1) if w > 1 else math.inf, h0 / (h - 1) if h > 1 else math.inf)
        if (w % 128 or h % 128) and (lo > hi or w > w0 or h > h0):
            return (f"pyramid level {i} is {w} x {h} px, which no single downsample of level 0 ({w0} x {h0} px) "
                    "gives")
        if (w - h) * (w0 - h0) < 0:  # rounding and tile padding never turn a landscape level into a portrait one
            return (f"pyramid level {i} is {w} x {h} px, {'portrait' if h > w else 'landscape'} where level 0 "
                    f"({w0} x {h0} px) is {'portrait' if h0 > w0 else 'landscape'}")
        if w0 == h0 and abs(w - h) > 1:
            return f"pyramid level {i} is {w} x {h} px, not square where level 0 ({w0} x {h0} px) is"
    return None


LIE_BOX = 64  # side, in pixels of the coarser level, of the box two adjacent levels are compared on
LIE_SEARCH = 2 ** 21  # the smallest level is searched for a textured box when it has at most this many pixels


def _level_content_lie(reader: SlideReader) -> str | None:
    """Why a pyramid level cannot hold a scaled-down copy of the level above it, or None: a level of the right
    size holding another image (another slide's level, a label or macro picture, another scale) passes
    every header check and gives patches of another place. Each level is compared with the one above it on
    one box of ``LIE_BOX``² px, centred on the most textured part of the smallest level, both box-reduced to
    half the coarser level's scale: real pyramids agree there (test slides: mean difference <= 15 grey levels,
    correlation >= 0.92), another image does not (another slide, a macro picture, another scale, a shifted
    copy: difference >= 28, correlation <= 0.38); refused when the difference is over 20 and the correlation
    under 0.5. Two flat boxes of one shade (glass) prove nothing and pass; a flat box beside another shade (pale
    tissue whose texture the reduction averages out, beside glass) does not; a mirrored copy may pass. A box
    that cannot be read is not judged here (the thumbnail reports it). Cost: two small reads per level, and a
    read of the smallest level when it has at most ``LIE_SEARCH`` px (a 4 Mpx JPEG 2000 level took 200 ms)."""
    dims = [tuple(int(v) for v in d) for d in reader.level_dimensions]
    ds = [float(d) for d in reader.level_downsamples]
    if len(dims) < 2:
        return None
    try:
        cx, cy = _textured_point(reader, dims, ds)
        for i in range(1, len(dims)):
            (w, h), r = dims[i], ds[i] / ds[i - 1]
            b = min(LIE_BOX, w, h)
            n = int(round(b * r))
            if b < 32 or r < 1 or n > 32 * LIE_BOX:  # a level of a few pixels: rounding of its size is most of it
                continue
            bx = min(max(int(cx / ds[i]) - b // 2, 0), w - b)  # the box in level-i pixels, inside the level
            by = min(max(int(cy / ds[i]) - b // 2, 0), h - b)
            loc = (int(round(bx * ds[i])), int(round(by * ds[i])))
            coarse, said = checked_read(lambda: reader.read_region(loc, i, (b, b)))
            fine, said2 = checked_read(lambda: reader.read_region(loc, i - 1, (n, n)))
            if complaint(said) or complaint(said2):
                return None
            # both at half the coarser level's scale: scanners' own reduction filters and JPEG loss then agree
            a = np.asarray(Image.fromarray(coarse).convert("L").reduce(2), np.float32)
            f = np.asarray(Image.fromarray(fine).convert("L").resize(a.shape[::-1], Image.BOX), np.float32)
            diff, sa, sf = float(np.abs(a - f).mean()), float(a.std()), float(f.std())
            corr = float(((a - a.mean()) * (f - f.mean())).mean() / (sa * sf)) if sa > 1 and sf > 1 else 0.0
            if diff > 20 and corr < 0.5:  # also when one box is flat: pale tissue beside glass is no pyramid
                return (f"pyramid level {i} ({w} x {h} px) does not show what level {i - 1} shows at the same place "
                        f"(mean difference {diff:.0f} grey levels, correlation {corr:.2f}): it holds another image, "
                        "or damaged data")
    except Exception:  # noqa: BLE001 - a level that cannot be read is reported by the thumbnail, in its words
        return None
    return None


def _textured_point(reader: SlideReader, dims, ds) -> tuple[float, float]:
    """Level-0 centre of the most textured ``LIE_BOX``-level-pixel block of the smallest level (its centre
    when that level is too large to search)."""
    w, h = dims[-1]
    if w * h > LIE_SEARCH or min(w, h) < 8:
        return dims[0][0] / 2, dims[0][1] / 2
    g = np.asarray(Image.fromarray(checked_read(lambda: reader.read_region((0, 0), len(dims) - 1, (w, h)))[0])
                   .convert("L"), np.float32)
    k = max(4, min(w, h) // 8)  # block side: about an eighth of the level
    rows, cols = h // k, w // k
    blocks = g[:rows * k, :cols * k].reshape(rows, k, cols, k).std(axis=(1, 3))
    r, c = np.unravel_index(int(np.argmax(blocks)), blocks.shape)
    return (c + 0.5) * k * ds[-1], (r + 0.5) * k * ds[-1]


def _resolution(reader: SlideReader, override: float | None) -> tuple[float, str]:
    if override is not None and override == override:  # not NaN
        if override <= 0:
            raise SlideError(f"{reader.path}: mpp must be positive, got {override}")
        return float(override), "cohort"
    if getattr(reader, "mpp_problem", ""):  # the file's resolution metadata contradicts itself
        raise SlideError(f"{reader.path}: {reader.mpp_problem}; give the right level-0 µm/px with --mpp or an `mpp` "
                         "column")
    if reader.mpp:
        x, y = float(reader.mpp), float(getattr(reader, "mpp_y", None) or reader.mpp)
        if abs(x - y) > 0.05 * max(x, y):  # also where an objective power is given: patches would be stretched
            raise SlideError(f"{reader.path}: the file says its pixels are {x:g} µm wide and {y:g} µm high, not square "
                             "(patches would be stretched); resample the slide to square pixels, or give --mpp or an "
                             "`mpp` column to take it as it is")
        if not FILE_MPP[0] <= float(reader.mpp) <= FILE_MPP[1]:
            raise SlideError(f"{reader.path}: the file says {float(reader.mpp):g} µm/px, not a microscope resolution "
                             f"({FILE_MPP[0]:g}..{FILE_MPP[1]:g}); give the right one with --mpp or an `mpp` column")
        power = float(reader.objective_power or 0)
        ratio = float(reader.mpp) * power / (REFERENCE_MPP_AT_10X * 10)  # 1 when they agree
        if power > 0 and not 1 / MPP_POWER_SLACK <= ratio <= MPP_POWER_SLACK:
            raise SlideError(f"{reader.path}: the file says {float(reader.mpp):g} µm/px but objective power {power:g}x "
                             f"({REFERENCE_MPP_AT_10X * 10 / power:g} µm/px), more than {MPP_POWER_SLACK:g}x apart; give the right "
                             "one with --mpp or an `mpp` column")
        return float(reader.mpp), "file mpp"
    if reader.objective_power:
        if not 1 <= float(reader.objective_power) <= 200:
            raise SlideError(f"{reader.path}: the file says objective power {float(reader.objective_power):g}x, "
                             "not a microscope objective; give the resolution with --mpp or an `mpp` column")
        return REFERENCE_MPP_AT_10X * 10.0 / float(reader.objective_power), "objective power"
    raise SlideError(f"{reader.path}: no resolution metadata (neither mpp nor objective power); "
                     "give it with --mpp or an `mpp` column in the cohort CSV")


# library exceptions whose text alone means nothing to a user ("unpack requires a buffer of 4 bytes")
RAW = {"error": "malformed file structure", "IndexError": "malformed file structure",
       "KeyError": "a required field is missing", "TypeError": "malformed file structure",
       "AttributeError": "a required field is missing", "UnicodeDecodeError": "malformed text in the header",
       "EOFError": "the file ends early (truncated?)", "OverflowError": "a header value is out of range",
       "ZeroDivisionError": "a header value is zero"}


def plain(e: Exception) -> str:
    """One line in plain words; a raw library message comes after a colon, behind what it means."""
    text = " ".join(str(e).split())[:240]
    plain = RAW.get(type(e).__name__)
    if plain:
        return f"{plain}: {text}" if text else plain
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror.lower()}: {text}"
    return text or type(e).__name__

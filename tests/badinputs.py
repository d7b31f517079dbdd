"""A corpus of bad inputs, made at test time from a small synthetic slide and tests/data (nothing big committed).

``slides(folder)`` writes the bad slides and returns ``{name: (path, expected)}``, where ``expected`` is the
status the extraction must record ("error" or "empty" or "done") and a regular expression its reason must
match. ``flip_jpeg_bytes`` damages JPEG tile data as a bad disk or a broken copy does.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from conftest import WSI
from slidestream.engine.cohort import slide_id as slide_id_of  # noqa: F401 (the id a case's path gets)
from slidestream.engine.synthetic import make_slide

SIZE = (2048, 1536)  # at 0.5 µm/px the 10x tiles are read from level 0 (the flipped bytes are mostly there)


def good_slide(path: Path, seed: int = 1) -> Path:
    return make_slide(path, size=SIZE, label=1, seed=seed, mpp=0.5)


def truncate(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: max(1, int(len(data) * fraction))])
    return dst


def flip_jpeg_bytes(src: Path, dst: Path, n: int = 100, seed: int = 0) -> Path:
    """XOR ``n`` random bytes inside the JPEG tile data (all pyramid levels, chosen by byte)."""
    import tifffile

    with tifffile.TiffFile(src) as tf:
        spans = [(int(o), int(c)) for p in tf.pages for o, c in zip(p.dataoffsets, p.databytecounts)]
    starts = np.array([o for o, _ in spans])
    ends = np.cumsum([c for _, c in spans])
    rng = np.random.default_rng(seed)
    data = bytearray(src.read_bytes())
    for k in rng.choice(int(ends[-1]), n, replace=False):
        i = int(np.searchsorted(ends, k, side="right"))
        pos = int(starts[i] + k - (ends[i - 1] if i else 0))
        data[pos] ^= int(rng.integers(1, 256))
    dst.write_bytes(bytes(data))
    return dst


def flip_dicom_frames(src: Path, dst: Path, frames: int = 10, seed: int = 0) -> Path:
    """XOR one byte in each of ``frames`` random JPEG frames of a single-file DICOM slide (past the frame's
    first quarter, so mostly the entropy-coded data that libjpeg may decode with only a warning)."""
    from slidestream.engine.slide import open_slide

    s = open_slide(src, mpp=0.5)
    spans = [r if isinstance(r, tuple) else r[0] for r in s.reader._levels[0].frames]
    s.close()
    rng = np.random.default_rng(seed)
    data = bytearray(src.read_bytes())
    for k in rng.choice(len(spans), frames, replace=False):
        p, n = spans[int(k)]
        data[p + int(rng.integers(n // 4, n - 2))] ^= int(rng.integers(1, 256))
    dst.write_bytes(bytes(data))
    return dst


def sparse_tiles(src: Path, dst: Path, every: int = 3) -> Path:
    """A copy whose level-0 tiles 0, every, 2*every, ... have byte count 0 (absent: sparse TIFF)."""
    import tifffile

    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tf:
        tag = tf.pages[0].tags["TileByteCounts"]
        assert tag.dtype == 4  # LONG
        for k in range(0, tag.count, every):
            data[tag.valueoffset + 4 * k:tag.valueoffset + 4 * k + 4] = b"\0\0\0\0"
    dst.write_bytes(bytes(data))
    return dst


def without_jpegtables(src: Path, dst: Path) -> Path:
    """A copy whose JPEGTables tags are renamed to an unknown tag: abbreviated tiles without their tables."""
    import tifffile

    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tf:
        for page in tf.pages:
            if "JPEGTables" in page.tags:
                off = page.tags["JPEGTables"].offset
                data[off:off + 2] = struct.pack("<H", 65000)
    dst.write_bytes(bytes(data))
    return dst


def flip_tail_bytes(src: Path, dst: Path, n: int = 5, seed: int = 0) -> Path:
    """XOR ``n`` random bytes in the last three quarters of a file (a plain JPEG's entropy-coded data)."""
    data = bytearray(src.read_bytes())
    dst.write_bytes(_flip(data, len(data) // 4, len(data) - 2, n, seed))
    return dst


def claim_size(src: Path, dst: Path, width: int, height: int) -> Path:
    """A copy whose level-0 header claims ``width`` x ``height`` px (the tile table is left as it is)."""
    import tifffile

    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tf:
        tags = tf.pages[0].tags
        for name, v in (("ImageWidth", width), ("ImageLength", height)):
            off = tags[name].offset  # 12-byte entry: tag, type, count, value
            data[off + 2:off + 4] = struct.pack("<H", 4)  # LONG
            data[off + 8:off + 12] = struct.pack("<I", v)
    dst.write_bytes(bytes(data))
    return dst


def png_claiming(dst: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims ``width`` x ``height`` px (a decompression bomb, as far as the header says)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    dst.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                    + chunk(b"IEND", b""))
    return dst


def photo_without_resolution(dst: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(100, 200, (300, 400, 3)).astype(np.uint8)).save(dst)
    return dst


def blank_slide(dst: Path) -> Path:
    import tifffile

    tifffile.imwrite(dst, np.full((1536, 2048, 3), 242, np.uint8), tile=(256, 256), photometric="rgb",
                     compression="jpeg", description="Aperio Image Library v12.0.0\r\n2048x1536 [0,0 2048x1536] "
                     "(256x256) JPEG/RGB Q=85|AppMag = 20|MPP = 0.5")
    return dst


def strip_tiff(dst: Path, width: int, height: int) -> Path:
    """An uncompressed RGB TIFF in strips of one row, no pyramid, 20000 µm/cm resolution (0.5 µm/px); its
    pixel data is a hole in a sparse file, so a huge one costs no disk."""
    n = 11
    offs = 8 + 2 + 12 * n + 4
    counts, bps, res = offs + 4 * height, offs + 8 * height, offs + 8 * height + 8
    data = res + 16

    def e(tag, typ, count, value):
        return struct.pack("<HHII", tag, typ, count, value)

    with open(dst, "wb") as f:
        f.write(b"II*\0" + struct.pack("<IH", 8, n))
        f.write(e(256, 4, 1, width) + e(257, 4, 1, height) + e(258, 3, 3, bps) + e(259, 3, 1, 1) + e(262, 3, 1, 2)
                + e(273, 4, height, offs) + e(277, 3, 1, 3) + e(278, 4, 1, 1) + e(279, 4, height, counts)
                + e(282, 5, 1, res) + e(296, 3, 1, 3) + b"\0\0\0\0")
        f.write(np.arange(height, dtype="<u4").__mul__(width * 3).__add__(data).astype("<u4").tobytes())
        f.write(np.full(height, width * 3, "<u4").tobytes())
        f.write(struct.pack("<3H", 8, 8, 8) + b"\0\0" + struct.pack("<II", 20000, 1) + b"\0" * 8)
        f.truncate(data + width * height * 3)
    return dst


def dicom_folder(d: Path, name: str, damage) -> Path:
    """A copy of the CMU DICOM series whose level-0 file went through ``damage(bytearray) -> bytes``."""
    folder = d / name
    folder.mkdir(exist_ok=True)
    for f in (WSI / "dicom-cmu-1-small-region").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    lv0 = folder / "level-0-frames-0-30.dcm"
    lv0.write_bytes(damage(bytearray(lv0.read_bytes())))
    return folder


def _flip(data: bytearray, lo: int, hi: int, n: int, seed: int) -> bytes:
    """XOR ``n`` random bytes of ``data[lo:hi]`` (seeded)."""
    rng = np.random.default_rng(seed)
    for k in rng.choice(np.arange(lo, hi), n, replace=False):
        data[int(k)] ^= int(rng.integers(1, 256))
    return bytes(data)


def slides(d: Path, good: Path) -> dict[str, tuple[Path, str, str]]:
    """Bad slides beside ``good``: {name: (path, expected status, reason pattern)}."""
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, str, str]] = {}
    for f in (0.02, 0.3, 0.6, 0.9, 0.999):
        out[f"trunc{f}"] = (truncate(good, d / f"trunc{f}.svs", f), "error", r"truncated|not a readable")
    out["claim1e6"] = (claim_size(good, d / "claim1e6.svs", 10 ** 6, 10 ** 6), "error",
                       r"1000000 x 1000000 px.*needs 15,264,649 data offsets but the file lists 48")
    out["claim2e31"] = (claim_size(good, d / "claim2e31.svs", 2 ** 31, 2 ** 31), "error",
                        r"2147483648 x 2147483648 px.*data offsets but the file lists 48")
    out["bomb"] = (png_claiming(d / "bomb.png", 40000, 40000), "error", r"decompression-bomb limit")
    out["photo"] = (photo_without_resolution(d / "photo.png"), "error", r"no resolution metadata.*--mpp")
    out["blank"] = (blank_slide(d / "blank.svs"), "empty", r"no tissue found by the filters$")
    from PIL import Image

    gray = Image.open(good).convert("L")  # a grey picture of a slide with tissue: the DPW filters need colour
    gray.save(d / "gray.png", dpi=(25400 / 0.5, 25400 / 0.5))
    out["gray"] = (d / "gray.png", "empty", r"grayscale")
    folder = d / "folder.svs"
    folder.mkdir(exist_ok=True)
    out["folder"] = (folder, "error", r"a folder, not a slide file")
    loop = d / "loop.svs"
    if not loop.is_symlink():
        os.symlink(loop.name, loop)  # points at itself
    out["loop"] = (loop, "error", r"symbolic link loop")
    odd = d / "odd dir" / "slide é ü (copy).svs"
    odd.parent.mkdir(exist_ok=True)
    odd.write_bytes(good.read_bytes())
    out["slide é ü (copy)"] = (odd, "done", r"^$")
    dcm = WSI / "pathml_small_dicom_TCGA-XK-AAJU_pen.dcm"
    out["dicom_trunc"] = (truncate(dcm, d / "dicom_trunc.dcm", 0.5), "error", r"truncated or damaged")
    # DICOM series with a damaged level-0 file: OpenSlide decoded flipped frames silently; the dicom reader
    # skipped a level whose header was cut short or overwritten (the next level became level 0)
    out["dicom_dir_flip"] = (dicom_folder(d, "dicom_dir_flip", lambda b: _flip(b, 5000, len(b) - 1000, 100, 1)),
                             "error", r"truncated|corrupt|damaged")
    out["dicom_dir_trunc"] = (dicom_folder(d, "dicom_dir_trunc", lambda b: bytes(b[:int(len(b) * 0.7)])),
                              "error", r"level-0-frames-0-30.dcm: .*truncated or damaged")
    out["dicom_dir_head"] = (dicom_folder(d, "dicom_dir_head", lambda b: _flip(b, 132, 1500, 20, 2)),
                             "error", r"level-0-frames-0-30.dcm: .*truncated or damaged")
    out["strips"] = (strip_tiff(d / "strips.tif", 20000, 20000), "error", r"thumbnail would be read from level 0 .*"
                     r"pyramidal TIFF")
    absurd = d / "mpp100.svs"  # the file's own header says 100 µm/px
    data = bytearray(good.read_bytes())
    i = data.find(b"MPP = 0.5")
    data[i:i + 9] = b"MPP = 100"
    absurd.write_bytes(bytes(data))
    out["mpp100"] = (absurd, "error", r"says 100 µm/px, not a microscope resolution")
    out["no_tables"] = (without_jpegtables(WSI / "CMU-1-Small-Region.svs", d / "no_tables.svs"), "error",
                        r"corrupt JPEG tile 0 .*no quantisation tables and the TIFF no JPEGTables tag")
    (d / "text.svs").write_text("this is not a slide\n")
    out["text"] = (d / "text.svs", "error", r"not a readable slide")
    return out


def extract_outcome(path: Path, tmp: Path, direct: bool, allow: bool, monkeypatch):
    """``extract`` of ``path`` at the slide's own 40x level (tiles read without a resize, patches cut by cuCIM's
    ``read_patches``), with the libjpeg-turbo path (``direct``) or cuCIM decoding every tile: each slide's status,
    reason, patch count and corrupt tiles, and the store's patches (None when empty)."""
    import shutil

    from slidestream.engine import config
    from slidestream.engine.cohort import read_cohort
    from slidestream.engine.runner import extract
    from slidestream.engine.store import PatchStore
    from slidestream.plugins.readers.cucim import CucimSlide

    monkeypatch.setattr(CucimSlide, "direct_jpeg", direct)
    p = config.load(config.example("liu2020"))
    p["magnification"] = 40
    p["tiling"]["params"]["min_tissue"] = 0.05
    out = tmp / f"store-{direct}-{allow}"
    shutil.rmtree(out, ignore_errors=True)
    extract(p, read_cohort(str(path)), out, threads=2, qa=False, progress=False, allow_corrupt_tiles=allow)
    st = PatchStore.open(out)
    recs = {k: {f: v.get(f) for f in ("status", "reason", "n_patches", "corrupt_tiles")}
            for k, v in {**st.records(), **st.records("errors")}.items()}
    return recs, (np.asarray(st.patches[:]) if len(st) else None)


def same_as_cucim(path: Path, tmp: Path, monkeypatch, allows=(False, True)) -> dict:
    """Assert the libjpeg path gives cuCIM's records (reasons included) and byte-identical patches, with and
    without ``--allow-corrupt-tiles``; returns the records of the last run."""
    for allow in allows:
        fast = extract_outcome(path, tmp, True, allow, monkeypatch)
        ref = extract_outcome(path, tmp, False, allow, monkeypatch)
        assert fast[0] == ref[0], (path.name, allow)
        assert (fast[1] is None and ref[1] is None) or np.array_equal(fast[1], ref[1]), (path.name, allow)
    return fast[0]

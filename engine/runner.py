"""Extraction: slides to a patch store, one task per slide.

Per slide (``process_slide``, opens its own reader): thumbnail -> filters -> tissue mask -> tiling ->
tiles read in batches -> patches, compressed into a staging array beside the store (``STORE.partial``)
by whichever process runs the slide: a forked local worker (killed at the per-slide time limit; a serial
run's worker plans the next slide meanwhile), the driver itself when there is no limit, or a dask worker. The driver then commits finished slides in cohort order -- a rename of the staged shards plus the
slide's column rows and record, constant time (see ``store``) -- so the store does not depend on
scheduling, and an interrupted run resumes from the committed records. Memory per worker is one batch of
tiles, whatever the slide's size.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import time
import zlib
from concurrent.futures import ThreadPoolExecutor, wait as futures_wait
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from . import config, registry
from .chatter import CAPTURE
from .cohort import SLIDE_SUFFIXES, SlideRow, file_name, fingerprint, read_cohort, slide_id as _slide_id  # noqa: F401 (re-exported)
from .errors import ConfigError, SlideError, SlidestreamError
from .progress import ExtractProgress
from .device import resolve_device
from .slide import MaskArea, Slide, open_slide, plain as _plain
from .store import PatchStore, RowWriter, WriteError, atomic_write_text, beside, stage_name, writing


# ------------------------------------------------------------------------------------ tissue
def tissue_mask(pipeline: dict[str, Any], rgb: np.ndarray) -> np.ndarray:
    """Apply the pipeline's filters in order to a thumbnail; True = tissue. Consecutive DPW colour
    filters run in one fused pass (same mask, see plugins/filters/dpw.py)."""
    from slidestream.plugins.filters.dpw import apply_chain

    return apply_chain(rgb, pipeline.get("filters", []))


def overlay(rgb: np.ndarray, mask: np.ndarray, tiles: Iterable = (), scale: float = 1.0) -> np.ndarray:
    """QA picture: non-tissue tinted blue and dimmed, kept tiles outlined in green with their rank."""
    return np.asarray(overlay_image(rgb, mask, tiles, scale))


def overlay_image(rgb: np.ndarray, mask: np.ndarray, tiles: Iterable = (), scale: float = 1.0):
    """``overlay`` as a Pillow image, built in bands of rows: besides the image, memory holds one band. Each
    channel of a non-tissue pixel goes through a 256-entry table of the float32 blend (the same bytes as
    blending the whole thumbnail in float32, whose 4 copies added 86 MB on a TCGA-size slide)."""
    from PIL import Image, ImageDraw

    tint = (np.arange(256, dtype=np.float32)[:, None] * 0.45 + np.array([40, 80, 200], np.float32) * 0.55).astype(np.uint8)
    h, w = rgb.shape[:2]
    im = Image.new("RGB", (w, h))
    rows = max(1, (1 << 18) // max(1, w))
    for y in range(0, h, rows):
        blk, off = np.array(rgb[y:y + rows, :, :3], np.uint8), ~mask[y:y + rows]
        for c in range(3):
            ch = blk[..., c]
            ch[off] = tint[ch[off], c]
        im.paste(Image.fromarray(blk), (0, y))
    draw = ImageDraw.Draw(im)
    for i, t in enumerate(tiles):
        box = (t.x / scale, t.y / scale, (t.x + t.w) / scale - 1, (t.y + t.h) / scale - 1)
        draw.rectangle(box, outline=(0, 200, 0), width=max(1, int(min(im.size) / 300)))
        draw.text((box[0] + 2, box[1] + 1), str(i), fill=(0, 120, 0))
    return im


# ------------------------------------------------------------------------------------ one slide
def trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``, 0.5 ms; nothing where there is
    none). glibc keeps what a slide's planning freed (its mmap threshold rises to the largest array freed, so
    later arrays of the thumbnail's size come from the heap and stay there): without it each MB of them stayed
    resident under the QA picture and the tile decoding (bench/README.md, round 11)."""
    if not _TRIM:
        try:
            import ctypes

            _TRIM.append(ctypes.CDLL(None).malloc_trim)
        except (OSError, AttributeError):  # not glibc
            _TRIM.append(None)
    if _TRIM[0] is not None:
        _TRIM[0](0)


_TRIM: list = []  # glibc's malloc_trim, or None


def _patch_offsets(pipeline: dict[str, Any], tile_px: int, key: str) -> np.ndarray:
    """(n, 2) patch offsets (x, y) in a tile: a grid, or ``per_tile`` random ones seeded by the tile's key."""
    p = pipeline["patches"]
    s = int(p["size"])
    if s > tile_px:
        raise ConfigError(f"patches.size {s} is larger than the tile ({tile_px} px); lower it or raise tiling size")
    if p["mode"] == "grid":
        g = np.arange(0, tile_px - s + 1, s)
        return np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)  # row by row
    rng = np.random.default_rng([int(pipeline.get("seed", 0)), zlib.crc32(key.encode())])
    return rng.integers(0, tile_px - s + 1, size=(int(p["per_tile"]), 2))


def plan_slide(pipeline: dict[str, Any], slide: Slide, slide_id: str):
    """Thumbnail, mask, tiles and patch positions of one slide (cheap: no tile pixels are read).

    Patch rows are ``(tile index, px, py, level-0 x, y, size0, patch tissue)``, all computed at once."""
    scale = float(pipeline["thumbnail"]["scale"])
    thumb = slide.thumbnail(scale, pipeline["thumbnail"].get("decode", "dct"))
    mask = tissue_mask(pipeline, thumb)
    geometry = slide.geometry(scale, float(pipeline.get("magnification", 10)))
    try:
        return _plan_patches(pipeline, slide_id, thumb, mask, geometry, scale)
    finally:  # the mask's area table (4 bytes a thumbnail pixel: 25 MB on a TCGA-size slide) is not kept
        MaskArea._last = (None, None)


def _plan_patches(pipeline: dict[str, Any], slide_id: str, thumb, mask, geometry, scale: float):
    """``plan_slide``'s tiles and patch rows, from the thumbnail and its mask."""
    tiling = pipeline["tiling"]
    tiles = registry.get("tiling", tiling["name"]).select(mask, thumb, geometry, **tiling.get("params", {}))
    if not tiles:
        return thumb, mask, geometry, tiles, []
    f, s = geometry.factor, int(pipeline["patches"]["size"])
    off = [_patch_offsets(pipeline, int(round(t.w / f)), f"{slide_id}/{ti}") for ti, t in enumerate(tiles)]
    ti = np.repeat(np.arange(len(tiles)), [len(o) for o in off])
    px, py = np.concatenate(off).T
    x0 = np.array([t.x for t in tiles], np.float64)[ti] + px * f
    y0 = np.array([t.y for t in tiles], np.float64)[ti] + py * f
    tissue = MaskArea.of(mask, scale).fractions(x0, y0, s * f)
    keep = tissue >= float(pipeline["patches"].get("min_tissue", 0.0))
    side = int(round(s * f))
    rows = list(zip(ti[keep].tolist(), px[keep].tolist(), py[keep].tolist(), np.round(x0[keep]).astype(np.int64).tolist(),
                    np.round(y0[keep]).astype(np.int64).tolist(), [side] * int(keep.sum()), tissue[keep].tolist()))
    return thumb, mask, geometry, tiles, rows


def patch_table(rows, tiles) -> dict[str, np.ndarray]:
    """Store columns of planned patches (``plan_slide`` rows)."""
    r = list(zip(*rows)) or [()] * 7
    tile_tissue = np.array([t.tissue for t in tiles], np.float32)
    return {"tile_id": np.array(r[0], np.int32), "x": np.array(r[3], np.int64), "y": np.array(r[4], np.int64),
            "size0": np.array(r[5], np.int32), "tissue": np.array(r[6], np.float32),
            "tile_tissue": tile_tissue[np.array(r[0], np.int64)] if rows else np.array([], np.float32)}


def iter_patch_batches(pipeline: dict[str, Any], slide: Slide, tiles, rows, geometry, threads: int = 1,
                       problems: dict[int, str] | None = None):
    """Yield (row indices, patches) per tile, batches of tiles decoded by ``threads`` threads, the next
    batch decoding while this one is consumed (at most two batches of tiles in memory).

    A tile its decoder complained about (``Slide.read_checked``) is not yielded: its index and the
    complaint go into ``problems`` (pass a dict), or, without one, it raises SlideError."""
    s = int(pipeline["patches"]["size"])
    batch = int(pipeline["store"].get("batch_tiles", 4))
    by_tile: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_tile.setdefault(r[0], []).append(i)
    order = sorted(by_tile)

    def box(ti):
        t = tiles[ti]
        return t.x, t.y, t.w, int(round(t.w / geometry.factor))

    chunks = [order[b0:b0 + batch] for b0 in range(0, len(order), batch)]
    if hasattr(slide.reader, "read_regions"):  # a reader that decodes a whole batch of tiles per call (DALI)
        def submit(pool, chunk):
            f = pool.submit(slide.read_batch_checked, [box(ti) for ti in chunk])
            return [_Item(f, j) for j in range(len(chunk))]
        workers = 1  # the reader uses every core itself
    else:  # one tile per call, ``threads`` at a time; only its patches are cut (cuCIM's reader: only the
        # JPEG tiles they touch are decoded, ~18 % fewer on the benchmark slide; Slide.read_patches_checked)
        def submit(pool, chunk):
            return [pool.submit(slide.read_patches_checked, *box(ti), [rows[i][1:3] for i in by_tile[ti]], s)
                    for ti in chunk]
        workers = max(1, threads)
    with ThreadPoolExecutor(workers) as pool:
        ahead = submit(pool, chunks[0]) if chunks else []
        for k, chunk in enumerate(chunks):  # batch k+1 decodes while batch k is cut and handed on
            futures = ahead
            ahead = submit(pool, chunks[k + 1]) if k + 1 < len(chunks) else []
            for ti, (rgb, said) in zip(chunk, (f.result() for f in futures)):
                if said:
                    if problems is None:
                        t = tiles[ti]
                        raise SlideError(f"{slide.path}: corrupt image data in tile {ti} (level-0 x={t.x}, y={t.y}): "
                                         f"{said}; copy the slide again, or pass --allow-corrupt-tiles to drop such tiles")
                    problems[ti] = said
                    continue
                idx = by_tile[ti]
                if rgb.ndim == 4:  # the patches already (read_patches_checked)
                    yield idx, rgb
                    continue
                out = np.empty((len(idx), s, s, 3), np.uint8)
                for j, i in enumerate(idx):
                    _, px, py = rows[i][:3]
                    out[j] = rgb[py:py + s, px:px + s]
                yield idx, out


class _Item:
    """One tile's ``(rgb, complaint)`` out of a batch read's future."""

    def __init__(self, future, j: int):
        self.future, self.j = future, j

    def result(self):
        return self.future.result()[self.j]


def readers_for(pipeline: dict[str, Any]) -> list[str] | None:
    """Readers to try for the pipeline: ``reader.order``, with the DALI reader first when ``reader.decoder``
    is ``dali`` (JPEG-tiled TIFF/SVS; other slides fall through to the next reader)."""
    section = pipeline.get("reader") or {}
    order = section.get("order")
    if section.get("decoder", "cucim") != "dali":
        return order
    if order is None:
        table = registry.plugins("reader")
        order = sorted(table, key=lambda n: (table[n].priority, n))
    return ["dali"] + [n for n in order if n != "dali"]


def prepare_slide(pipeline: dict[str, Any], row: SlideRow, reader_order=None, allow_corrupt: bool = False):
    """Open and plan one slide (thumbnail, mask, tiles, patch positions; no tile pixels yet).

    Returns ``(slide, plan, seconds)``; raises on a slide that cannot be used. Library chatter goes to
    ``slide.log``, not the terminal."""
    t0 = time.perf_counter()
    with CAPTURE.on():
        p0 = CAPTURE.position()
        try:
            given = {"default_mpp" if row.mpp_is_default else "mpp": row.mpp}  # --mpp: only where the file has none
            slide = open_slide(row.slide_path, order=reader_order or readers_for(pipeline), **given,
                               device=resolve_device(pipeline.get("device", "auto")))
        except Exception as e:
            e.log = CAPTURE.text(p0).strip()  # what the libraries said, for the slide's record
            raise
        slide.allow_corrupt = allow_corrupt
        try:
            plan = plan_slide(pipeline, slide, row.slide_id)
        except BaseException as e:
            slide.close()
            e.log = "\n".join([CAPTURE.text(p0).strip()] + slide.log).strip()
            raise
        said = CAPTURE.text(p0).strip()
        if said:
            slide.log.insert(0, said)
    return slide, plan, time.perf_counter() - t0


def _log_field(log: str) -> dict[str, str]:
    """A record's ``log`` (the last 4,000 characters of what the slide's decoders said), when there is one."""
    return {"log": log[-4000:]} if log else {}


def process_slide(pipeline: dict[str, Any], row: SlideRow, stage_dir: str, store_cfg: dict[str, Any],
                  qa_dir: str | None = None, threads: int = 1, reader_order=None,
                  progress: Callable[[int, int], None] | None = None, prepared: Callable[[], tuple] | None = None,
                  allow_corrupt: bool = False, sink: Callable[[int], Any] | None = None) -> dict:
    """Extract one slide into a staging array in ``stage_dir`` (``STORE.partial``); return its record.

    Runs in the driver or on a dask worker (any process that sees the store's filesystem): the patches
    are compressed here, with the store's chunks, shards and codec (``store_cfg``), while the next tiles
    decode; the driver's commit only renames the finished shards into the store. Errors come back as a
    record with ``status: "error"`` so one bad slide does not stop the cohort. ``prepared`` returns
    ``prepare_slide``'s result when the slide was opened and planned ahead (while the previous one ran).
    A tile its decoder complains about fails the slide; with ``allow_corrupt`` such tiles are dropped
    (listed in ``record["corrupt_tiles"]``; the slide's other tiles are read again without them).
    ``sink(n)``: where the slide's patch batches go instead of a staging array (``extract --features-only``:
    an encoder); like a ``RowWriter`` it has ``write(row0, patches)`` and ``close()``, whose result becomes
    ``record["staged"]``.
    """
    rec: dict[str, Any] = {"slide_path": row.slide_path, "patient_id": row.patient_id}
    prepared = prepared or (lambda: prepare_slide(pipeline, row, reader_order, allow_corrupt))
    try:
        slide, (thumb, mask, geometry, tiles, rows), plan_s = prepared()
    except Exception as e:  # SlidestreamError: our words; else a reader or plugin failed in an unexpected way
        reason = str(e) if isinstance(e, SlidestreamError) else f"{row.slide_path}: {_plain(e)}"
        return {**rec, "status": "error", "reason": reason, **_log_field(getattr(e, "log", ""))}
    t0 = time.perf_counter() - plan_s  # seconds reported per slide include its (possibly earlier) planning
    trim_heap()  # what the planning freed, before the QA picture
    try:
        rec.update(reader=slide.reader_name, mpp=slide.mpp, mpp_source=slide.mpp_source,
                   dimensions=list(slide.dimensions), factor=geometry.factor,
                   tissue_fraction=float(mask.mean()) if mask.size else 0.0, n_tiles=len(tiles))
        if qa_dir:
            qa = Path(qa_dir) / f"{file_name(row.slide_id)}.png"  # an id like '../x' or 'a/b' stays in STORE.qa/
            with writing(qa):
                overlay_image(thumb, mask, tiles, geometry.thumb_scale).save(qa)
        if not rows:
            gray = (thumb.size and int(thumb.max()) - int(thumb.min()) > 32  # a picture, not blank glass or black
                    and (thumb[..., 0] == thumb[..., 1]).all() and (thumb[..., 1] == thumb[..., 2]).all())
            reason = ("no tissue found by the filters" + ("; the slide is grayscale (R = G = B) and the filters need a "
                                                          "colour H&E image" if gray else "") if not mask.any() else
                      "no tile reaches the tissue threshold" if not tiles else "no patch reaches patches.min_tissue")
            rec.update(status="empty", reason=reason, n_patches=0, seconds=time.perf_counter() - t0)
            return rec
        s = int(pipeline["patches"]["size"])
        corrupt: dict[int, str] = {}
        thumb = mask = None  # not needed for the tiles (``prepared`` let go of them: ``_once``)
        trim_heap()
        for attempt in range(2):  # a second pass only to leave out corrupt tiles (--allow-corrupt-tiles)
            writer = (sink(len(rows)) if sink else
                      RowWriter(Path(stage_dir) / stage_name("slides", row.slide_id), len(rows), s, store_cfg))
            done = 0
            found: dict[int, str] = {}
            with CAPTURE.on():
                for idx, patches in iter_patch_batches(pipeline, slide, tiles, rows, geometry, threads,
                                                       found if allow_corrupt and not attempt else None):
                    if not found:
                        writer.write(idx[0], patches)  # a tile's patches are consecutive rows
                    done += len(idx)
                    if progress:
                        progress(done, len(rows))
            staged = writer.close()
            if not found:
                break
            if sink is None:
                shutil.rmtree(staged, ignore_errors=True)  # the abandoned pass
            corrupt = found
            rows = [r for r in rows if r[0] not in corrupt]
            if not rows:
                raise SlideError(f"{row.slide_path}: every kept tile has corrupt image data "
                                 f"({next(iter(corrupt.values()))}); copy the slide again")
        if corrupt:
            rec["corrupt_tiles"] = [{"tile": ti, "x": tiles[ti].x, "y": tiles[ti].y, "reason": why}
                                    for ti, why in sorted(corrupt.items())]
            rec["reason"] = (f"{len(corrupt)} tile{'s' if len(corrupt) > 1 else ''} with corrupt image data "
                             f"dropped (--allow-corrupt-tiles): {next(iter(corrupt.values()))}")
        rec["decode_device"] = getattr(slide.reader, "decode_device", "cpu")  # which device decoded the tiles
        rec.update(_log_field("\n".join(slide.log)))
        rec["staged"] = staged
        rec.update(status="done", n_patches=len(rows), seconds=time.perf_counter() - t0,
                   tiles=[asdict(t) for t in tiles], meta={k: v.tolist() for k, v in patch_table(rows, tiles).items()})
        return rec
    except WriteError:  # a full or read-only disk is no slide's fault: stop, a rerun resumes
        raise
    except Exception as e:  # as for planning: our words, or an unexpected failure in plain words
        reason = str(e) if isinstance(e, SlidestreamError) else f"{row.slide_path}: {_plain(e)}"
        return {**rec, "status": "error", "reason": reason, **_log_field("\n".join(slide.log))}
    finally:
        slide.close()


def extract_slide_patches(pipeline: dict[str, Any], path: str, mpp: float | None = None, threads: int = 1,
                          default_mpp: float | None = None):
    """In-memory extraction of one slide (for prediction): (patches, table, thumbnail, tiles, geometry). ``mpp``
    overrides the file's resolution, ``default_mpp`` (predict's --mpp) is used only where the file has none."""
    sid = _slide_id(Path(path))
    row = SlideRow(str(path), sid, sid, mpp=default_mpp if mpp is None else mpp, mpp_is_default=mpp is None)
    slide, (thumb, mask, geometry, tiles, rows), _ = prepare_slide(pipeline, row)
    try:
        s = int(pipeline["patches"]["size"])
        patches = np.empty((len(rows), s, s, 3), np.uint8)
        with CAPTURE.on():  # a tile the decoder complains about raises SlideError
            for idx, p in iter_patch_batches(pipeline, slide, tiles, rows, geometry, threads):
                patches[idx[0]: idx[-1] + 1] = p
        return patches, patch_table(rows, tiles), thumb, tiles, geometry
    finally:
        slide.close()


# ------------------------------------------------------------------------------------ the cohort
def manifest_base(pipeline: dict[str, Any], pipeline_path: str | None = None) -> dict[str, Any]:
    return {"pipeline": pipeline, "pipeline_file": pipeline_path, "pipeline_hash": config.digest(pipeline),
            "extraction_hash": config.extraction_hash(pipeline), "seed": pipeline.get("seed", 0),
            "versions": registry.distribution_versions()}


def _record(rec: dict[str, Any], row: SlideRow) -> dict[str, Any]:
    """What the store keeps about a slide: the worker's record plus the cohort's values for it."""
    return {**rec, "patient_id": row.patient_id, "label": row.label, "age": None if math.isnan(row.age) else row.age,
            "cohort_mpp": row.mpp, "patient_source": getattr(row, "patient_source", "table"),
            "fingerprint": fingerprint(row.slide_path)}  # split refuses a byte-identical copy under another patient


def commit(store: PatchStore, row: SlideRow, rec: dict[str, Any]) -> None:
    """Record a finished slide in the store (driver only): its staged shards are renamed into place."""
    rec = dict(rec)
    if rec["status"] == "error":
        store.commit_record(row.slide_id, _record(rec, row), "errors")
        return
    meta, staged = rec.pop("meta", {}) or {}, rec.pop("staged", None)
    n = int(rec.get("n_patches", 0)) if rec["status"] == "done" else 0
    meta = {**meta, "slide_id": row.slide_id, "patient_id": row.patient_id, "label": row.label, "age": row.age}
    store.commit_staged(row.slide_id, staged if n else None, n, meta, _record(rec, row), replace=True)


def _cohort_changes(rec: dict[str, Any], row: SlideRow) -> tuple[bool, dict[str, Any], list[str]]:
    """Compare a committed slide's record with its cohort row: (re-extract?, columns to update, notes)."""
    if "cohort_mpp" in rec and rec["cohort_mpp"] != row.mpp:
        return True, {}, [f"mpp {rec['cohort_mpp']} -> {row.mpp}: re-extracted"]
    age = None if math.isnan(row.age) else row.age
    new = {"patient_id": row.patient_id, "label": row.label, "age": age}
    changed = {k: v for k, v in new.items() if k in rec and rec[k] != v}
    notes = [f"{k} {rec[k]} -> {v}" for k, v in changed.items()]
    if "patient_source" in rec and rec["patient_source"] != getattr(row, "patient_source", "table"):
        changed["patient_source"] = getattr(row, "patient_source", "table")
    return False, changed, notes


class InOrder:
    """``submit(*args)`` runs ``fn(*args)`` in one background thread, in order, at most one call waiting: the
    driver commits slide k (renames, zarr.json and column files: ~12 ms on the benchmark slide, 7 % of a
    cohort's time per slide) while slide k+1 decodes. The previous call's exception (a WriteError: disk full)
    is raised by the next ``submit`` or on leaving the ``with`` block, which waits for the last call also
    when the block is left by an exception (Ctrl-C): a commit is never cut off by the store's closing."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn, self.pool, self.pending = fn, ThreadPoolExecutor(1, thread_name_prefix="commit"), None

    def submit(self, *args) -> None:
        self.wait()
        self.pending = self.pool.submit(self.fn, *args)

    def wait(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> "InOrder":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        try:
            if kind is None:
                self.wait()
            elif self.pending is not None:  # already failing: finish the commit under way, keep the first error
                futures_wait([self.pending])
        finally:
            self.pool.shutdown(wait=True)


def planned_ahead(pipeline: dict[str, Any], todo: list[SlideRow], allow_corrupt: bool = False):
    """Yield ``(row, prepared)`` per slide of ``todo`` (``prepared()``: its ``prepare_slide`` result, for
    ``process_slide``), opening and planning slide k+1 in ONE thread while the caller processes slide k.
    Two planner threads (slides k+1 and k+2 at once) made 5 of 240 fresh 3-slide extract processes die of
    SIGSEGV (0 of 430 with one): opening and planning two slides at once is not thread-safe here."""
    planner = ThreadPoolExecutor(1)

    def plan(row: SlideRow):
        return planner.submit(prepare_slide, pipeline, row, None, allow_corrupt)

    try:
        ahead = plan(todo[0]) if todo else None
        for k, row in enumerate(todo):
            current, ahead = _once(ahead), (plan(todo[k + 1]) if k + 1 < len(todo) else None)
            yield row, current
    except BaseException:  # Ctrl-C, SIGTERM: do not wait for a slide that hangs (cli.exit_now leaves it)
        planner.shutdown(wait=False, cancel_futures=True)
        raise
    planner.shutdown()


SLIDE_TIMEOUT_S = 1800.0  # extract.slide_timeout_s when the pipeline does not say
WORKERS_PER_CORE = 4  # --workers above this many per CPU core is refused


def slide_timeout(pipeline: dict[str, Any], parallel: bool = True) -> float:
    """Seconds a slide may take before its worker is stopped (``extract.slide_timeout_s``; 0 or null: no limit).
    Unset: ``SLIDE_TIMEOUT_S`` for a ``parallel`` run, whose slides run in worker processes anyway; none for a
    serial one, which would fork a worker only for it (forking a big, threaded caller, e.g. a notebook that
    loaded torch, is not free of risk)."""
    return float((pipeline.get("extract") or {}).get("slide_timeout_s", SLIDE_TIMEOUT_S if parallel else 0) or 0)


def check_workers(workers: int) -> None:
    """Refuse a ``--workers`` below 1 or above ``WORKERS_PER_CORE`` per core: each is a forked process with its
    own batches of tiles in memory, and 10,000 forked a process for each of the first 10,000 slides at once."""
    most = WORKERS_PER_CORE * (os.cpu_count() or 1)
    if not 1 <= workers <= most:
        raise ConfigError(f"--workers {workers}: give 1 to {most} ({WORKERS_PER_CORE} per CPU core here; each worker is "
                          "a process decoding its own slide), or --scheduler to run on a dask cluster")


def extract(pipeline: dict[str, Any], cohort: list[SlideRow], out: str | Path, workers: int = 1,
            scheduler: str | None = None, threads: int | None = None, qa: bool = True,
            progress: bool = True, pipeline_path: str | None = None,
            on_slide: Callable[[SlideRow, dict], None] | None = None,
            allow_corrupt_tiles: bool = False) -> dict[str, Any]:
    """Extract ``cohort`` into the store at ``out``; resume if it exists. Returns a summary dict.

    A finished slide whose cohort ``mpp`` changed is extracted again; one whose label, age or
    patient_id changed gets those columns updated (summary status ``updated``). ``allow_corrupt_tiles``:
    tiles whose decoder complains are dropped and listed in the slide's record instead of failing it.

    With a time limit (``slide_timeout``: 1800 s by default for parallel runs; a serial run only when the
    pipeline sets ``extract.slide_timeout_s``) each slide runs in a child process, killed when the slide takes
    longer (the slide is recorded failed; a rerun retries it); otherwise a serial run (``workers`` 1) runs the
    slides in this process."""
    t0 = time.perf_counter()
    if not scheduler:
        check_workers(workers)
    timeout = slide_timeout(pipeline, parallel=workers > 1 or bool(scheduler))
    out = Path(out)
    store = PatchStore.create(out, int(pipeline["patches"]["size"]), pipeline["store"],
                              manifest_base(pipeline, pipeline_path))
    try:
        stage_dir = store.stage_dir()
        qa_dir = beside(out, "qa") if qa else None
        if qa_dir:
            qa_dir.mkdir(exist_ok=True)
        results: dict[str, dict] = {}
        done = store.records("slides")
        todo, notes = [], {}
        moved = store.changed_shards()  # shard files swapped or replaced since their commit
        for r in cohort:
            if r.slide_id not in done:
                todo.append(r)
                continue
            again, changed, why = _cohort_changes(done[r.slide_id], r)
            if r.slide_id in moved:
                again, why = True, [f"its shard file {moved[r.slide_id]} changed since its commit: re-extracted"]
            if again:
                todo.append(r)
                notes[r.slide_id] = "; ".join(why)
            elif changed:
                cols = {k: (np.nan if v is None else v) for k, v in changed.items() if k != "patient_source"}
                store.update_rows(r.slide_id, cols, changed)
                results[r.slide_id] = {**done[r.slide_id], **changed, "status": "updated",  # its record now
                                       "reason": "; ".join(why) or "patient_source updated", "seconds": 0.0}
        skipped = len(cohort) - len(todo) - len(results)
        if threads is None:
            threads = max(1, (os.cpu_count() or 1) // max(workers, 1))
        cfg = store.store_cfg()

        with ExtractProgress(len(cohort), skipped + len(results), enabled=progress) as bar:
            def finish(row: SlideRow, rec: dict) -> None:
                commit(store, row, rec)
                rec = {k: v for k, v in rec.items() if k not in ("meta", "staged")}
                if row.slide_id in notes and rec["status"] != "error":
                    rec["reason"] = notes[row.slide_id]
                results[row.slide_id] = rec
                bar.slide_done(row.slide_id, rec)
                if on_slide:
                    on_slide(row, rec)

            if workers <= 1 and not scheduler and not timeout:
                with InOrder(finish) as committer:  # slide k commits while slide k+1 decodes
                    for row, prepared in planned_ahead(pipeline, todo, allow_corrupt_tiles):
                        cb = bar.slide_started(row.slide_id)
                        committer.submit(row, process_slide(pipeline, row, str(stage_dir), cfg,
                                                            str(qa_dir) if qa_dir else None, threads=threads,
                                                            progress=cb, prepared=prepared,
                                                            allow_corrupt=allow_corrupt_tiles))
            else:
                _run_dask(pipeline, todo, stage_dir, cfg, qa_dir, workers, scheduler, threads, bar, finish,
                          allow_corrupt_tiles, timeout)
        shutil.rmtree(stage_dir, ignore_errors=True)  # leftovers of killed workers
        return summarize(store, cohort, results, skipped, time.perf_counter() - t0)
    finally:
        store.close()


def _run_dask(pipeline, todo, stage_dir, store_cfg, qa_dir, workers, scheduler, threads, bar, finish,
              allow_corrupt: bool = False, timeout: float = 0) -> None:
    """One task per slide, on local worker processes or at a ``dask.distributed`` ``scheduler``; commit in
    cohort order.

    Workers write their slide's shards into ``STORE.partial`` (a shared filesystem for a cluster) and
    report tile progress through small files there; the driver only renames finished shards into the
    store. Local workers are forked from this process (they start at once, with everything imported); on
    a cluster a task whose worker dies is run again by dask on another worker, into a new staging folder.
    ``timeout`` (seconds, 0 = none; local workers only): a slide running longer has its worker killed and
    is recorded failed. An exception here (Ctrl-C, SIGTERM, a full disk) kills the local workers in flight."""
    import concurrent.futures as cf

    if scheduler:
        from distributed import Client, wait as dask_wait

        try:
            client = Client(scheduler)
        except (OSError, ValueError, TypeError) as e:  # no such address, nobody listening (OSError after 30 s)
            raise ConfigError(f"--scheduler {scheduler}: cannot connect ({_plain(e)}); give the address of a running "
                              "dask scheduler, e.g. tcp://host:8786, or drop --scheduler to run here") from None

        def submit(row, **kw):
            return client.submit(process_slide, pipeline, row, **kw, key=f"slide-{row.slide_id}-{os.getpid()}-"
                                 f"{time.monotonic_ns()}", pure=False)

        def wait(futs):
            try:
                return dask_wait(futs, timeout=0.5, return_when="FIRST_COMPLETED")
            except TimeoutError:  # nothing finished in this half second: just refresh the bars
                return set(), futs

        chatter = logging.getLogger("distributed.client")  # "Couldn't gather 1 keys, rescheduling" after a
        level = chatter.level  # worker died: dask computes them again; not for the terminal
        chatter.setLevel(logging.ERROR)

        def close():
            chatter.setLevel(level)
            client.close()
    else:
        import multiprocessing

        # One single-worker pool per slide in flight, at most `workers`, reused for a next slide while its worker
        # lives: a worker that dies hard (killed, out of memory, a crash in a reader, stopped at the time limit)
        # breaks only its own slide's pool, not every slide in flight, and is not reused.
        pools, idle = {}, []

        def submit(row, **kw):  # serial: the worker opens and plans the next slide meanwhile (``planned_ahead``)
            pool = idle.pop() if idle else cf.ProcessPoolExecutor(  # SIGTERM kills a worker (not cli.main's handler)
                1, mp_context=multiprocessing.get_context("fork"), initializer=signal.signal,
                initargs=(signal.SIGTERM, signal.SIG_DFL))
            fut = pool.submit(_worker_slide, pipeline, row, queue[1:2] if workers == 1 else [], **kw)
            pools[fut] = pool
            return fut

        def release(fut):
            pool = pools.pop(fut)
            if isinstance(fut.exception(), cf.BrokenExecutor):
                pool.shutdown()
            else:
                idle.append(pool)

        def wait(futs):
            return cf.wait(futs, timeout=0.5, return_when=cf.FIRST_COMPLETED)

        def kill(fut):
            for proc in list((pools[fut]._processes or {}).values()):
                proc.kill()  # its future then fails with BrokenProcessPool

        def close():  # after an exception (Ctrl-C, SIGTERM, a full disk) the slides in flight are abandoned
            for fut in pools:
                kill(fut)
            for pool in idle + list(pools.values()):
                pool.shutdown(cancel_futures=True)
    try:
        futures = {}
        updates = {}
        queue = list(todo)
        running = set()
        started: dict[Any, float] = {}
        late = set()

        def start(n):
            for row in queue[:n]:
                fut = submit(row, stage_dir=str(stage_dir), store_cfg=store_cfg, qa_dir=str(qa_dir) if qa_dir else None,
                             threads=threads, progress=_FileProgress(str(stage_dir / f"{file_name(row.slide_id)}.progress")),
                             allow_corrupt=allow_corrupt)
                futures[fut] = row
                started[fut] = time.monotonic()
                running.add(fut)
                updates[row.slide_id] = bar.slide_started(row.slide_id)
            del queue[:n]

        start(len(queue) if scheduler else workers)
        pending: dict[str, tuple] = {}
        order = [r.slide_id for r in todo]
        nxt = 0
        while running:
            done, running = wait(running)
            running = set(running)
            if timeout and not scheduler:
                for fut in running - late:
                    if time.monotonic() - started[fut] > timeout:
                        late.add(fut)
                        kill(fut)
            if not scheduler:
                for fut in done:
                    release(fut)
                start(len(done))
            for row in (futures[f] for f in running):
                prog = stage_dir / f"{file_name(row.slide_id)}.progress"
                try:
                    d, n = map(int, prog.read_text().split())
                    updates[row.slide_id](d, n)
                except (OSError, ValueError):
                    pass
            for fut in done:
                row = futures[fut]
                try:
                    rec = fut.result()
                except WriteError:
                    raise
                except Exception as e:
                    reason = f"{row.slide_path}: worker failed: {type(e).__name__}: {e}"
                    if isinstance(e, cf.BrokenExecutor) or type(e).__name__ == "KilledWorker":  # dask: each try died
                        reason = (f"{row.slide_path}: its worker process died (killed, out of memory or a crash in a "
                                  "reader); the other slides went on; rerun to retry it")
                    if fut in late:
                        reason = (f"{row.slide_path}: not finished after {timeout:g} s, its worker was stopped; the "
                                  "other slides went on; rerun to retry it, with a larger extract.slide_timeout_s in "
                                  "the pipeline (or --slide-timeout) if it is just slow")
                    rec = {"status": "error", "reason": reason}
                (stage_dir / f"{file_name(row.slide_id)}.progress").unlink(missing_ok=True)
                pending[row.slide_id] = (row, rec)
            while nxt < len(order) and order[nxt] in pending:  # commit in cohort order
                finish(*pending.pop(order[nxt]))
                nxt += 1
    finally:
        close()


def _once(future) -> Callable[[], Any]:
    """``future.result`` for one call, after which nothing here holds the future: its result (a slide's plan, with
    the thumbnail and mask) is freed when ``process_slide`` lets go of it, not kept while the tiles decode."""
    box = [future]
    return lambda: box.pop().result()


_AHEAD: dict[str, Any] = {}  # in a local worker process: futures of slides opened and planned ahead
_PLANNER: list = []  # the worker's planning thread


def _worker_slide(pipeline, row, ahead, **kw):
    """``process_slide`` in a local worker process, with the slide's planning if this worker did it ahead;
    the slides in ``ahead`` (a serial run's next one: this worker's next task) are planned meanwhile."""
    prepared = _AHEAD.pop(row.slide_id, None)
    prepared = _once(prepared) if prepared else None
    for nxt in ahead:
        if not _PLANNER:
            _PLANNER.append(ThreadPoolExecutor(1))
        _AHEAD[nxt.slide_id] = _PLANNER[0].submit(prepare_slide, pipeline, nxt, None, kw["allow_corrupt"])
    return process_slide(pipeline, row, prepared=prepared, **kw)


class _FileProgress:
    """Progress callback for remote workers: writes "done total" to a small file."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, done: int, total: int) -> None:
        atomic_write_text(self.path, f"{done} {total}", durable=False)  # called per tile batch: no fsync


def summary_slides(cohort: list[SlideRow], results: dict[str, dict], slides_done: dict[str, dict],
                   errors: dict[str, dict]) -> list[dict[str, Any]]:
    """One summary line per cohort slide: this run's result, else its stored record (``skipped``) or error."""
    slides = []
    for r in cohort:
        rec = results.get(r.slide_id) or errors.get(r.slide_id) or slides_done.get(r.slide_id) or {}
        status = rec.get("status", "pending")
        if r.slide_id not in results and r.slide_id in slides_done and r.slide_id not in errors:
            status = "skipped"
        slides.append({"slide_id": r.slide_id, "status": status, "tiles": rec.get("n_tiles", 0),
                       "patches": rec.get("n_patches", 0), "reason": rec.get("reason", ""),
                       "corrupt_tiles": len(rec.get("corrupt_tiles", [])),
                       "seconds": round(rec.get("seconds", 0.0), 3)})
    return slides


def summarize(store: PatchStore, cohort: list[SlideRow], results: dict[str, dict], skipped: int,
              seconds: float) -> dict[str, Any]:
    slides = summary_slides(cohort, results, store.records("slides"), store.records("errors"))
    return {"store": str(store.path), "rows": len(store), "slides": slides,
            "failed": sum(s["status"] == "error" for s in slides), "skipped": skipped, "seconds": round(seconds, 3)}

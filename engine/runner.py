"""Extraction: slides to a patch store, one dask task per slide.

Per slide (``process_slide``, opens its own reader): thumbnail -> filters -> tissue mask -> tiling ->
tiles read in batches -> patches. In-process they stream straight into the store (the next slide is
planned meanwhile); on dask workers they go to a staging file and the driver (``extract``) commits
finished slides in cohort order. Either way the store does not depend on scheduling, and an interrupted
run resumes from the manifest. Memory per worker is one batch of tiles (plus a memory-mapped staging
file on dask workers), whatever the slide's size.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from . import config, registry
from .errors import ConfigError, SlidestreamError
from .progress import ExtractProgress
from .device import resolve_device
from .slide import MaskArea, Slide, open_slide
from .store import PatchStore, atomic_write_text

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".svslide", ".dcm",
                  ".png", ".jpg", ".jpeg", ".btf", ".qptiff")
LABELS = {"1": 1, "mutant": 1, "idh-mutant": 1, "mut": 1, "idhmut": 1,
          "0": 0, "wildtype": 0, "idh-wildtype": 0, "wt": 0, "idhwt": 0, "": -1, "unknown": -1, "-1": -1}


@dataclass(frozen=True)
class SlideRow:
    """One slide of a cohort."""

    slide_path: str
    slide_id: str
    patient_id: str
    label: int = -1
    age: float = math.nan
    mpp: float | None = None


# ------------------------------------------------------------------------------------ cohorts
def read_cohort(source: str | Path, default_mpp: float | None = None) -> list[SlideRow]:
    """Slides from a CSV (slide_path, patient_id, label, age[, mpp][, slide_id]) or a folder of slides."""
    src = Path(source)
    if src.is_file() and (src.suffix.lower() in SLIDE_SUFFIXES):  # a single slide
        rows = [SlideRow(str(src), _slide_id(src), _slide_id(src), mpp=default_mpp)]
    elif src.is_dir():
        rows = _scan_dir(src, default_mpp)
    elif src.is_file():
        rows = _read_csv(src, default_mpp)
    else:
        raise ConfigError(f"--slides {src}: no such file or folder; give a cohort CSV or a folder of slides")
    if not rows:
        raise ConfigError(f"--slides {src}: no slides found")
    seen: dict[str, str] = {}
    for r in rows:
        if r.slide_id in seen:
            raise ConfigError(f"--slides {src}: slide id {r.slide_id!r} is used by {seen[r.slide_id]} and {r.slide_path}; "
                              "add a unique `slide_id` column")
        seen[r.slide_id] = r.slide_path
    return rows


def _slide_id(p: Path) -> str:
    name = p.name
    for suf in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name if p.is_dir() else p.stem


def _scan_dir(d: Path, default_mpp: float | None) -> list[SlideRow]:
    files = [p for p in sorted(d.rglob("*")) if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES
             and not p.name.startswith(".")]
    rows, dicom = [], {}
    for p in files:
        if p.suffix.lower() == ".dcm":
            dicom.setdefault(p.parent, []).append(p)
        else:
            rows.append(SlideRow(str(p), _slide_id(p), _slide_id(p), mpp=default_mpp))
    for folder, dcms in dicom.items():  # a DICOM-WSI slide is a series; its levels are separate files
        series = _dicom_series(dcms)
        for first in series:
            whole_folder = len(series) == 1 and len(dcms) > 1
            path, sid = (folder, _slide_id(folder)) if whole_folder else (first, _slide_id(first))
            rows.append(SlideRow(str(path), sid, sid, mpp=default_mpp))
    return sorted(rows, key=lambda r: r.slide_path)


def _dicom_series(files: list[Path]) -> list[Path]:
    """The first file of each DICOM series among ``files`` (one slide per series)."""
    try:
        import pydicom
    except ImportError:
        return files[:1]
    import warnings

    first: dict[str, Path] = {}
    for f in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. over-long UIDs written by converters
                ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
                uid = str(ds.SeriesInstanceUID)
        except Exception:
            uid = str(f)  # unreadable: its own "series", so the readers report it
        first.setdefault(uid, f)
    return list(first.values())


def _read_csv(path: Path, default_mpp: float | None) -> list[SlideRow]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in reader.fieldnames or []]
        if "slide_path" not in cols:
            raise ConfigError(f"{path}: no `slide_path` column; columns must be slide_path,patient_id,label,age[,mpp]")
        out = []
        for i, raw in enumerate(reader, start=2):
            r = {k.strip(): (v or "").strip() for k, v in raw.items() if k}
            sp = Path(r["slide_path"])
            if not sp.is_absolute():
                sp = path.parent / sp
            label = r.get("label", "").lower()
            if label not in LABELS:
                raise ConfigError(f"{path} line {i}: label {r.get('label')!r} is not 1/0, mutant/wildtype or empty")
            try:
                age = float(r["age"]) if r.get("age") else math.nan
                mpp = float(r["mpp"]) if r.get("mpp") else default_mpp
            except ValueError as e:
                raise ConfigError(f"{path} line {i}: {e}; age and mpp must be numbers") from None
            sid = r.get("slide_id") or _slide_id(sp)
            out.append(SlideRow(str(sp), sid, r.get("patient_id") or sid, LABELS[label], age, mpp))
    return out


# ------------------------------------------------------------------------------------ tissue
def tissue_mask(pipeline: dict[str, Any], rgb: np.ndarray) -> np.ndarray:
    """Apply the pipeline's filters in order to a thumbnail; True = tissue. Consecutive DPW colour
    filters run in one fused pass (same mask, see plugins/filters/dpw.py)."""
    from slidestream.plugins.filters.dpw import apply_chain

    return apply_chain(rgb, pipeline.get("filters", []))


def overlay(rgb: np.ndarray, mask: np.ndarray, tiles: Iterable = (), scale: float = 1.0) -> np.ndarray:
    """QA picture: non-tissue tinted blue and dimmed, kept tiles outlined in green with their rank."""
    from PIL import Image, ImageDraw

    out = rgb.astype(np.float32)
    out[~mask] = out[~mask] * 0.45 + np.array([40, 80, 200], np.float32) * 0.55
    im = Image.fromarray(out.astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for i, t in enumerate(tiles):
        box = (t.x / scale, t.y / scale, (t.x + t.w) / scale - 1, (t.y + t.h) / scale - 1)
        draw.rectangle(box, outline=(0, 200, 0), width=max(1, int(min(im.size) / 300)))
        draw.text((box[0] + 2, box[1] + 1), str(i), fill=(0, 120, 0))
    return np.asarray(im)


# ------------------------------------------------------------------------------------ one slide
def _patch_offsets(pipeline: dict[str, Any], tile_px: int, key: str) -> list[tuple[int, int]]:
    p = pipeline["patches"]
    s = int(p["size"])
    if s > tile_px:
        raise ConfigError(f"patches.size {s} is larger than the tile ({tile_px} px); lower it or raise tiling size")
    if p["mode"] == "grid":
        return [(x, y) for y in range(0, tile_px - s + 1, s) for x in range(0, tile_px - s + 1, s)]
    rng = np.random.default_rng([int(pipeline.get("seed", 0)), zlib.crc32(key.encode())])
    xy = rng.integers(0, tile_px - s + 1, size=(int(p["per_tile"]), 2))
    return [(int(x), int(y)) for x, y in xy]


def plan_slide(pipeline: dict[str, Any], slide: Slide, slide_id: str):
    """Thumbnail, mask, tiles and patch positions of one slide (cheap: no tile pixels are read)."""
    scale = float(pipeline["thumbnail"]["scale"])
    thumb = slide.thumbnail(scale)
    mask = tissue_mask(pipeline, thumb)
    geometry = slide.geometry(scale, float(pipeline.get("magnification", 10)))
    tiling = pipeline["tiling"]
    tiles = registry.get("tiling", tiling["name"]).select(mask, thumb, geometry, **tiling.get("params", {}))
    area = MaskArea(mask, scale)
    s = int(pipeline["patches"]["size"])
    rows = []  # (tile index, px, py, level-0 x, y, size0, patch tissue)
    for ti, t in enumerate(tiles):
        tile_px = int(round(t.w / geometry.factor))
        for px, py in _patch_offsets(pipeline, tile_px, f"{slide_id}/{ti}"):
            x0, y0, side = t.x + px * geometry.factor, t.y + py * geometry.factor, s * geometry.factor
            rows.append((ti, px, py, int(round(x0)), int(round(y0)), int(round(side)), area.fraction(x0, y0, side)))
    min_t = float(pipeline["patches"].get("min_tissue", 0.0))
    rows = [r for r in rows if r[6] >= min_t]
    return thumb, mask, geometry, tiles, rows


def patch_table(rows, tiles) -> dict[str, np.ndarray]:
    """Store columns of planned patches (``plan_slide`` rows)."""
    return {"tile_id": np.array([r[0] for r in rows], np.int32), "x": np.array([r[3] for r in rows], np.int64),
            "y": np.array([r[4] for r in rows], np.int64), "size0": np.array([r[5] for r in rows], np.int32),
            "tissue": np.array([r[6] for r in rows], np.float32),
            "tile_tissue": np.array([tiles[r[0]].tissue for r in rows], np.float32)}


def iter_patch_batches(pipeline: dict[str, Any], slide: Slide, tiles, rows, geometry, threads: int = 1):
    """Yield (row indices, patches) per batch of tiles; tiles are decoded by ``threads`` threads."""
    s = int(pipeline["patches"]["size"])
    batch = int(pipeline["store"].get("batch_tiles", 4))
    by_tile: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_tile.setdefault(r[0], []).append(i)
    order = sorted(by_tile)

    def read(ti):
        t = tiles[ti]
        return slide.read(t.x, t.y, t.w, int(round(t.w / geometry.factor)))

    with ThreadPoolExecutor(max(1, threads)) as pool:
        for b0 in range(0, len(order), batch):
            chunk = order[b0:b0 + batch]
            for ti, rgb in zip(chunk, pool.map(read, chunk)):
                idx = by_tile[ti]
                out = np.empty((len(idx), s, s, 3), np.uint8)
                for j, i in enumerate(idx):
                    _, px, py = rows[i][:3]
                    out[j] = rgb[py:py + s, px:px + s]
                yield idx, out


def prepare_slide(pipeline: dict[str, Any], row: SlideRow, reader_order=None):
    """Open and plan one slide (thumbnail, mask, tiles, patch positions; no tile pixels yet).

    Returns ``(slide, plan, seconds)``; raises on a slide that cannot be used."""
    t0 = time.perf_counter()
    slide = open_slide(row.slide_path, order=reader_order or pipeline["reader"].get("order"), mpp=row.mpp,
                       device=resolve_device(pipeline.get("device", "auto")))
    try:
        plan = plan_slide(pipeline, slide, row.slide_id)
    except BaseException:
        slide.close()
        raise
    return slide, plan, time.perf_counter() - t0


def process_slide(pipeline: dict[str, Any], row: SlideRow, staging: str, qa_dir: str | None = None,
                  threads: int = 1, reader_order=None, progress: Callable[[int, int], None] | None = None,
                  store: PatchStore | None = None, prepared: Callable[[], tuple] | None = None) -> dict:
    """Extract one slide into ``staging/<slide_id>.npy`` (+ ``.json``); return its record.

    Runs on a dask worker. Errors come back as a record with ``status: "error"`` so one bad slide does
    not stop the cohort. In-process (``store`` given) the patches stream straight into the store,
    compressed while the next tiles decode, and the slide is committed here. ``prepared`` returns
    ``prepare_slide``'s result when the slide was opened and planned ahead (while the previous one ran).
    """
    rec: dict[str, Any] = {"slide_path": row.slide_path, "patient_id": row.patient_id}
    final = Path(staging) / f"{row.slide_id}.npy"
    done_json = final.with_suffix(".json")
    prepared = prepared or (lambda: prepare_slide(pipeline, row, reader_order))
    try:
        slide, (thumb, mask, geometry, tiles, rows), plan_s = prepared()
    except SlidestreamError as e:
        return {**rec, "status": "error", "reason": str(e)}
    except Exception as e:  # a reader or plugin failed in an unexpected way
        return {**rec, "status": "error", "reason": f"{row.slide_path}: {type(e).__name__}: {str(e)[:200]}"}
    t0 = time.perf_counter() - plan_s  # seconds reported per slide include its (possibly earlier) planning
    try:
        if done_json.exists() and final.exists():  # finished by an earlier, interrupted run
            return json.loads(done_json.read_text())
        rec.update(reader=slide.reader_name, mpp=slide.mpp, mpp_source=slide.mpp_source,
                   dimensions=list(slide.dimensions), factor=geometry.factor,
                   tissue_fraction=float(mask.mean()) if mask.size else 0.0, n_tiles=len(tiles))
        if qa_dir:
            from PIL import Image

            Image.fromarray(overlay(thumb, mask, tiles, geometry.thumb_scale)).save(Path(qa_dir) / f"{row.slide_id}.png")
        if not rows:
            reason = ("no tissue found by the filters" if not mask.any() else
                      "no tile reaches the tissue threshold" if not tiles else "no patch reaches patches.min_tissue")
            rec.update(status="empty", reason=reason, n_patches=0, seconds=time.perf_counter() - t0)
            return rec
        s = int(pipeline["patches"]["size"])
        if store is not None:
            writer = store.begin(row.slide_id, len(rows))
            sink = writer.write
        else:
            tmp = final.with_name(f".{row.slide_id}.{os.getpid()}.tmp.npy")
            staged = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(rows), s, s, 3))

            def sink(off: int, p: np.ndarray) -> None:
                staged[off: off + len(p)] = p
        done = 0
        for idx, patches in iter_patch_batches(pipeline, slide, tiles, rows, geometry, threads):
            sink(idx[0], patches)  # a tile's patches are consecutive rows
            done += len(idx)
            if progress:
                progress(done, len(rows))
        meta = {k: v.tolist() for k, v in patch_table(rows, tiles).items()}
        rec.update(status="done", n_patches=len(rows), seconds=time.perf_counter() - t0,
                   tiles=[asdict(t) for t in tiles])
        if store is not None:
            full = {**meta, "slide_id": row.slide_id, "patient_id": row.patient_id, "label": row.label, "age": row.age}
            writer.commit(full, _record(rec, row))
            rec["seconds"] = time.perf_counter() - t0
            return {**rec, "committed": True}
        rec["meta"] = meta
        staged.flush()
        os.replace(tmp, final)
        atomic_write_text(done_json, json.dumps(rec))
        return rec
    except SlidestreamError as e:
        return {**rec, "status": "error", "reason": str(e)}
    except Exception as e:
        return {**rec, "status": "error", "reason": f"{row.slide_path}: {type(e).__name__}: {str(e)[:200]}"}
    finally:
        slide.close()


def extract_slide_patches(pipeline: dict[str, Any], path: str, mpp: float | None = None, threads: int = 1):
    """In-memory extraction of one slide (for prediction): (patches, table, thumbnail, tiles, geometry)."""
    sid = _slide_id(Path(path))
    slide, (thumb, mask, geometry, tiles, rows), _ = prepare_slide(pipeline, SlideRow(str(path), sid, sid, mpp=mpp))
    try:
        s = int(pipeline["patches"]["size"])
        patches = np.empty((len(rows), s, s, 3), np.uint8)
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
    return {**rec, "label": row.label, "age": None if math.isnan(row.age) else row.age}


def commit(store: PatchStore, row: SlideRow, rec: dict[str, Any], staging: Path) -> None:
    """Move a finished slide from staging into the store (driver only)."""
    s = store.patches.shape[1]
    npy = staging / f"{row.slide_id}.npy"
    meta = rec.pop("meta", {}) or {}
    rec = _record(rec, row)
    if rec["status"] == "done":
        patches = np.load(npy, mmap_mode="r")
        meta = {**meta, "slide_id": row.slide_id, "patient_id": row.patient_id, "label": row.label, "age": row.age}
    else:
        patches = np.empty((0, s, s, 3), np.uint8)
    store.manifest.get("errors", {}).pop(row.slide_id, None)
    store.append(row.slide_id, patches, meta, rec)
    for f in (npy, npy.with_suffix(".json")):
        f.unlink(missing_ok=True)


def extract(pipeline: dict[str, Any], cohort: list[SlideRow], out: str | Path, workers: int = 1,
            scheduler: str | None = None, threads: int | None = None, qa: bool = True,
            progress: bool = True, pipeline_path: str | None = None,
            on_slide: Callable[[SlideRow, dict], None] | None = None) -> dict[str, Any]:
    """Extract ``cohort`` into the store at ``out``; resume if it exists. Returns a summary dict."""
    t0 = time.perf_counter()
    out = Path(out)
    store = PatchStore.create(out, int(pipeline["patches"]["size"]), pipeline["store"],
                              manifest_base(pipeline, pipeline_path))
    staging = out / "staging"
    staging.mkdir(exist_ok=True)
    qa_dir = out / "qa" if qa else None
    if qa_dir:
        qa_dir.mkdir(exist_ok=True)
    todo = [r for r in cohort if not store.done(r.slide_id)]
    skipped = len(cohort) - len(todo)
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // max(workers, 1))
    results: dict[str, dict] = {}

    with ExtractProgress(len(cohort), skipped, enabled=progress) as bar:
        def finish(row: SlideRow, rec: dict) -> None:
            if rec["status"] == "error":
                store.manifest.setdefault("errors", {})[row.slide_id] = rec["reason"]
                store.save_manifest()
            elif rec.get("committed"):
                if store.manifest.get("errors", {}).pop(row.slide_id, None):
                    store.save_manifest()
            else:
                commit(store, row, dict(rec), staging)
            results[row.slide_id] = rec
            bar.slide_done(row.slide_id, rec)
            if on_slide:
                on_slide(row, rec)

        if workers <= 1 and not scheduler:
            # open and plan slide k+1 in a thread while slide k decodes and compresses
            with ThreadPoolExecutor(1) as planner:
                ahead = planner.submit(prepare_slide, pipeline, todo[0]) if todo else None
                for k, row in enumerate(todo):
                    current = ahead
                    ahead = planner.submit(prepare_slide, pipeline, todo[k + 1]) if k + 1 < len(todo) else None
                    cb = bar.slide_started(row.slide_id)
                    finish(row, process_slide(pipeline, row, str(staging), str(qa_dir) if qa_dir else None,
                                              threads=threads, progress=cb, store=store, prepared=current.result))
        else:
            _run_dask(pipeline, todo, staging, qa_dir, workers, scheduler, threads, bar, finish)
    if not any(staging.iterdir()):
        shutil.rmtree(staging, ignore_errors=True)
    return summarize(store, cohort, results, skipped, time.perf_counter() - t0)


def _run_dask(pipeline, todo, staging, qa_dir, workers, scheduler, threads, bar, finish) -> None:
    """One task per slide on a local cluster or at ``scheduler``; commit in cohort order.

    Workers report tile progress through small files in ``staging/`` (works on any shared filesystem)."""
    from distributed import Client, LocalCluster, wait

    if scheduler:
        client, cluster = Client(scheduler), None
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=40)
        client = Client(cluster)
    try:
        futures = {}
        updates = {}
        for row in todo:
            fut = client.submit(process_slide, pipeline, row, str(staging), str(qa_dir) if qa_dir else None,
                                threads, None, _FileProgress(str(staging / f"{row.slide_id}.progress")),
                                key=f"slide-{row.slide_id}-{config.extraction_hash(pipeline)[:8]}", pure=False)
            futures[fut] = row
            updates[row.slide_id] = bar.slide_started(row.slide_id)
        pending: dict[str, tuple] = {}
        order = [r.slide_id for r in todo]
        nxt = 0
        running = set(futures)
        while running:
            try:
                done, running = wait(running, timeout=0.5, return_when="FIRST_COMPLETED")
            except TimeoutError:  # nothing finished in this half second: just refresh the bars
                done = set()
            for row in (futures[f] for f in running):
                prog = staging / f"{row.slide_id}.progress"
                try:
                    d, n = map(int, prog.read_text().split())
                    updates[row.slide_id](d, n)
                except (OSError, ValueError):
                    pass
            for fut in done:
                row = futures[fut]
                try:
                    rec = fut.result()
                except Exception as e:
                    rec = {"status": "error", "reason": f"{row.slide_path}: worker failed: {type(e).__name__}: {e}"}
                (staging / f"{row.slide_id}.progress").unlink(missing_ok=True)
                pending[row.slide_id] = (row, rec)
            while nxt < len(order) and order[nxt] in pending:  # commit in cohort order
                finish(*pending.pop(order[nxt]))
                nxt += 1
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


class _FileProgress:
    """Progress callback for remote workers: writes "done total" to a small file."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, done: int, total: int) -> None:
        atomic_write_text(self.path, f"{done} {total}")


def summarize(store: PatchStore, cohort: list[SlideRow], results: dict[str, dict], skipped: int,
              seconds: float) -> dict[str, Any]:
    slides = []
    for r in cohort:
        rec = results.get(r.slide_id) or store.manifest["slides"].get(r.slide_id) or {}
        status = rec.get("status", "error" if r.slide_id in store.manifest.get("errors", {}) else "pending")
        if r.slide_id not in results and r.slide_id in store.manifest["slides"]:
            status = "skipped"
        slides.append({"slide_id": r.slide_id, "status": status, "tiles": rec.get("n_tiles", 0),
                       "patches": rec.get("n_patches", 0), "reason": rec.get("reason", ""),
                       "seconds": round(rec.get("seconds", 0.0), 3)})
    failed = [s for s in slides if s["status"] == "error"]
    return {"store": str(store.path), "rows": len(store), "slides": slides, "failed": len(failed),
            "skipped": skipped, "seconds": round(seconds, 3)}

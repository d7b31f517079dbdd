#!/usr/bin/env python3
"""Extraction throughput on one slide, against the bare decode of the same pixels, in one run.

    python bench/extract.py SLIDE [--pipeline schemas/examples/liu2020.json] [--threads N] [--codec zstd] [--decoder dali]

Prints one JSON line (medians of ``--repeat`` interleaved runs): the stage timers of one slide run stage by
stage (``stages_ms``: create, open, thumbnail, filters, plan, decode, compress, commit; their CPU time in
``stages_cpu_ms``), engine seconds (wall, and CPU of all threads in ``engine_cpu_s``), tiles/s, patches/s, MP/s decoded, bytes per stored patch, peak RSS,
and the bare-decode seconds of the same pixels (the thumbnail's level plus the kept tiles' regions,
read with the fastest reader, cuCIM, with the same number of threads and with one).
Make a realistic slide with ``slidestream bench make-slide bench40x.svs --size 32768 24576`` (or
``--size 98304 65536`` for a TCGA-size one). ``slidestream bench extract`` is the installed version.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from slidestream.engine import config
from slidestream.engine.bench import bare_decode
from slidestream.engine.runner import extract, read_cohort
from slidestream.engine.slide import open_slide
from slidestream.engine.store import PatchStore


def stage_times(pipeline: dict, path: str, mpp, threads: int, tmp: Path) -> dict[str, float]:
    """Seconds (wall, and CPU as ``NAME_cpu``) of each extraction stage of one slide, run one after the other (no overlap): store creation,
    open, thumbnail, filters, plan (tiling and patch positions), decode (tiles read and cut into patches),
    compress (into the staging array) and commit (into the store)."""
    from slidestream.engine import runner
    from slidestream.engine.store import RowWriter, stage_name

    t: dict[str, float] = {}

    def clock(name, f):
        t0, c0 = time.perf_counter(), time.process_time()
        out = f()
        t[name] = time.perf_counter() - t0
        t[name + "_cpu"] = time.process_time() - c0  # all threads of the process
        return out

    shutil.rmtree(tmp / "stages", ignore_errors=True)
    row = read_cohort(path, default_mpp=mpp)[0]
    size = int(pipeline["patches"]["size"])
    store = clock("create", lambda: PatchStore.create(tmp / "stages", size, pipeline["store"], runner.manifest_base(pipeline)))
    slide = clock("open", lambda: open_slide(row.slide_path, order=runner.readers_for(pipeline),
                                                   **{"default_mpp" if row.mpp_is_default else "mpp": row.mpp}))
    thumb = clock("thumbnail", lambda: slide.thumbnail(float(pipeline["thumbnail"]["scale"]), pipeline["thumbnail"].get("decode", "dct")))
    mask = clock("filters", lambda: runner.tissue_mask(pipeline, thumb))
    real = runner.tissue_mask  # plan_slide without the thumbnail and filters timed above
    runner.tissue_mask, slide.thumbnail = (lambda p, rgb: mask), (lambda scale, decode="dct": thumb)
    try:
        _, _, geometry, tiles, rows = clock("plan", lambda: runner.plan_slide(pipeline, slide, row.slide_id))
    finally:
        runner.tissue_mask = real
        del slide.thumbnail
    batches = clock("decode", lambda: list(runner.iter_patch_batches(pipeline, slide, tiles, rows, geometry, threads)))
    writer = RowWriter(store.stage_dir() / stage_name("slides", row.slide_id), len(rows), size, store.store_cfg())

    def compress():
        for idx, patches in batches:
            writer.write(idx[0], patches)
        return writer.close()

    staged = clock("compress", compress)
    rec = {"status": "done", "n_patches": len(rows), "n_tiles": len(tiles), "staged": staged,
           "meta": {k: v.tolist() for k, v in runner.patch_table(rows, tiles).items()}}
    clock("commit", lambda: runner.commit(store, row, rec))
    store.close()
    slide.close()
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("slide")
    ap.add_argument("--pipeline", default=str(config.example("liu2020")))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--codec", default=None, help="override store.codec (zstd, lz4, blosc-zstd, none)")
    ap.add_argument("--level", type=int, default=None, help="override store.level")
    ap.add_argument("--mpp", type=float, default=None)
    ap.add_argument("--repeat", type=int, default=5, help="runs of each side (interleaved); medians are reported")
    ap.add_argument("--cohort", type=int, default=1, help="extract N copies of the slide as a cohort (throughput)")
    ap.add_argument("--workers", type=int, default=1, help="dask workers for --cohort")
    ap.add_argument("--decoder", choices=["cucim", "dali"], default=None,
                    help="override reader.decoder (dali: batches of tiles decoded by DALI; the bare decode stays cuCIM)")
    ap.add_argument("--thumbnail-decode", choices=["dct", "resize"], default=None,
                    help="override thumbnail.decode (resize: the level decoded whole and resized, as DPW)")
    ap.add_argument("--cucim-only", action="store_true",
                    help="cuCIM decodes every tile (no libjpeg-turbo path, no patch-only decode: plugins/readers/libjpeg.py)")
    a = ap.parse_args()
    if a.cucim_only:
        from slidestream.plugins.readers.cucim import CucimSlide

        CucimSlide.direct_jpeg = False

    pipeline = config.load(a.pipeline)
    if a.codec:
        pipeline["store"]["codec"] = a.codec
    if a.decoder:
        pipeline["reader"]["decoder"] = a.decoder
    if a.level is not None:
        pipeline["store"]["level"] = a.level
    if a.thumbnail_decode:
        pipeline["thumbnail"]["decode"] = a.thumbnail_decode
    tmp = Path(tempfile.mkdtemp(prefix="ss-bench-"))
    try:
        cohort = read_cohort(a.slide, default_mpp=a.mpp)
        if a.cohort > 1:  # the same slide under N ids: a cohort whose every slide costs the same
            from dataclasses import replace

            cohort = [replace(cohort[0], slide_id=f"copy{i}", patient_id=f"copy{i}") for i in range(a.cohort)]
        # warm the page cache so neither side pays for the first disk read
        with open(a.slide, "rb") as f:
            while f.read(1 << 24):
                pass
        scale = float(pipeline["thumbnail"]["scale"])
        out_px = int(pipeline["tiling"]["params"].get("size", 1024))
        runs, cpus, bares, bares1, stages = [], [], [], [], []
        for r in range(a.repeat):  # interleaved, so both sides see the same machine state
            shutil.rmtree(tmp / "store", ignore_errors=True)
            t0, c0 = time.perf_counter(), time.process_time()
            summary = extract(pipeline, cohort, tmp / "store", threads=a.threads, qa=False, progress=False,
                              workers=a.workers)
            runs.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)  # all threads of this process (workers=1)
            rec = next(iter(PatchStore.open(tmp / "store").records().values()))
            tiles = rec.get("tiles", [])
            factor = rec.get("factor", 1.0)
            bares.append(bare_decode(a.slide, tiles, scale, factor, a.threads))
            bares1.append(bare_decode(a.slide, tiles, scale, factor, 1))
            stages.append(stage_times(pipeline, a.slide, a.mpp, a.threads, tmp))
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        engine_s, bare_n, bare_1 = float(np.median(runs)), float(np.median(bares)), float(np.median(bares1))
        bare_n, bare_1 = bare_n * len(cohort), bare_1 * len(cohort)  # the same pixels, once per slide
        patch_bytes = sum(f.stat().st_size for f in (tmp / "store" / "patches").rglob("*") if f.is_file())
        n = summary["rows"]
        mp = len(tiles) * len(cohort) * out_px * out_px / 1e6
        print(json.dumps({
            "slide": os.path.basename(a.slide), "dimensions": rec.get("dimensions"), "reader": rec.get("reader"),
            "decoder": pipeline["reader"].get("decoder", "cucim"), "cucim_only": a.cucim_only,
            "thumbnail_decode": pipeline["thumbnail"].get("decode", "dct"), "slides": len(cohort), "workers": a.workers, "slides_per_s": round(len(cohort) / engine_s, 2),
            "tiles": len(tiles) * len(cohort), "patches": n, "threads": a.threads, "codec": pipeline["store"]["codec"],
            "level": pipeline["store"]["level"], "repeat": a.repeat, "engine_s": round(engine_s, 3),
            "engine_s_min": round(min(runs), 3), "engine_cpu_s": round(float(np.median(cpus)), 3),
            "tiles_per_s": round(len(tiles) * len(cohort) / engine_s, 2), "patches_per_s": round(n / engine_s, 1),
            "tile_mp_per_s": round(mp / engine_s, 1), "bare_decode_s": round(bare_n, 3),
            "bare_decode_1thread_s": round(bare_1, 3), "engine_over_bare": round(engine_s / bare_n, 2),
            "bytes_per_patch": int(patch_bytes / max(n, 1)), "raw_bytes_per_patch": int(np.prod((256, 256, 3))),
            "peak_rss_mb": round(rss_mb, 1),
            "stages_ms": {k: round(float(np.median([st[k] for st in stages])) * 1e3, 1) for k in stages[0]
                          if not k.endswith("_cpu")},
            "stages_cpu_ms": {k[:-4]: round(float(np.median([st[k] for st in stages])) * 1e3, 1) for k in stages[0]
                              if k.endswith("_cpu")},
        }))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

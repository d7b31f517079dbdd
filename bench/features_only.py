"""Bytes per slide and time: `extract` + `features` (patch store + feature store) vs `extract --features-only`.

    python bench/features_only.py demo  [--patients 16] [--repeat 3]      # demo pipeline, resnet10t 64 px, 512-d
    python bench/features_only.py liu2020 [--slides 1] [--repeat 1]       # liu2020 sizes: 1024² tiles, 8 x 256² patches per
                                                                          # tile, up to 400 per slide; resnet50_trunc, 1024-d

Both modes run on the same synthetic slides with the same pipeline, interleaved (A, B, A, B, ...) in one process;
printed: bytes on disk per slide of the patch store (zstd-1 pixels + columns + records), of the feature store,
wall seconds (medians of the repeats), and whether both feature stores are equal. Encoders are random-init
(no weights can be downloaded here); a trained encoder's features may compress differently (float16 of random
features barely compresses, so the feature numbers are close to rows x dim x 2 bytes either way).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def du(path: Path) -> int:
    """Bytes of the files under ``path`` (what the store costs on disk, before block rounding)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("which", choices=("demo", "liu2020"))
    ap.add_argument("--patients", type=int, default=16, help="demo: synthetic slides")
    ap.add_argument("--slides", type=int, default=1, help="liu2020: synthetic 10x slides of 10240 x 7680")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2, help="torch and decode threads")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    import numpy as np
    import torch

    from slidestream.engine import config, demo, features, runner, synthetic

    torch.set_num_threads(a.threads)
    out = Path(a.out or tempfile.mkdtemp(prefix="bench-fo-"))
    if a.which == "demo":
        pipe = config.parse({**demo.demo_pipeline(), "encoder": {"name": "timm", "params": {"model": "resnet10t",
                                                                                          "input_size": 64}}})
        csvf = synthetic.make_cohort(out / "slides", n_patients=a.patients, seed=0, size=(2048, 1536), mpp=0.25,
                                     objective=40, levels=(1, 4, 16))
        repeat = a.repeat or 3
    else:  # the paper's extraction on slides scanned at 10x, large enough for ~50 tiles of 1024²
        pipe = config.parse({**json.loads(config.example("liu2020").read_text()), "encoder": {"name": "resnet50_trunc"}})
        csvf = synthetic.make_cohort(out / "slides", n_patients=a.slides, seed=0, size=(10240, 7680), mpp=1.0,
                                     objective=10, levels=(1, 4, 16, 32))
        repeat = a.repeat or 1
    cohort = runner.read_cohort(csvf)
    load = os.getloadavg()[0]
    times = {"extract+features": [], "features-only": []}
    for r in range(repeat):
        for mode in times:
            for p in out.glob("run*"):
                shutil.rmtree(p, ignore_errors=True)
            t = time.perf_counter()
            if mode == "features-only":
                s = features.extract_features_only(pipe, cohort, out / "run.fo.zarr", threads=a.threads, qa=False,
                                                   progress=False)
            else:
                s = runner.extract(pipe, cohort, out / "run.store", threads=a.threads, qa=False, progress=False)
                features.extract_features(pipe, out / "run.store", out / "run.f.zarr", progress=False, log=None)
            times[mode].append(time.perf_counter() - t)
            if r == repeat - 1 and mode == "extract+features":
                shutil.move(out / "run.store", out / "keep.store")
                shutil.move(out / "run.f.zarr", out / "keep.f.zarr")
    slides = sum(x["status"] == "done" for x in s["slides"])
    ref, fo = features.FeatureStore(out / "keep.f.zarr"), features.FeatureStore(out / "run.fo.zarr")
    equal = bool(np.array_equal(np.asarray(ref.features[:]), np.asarray(fo.features[:])))
    rows, dim = len(fo), fo.info["dim"]
    patch_px = int(pipe["patches"]["size"])
    res = {"pipeline": a.which, "slides": slides, "patches": rows, "patches_per_slide": round(rows / slides, 1),
           "patch_px": patch_px, "encoder": fo.info["encoder"], "dim": dim,
           "patch_store_bytes_per_slide": round(du(out / "keep.store") / slides),
           "patch_pixels_bytes_per_slide": round(du(out / "keep.store" / "patches") / slides),
           "raw_pixels_bytes_per_slide": round(rows * patch_px * patch_px * 3 / slides),
           "feature_store_bytes_per_slide (extract+features)": round(du(out / "keep.f.zarr") / slides),
           "feature_store_bytes_per_slide (features-only)": round(du(out / "run.fo.zarr") / slides),
           "features_raw_float16_bytes_per_slide": round(rows * dim * 2 / slides),
           "features_equal": equal, "repeat": repeat,
           "wall_s_median": {k: round(statistics.median(v), 2) for k, v in times.items()},
           "wall_s_all": {k: [round(x, 2) for x in v] for k, v in times.items()},
           "threads": a.threads, "loadavg_1min_at_start": round(load, 2), "loadavg_1min_at_end": round(os.getloadavg()[0], 2)}
    print(json.dumps(res))


if __name__ == "__main__":
    main()

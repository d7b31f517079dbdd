"""Commit cost of the patch store as it grows: N simulated slides, each staged then committed.

Each slide is shaped like a liu2020 slide (50 tiles, 8 patches per tile = 400 patches, a record with its
50-tile list), with small patches (16 px) so the benchmark measures commits, not compression. Prints the
mean commit time (wall and CPU) of the first and the last 100 slides, their ratio (goal <= 1.2), and the store's file count.

    python bench/store.py --slides 10000 [--out /tmp/bench-store]

With ``--cohort N`` it instead extracts a synthetic cohort of N slides (``synthetic.make_cohort``, liu2020)
with ``--workers 1`` and ``--workers 2`` alternately (``--repeat`` times each, dask cluster start-up
included) and prints slides/s of each.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from slidestream.engine.store import PatchStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slides", type=int, default=10000)
    ap.add_argument("--tiles", type=int, default=50)
    ap.add_argument("--per-tile", type=int, default=8)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--out", default=None, help="store path (default: a temporary folder, removed after)")
    ap.add_argument("--cohort", type=int, default=0, help="extract N synthetic slides with 1 and 2 workers instead")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--slide-size", type=int, nargs=2, default=(6144, 4096))
    a = ap.parse_args()
    if a.cohort:
        return workers(a)
    tmp = None if a.out else tempfile.mkdtemp(prefix="bench-store-")
    path = a.out or os.path.join(tmp, "store")
    n = a.tiles * a.per_tile
    st = PatchStore.create(path, a.size, {"codec": "zstd", "level": 1, "chunk": 32}, {"extraction_hash": "bench"})
    rng = np.random.default_rng(0)
    patches = (rng.integers(0, 4, (n, a.size, a.size, 3)) * 60).astype(np.uint8)  # compressible: small on disk
    tiles = [{"x": int(x), "y": int(y), "w": 2048, "h": 2048, "tissue": float(t), "score": float(t)}
             for x, y, t in zip(rng.integers(0, 1e5, a.tiles), rng.integers(0, 1e5, a.tiles), rng.random(a.tiles))]
    meta = {"x": np.arange(n), "y": np.arange(n), "tile_id": np.repeat(np.arange(a.tiles), a.per_tile),
            "size0": np.full(n, 512), "tissue": rng.random(n), "tile_tissue": rng.random(n)}
    times, cpu = [], []
    t_all = time.perf_counter()
    for i in range(a.slides):
        sid = f"TCGA-{i:06d}"
        w = st.begin(sid, n)
        w.write(0, patches)
        w.close()
        rec = {"status": "done", "slide_path": f"/data/{sid}.svs", "reader": "cucim", "mpp": 0.25, "n_tiles": a.tiles,
               "n_patches": n, "tiles": tiles, "seconds": 1.0, "label": i % 2, "age": 50.0, "patient_id": sid[:12]}
        t0, c0 = time.perf_counter(), time.process_time()
        st.commit_staged(sid, w.stage, n, {**meta, "slide_id": sid, "patient_id": sid[:12], "label": i % 2, "age": 50.0}, rec)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if (i + 1) % 1000 == 0:
            print(f"  {i + 1} slides, last commit {1000 * times[-1]:.1f} ms", flush=True)
    first, last = np.mean(times[:100]), np.mean(times[-100:])
    files = sum(len(f) for _, _, f in os.walk(path))
    t0 = time.perf_counter()
    ro = PatchStore.open(path)
    t_open = time.perf_counter() - t0
    print(f"slides {a.slides}, patches {len(ro)}, total {time.perf_counter() - t_all:.0f} s")
    print(f"commit first 100: {1000 * first:.1f} ms, last 100: {1000 * last:.1f} ms, ratio {last / first:.2f} (wall)")
    c1, c2 = np.mean(cpu[:100]), np.mean(cpu[-100:])
    print(f"commit first 100: {1000 * c1:.1f} ms, last 100: {1000 * c2:.1f} ms, ratio {c2 / c1:.2f} (CPU of this process)")
    print(f"files in the store: {files} ({files / a.slides:.1f} per slide); open (read-only): {t_open:.2f} s")
    st.close()
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


def workers(a) -> None:
    from slidestream.engine import config
    from slidestream.engine.runner import extract, read_cohort
    from slidestream.engine.synthetic import make_cohort

    tmp = tempfile.mkdtemp(prefix="bench-workers-")
    try:
        cohort = read_cohort(make_cohort(os.path.join(tmp, "slides"), n_patients=a.cohort, size=tuple(a.slide_size),
                                         mpp=1.0, objective=10))  # 10x native: liu2020's 1024 px tiles fit
        pipeline = config.load(config.example("liu2020"))
        times: dict[int, list[float]] = {1: [], 2: []}
        for r in range(a.repeat):
            for w in (1, 2):
                out = os.path.join(tmp, f"store-{w}-{r}")
                t0 = time.perf_counter()
                s = extract(pipeline, cohort, out, workers=w, qa=False, progress=False)
                times[w].append(time.perf_counter() - t0)
                print(f"  workers {w}: {times[w][-1]:.2f} s, {s['rows']} patches, {len(cohort) / times[w][-1]:.2f} slides/s",
                      flush=True)
                shutil.rmtree(out, ignore_errors=True)
        for w, t in times.items():
            print(f"workers {w}: median {np.median(t):.2f} s, {len(cohort) / np.median(t):.2f} slides/s "
                  f"(runs: {', '.join(f'{x:.2f}' for x in t)})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""What a store of N slides costs a rerun of ``extract`` and each commit (issue 11: cost independent of the store's size).

    python bench/resume.py [--slides 500] [--work /tmp/bench-resume] [--repeat 7]
    PYTHONPATH=SHIM python bench/resume.py ...      # another revision (see bench/startup.py's shim)

Extracts N copies (hard links) of a small synthetic slide into a store once (kept in ``--work`` for the next
run), then prints one JSON line of medians: ``changed_shards`` (the resume check of every shard file: CPU and
wall ms, KB read), a rerun with nothing to do and a rerun where every slide's label changed (``update_rows``
per slide; CPU and wall s, one run each), and the CPU ms of committing one more slide (400 patches of 32 px,
staged beforehand) into a store holding 1 slide and into the N-slide store, interleaved.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from slidestream.engine import config
from slidestream.engine.runner import extract, read_cohort
from slidestream.engine.store import PatchStore, RowWriter, stage_name
from slidestream.engine.synthetic import make_slide


def rchar() -> int:
    with open("/proc/self/io") as fh:
        return int(next(line for line in fh if line.startswith("rchar")).split()[1])


def pipeline() -> dict:
    doc = json.loads(config.example("liu2020").read_text())
    doc["tiling"]["params"].update(size=256, min_tissue=0.3, max_tiles=6)
    doc["patches"] = {"size": 32, "mode": "random", "per_tile": 60}  # 240 patches: one shard of 8 chunks, as bench40x
    doc["thumbnail"] = {"scale": 16}
    return config.parse(doc)


def cohort(work: Path, n: int, label: int):
    f = work / f"cohort-{n}-{label}.csv"
    with open(f, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slide_path", "patient_id", "label", "age", "mpp"])
        w.writerows([work / "slides" / f"s{i}.svs", f"P{i}", label, 50, ""] for i in range(n))
    return read_cohort(f)


def commit_ms(st: PatchStore, tag: str, k: int) -> list[float]:
    """CPU ms of ``k`` commits of 400 staged patches (a liu2020-shaped record: 50 tiles)."""
    n, rng = 400, np.random.default_rng(0)
    patches = (rng.integers(0, 4, (n, st.size, st.size, 3)) * 60).astype(np.uint8)
    tiles = [{"x": int(x), "y": 7, "w": 2048, "h": 2048, "tissue": 0.5, "score": 0.5} for x in range(50)]
    meta = {"x": np.arange(n), "y": np.arange(n), "tile_id": np.repeat(np.arange(50), 8), "size0": 512,
            "tissue": rng.random(n), "tile_tissue": rng.random(n), "label": 1, "age": 50.0}
    out = []
    for i in range(k):
        key = f"{tag}{i}"
        w = RowWriter(st.stage_dir() / stage_name("slides", key), n, st.size, st.store_cfg())
        w.write(0, patches)
        staged = w.close()
        c = time.process_time()
        st.commit_staged(key, staged, n, {**meta, "slide_id": key, "patient_id": key},
                         {"status": "done", "n_patches": n, "tiles": tiles})
        out.append(1e3 * (time.process_time() - c))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slides", type=int, default=500)
    ap.add_argument("--work", default="/tmp/bench-resume")
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args()
    work, n, p = Path(a.work), a.slides, pipeline()
    store = work / f"store-{n}"
    if not store.exists():
        (work / "slides").mkdir(parents=True, exist_ok=True)
        src = make_slide(work / "slides" / "s0.svs", size=(3072, 2048), label=0, seed=0)
        for i in range(1, n):
            if not (work / "slides" / f"s{i}.svs").exists():
                os.link(src, work / "slides" / f"s{i}.svs")
        extract(p, cohort(work, n, 0), store, progress=False, qa=False)
        one = work / "store-1"
        shutil.rmtree(one, ignore_errors=True)
        extract(p, cohort(work, 1, 0), one, progress=False, qa=False)
    tmp = work / "copy"
    res: dict = {"slides": n}
    st = PatchStore.open(store)
    cs = []
    for _ in range(a.repeat):
        r0, c0, w0 = rchar(), time.process_time(), time.perf_counter()
        assert st.changed_shards() == {}
        cs.append((1e3 * (time.process_time() - c0), 1e3 * (time.perf_counter() - w0), (rchar() - r0) / 1024))
    res["changed_shards"] = {"shards": sum(len(r.get("shards") or {}) for r in st.records().values()),
                             **{k: round(statistics.median(x[i] for x in cs), 1)
                                for i, k in enumerate(("cpu_ms", "wall_ms", "read_kb"))}}
    for label, what in ((0, "rerun_nothing_to_do_s"), (1, "rerun_all_labels_changed_s")):
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(store, tmp)
        c, w = time.process_time(), time.perf_counter()
        s = extract(p, cohort(work, n, label), tmp, progress=False, qa=False)
        res[what] = {"cpu": round(time.process_time() - c, 3), "wall": round(time.perf_counter() - w, 3)}
        assert s["failed"] == 0 and sum(x["status"] == ("updated" if label else "skipped") for x in s["slides"]) == n
    stores = {}
    for name, src in (("1", work / "store-1"), (str(n), store)):
        shutil.rmtree(work / f"commit-{name}", ignore_errors=True)
        shutil.copytree(src, work / f"commit-{name}")
        stores[name] = PatchStore.open(work / f"commit-{name}", "r+")
        commit_ms(stores[name], "warm", 1)
    ms: dict[str, list[float]] = {k: [] for k in stores}
    for r in range(a.repeat):  # interleaved
        for k, s in stores.items():
            ms[k] += commit_ms(s, f"c{r}-", 2)
    res["commit_cpu_ms_by_slides_in_store"] = {k: round(statistics.median(v), 2) for k, v in ms.items()}
    for k, s in stores.items():
        s.close()
        shutil.rmtree(work / f"commit-{k}", ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(res))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Store creation and one slide's commit, alone, in one process (issue 11: the store's fixed work per job).

    python bench/create_commit.py [--repeat 10]
    PYTHONPATH=SHIM python bench/create_commit.py      # another revision (see bench/startup.py's shim)

Creates a store (the liu2020 pipeline's store settings), stages 144 random 256² patches (half flat, half
noise) and commits them, ``--repeat`` times after one warm-up round; prints one JSON line: wall and CPU ms of
creation and commit (medians), and of the first round (which pays the imports).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from slidestream.engine import config, runner
from slidestream.engine.store import PatchStore, RowWriter, stage_name

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=10)
    a = ap.parse_args()
    p = config.load(ROOT / "schemas" / "examples" / "liu2020.json")
    pix = np.random.default_rng(0).integers(0, 255, (144, 256, 256, 3), dtype=np.uint8)
    pix[:, :128] = 200
    meta = {"slide_id": "s", "x": np.arange(144), "y": np.arange(144), "tissue": np.ones(144, np.float32)}
    manifest = runner.manifest_base(p)
    tmp = Path(tempfile.mkdtemp(prefix="create-commit-"))
    res: dict[str, list] = {"create": [], "commit": []}
    try:
        for i in range(a.repeat + 1):
            w0, c0 = time.perf_counter(), time.process_time()
            st = PatchStore.create(tmp / f"s{i}", 256, p["store"], manifest)
            w1, c1 = time.perf_counter(), time.process_time()
            w = RowWriter(st.stage_dir() / stage_name("slides", "s"), 144, 256, st.store_cfg())
            w.write(0, pix)
            staged = w.close()
            w2, c2 = time.perf_counter(), time.process_time()
            st.commit_staged("s", staged, 144, meta, {"status": "done"})
            w3, c3 = time.perf_counter(), time.process_time()
            st.close()
            res["create"].append((w1 - w0, c1 - c0))
            res["commit"].append((w3 - w2, c3 - c2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({k: {"first_wall_cpu_ms": [round(1000 * x, 1) for x in v[0]],
                          "wall_ms": round(1000 * statistics.median(x[0] for x in v[1:]), 1),
                          "cpu_ms": round(1000 * statistics.median(x[1] for x in v[1:]), 1)} for k, v in res.items()}))


if __name__ == "__main__":
    main()

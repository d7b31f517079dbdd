#!/usr/bin/env python3
"""The staging writer (``store.RowWriter``) of another checkout against this one, alternating in one process.

    git worktree add /tmp/base main
    python bench/writer_ab.py --base /tmp/base/engine/store.py --slide bench40x.svs [--patches 144] [--rounds 15]

Writes the same real patches (cut from the slide's 10x tiles) with both writers, one after the other, each
round; prints one JSON line with the medians of wall and CPU milliseconds (CPU: all threads of the process).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from slidestream.engine import store as new
from slidestream.engine.slide import open_slide


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="engine/store.py of the other checkout")
    ap.add_argument("--slide", required=True)
    ap.add_argument("--patches", type=int, default=144)
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    spec = importlib.util.spec_from_file_location("slidestream.engine._store_base", a.base)
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    s = open_slide(a.slide)
    w0, h0 = s.dimensions
    tiles = [s.read(w0 // 4 + 4096 * i, h0 // 3, 4096, 1024) for i in range(4)]
    s.close()
    pat = np.stack([t[y:y + 256, x:x + 256] for t in tiles for y in range(0, 768, 256) for x in range(0, 1024, 256)])
    n = a.patches
    pat = np.concatenate([pat] * (n // len(pat) + 1))[:n]
    tmp = Path(tempfile.mkdtemp(prefix="ss-writer-"))
    cfg = {"codec": "zstd", "level": 1, "chunk": 32}
    ts: dict[str, list] = {}
    try:
        for i in range(a.rounds):
            for name, mod in (("base", base), ("new", new)):
                t, c = time.perf_counter(), time.process_time()
                w = mod.RowWriter(tmp / f"{name}{i}", n, 256, cfg)
                for k in range(0, n, 8):  # a tile's 8 patches at a time, as the runner writes them
                    w.write(k, pat[k:k + 8])
                w.close()
                ts.setdefault(name, []).append((time.perf_counter() - t, time.process_time() - c))
                shutil.rmtree(tmp / f"{name}{i}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = lambda v, j: round(float(np.median([x[j] for x in v])) * 1e3, 1)  # noqa: E731
    print(json.dumps({"patches": n, "rounds": a.rounds,
                      **{k: {"wall_ms": med(v, 0), "cpu_ms": med(v, 1)} for k, v in ts.items()}}))


if __name__ == "__main__":
    main()

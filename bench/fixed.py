#!/usr/bin/env python3
"""The fixed per-slide work before any tile is decoded (issue 11), this tree against a baseline, in one run.

    python bench/fixed.py SLIDE [--repeat 5] [--ab REV] [--pipeline schemas/examples/liu2020.json]

Each round runs one fresh process per version (this tree, and with ``--ab REV`` the git revision REV,
interleaved, through ``bench/startup.py``'s ``PYTHONPATH`` shim) that opens the slide and clocks, one after
the other, ``open``, ``thumbnail``, ``filters`` (the DPW mask) and ``plan`` (tiling and patch positions,
``runner.plan_slide`` with the thumbnail and mask already made), in wall and CPU milliseconds (CPU: user +
system of all threads, the steadier measure on a loaded machine), and the peak RSS before and after the
thumbnail. Prints one JSON line per version (medians and runs) with the sha256 of the thumbnail, the mask
and the planned patches, and whether they equal the first version's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import ROOT, checkout, shim  # noqa: E402

CHILD = r"""
import hashlib, json, os, resource, sys, time
import numpy as np
from slidestream.engine import config, runner
from slidestream.engine.chatter import CAPTURE
from slidestream.engine.slide import open_slide

pipeline = config.load(os.environ["FIXED_PIPELINE"])
scale = float(pipeline["thumbnail"]["scale"])
T = {}
def clock(name, f):
    w, c = time.perf_counter(), time.process_time()
    out = f()
    T[name] = ((time.perf_counter() - w) * 1e3, (time.process_time() - c) * 1e3)
    return out
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
with CAPTURE.on():
    slide = clock("open", lambda: open_slide(os.environ["FIXED_SLIDE"], order=runner.readers_for(pipeline)))
    rss0 = rss()
    thumb = clock("thumbnail", lambda: slide.thumbnail(scale, pipeline["thumbnail"].get("decode", "dct")))
    rss1 = rss()
    mask = clock("filters", lambda: runner.tissue_mask(pipeline, thumb))
    runner.tissue_mask, slide.thumbnail = (lambda p, rgb: mask), (lambda s, decode="dct": thumb)
    _, _, _, tiles, rows = clock("plan", lambda: runner.plan_slide(pipeline, slide, "s"))
sha = lambda b: hashlib.sha256(b).hexdigest()[:16]
print(json.dumps({"ms": T, "rss_before_thumbnail_mb": rss0, "rss_after_thumbnail_mb": rss1,
                  "thumbnail": sha(np.ascontiguousarray(thumb).tobytes()), "mask": sha(np.packbits(mask).tobytes()),
                  "patches": sha(repr(rows).encode()), "tiles": len(tiles)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("slide")
    ap.add_argument("--pipeline", default=str(ROOT / "schemas" / "examples" / "liu2020.json"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ab", metavar="REV", help="also time git revision REV (interleaved, same run)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fixed-") as t:
        tmp = Path(t)
        versions = {"this": str(shim(ROOT, tmp / "this"))}
        if a.ab:
            versions[a.ab] = str(shim(checkout(a.ab, tmp / "ab"), tmp / "ab"))
        res: dict[str, list] = {v: [] for v in versions}
        for _ in range(a.repeat):
            for v, path in versions.items():
                env = {**os.environ, "FIXED_SLIDE": str(Path(a.slide).resolve()), "FIXED_PIPELINE": a.pipeline,
                       "PYTHONPATH": os.pathsep.join([path] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
                p = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True)
                if p.returncode:
                    sys.exit(f"{v} failed ({p.returncode}):\n{p.stderr[-2000:]}")
                res[v].append(json.loads(p.stdout.strip().splitlines()[-1]))
    first = res[next(iter(versions))][0]
    for v, runs in res.items():
        med = lambda f: round(statistics.median(f(r) for r in runs), 1)  # noqa: E731
        print(json.dumps({
            "version": v, "slide": os.path.basename(a.slide), "repeat": a.repeat, "tiles": runs[0]["tiles"],
            "wall_ms_median": {k: med(lambda r: r["ms"][k][0]) for k in runs[0]["ms"]},
            "cpu_ms_median": {k: med(lambda r: r["ms"][k][1]) for k in runs[0]["ms"]},
            "cpu_ms_runs": {k: [round(r["ms"][k][1], 1) for r in runs] for k in runs[0]["ms"]},
            "rss_mb_median": {"before_thumbnail": med(lambda r: r["rss_before_thumbnail_mb"]),
                              "after_thumbnail": med(lambda r: r["rss_after_thumbnail_mb"])},
            "same_as_first": {k: all(r[k] == first[k] for r in runs) for k in ("thumbnail", "mask", "patches")},
            "loadavg": [round(x, 2) for x in os.getloadavg()]}), flush=True)


if __name__ == "__main__":
    main()

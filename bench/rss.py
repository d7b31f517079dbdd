#!/usr/bin/env python3
"""Peak RSS, wall and CPU of one-slide ``slidestream extract`` processes (issue 11), this tree against a baseline.

    python bench/rss.py SLIDES [SLIDES ...] [--ab REV] [--repeat 3] [--pipeline schemas/examples/liu2020.json]

Per round, per slide, per version (this tree, and with ``--ab REV`` the git revision REV; interleaved): the
process ``slidestream extract PIPELINE --slides SLIDES --out STORE --quiet`` (QA picture on, as by default) in a
fresh store (SLIDES: a cohort CSV or folder, one slide for issue 11), measured by ``/usr/bin/time``: peak resident set (maximum RSS, MB), wall and CPU (user + system)
seconds. The versions are put first on ``PYTHONPATH`` as ``bench/startup.py`` does (same installed dependencies).
Prints one JSON line per slide and version: medians and the single runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import ROOT, checkout, shim  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("slides", nargs="+", help="--slides of each process: a cohort CSV or a folder")
    ap.add_argument("--pipeline", default=str(ROOT / "schemas" / "examples" / "liu2020.json"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ab", metavar="REV", help="also measure git revision REV (interleaved, same run)")
    a = ap.parse_args()
    exe = shutil.which("slidestream") or sys.exit("the `slidestream` console script is not on PATH")
    tmp = Path(tempfile.mkdtemp(prefix="rss-"))
    try:
        versions = {"this": shim(ROOT, tmp / "this")}
        if a.ab:
            versions[a.ab] = shim(checkout(a.ab, tmp / "ab"), tmp / "ab")
        runs = {(s, v): [] for s in a.slides for v in versions}
        for r in range(a.repeat + 1):  # round 0: warm-up (bytecode, page cache), not counted
            for s in a.slides:
                for v, path in versions.items():
                    out = tmp / "store.zarr"
                    shutil.rmtree(out, ignore_errors=True)
                    shutil.rmtree(tmp / "store.zarr.partial", ignore_errors=True)
                    cmd = ["/usr/bin/time", "-f", "RSS %M %e %U %S", exe, "extract", a.pipeline, "--slides", s,
                           "--out", str(out), "--quiet"]
                    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(path)})
                    line = [x for x in p.stderr.splitlines() if x.startswith("RSS ")]
                    if p.returncode or not line:
                        sys.exit(f"{v} on {s} failed ({p.returncode}):\n{p.stderr[-2000:]}")
                    kb, wall, user, system = (float(x) for x in line[-1].split()[1:])
                    if r:
                        runs[s, v].append((kb / 1024, wall, user + system))
        for (s, v), rs in runs.items():
            med = [round(statistics.median(x[i] for x in rs), 3) for i in range(3)]
            print(json.dumps({"slide": s, "version": v, "peak_rss_mb_median": med[0], "wall_s_median": med[1],
                              "cpu_s_median": med[2], "runs": [[round(y, 3) for y in x] for x in rs]}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Before/after in one run: ``bench/extract.py`` of a base tree and of this tree, interleaved.

    git worktree add --detach /tmp/base <commit>      # + a venv there that can import it (see bench/README.md)
    python bench/ab.py /tmp/base SLIDE [--rounds 3] [-- extract.py options, e.g. --repeat 5 --cohort 8]

Each round runs the base tree's ``bench/extract.py`` (with its own ``.venv/bin/python`` when it has one), then
this tree's, with the same options; prints each run's JSON line tagged ``tree`` and ``round``, then one line of
the medians of both sides' ``engine_s``, ``engine_cpu_s``, ``bare_decode_s`` and ``engine_over_bare``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
KEYS = ("engine_s", "engine_cpu_s", "bare_decode_s", "engine_over_bare", "peak_rss_mb")


def run(tree: Path, slide: str, extra: list[str]) -> dict:
    py = tree / ".venv" / "bin" / "python"
    cmd = [str(py if py.exists() else sys.executable), str(tree / "bench" / "extract.py"), slide, *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tree).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", type=Path, help="the base tree (a git worktree of the commit to compare with)")
    ap.add_argument("slide")
    ap.add_argument("--rounds", type=int, default=3)
    a, extra = ap.parse_known_args()
    extra = [x for x in extra if x != "--"]
    sides: dict[str, list[dict]] = {"base": [], "this": []}
    for r in range(a.rounds):
        for name, tree in (("base", a.base.resolve()), ("this", HERE)):
            rec = run(tree, a.slide, extra)
            sides[name].append(rec)
            print(json.dumps({"tree": name, "round": r, **rec}), flush=True)
    print(json.dumps({"medians": {name: {k: round(statistics.median(x[k] for x in recs), 3) for k in KEYS}
                                  for name, recs in sides.items()}, "rounds": a.rounds, "options": extra}))


if __name__ == "__main__":
    main()

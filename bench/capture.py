#!/usr/bin/env python3
"""Cost of the bad-input checks on reads (issue 10), measured in one run, interleaved:

* ``plain``: reads as before (no output capture, no JPEG tile check);
* ``capture``: decoder output captured per read (``engine/chatter.py``);
* ``capture+tilecheck``: plus each JPEG tile's bytes checked before decoding (``TiffTileCheck``).

    python bench/capture.py SLIDE [--repeat 9]

Prints one JSON line: per mode the median and min engine seconds of ``extract`` (liu2020 pipeline, no QA),
and the seconds spent inside the tile check in the last full run.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from slidestream.engine import chatter, config
from slidestream.engine import slide as sl
from slidestream.engine.cohort import read_cohort
from slidestream.engine.runner import extract
from slidestream.plugins.readers import common


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("slide")
    ap.add_argument("--repeat", type=int, default=9)
    a = ap.parse_args()
    p = config.load(config.example("liu2020"))
    cohort = read_cohort(a.slide)
    orig = dict(read_checked=sl.Slide.read_checked, start=chatter.CAPTURE.start, stop=chatter.CAPTURE.stop,
                check=common.TiffTileCheck.check)
    spent = [0.0]

    def timed_check(self, *args):
        t = time.perf_counter()
        try:
            return orig["check"](self, *args)
        finally:
            spent[0] += time.perf_counter() - t

    def plain_read(self, x, y, size0, out_size):
        return self.read(x, y, size0, out_size), ""

    def mode(name: str) -> None:
        on = name != "plain"
        sl.Slide.read_checked = orig["read_checked"] if on else plain_read
        chatter.CAPTURE.start = orig["start"] if on else (lambda: None)
        chatter.CAPTURE.stop = orig["stop"] if on else (lambda: None)
        common.TiffTileCheck.check = timed_check if name == "capture+tilecheck" else (lambda self, *args: None)

    modes = ["plain", "capture", "capture+tilecheck"]
    res: dict[str, list[float]] = {m: [] for m in modes}
    tmp = Path(tempfile.mkdtemp())
    for _ in range(a.repeat):
        for m in modes:
            mode(m)
            spent[0] = 0.0
            shutil.rmtree(tmp / "st", ignore_errors=True)
            t = time.perf_counter()
            s = extract(p, cohort, tmp / "st", progress=False, qa=False)
            res[m].append(time.perf_counter() - t)
    shutil.rmtree(tmp, ignore_errors=True)
    out = {m: {"median": round(statistics.median(v), 4), "min": round(min(v), 4)} for m, v in res.items()}
    out.update(tiles=s["slides"][0]["tiles"], patches=s["rows"], tilecheck_s_last_run=round(spent[0], 4))
    print(json.dumps(out))


if __name__ == "__main__":
    main()

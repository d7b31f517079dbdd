#!/usr/bin/env python3
"""DPW filter chain: the fused pass the engine runs against the one-by-one chain, in one run.

    python bench/filters.py [IMAGE ...] [--repeat 21] [--baseline OLD_dpw.py]

Each image (default: the real thumbnails in tests/data/pen) is filtered both ways, interleaved; prints
one JSON line per image with the median milliseconds and whether the masks are equal. ``--baseline``
runs the one-by-one chain with the filter functions of another dpw.py (e.g. the version before the
fused pass: ``git show 6c7dc76:plugins/filters/dpw.py > /tmp/dpw_before.py``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from slidestream.engine import registry
from slidestream.plugins.filters import dpw

CHAIN = ["dpw.green_channel", "dpw.grays", "dpw.red_pen", "dpw.green_pen", "dpw.blue_pen", "dpw.small_objects"]
PEN = Path(__file__).resolve().parent.parent / "tests" / "data" / "pen"


def one_by_one(rgb, refs, module=None):
    mask = np.ones(rgb.shape[:2], bool)
    for r in refs:
        fn = getattr(module, r["name"].split(".", 1)[1]) if module else registry.get("filter", r["name"]).apply
        mask = fn(rgb, mask, **r.get("params", {}))
    return mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("images", nargs="*")
    ap.add_argument("--repeat", type=int, default=21)
    ap.add_argument("--baseline", help="another dpw.py whose filters make the one-by-one side")
    a = ap.parse_args()
    base = None
    if a.baseline:
        import importlib.util

        spec = importlib.util.spec_from_file_location("dpw_baseline", a.baseline)
        base = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(base)
    paths = a.images or sorted(str(p) for p in PEN.glob("*.png") if not p.stem.endswith("_mask"))
    refs = [{"name": n} for n in CHAIN]
    for p in paths:
        rgb = np.ascontiguousarray(np.asarray(Image.open(p).convert("RGB")))
        seq, fus = [], []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            m0 = one_by_one(rgb, refs, base)
            t1 = time.perf_counter()
            m1 = dpw.apply_chain(rgb, refs)
            fus.append(time.perf_counter() - t1)
            seq.append(t1 - t0)
        before, now = float(np.median(seq)), float(np.median(fus))
        print(json.dumps({"image": Path(p).name, "shape": list(rgb.shape[:2]), "one_by_one_ms": round(1e3 * before, 2),
                          "fused_ms": round(1e3 * now, 2), "speedup": round(before / now, 2),
                          "equal": bool((m0 == m1).all())}))


if __name__ == "__main__":
    sys.exit(main())

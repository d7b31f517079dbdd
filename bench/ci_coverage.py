"""Coverage of the 95 % intervals `slidestream evaluate` reports, by simulation against known true values.

Each test set: n patients, labels ~ Bernoulli(prevalence) (a set with fewer than ``MIN_CI`` patients of a class
is drawn again: evaluate gives it no interval), scores binormal (wildtype N(0, 1), mutant N(d, 1)) mapped to
probabilities by Phi, and a FIXED threshold (as evaluate applies val's threshold to test), so the true values are
known: AUC = Phi(d / sqrt(2)), sensitivity = 1 - Phi(c - d), specificity = Phi(c) (c: the threshold on the score
scale), accuracy = prev * sens + (1 - prev) * spec. Every set goes through ``evaluate.evaluate`` itself (its
``ci`` of the image predictor); the table counts how often each interval holds the true value.

Usage: python bench/ci_coverage.py [--reps 2000] [--bootstrap 1000] [--before REV] [--d 1.466] [--sizes 20,40,100,400]
  --before REV: also run evaluate.py as it was at git revision REV on the same sets (coverage before/after).
The binomial standard error of a coverage near 95 % over R sets is sqrt(.95 * .05 / R): 0.5 points at R = 2000.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import norm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from engine import evaluate as ev  # noqa: E402

METRICS = ("sensitivity", "specificity", "accuracy", "auc")


def load_before(rev: str):
    """engine/evaluate.py as it was at ``rev``, imported as a module of the engine package."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:engine/evaluate.py"], check=True,
                         capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("engine._evaluate_before", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "engine"
    exec(compile(src, f"{rev}:engine/evaluate.py", "exec"), mod.__dict__)
    return mod


def truth(d: float, c: float, prev: float) -> dict[str, float]:
    sens, spec = 1 - norm.cdf(c - d), norm.cdf(c)
    return {"sensitivity": sens, "specificity": spec, "accuracy": prev * sens + (1 - prev) * spec,
            "auc": norm.cdf(d / np.sqrt(2))}


def draw_set(rng, n: int, prev: float, d: float) -> dict:
    while True:
        y = (rng.random(n) < prev).astype(int)
        if min(y.sum(), n - y.sum()) >= ev.MIN_CI:
            break
    score = rng.normal(size=n) + d * y
    return {"patient_id": [f"p{i}" for i in range(n)], "label": y, "age": np.full(n, 50.0), "split": ["test"] * n,
            "image_prob": norm.cdf(score)}


def coverage(mod, n: int, prev: float, d: float, c: float, reps: int, bootstrap: int, seed: int) -> dict:
    """Per metric: share of ``reps`` sets whose interval holds the true value, share without an interval, and the
    mean width."""
    true = truth(d, c, prev)
    rng = np.random.default_rng((seed, n, int(prev * 1000), int(d * 1000)))
    hit = {m: 0 for m in METRICS}
    none = {m: 0 for m in METRICS}
    width = {m: 0.0 for m in METRICS}
    for r in range(reps):
        block = mod.evaluate(draw_set(rng, n, prev, d), threshold=float(norm.cdf(c)), bootstrap=bootstrap,
                             seed=r)["test"]["image"]
        for m in METRICS:
            ci = block["ci"][m]
            if ci is None:
                none[m] += 1
                continue
            hit[m] += ci[0] <= true[m] <= ci[1]
            width[m] += ci[1] - ci[0]
    got = reps - np.array([none[m] for m in METRICS])
    return {m: (hit[m] / reps, none[m] / reps, width[m] / max(g, 1)) for m, g in zip(METRICS, got)}


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--reps", type=int, default=2000)
    a.add_argument("--bootstrap", type=int, default=1000)
    a.add_argument("--before", default=None, help="git revision of evaluate.py to compare with")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--sizes", default="20,40,100,400")
    a.add_argument("--d", type=float, default=1.466, help="mutant score mean (true AUC Phi(d / sqrt 2): 1.466 -> 0.85, "
                   "2.326 -> 0.95)")
    args = a.parse_args()
    mods = [("now", ev)] + ([(args.before, load_before(args.before))] if args.before else [])
    # d: true AUC 0.85 by default; c = 0.8 on the score scale: true specificity 0.79 (sensitivity 0.75 at AUC 0.85)
    d, c = args.d, 0.8
    print(f"reps {args.reps} per row, bootstrap {args.bootstrap}; true AUC {truth(d, c, .5)['auc']:.3f}, sensitivity "
          f"{truth(d, c, .5)['sensitivity']:.3f}, specificity {truth(d, c, .5)['specificity']:.3f} (threshold fixed)")
    print("coverage % of the 95% intervals (mean width); binomial SE of a row's coverage near 95%: "
          f"{100 * np.sqrt(.95 * .05 / args.reps):.1f} points")
    print(f"{'method':>10} {'n':>4} {'prev':>5} " + " ".join(f"{m:>16}" for m in METRICS) + "  sec")
    for n in (int(s) for s in args.sizes.split(",")):
        for prev in (0.5, 0.2):
            for label, mod in mods:
                t0 = time.time()
                cov = coverage(mod, n, prev, d, c, args.reps, args.bootstrap, args.seed)
                cells = " ".join(f"{100 * h:6.1f} ({w:.3f})" + ("*" if z else " ") for h, z, w in (cov[m] for m in METRICS))
                print(f"{label:>10} {n:4d} {prev:5.2f} {cells} {time.time() - t0:5.0f}", flush=True)
    print("*: some sets got no interval (counted as not covering)")


if __name__ == "__main__":
    main()

"""Choose MIL training settings without the test patients: nested CV on the train + val patients only.

    python bench/mil_select.py /tmp/mil6/s0 /tmp/mil6/s1 /tmp/mil6/s2      # OUT folders of `bench/mil.py --out`

For each cohort (a ``bench/mil.py --out`` folder: ``store`` with its split, ``f-morphometry.zarr``), the
patients of the store's train and val splits (120 of 160) are cut into 5 stratified folds; each fold in turn
is the held-out "dev" fold, and each variant is trained on the other 4 folds (one of them validation, as
``mil.kfold_splits`` assigns it) and scored on the dev fold. A variant with ``ensemble: K`` trains K models,
each with another of the 4 folds as validation, and averages their probabilities (measured here only; not in
``mil train``). Printed per variant: the mean dev AUC over folds and cohorts, and its paired difference from
the demo settings with its standard error over the folds (``--NAME``: only the variants whose name holds
NAME). Training is deterministic (``mil.train_one``): reruns give the same numbers. The store's test
patients are never read, so settings chosen here are reported on the test split by ``bench/mil.py`` without having been tuned on it.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

VARIANTS = {
    "demo (before)": {"epochs": 20, "patience": 5},
    "cosine lr": {"epochs": 20, "patience": 5, "schedule": "cosine"},
    "40 ep, patience 10": {"epochs": 40, "patience": 10},
    "lr 1e-3": {"epochs": 20, "patience": 5, "lr": 1e-3},
    "weight decay 1e-2": {"epochs": 20, "patience": 5, "weight_decay": 1e-2},
    "max_patches 16": {"epochs": 20, "patience": 5, "max_patches": 16},
    "ensemble 4": {"epochs": 20, "patience": 5, "ensemble": 4},
    # round 2 (after round 1 above: weight decay 1e-2 and max_patches 16 +0.007 each, the rest <= 0)
    "wd 1e-2 + max_patches 16": {"epochs": 20, "patience": 5, "weight_decay": 1e-2, "max_patches": 16},
    "wd 1e-1": {"epochs": 20, "patience": 5, "weight_decay": 1e-1},
    "wd 1e-2 + dropout 0.5": {"epochs": 20, "patience": 5, "weight_decay": 1e-2, "params": {"dropout": 0.5}},
    "wd 1e-2 + cosine, 40 ep, patience 10": {"epochs": 40, "patience": 10, "weight_decay": 1e-2, "schedule": "cosine"},
    # round 3 (after round 2: wd 1e-1 +0.012 +- 0.007, wd 1e-2 + dropout 0.5 +0.010 +- 0.004)
    "wd 1e-1 + dropout 0.5": {"epochs": 20, "patience": 5, "weight_decay": 1e-1, "params": {"dropout": 0.5}},
    "wd 1.0": {"epochs": 20, "patience": 5, "weight_decay": 1.0},
}
SKIP = ("params", "ensemble")


def main() -> None:
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    from slidestream.engine import mil
    from slidestream.engine.features import FeatureStore
    from slidestream.engine.store import PatchStore

    import torch

    torch.set_num_threads(1)
    names = [v for v in sys.argv[1:] if not v.startswith("--")]
    only = [v[2:] for v in sys.argv[1:] if v.startswith("--")]
    variants = {k: v for k, v in VARIANTS.items() if not only or any(o in k for o in only)}
    res = {k: [] for k in variants}
    for d in map(Path, names):
        fs, ps = FeatureStore(d / "f-morphometry.zarr"), PatchStore.open(d / "store")
        feats = fs.rows()
        bags = mil.patient_bags(fs, ps.column("split"), {c: ps.column(c) for c in ("patient_id", "label", "age")})
        dev = np.flatnonzero(bags["split"] != "test")  # the test patients are never used below
        y = bags["label"][dev]
        for j, (inner, held) in enumerate(StratifiedKFold(5, shuffle=True, random_state=0).split(dev, y)):
            ids, held = dev[inner], dev[held]
            for name, v in variants.items():
                cfg = {**mil.DEFAULTS, **{k: x for k, x in v.items() if k not in SKIP}, "device": "cpu"}
                k = v.get("ensemble") or 1
                folds = mil.kfold_splits(bags["label"][ids], 4, 0) if k > 1 else None
                probs = []
                for m in range(k):
                    split = np.full(len(bags["patients"]), "none", dtype=object)
                    if folds is None:  # one model: validation = a quarter of the 96, as kfold_splits' fold 0 val
                        s = mil.kfold_splits(bags["label"][ids], 4, 0)[0]
                        s[s == "test"] = "train"
                    else:
                        s = folds[m].copy()
                        s[s == "test"] = "train"
                    split[ids] = s
                    split[held] = "test"
                    with tempfile.TemporaryDirectory() as t:
                        mil.train_one(feats, bags, split.astype(str), {"name": "abmil", "params": v.get("params", {})}, cfg, Path(t),
                                      {}, log=None)
                        p = np.loadtxt(Path(t) / "predictions.csv", delimiter=",", skiprows=1, usecols=4, dtype=float)
                    probs.append(p[held])
                res[name].append(float(roc_auc_score(bags["label"][held], np.mean(probs, 0))))
            print(json.dumps({"cohort": str(d), "fold": j, **{n: round(r[-1], 3) for n, r in res.items()}}), flush=True)
    base = np.array(res.get("demo (before)", [np.nan]))
    for n, r in res.items():
        d = np.array(r) - base  # paired with the demo settings, fold by fold
        print(json.dumps({"variant": n, "settings": variants[n], "dev_auc_mean": round(float(np.mean(r)), 4),
                          "sd": round(float(np.std(r, ddof=1)), 4), "folds": len(r),
                          "minus_demo": round(float(np.mean(d)), 4),
                          "minus_demo_se": round(float(np.std(d, ddof=1) / np.sqrt(len(d))), 4)}), flush=True)


if __name__ == "__main__":
    main()

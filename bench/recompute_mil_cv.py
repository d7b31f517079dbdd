"""Independent recomputation of `mil train --folds K`'s report (cv.json, cv.md): every fold's test AUC from its
predictions.csv (pairwise Mann-Whitney), the folds' roles (fold i test, i+1 val), mean and sample sd (ddof 1,
statistics.stdev). Usage: python bench/recompute_mil_cv.py [K ...] (uses the tiny store of tests/test_mil.py)."""
import csv
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def auc(y, p):
    a, b = p[y == 1], p[y == 0]
    if not len(a) or not len(b):
        return None
    d = a[:, None] - b[None, :]
    return float(np.mean((d > 0) + 0.5 * (d == 0)))


def main(ks):
    from test_mil import PIPE, coords_store

    from slidestream.engine import config, features, mil

    bad, n = [], 0
    for k in ks:
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            st = coords_store(d / "store", n_patients=4 * k)
            pipe = config.parse({**PIPE, "mil": {"epochs": 2, "lr": 1e-3}})
            features.extract_features(pipe, st.path, d / "f.zarr", progress=False, log=None)
            mil.train(pipe, d / "f.zarr", d / "cv", folds=k, log=None)
            cv = json.loads((d / "cv" / "cv.json").read_text())
            aucs, test_of = [], {}
            for i in range(k):
                with open(d / "cv" / f"fold{i}" / "predictions.csv") as f:
                    rows = list(csv.DictReader(f))
                for r in rows:
                    if r["split"] == "test":
                        test_of.setdefault(r["patient_id"], []).append(i)
                t = [r for r in rows if r["split"] == "test"]
                aucs.append(auc(np.array([int(r["label"]) for r in t]), np.array([float(r["image_prob"]) for r in t])))
                own = json.loads((d / "cv" / f"fold{i}" / "mil.json").read_text())["metrics"]
                thr = json.loads((d / "cv" / f"fold{i}" / "mil.json").read_text())["settings"]["threshold"]
                for s in ("train", "val", "test"):
                    ss = [r for r in rows if r["split"] == s]
                    ys, ps = np.array([int(r["label"]) for r in ss]), np.array([float(r["image_prob"]) for r in ss])
                    want = {"n": len(ss), "auc": auc(ys, ps), "accuracy": float(np.mean((ps >= thr) == (ys == 1)))}
                    for m, w in want.items():
                        n += 1
                        g = own[s][m]
                        if (w is None) != (g is None) or (w is not None and abs(w - g) > 1e-6):
                            bad.append(f"k={k} fold {i} mil.json {s} {m}: {w} vs {g}")
                vals = {r["patient_id"] for r in rows if r["split"] == "val"}
                with open(d / "cv" / f"fold{(i + 1) % k}" / "predictions.csv") as f:
                    nxt = {r["patient_id"] for r in csv.DictReader(f) if r["split"] == "test"}
                n += 1
                if vals != nxt:
                    bad.append(f"k={k} fold {i}: val is not fold {(i + 1) % k}'s test")
            if any(len(v) != 1 for v in test_of.values()) or len(test_of) != 4 * k:
                bad.append(f"k={k}: a patient tested in {max(len(v) for v in test_of.values())} folds or none")
            valid = [a for a in aucs if a is not None]
            mean, sd = statistics.fmean(valid), statistics.stdev(valid)
            for name, want, got in (("test_auc", aucs, cv["test_auc"]), ("mean", mean, cv["mean"]), ("sd", sd, cv["sd"])):
                n += 1
                if not np.allclose(want, got, atol=1e-9):
                    bad.append(f"k={k} {name}: {want} vs {got}")
            line = (d / "cv" / "cv.md").read_text()
            n += 1
            if f"{mean:.3f} ± {sd:.3f}" not in line:
                bad.append(f"k={k} cv.md: {mean:.3f} ± {sd:.3f} not in {line!r}")
            print(f"k={k}: AUCs {np.round(aucs, 4).tolist()} mean {mean:.4f} sd {sd:.4f} (ddof 1); cv.json {cv['mean']:.4f} "
                  f"{cv['sd']:.4f}")
    print(f"{n} numbers checked, mismatches: {len(bad)}")
    for b in bad:
        print("  " + b)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [3, 4, 5])

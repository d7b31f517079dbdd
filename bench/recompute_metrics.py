"""Independent recomputation of what `slidestream evaluate` reports (numpy + scikit-learn only, from the paper's
definitions and the documented rules; no slidestream function computes a number here), compared on random
prediction tables. Usage: python bench/recompute_metrics.py [N_TABLES] [--cli K]  (prints each mismatch, then
a count per number family)."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import tempfile
from collections import Counter
from statistics import NormalDist
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

SPLIT_INDEX = {"val": 0, "test": 1}  # the documented seed of a split's resamples: (seed, index)
checked, bad = Counter(), []


# ------------------------------------------------------------------------- definitions
def counts(y, p, t):
    called = p >= t
    return (int(np.sum(y & called)), int(np.sum(y & ~called)), int(np.sum(~y & ~called)), int(np.sum(~y & called)))


def metrics(y, p, t):
    y = y.astype(bool)
    tp, fn, tn, fp = counts(y, p, t)
    return {"sensitivity": tp / (tp + fn) if tp + fn else None, "specificity": tn / (tn + fp) if tn + fp else None,
            "accuracy": (tp + tn) / len(y) if len(y) else None, "auc": auc(y, p)}


def auc(y, p):
    """P(score of a mutant > score of a wildtype) + half the ties: all pairs counted."""
    y = y.astype(bool)
    a, b = p[y], p[~y]
    if not len(a) or not len(b):
        return None
    d = a[:, None] - b[None, :]
    return float(np.mean((d > 0) + 0.5 * (d == 0)))


def youden(y, p):
    """Highest J = sens + spec - 1 over thresholds 'p >= t', t among the probabilities; None if J <= 0 or one
    class. Among equal J: the highest t (the first ROC point)."""
    y = y.astype(bool)
    if y.all() or not y.any():
        return None
    best, bt = -2.0, None
    for t in sorted(set(p.tolist()), reverse=True):
        m = metrics(y, p, t)
        j = m["sensitivity"] + m["specificity"] - 1
        if j > best + 1e-12:
            best, bt = j, t
    return bt if best > 1e-12 else None


def roc_full(y, p):
    """All ROC points (fpr, tpr), from (0, 0) through every distinct threshold, descending."""
    y = y.astype(bool)
    pts = [(0.0, 0.0)]
    for t in sorted(set(p.tolist()), reverse=True):
        tp, fn, tn, fp = counts(y, p, t)
        pts.append((fp / (fp + tn), tp / (tp + fn)))
    return pts


def gda_lr(y, age, img, C=1.0):
    known = np.isfinite(age)
    g = [age[known & (y == c)] for c in (0, 1)]
    if min(len(x) for x in g) < 2 or min(x.std() for x in g) < 0.5:
        return None
    m = [x.mean() for x in g]
    v = [((x - x.mean()) ** 2).mean() for x in g]  # ML variance
    n = [len(x) for x in g]
    pri = [c / sum(n) for c in n]

    def page(a):
        a = np.asarray(a, float)
        out = np.full(a.shape, pri[1])
        k = np.isfinite(a)
        l1 = np.log(pri[1]) - 0.5 * np.log(2 * np.pi * v[1]) - (a[k] - m[1]) ** 2 / (2 * v[1])
        l0 = np.log(pri[0]) - 0.5 * np.log(2 * np.pi * v[0]) - (a[k] - m[0]) ** 2 / (2 * v[0])
        with np.errstate(over="ignore"):  # exp overflow: probability 0, as the limit
            out[k] = 1 / (1 + np.exp(l0 - l1))
        return out

    lr = LogisticRegression(C=C).fit(np.column_stack([img, page(age)]), y)

    def predict(a, im):
        pa = page(a)
        return {"age": pa, "age+image": lr.predict_proba(np.column_stack([im, pa]))[:, 1]}
    return predict


def pct(v, q):
    """Linear-interpolation percentile (NumPy's default, 'linear', Hyndman-Fan type 7), by hand."""
    v = np.sort(v)
    h = (len(v) - 1) * q / 100
    lo = math.floor(h)
    return float(v[lo] + (h - lo) * (v[min(lo + 1, len(v) - 1)] - v[lo]))


Z = NormalDist().inv_cdf(0.975)


def wilson_hand(k, n):
    """Wilson score interval, (k + z^2/2 -+ z sqrt(k (n - k) / n + z^2 / 4)) / (n + z^2); 0 and 1 exact at the ends."""
    half = Z * math.sqrt(k * (n - k) / n + Z * Z / 4)
    return [0.0 if k == 0 else (k + Z * Z / 2 - half) / (n + Z * Z), 1.0 if k == n else (k + Z * Z / 2 + half) / (n + Z * Z)]


def bca_hand(values, est, y, p):
    """Efron's BCa: z0 from the share of resamples below the estimate (equal ones half), the acceleration from the
    leave-one-out AUCs (each recomputed from all pairs), then the adjusted percentiles; None without spread."""
    v = np.array(values)
    if v.max() == v.min():
        return None
    below = (np.sum(v < est - 1e-12) + 0.5 * np.sum(np.abs(v - est) <= 1e-12)) / len(v)
    z0 = NormalDist().inv_cdf(min(max(below, 0.5 / len(v)), 1 - 0.5 / len(v)))
    jack = np.array([auc(np.delete(y, i), np.delete(p, i)) for i in range(len(y))])
    d = jack.mean() - jack
    a = (d ** 3).sum() / (6 * ((d ** 2).sum()) ** 1.5) if (d ** 2).sum() > 0 else 0.0
    q = [NormalDist().cdf(z0 + (z0 + z) / max(1 - a * (z0 + z), 1e-9)) for z in (-Z, Z)]
    lo, hi = pct(v, 100 * q[0]), pct(v, 100 * q[1])
    return [lo, hi] if hi > lo else None


# ------------------------------------------------------------------------- expected report
def expect(tab, threshold, fusion, fusion_split, B, seed, groups, fitted=None, val_thr=None, given=None):
    lab = tab["label"] >= 0
    t = {k: v[lab] for k, v in tab.items()}
    y = t["label"].astype(int)
    preds = {"image": t["image_prob"]}
    if fitted is not None:
        preds.update(fitted(t["age"], t["image_prob"]))
    elif fusion:
        s = np.isin(t["split"], [fusion_split])
        f = gda_lr(y[s], t["age"][s], t["image_prob"][s])
        if f is None:
            return "refused"
        preds.update(f(t["age"], t["image_prob"]))
    if given:  # the engine's fused probabilities (checked above to 1e-6): metrics of near-ties as it reported them
        preds.update({k: np.asarray(v)[lab] for k, v in given.items()})
    val = t["split"] == "val"
    if threshold == "youden" and not val.any() and val_thr is None:
        return "refused"  # nothing to choose it on (val rows all unlabelled)
    thr = {}
    for name, p in preds.items():
        if threshold == "youden":
            thr[name] = youden(y[val], p[val]) if val.any() else val_thr[name]
            thr[name] = 0.5 if thr[name] is None else thr[name]
        else:
            thr[name] = threshold
    out = {"thresholds": thr, "preds": preds}
    for split in ("val", "test"):
        s = t["split"] == split
        if not s.any():
            continue
        ys = y[s]
        rng = np.random.default_rng([seed, SPLIT_INDEX[split]])
        idx = rng.integers(0, len(ys), size=(B, len(ys))) if B else np.zeros((0, len(ys)), int)
        out[split] = {}
        for name, p in preds.items():
            ps = p[s]
            b = metrics(ys, ps, thr[name])
            boots = {k: [] for k in b}
            for r in idx:
                mr = metrics(ys[r], ps[r], thr[name])
                for k, v in mr.items():
                    if v is not None:
                        boots[k].append(v)
            need = {"sensitivity": (ys == 1).sum() >= 2, "specificity": (ys == 0).sum() >= 2,
                    "accuracy": len(ys) >= 2, "auc": min((ys == 1).sum(), (ys == 0).sum()) >= 2}
            tp, fn, tn, fp = counts(ys.astype(bool), ps, thr[name])
            b["ci"] = {"sensitivity": wilson_hand(tp, tp + fn) if need["sensitivity"] and B else None,
                       "specificity": wilson_hand(tn, tn + fp) if need["specificity"] and B else None,
                       "accuracy": wilson_hand(tp + tn, len(ys)) if need["accuracy"] and B else None,
                       "auc": bca_hand(boots["auc"], b["auc"], ys, ps) if need["auc"] and boots["auc"] else None}
            b["n"], b["mutant"], b["wildtype"] = len(ys), int((ys == 1).sum()), int((ys == 0).sum())
            held = [set(ys[r].tolist()) for r in idx]
            b["kept"] = {"sensitivity": sum(1 in h for h in held), "specificity": sum(0 in h for h in held),
                         "auc": sum(len(h) == 2 for h in held)}
            b["need"] = need
            b["roc"] = roc_full(ys, ps) if 0 < ys.sum() < len(ys) else None
            out[split][name] = b
    g = np.isin(t["split"], groups)
    out["age_groups"] = {}
    for gname, sel in (("<55", g & (t["age"] < 55)), (">=55", g & (t["age"] >= 55))):
        yg = y[sel]
        e = {"n": int(sel.sum()), "mutant": int((yg == 1).sum()), "wildtype": int((yg == 0).sum()), "errors": {},
             "accuracy": {}}
        for name, p in preds.items():
            c = p[sel] >= thr[name]
            e["errors"][name] = {"mutant": int(np.sum((yg == 1) & ~c)), "wildtype": int(np.sum((yg == 0) & c))}
            e["accuracy"][name] = float(np.mean(c == (yg == 1))) if len(yg) else None
        out["age_groups"][gname] = e
    return out


def close(a, b, tol=1e-9):
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= tol


def compare_probs(case, want, got):
    for name, p in want["preds"].items():
        q = np.array(got["patients"][f"{name}_prob"])
        checked["fused probability" if name != "image" else "image probability"] += 1
        if not np.allclose(p, q, atol=1e-6, rtol=0):
            bad.append(f"{case}: {name} probability max diff {np.max(np.abs(p - q))}")


def compare(case, want, got):
    def chk(fam, ok, what):
        checked[fam] += 1
        if not ok:
            bad.append(f"{case}: {fam}: {what}")
    for name, thr in want["thresholds"].items():
        chk("threshold", close(thr, got["meta"]["thresholds"][name], 1e-12), f"{name} {thr} vs {got['meta']['thresholds'][name]}")
    for split in ("val", "test"):
        chk("splits present", (split in want) == (split in got), split)
        if split not in want or split not in got:
            continue
        for name, w in want[split].items():
            gb = got[split][name]
            for k in ("n", "mutant", "wildtype"):
                chk("counts", w[k] == gb[k], f"{split} {name} {k} {w[k]} vs {gb[k]}")
            for k in ("sensitivity", "specificity", "accuracy", "auc"):
                chk(k, close(w[k], gb[k], 1e-9), f"{split} {name} {w[k]} vs {gb[k]}")
                wc, gc = w["ci"][k], gb["ci"][k]
                chk("ci", (wc is None) == (gc is None) and (wc is None or (close(wc[0], gc[0], 1e-9) and close(wc[1], gc[1], 1e-9))),
                    f"{split} {name} {k} CI {wc} vs {gc}")
            if name == "image":  # the notes on intervals from fewer resamples than asked
                B = got["meta"]["bootstrap"]
                for k, what in (("auc", "AUC"),):  # sensitivity and specificity: Wilson, no resamples
                    notes = [x for x in got["meta"]["notes"] if x.startswith(f"{split}: {what} intervals from the ")]
                    expected = (B and w["kept"][k] < B and w["need"][k])
                    ok = (f"{split}: {what} intervals from the {w['kept'][k]} of {B} resamples" in notes[0]) if expected and notes else not notes and not expected
                    chk("resample-count notes", ok, f"{split} {k}: kept {w['kept'][k]} of {B}, notes {notes}")
            roc = got["meta"]["roc"][split][name]
            if w["roc"] is None:
                chk("roc", roc is None, f"{split} {name} roc should be null")
            else:
                full = set((round(a, 6), round(b, 6)) for a, b in w["roc"])
                pts = list(zip(roc["fpr"], roc["tpr"]))
                sub = all((round(a, 6), round(b, 6)) in full for a, b in pts)
                corners = pts[0] == (0.0, 0.0) and pts[-1] == (1.0, 1.0)
                area = sum((pts[i + 1][0] - pts[i][0]) * (pts[i + 1][1] + pts[i][1]) / 2 for i in range(len(pts) - 1))
                chk("roc", sub and corners and abs(area - w["auc"]) < 1e-5, f"{split} {name} roc {pts} vs {w['roc']}")
    for gname, w in want["age_groups"].items():
        gg = got["age_groups"][gname]
        for k in ("n", "mutant", "wildtype"):
            chk("age group counts", w[k] == gg[k], f"{gname} {k} {w[k]} vs {gg[k]}")
        for name in want["preds"]:
            chk("age group errors", w["errors"][name] == gg["errors"][name], f"{gname} {name} {w['errors'][name]} vs {gg['errors'][name]}")
            chk("age group accuracy", close(w["accuracy"][name], gg["accuracy"][name]), f"{gname} {name} {w['accuracy'][name]} vs {gg['accuracy'][name]}")


# ------------------------------------------------------------------------- random tables
def random_table(rng):
    sizes = {"train": int(rng.integers(0, 6)), "val": int(rng.choice([0, 1, 2, 3, 5, 8, 15, 30])),
             "test": int(rng.choice([1, 2, 3, 5, 8, 15, 30]))}
    n = sum(sizes.values())
    split = np.repeat(list(sizes), list(sizes.values()))
    frac = rng.choice([0.05, 0.2, 0.5, 0.8, 0.95])
    y = (rng.random(n) < frac).astype(int)
    style = rng.integers(0, 4)
    if style == 0:
        p = np.round(rng.random(n), 1)  # many ties, exactly 0.5
    elif style == 1:
        p = rng.choice([0.0, 1.0, 0.5], n)  # 0/1 and the threshold itself
    elif style == 2:
        p = np.clip(0.5 + (y - 0.5) * rng.uniform(0, 0.8) + rng.normal(0, 0.25, n), 0, 1)
    else:
        p = np.round(rng.beta(2, 2, n), 2)
    age = np.round(np.where(y == 1, rng.normal(42, 12, n), rng.normal(60, 10, n)))
    age = np.clip(age, 1, 100)
    age[rng.random(n) < 0.1] = 55.0
    age[rng.random(n) < 0.1] = np.nan
    y[rng.random(n) < 0.05] = -1
    return {"patient_id": np.array([f"P{i:03d}" for i in range(n)]), "label": y, "age": age, "split": split,
            "image_prob": p.astype(float)}


def write_csv(tab, path):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "label", "age", "split", "image_prob"])
        for i in range(len(tab["label"])):
            a = tab["age"][i]
            w.writerow([tab["patient_id"][i], tab["label"][i], "" if np.isnan(a) else repr(float(a)), tab["split"][i],
                        repr(float(tab["image_prob"][i]))])


def main(n_tables=300, cli=5):
    from slidestream.engine import evaluate as ev
    from slidestream.engine.errors import ConfigError

    rng = np.random.default_rng(int(__import__("os").environ.get("SEED", 2026)))
    kinds = Counter()
    for i in range(n_tables):
        tab = random_table(rng)
        if not np.any((tab["split"] == "test") & (tab["label"] >= 0)):
            continue
        threshold = "youden" if rng.random() < 0.5 else float(rng.choice([0.5, 0.3, 0.7]))
        fusion = rng.random() < 0.6
        fsplit = "val" if rng.random() < 0.7 else "train"
        groups = ("test",) if rng.random() < 0.6 else ("val", "test")
        B, seed = int(rng.choice([0, 50, 200])), int(rng.integers(0, 5))
        if threshold == "youden" and not np.any(tab["split"] == "val"):
            threshold = 0.5
        want = expect(tab, threshold, fusion, fsplit, B, seed, groups)
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "pred.csv"
            write_csv(tab, path)
            try:
                got = ev.evaluate(ev.load_predictions(path), fusion="age_gda" if fusion else None, threshold=threshold,
                                  bootstrap=B, seed=seed, age_group_splits=groups, fusion_split=fsplit)
            except ConfigError as e:
                checked["refusal"] += 1
                if want != "refused":
                    bad.append(f"table {i}: refused but computable: {e}")
                continue
            if want == "refused":
                checked["refusal"] += 1
                bad.append(f"table {i}: not refused, though the fusion cannot be fitted")
                continue
            kinds["fusion" if fusion else "image"] += 1
            case = f"table {i} thr={threshold} fusion={fusion}/{fsplit} B={B}"
            compare_probs(case, want, got)
            if fusion:
                full = {k: np.array(got["patients"][f"{k}_prob"]) for k in ("age", "age+image")}
                given = {k: np.full(len(tab["label"]), np.nan) for k in full}
                for k in full:
                    given[k][tab["label"] >= 0] = full[k]
                want = expect(tab, threshold, fusion, fsplit, B, seed, groups, given=given)
            compare(case, want, got)
            if i < cli:  # the CLI writes the same numbers
                out = Path(d) / "out"
                cmd = [str(Path(sys.executable).parent / "slidestream"), "evaluate", str(path), "--out", str(out), "--bootstrap",
                       str(B), "--seed", str(seed), "--threshold", str(threshold), "--age-groups", "+".join(groups)]
                if fusion:
                    cmd += ["--fusion", "age_gda", "--fusion-split", fsplit]
                subprocess.run(cmd, check=True, capture_output=True)
                disk = json.loads((out / "metrics.json").read_text())
                with open(out / "patients.csv") as f:
                    rows = list(csv.DictReader(f))
                disk["patients"] = {k: [float(r[k]) for r in rows] for k in rows[0] if k.endswith("_prob")}
                compare_probs(f"CLI table {i}", want, disk)
                compare(f"CLI table {i}", want, disk)
                checked["cli runs"] += 1
    for i in range(n_tables // 3):  # with a bundle: its val-fitted fusion and val Youden thresholds, a held-out table
        own, held = random_table(rng), random_table(rng)
        held["split"][:] = "test"
        held["patient_id"] = np.array([f"H{j:03d}" for j in range(len(held["label"]))])
        if not np.any(held["label"] >= 0):
            continue
        lab = own["label"] >= 0
        o = {k: v[lab] for k, v in own.items()}
        mine = gda_lr(o["label"][o["split"] == "val"], o["age"][o["split"] == "val"], o["image_prob"][o["split"] == "val"])
        if mine is None:
            continue
        fitted = ev.fit_fusion(o, "age_gda", None, "val")
        B, seed = int(rng.choice([0, 100])), int(rng.integers(0, 5))
        v = o["split"] == "val"
        eng_fused = ev.apply_fusion(fitted, o)
        scores = {"image": o["image_prob"], **eng_fused}
        eng_thr = {k: ev.youden_threshold(o["label"][v], s[v]) for k, s in scores.items()}  # as train records them
        my_thr = {k: youden(o["label"][v], s[v]) for k, s in scores.items()}
        for k in eng_thr:
            checked["bundle youden (train side)"] += 1
            if not close(eng_thr[k], my_thr[k], 1e-12):
                bad.append(f"bundle {i}: train-side youden {k} {eng_thr[k]} vs {my_thr[k]}")
        got = ev.evaluate(held, fitted=fitted, threshold="youden", bootstrap=B, seed=seed, val_thresholds=eng_thr)
        want = expect(held, "youden", False, "val", B, seed, ("test",), fitted=mine, val_thr=my_thr)
        case = f"bundle {i} B={B}"
        compare_probs(case, want, got)
        hl = held["label"] >= 0
        given = {k: np.full(len(held["label"]), np.nan) for k in ("age", "age+image")}
        for k in given:
            given[k][hl] = got["patients"][f"{k}_prob"]
        want = expect(held, "youden", False, "val", B, seed, ("test",), fitted=mine, val_thr=my_thr, given=given)
        compare(case, want, got)
        kinds["bundle"] += 1
    check_aggregate(n_tables)
    print(f"tables evaluated: {dict(kinds)}")
    for fam, n in sorted(checked.items()):
        print(f"  {fam}: {n} numbers checked")
    print(f"mismatches: {len(bad)}")
    for b in bad[:60]:
        print("  " + b)



def check_aggregate(n_tables=200):
    """Patient probabilities from patch probabilities of several slides per patient: mean (the paper's), median,
    top-k mean of ceil(k_frac * n) patches, by hand, against slidestream.engine.aggregate."""
    from slidestream.engine.aggregate import aggregate

    rng = np.random.default_rng(11)
    for _ in range(n_tables):
        pats = [f"P{i}" for i in range(int(rng.integers(1, 8)))]
        ids, probs = [], []
        for pid in pats:
            for _slide in range(int(rng.integers(1, 4))):
                k = int(rng.integers(1, 30))
                ids += [pid] * k
                probs += np.round(rng.random(k), int(rng.integers(1, 3))).tolist()
        order = rng.permutation(len(ids))
        ids, probs = np.array(ids)[order], np.array(probs)[order]
        for method, kf in (("mean", 0.2), ("median", 0.2), ("topk", float(rng.choice([0.07, 0.2, 0.5, 1.0])))):
            got_ids, got = aggregate(ids, probs, method, k_frac=kf)
            for pid, g in zip(got_ids, got):
                v = probs[ids == pid]
                want = {"mean": np.mean(v), "median": np.median(v),
                        "topk": np.mean(np.sort(v)[::-1][:max(1, math.ceil(round(kf * len(v), 9)))])}[method]
                checked[f"aggregate {method}"] += 1
                if abs(want - g) > 1e-12:
                    bad.append(f"aggregate {method} k={kf} {pid}: {want} vs {g}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 300, int(args[args.index("--cli") + 1]) if "--cli" in args else 5)

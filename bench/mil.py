"""Encoder -> feature store -> attention-MIL vs the paper's patch-CNN path, on the demo cohort, same run.

    python bench/mil.py --seed 0                 # the demo cohort: 160 patients, 2:1:1, 40 test; both paths
    python bench/mil.py --patients 48 --mil-encoders resnet18 --epochs 8
    python bench/mil.py --encoders resnet50_trunc,uni --threads 2

Both paths start from the same extracted, split store (the demo's pipeline, cohort and slide size). Timed:
the patch-CNN path = ``train.train_many`` (small CNN, the demo's settings: 3 epochs) + its scoring of every
patient; each MIL path = ``features`` (encoder over every patch) + ``mil train`` (ABMIL, best epoch on val
AUC). CPU seconds are ``time.process_time`` of this process plus the CPU time of its finished child
processes (the CNN's data-loader workers), wall seconds ``time.perf_counter``. ``--mil-encoders``: the
weight-free ``morphometry`` encoder and/or timm model names (random init: no weights can be downloaded
here, so their features are random convolutional texture statistics), each at the patch size. Then ABMIL
patient-level k-fold CV (mean +- sd test AUC) on each encoder's features. The first line also gives the
oracle test AUC: that of the test patients' true round-nucleus fraction (``oracle_auc``). Each MIL line also gives
the paired difference of test AUCs, MIL - CNN, on the same test patients with its 95 % percentile bootstrap
interval (``paired_auc_delta``: the same patient resamples for both paths), so a one-cohort comparison is
read with its uncertainty (40 test patients: the interval is ~ +-0.1 wide). ``--encoders`` instead prints
features/s of presets on 224 px patches (CPU; GPU when present).
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path


def cpu_seconds() -> float:
    """CPU time of this process and of its waited-for children (data-loader workers)."""
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime


def timed(fn):
    c, w = cpu_seconds(), time.perf_counter()
    out = fn()
    return out, cpu_seconds() - c, time.perf_counter() - w


def encoder_ref(name: str, patch: int) -> dict:
    if name == "morphometry":
        return {"name": "morphometry", "params": {"input_size": patch}}
    return {"name": "timm", "params": {"model": name, "input_size": patch}}


def oracle_auc(seed: int, n_patients: int, size: tuple[int, int], st) -> float:
    """Test AUC of the test patients' true round-nucleus fraction (``synthetic.round_fraction``, replayed from each
    slide's generator state as ``synthetic.render`` draws it): what a perfect reader of the slides gets."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from slidestream.engine import synthetic
    from slidestream.engine.features import as_str

    labels, _ = synthetic.draw_patients(n_patients, seed)
    frac = []
    for i, lab in enumerate(labels):
        rng = np.random.default_rng([seed * 100003 + i, 7919 + int(lab)])
        synthetic._tissue(rng, -(-size[1] // 16), -(-size[0] // 16))
        frac.append(synthetic.round_fraction(int(lab), rng))
    test = sorted({int(p[1:]) for p in as_str(st.column("patient_id")[as_str(st.column("split")) == "test"])})
    return float(roc_auc_score(labels[test], np.array(frac)[test]))


def paired_arrays(a_csv: Path, b_csv: Path, split: str = "test"):
    """(labels, a's probabilities, b's probabilities) of the patients of ``split``, aligned by patient id."""
    import numpy as np

    from slidestream.engine import evaluate as ev

    a, b = ev.load_predictions(a_csv), ev.load_predictions(b_csv)
    pa = {p: (y, q) for p, y, q, s in zip(a["patient_id"], a["label"], a["image_prob"], a["split"]) if s == split}
    pb = {p: q for p, q, s in zip(b["patient_id"], b["image_prob"], b["split"]) if s == split}
    ids = sorted(set(pa) & set(pb))
    if len(ids) != len(pa) or len(ids) != len(pb):
        raise SystemExit(f"the two prediction files hold different {split} patients ({len(pa)} vs {len(pb)})")
    return np.array([pa[i][0] for i in ids]), np.array([pa[i][1] for i in ids]), np.array([pb[i] for i in ids])


def paired_auc_delta(a_csv: Path, b_csv: Path, split: str = "test", n: int = 2000, seed: int = 0) -> dict | None:
    """AUC(a) - AUC(b) on the patients of ``split`` in both prediction files, with the 95 % percentile interval of
    a paired bootstrap over patients (resamples holding one class only are dropped and counted)."""
    return mean_paired_delta([(a_csv, b_csv)], split, n, seed)


def mean_paired_delta(pairs: list, split: str = "test", n: int = 2000, seed: int = 0) -> dict | None:
    """The mean over cohorts of AUC(a) - AUC(b), each pair (a_csv, b_csv) one cohort, with the 95 % percentile
    interval of a paired bootstrap that resamples every cohort's patients at once (one pair: the plain paired
    bootstrap). A resample holding one class in some cohort is dropped and counted."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    arrays = [paired_arrays(a, b, split) for a, b in pairs]
    if any(y.min() == y.max() for y, _, _ in arrays):
        return None  # one class among a cohort's test patients: no AUC to compare
    rng = np.random.default_rng(seed)
    deltas, dropped = [], 0
    for _ in range(n):
        idx = [rng.integers(0, len(y), len(y)) for y, _, _ in arrays]
        if any(y[i].min() == y[i].max() for (y, _, _), i in zip(arrays, idx)):
            dropped += 1
            continue
        deltas.append(np.mean([roc_auc_score(y[i], qa[i]) - roc_auc_score(y[i], qb[i]) for (y, qa, qb), i in zip(arrays, idx)]))
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    point = np.mean([roc_auc_score(y, qa) - roc_auc_score(y, qb) for y, qa, qb in arrays])
    return {"delta_auc": round(float(point), 3), "ci95": [round(float(lo), 3), round(float(hi), 3)],
            "patients": sum(len(y) for y, _, _ in arrays), "resamples": len(deltas), "one_class_resamples": dropped}


def mean_pool_lr(feats: Path, store: Path) -> dict:
    """Sanity baseline on the same split: an L2 logistic regression on each patient's mean feature vector
    (standardized with the training patients' mean/sd), its C chosen by validation AUC over 1e-3..1e2 (never the
    test patients); returns its test AUC and the chosen C."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from slidestream.engine import mil
    from slidestream.engine.features import FeatureStore
    from slidestream.engine.store import PatchStore

    fs, ps = FeatureStore(feats), PatchStore.open(store)
    f = fs.rows().astype(np.float64)
    bags = mil.patient_bags(fs, ps.column("split"), {c: ps.column(c) for c in ("patient_id", "label", "age")})
    x, y, sp = np.stack([f[r].mean(0) for r in bags["rows"]]), bags["label"], bags["split"]
    tr = sp == "train"
    x = (x - x[tr].mean(0)) / (x[tr].std(0) + 1e-6)
    fits = {c: LogisticRegression(C=c, max_iter=5000).fit(x[tr], y[tr]) for c in (1e-3, 1e-2, 1e-1, 1, 10, 100)}
    c = max(fits, key=lambda c: roc_auc_score(y[sp == "val"], fits[c].decision_function(x[sp == "val"])))
    return {"C": c, "test_auc": round(float(roc_auc_score(y[sp == "test"], fits[c].decision_function(x[sp == "test"]))), 3)}


def done_when(auc: float | None, cnn_auc: float | None, cpu: float, cnn_cpu: float) -> bool | None:
    """The goal: the MIL path's test AUC at least the CNN's, in under a fifth of its CPU time; None when a test
    AUC is undefined (one class in the test split; comparing None was a TypeError after the whole run)."""
    if auc is None or cnn_auc is None:
        return None
    return bool(auc >= cnn_auc and cpu < cnn_cpu / 5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=160, help="cohort size (the demo's: 160)")
    ap.add_argument("--epochs", type=int, default=3, help="CNN epochs (the demo's: 3)")
    ap.add_argument("--mil-encoders", default="morphometry,resnet10t",
                    help="comma-separated: morphometry and/or timm model names (random init)")
    ap.add_argument("--mil-epochs", type=int, default=20, help="ABMIL's most epochs (the demo's settings, "
                    "engine/mil.py DEMO_MIL: early stopping after 5 epochs without a better validation AUC, weight decay 0.1)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="cohort seed (also the split's and both trainings')")
    ap.add_argument("--seeds", default=None, help="comma-separated cohort seeds, one after another (OUT/s<seed>), "
                    "then a table over them with the means (instead of --seed)")
    ap.add_argument("--mil-variants", default=None, help="JSON {name: mil settings}: more ABMIL runs on the same "
                    "features, each over the demo's settings, e.g. '{\"cosine\": {\"schedule\": \"cosine\"}}'")
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for both paths (1: CPU time is not "
                    "inflated by threads waiting on a busy machine)")
    ap.add_argument("--encoders", default=None, help="only measure features/s of these presets (comma-separated), "
                    "random init, 224 px, then exit")
    a = ap.parse_args()
    if a.encoders:
        return throughput(a.encoders.split(","), a.threads)

    import skimage.feature  # noqa: F401 - imported before the clocks start: every path is timed warm
    import timm  # noqa: F401
    import torch

    torch.set_num_threads(a.threads)

    out = Path(a.out or tempfile.mkdtemp(prefix="bench-mil-"))
    seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else [a.seed]
    variants = {"demo": {}, **json.loads(a.mil_variants or "{}")}
    rows = []
    for seed in seeds:
        rows += cohort_run(a, seed, out / f"s{seed}" if a.seeds else out, variants)
    if len(seeds) > 1:
        summary(rows, seeds)


def cohort_run(a, seed: int, out: Path, variants: dict) -> list[dict]:
    """One cohort: extract + split, the patch CNN, then per encoder the features and each MIL variant (``mil``
    settings over the demo's) on them, the mean-pooled logistic regression, and the k-fold CV. Returns the
    MIL lines (JSON, also printed)."""
    from slidestream.engine import config, demo, features, mil, runner, splits, synthetic, train
    from slidestream.engine.store import PatchStore

    pipe = demo.demo_pipeline(a.epochs, seed=seed)
    patch = int(pipe["patches"]["size"])
    cohort = synthetic.make_cohort(out / "slides", n_patients=a.patients, seed=seed, size=(2048, 1536), mpp=0.25,
                                   objective=40, levels=(1, 4, 16))
    runner.extract(pipe, runner.read_cohort(cohort), out / "store", progress=False)
    st = PatchStore.open(out / "store", mode="r+")
    sp = pipe["training"]["split"]
    parts = splits.split_store(st, sp["ratios"], sp["seed"])
    print(json.dumps({"store": str(out / "store"), "patches": len(st), "patients": a.patients, "seed": seed,
                      "split": {k: v["patients"] for k, v in parts.items()},
                      "oracle_test_auc": round(oracle_auc(seed, a.patients, (2048, 1536), st), 3)}), flush=True)

    res, cnn_cpu, cnn_wall = timed(lambda: train.train_many(pipe, out / "store", out / "cnn", log=None))
    r = res["results"][0]
    cnn_auc = r["metrics"]["test"]["auc"] if "test" in r["metrics"] else None
    print(json.dumps({"path": "patch-CNN", "seed": seed, "arch": r.get("arch"), "epochs": a.epochs, "test_auc": cnn_auc,
                      "cpu_s": round(cnn_cpu, 1), "wall_s": round(cnn_wall, 1)}), flush=True)

    lines = []
    for name in a.mil_encoders.split(","):
        feats = out / f"f-{name}.zarr"
        fs = f_cpu = f_wall = None
        pipes = {}
        for variant, settings in variants.items():  # "demo" first: the others are compared with it
            mpipe = pipes[variant] = config.parse({**pipe, "encoder": encoder_ref(name, patch), "aggregator": {"name": "abmil"},
                                  "mil": {**mil.DEMO_MIL, "epochs": a.mil_epochs, "seed": seed, **settings}})
            if fs is None:
                fs, f_cpu, f_wall = timed(lambda: features.extract_features(mpipe, out / "store", feats, progress=False,
                                                                            log=None))
            mout = out / (f"mil-{name}" if variant == "demo" else f"mil-{name}-{variant}")
            m, m_cpu, m_wall = timed(lambda: mil.train(mpipe, feats, mout, log=None))
            auc = m["metrics"]["test"]["auc"]
            line = {"path": "features+ABMIL", "seed": seed, "encoder": name, "variant": variant, "mil": mpipe["mil"],
                    "features_per_s": fs["patches_per_s"], "features_cpu_s": round(f_cpu, 1), "mil_cpu_s": round(m_cpu, 1),
                    "val_auc": m["metrics"]["val"]["auc"], "test_auc": auc, "cnn_test_auc": cnn_auc,
                    "cpu_s": round(f_cpu + m_cpu, 1), "wall_s": round(f_wall + m_wall, 1),
                    "cpu_ratio_vs_cnn": round((f_cpu + m_cpu) / cnn_cpu, 3),
                    "mil_minus_cnn": paired_auc_delta(mout / "predictions.csv", out / "cnn" / r["arch"] / "predictions.csv"),
                    "done_when": done_when(auc, cnn_auc, f_cpu + m_cpu, cnn_cpu),
                    "predictions": str(mout / "predictions.csv"),
                    "cnn_predictions": str(out / "cnn" / r["arch"] / "predictions.csv")}
            if variant != "demo":
                line["demo_predictions"] = str(out / f"mil-{name}" / "predictions.csv")
                line["variant_minus_demo"] = paired_auc_delta(mout / "predictions.csv", line["demo_predictions"])
            print(json.dumps(line), flush=True)
            lines.append(line)
        lr = {"path": "mean-pooled features + logistic regression (sanity baseline)", "seed": seed, "encoder": name,
              **mean_pool_lr(feats, out / "store")}
        print(json.dumps(lr), flush=True)
        lines.append(lr)
        if a.folds:
            cv, cv_cpu, _ = timed(lambda: mil.train(pipes["demo"], feats, out / f"mil-cv-{name}", folds=a.folds, log=None))
            print(json.dumps({"path": f"ABMIL {a.folds}-fold CV", "seed": seed, "encoder": name,
                              "test_auc": cv["cv"]["test_auc"], "mean": cv["cv"]["mean"], "sd": cv["cv"]["sd"],
                              "cpu_s": round(cv_cpu, 1)}), flush=True)
    return lines


def summary(rows: list[dict], seeds: list[int]) -> None:
    """Markdown table over the seeds: per seed and encoder, the CNN's and each MIL variant's test AUC, the paired
    differences with their 95 % intervals, CPU ratios and the mean-pooled logistic regression; then the means."""
    import numpy as np

    def ci(d):
        return "n/a" if not d else f"{d['delta_auc']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"

    def f3(v):  # an AUC, or n/a where a split held one class
        return "n/a" if v is None or v != v else f"{v:.3f}"

    mils = [r for r in rows if r["path"] == "features+ABMIL"]
    lrs = {(r["seed"], r["encoder"]): r for r in rows if r["path"].startswith("mean-pooled")}
    print("\n| seed | encoder | variant | CNN test AUC | MIL val AUC | MIL test AUC | MIL − CNN [95% CI] | "
          "variant − demo [95% CI] | MIL/CNN CPU | mean-pool LR test AUC | done-when |")
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for r in mils:
        print(f"| {r['seed']} | {r['encoder']} | {r['variant']} | {f3(r['cnn_test_auc'])} | {f3(r['val_auc'])} | "
              f"{f3(r['test_auc'])} | {ci(r['mil_minus_cnn'])} | {ci(r.get('variant_minus_demo')) if r['variant'] != 'demo' else ''} | "
              f"{r['cpu_ratio_vs_cnn']:.2f} | {lrs[(r['seed'], r['encoder'])]['test_auc']:.3f} | {r['done_when']} |", flush=True)
    for key in sorted({(r["encoder"], r["variant"]) for r in mils}, key=lambda k: [r["variant"] for r in mils].index(k[1])):
        g = [r for r in mils if (r["encoder"], r["variant"]) == key]
        mean = lambda f: float(np.mean([np.nan if f(r) is None else f(r) for r in g]))  # noqa: E731
        vs_cnn = mean_paired_delta([(r["predictions"], r["cnn_predictions"]) for r in g])
        vs_demo = mean_paired_delta([(r["predictions"], r["demo_predictions"]) for r in g]) if key[1] != "demo" else None
        print(f"| mean {','.join(map(str, seeds))} | {key[0]} | {key[1]} | {f3(mean(lambda r: r['cnn_test_auc']))} | "
              f"{f3(mean(lambda r: r['val_auc']))} | {f3(mean(lambda r: r['test_auc']))} | {ci(vs_cnn)} | "
              + (ci(vs_demo) if key[1] != "demo" else "")
              + f" | {mean(lambda r: r['cpu_ratio_vs_cnn']):.2f} | "
              f"{f3(float(np.mean([lrs[(r['seed'], key[0])]['test_auc'] for r in g])))} | "
              f"{sum(bool(r['done_when']) for r in g)}/{len(g)} |", flush=True)


def throughput(names: list[str], threads: int, n: int = 8) -> None:
    """Features/s of presets (random init) on n 224 px patches, after a warm-up call; GPU (fp16 autocast)
    when present, else the CPU with ``threads`` threads."""
    import torch

    from slidestream.engine import registry

    torch.set_num_threads(threads)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    for name in names:
        enc = registry.get("encoder", name).build().to(dev)
        x = torch.rand(n, 3, 224, 224, device=dev)
        with torch.autocast(dev, enabled=dev == "cuda"):
            enc(x[:2])
            t = time.perf_counter()
            enc(x)
            if dev == "cuda":
                torch.cuda.synchronize()
        print(json.dumps({"encoder": name, "device": dev, "batch": n, "features_per_s": round(n / (time.perf_counter() - t), 2)}))
        del enc


if __name__ == "__main__":
    main()

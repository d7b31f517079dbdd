"""Encoder -> feature store -> attention-MIL vs the paper's patch-CNN path, on the demo cohort, same run.

    python bench/mil.py [--patients 32] [--epochs 8] [--encoder-model resnet18] [--mil-epochs 20] [--folds 5]
    python bench/mil.py --encoders resnet50_trunc,uni --threads 2

Both paths start from the same extracted, split store (the demo's pipeline and synthetic cohort). Timed:
the patch-CNN path = ``train.train_many`` (small CNN, the demo's settings) + scoring; the MIL path =
``features`` (encoder over every patch) + ``mil train`` (ABMIL). CPU seconds are ``time.process_time``
(all threads of this process), wall seconds ``time.perf_counter``. The encoder is random-init (no weights
can be downloaded here): its features are random convolutional texture statistics. Also prints features/s
of presets on 224 px patches (CPU; GPU when present) with ``--encoders resnet50_trunc,uni``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path



def timed(fn):
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c, time.perf_counter() - w


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--encoder-model", default="resnet10t")
    ap.add_argument("--mil-epochs", type=int, default=20)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for both paths (1: CPU time is not "
                    "inflated by threads waiting on a busy machine)")
    ap.add_argument("--encoders", default=None, help="only measure features/s of these presets (comma-separated), "
                    "random init, 224 px, then exit")
    a = ap.parse_args()
    if a.encoders:
        return throughput(a.encoders.split(","), a.threads)

    from slidestream.engine import config, demo, features, mil, runner, splits, synthetic, train
    from slidestream.engine.store import PatchStore

    import timm  # noqa: F401 - imported before the clocks start: both paths are timed warm
    import torch

    torch.set_num_threads(a.threads)

    out = Path(a.out or tempfile.mkdtemp(prefix="bench-mil-"))
    pipe = demo.demo_pipeline(a.epochs, seed=a.seed)
    cohort = synthetic.make_cohort(out / "slides", n_patients=a.patients, seed=a.seed, size=(2048, 1536), mpp=0.25,
                                   objective=40, levels=(1, 4, 16))
    runner.extract(pipe, runner.read_cohort(cohort), out / "store", progress=False)
    st = PatchStore.open(out / "store", mode="r+")
    sp = pipe["training"]["split"]
    splits.split_store(st, sp["ratios"], sp["seed"])
    print(json.dumps({"store": str(out / "store"), "patches": len(st), "patients": a.patients}))

    res, cnn_cpu, cnn_wall = timed(lambda: train.train_many(pipe, out / "store", out / "cnn", log=None))
    r = res["results"][0]
    cnn_auc = r["metrics"]["test"]["auc"] if "test" in r["metrics"] else None
    print(json.dumps({"path": "patch-CNN", "arch": r.get("arch"), "epochs": a.epochs, "test_auc": cnn_auc,
                      "cpu_s": round(cnn_cpu, 1), "wall_s": round(cnn_wall, 1)}))

    mpipe = config.parse({**pipe,
                          "encoder": {"name": "timm", "params": {"model": a.encoder_model, "input_size": 64}},
                          "aggregator": {"name": "abmil"}, "mil": {"epochs": a.mil_epochs, "lr": 5e-4, "seed": a.seed}})
    fs, f_cpu, f_wall = timed(lambda: features.extract_features(mpipe, out / "store", out / "f.zarr", progress=False, log=None))
    m, m_cpu, m_wall = timed(lambda: mil.train(mpipe, out / "f.zarr", out / "mil", log=None))
    print(json.dumps({"path": "features+ABMIL", "encoder": a.encoder_model, "features_per_s": fs["patches_per_s"],
                      "features_cpu_s": round(f_cpu, 1), "mil_cpu_s": round(m_cpu, 1), "test_auc": m["metrics"]["test"]["auc"],
                      "cpu_s": round(f_cpu + m_cpu, 1), "wall_s": round(f_wall + m_wall, 1),
                      "cpu_ratio_vs_cnn": round((f_cpu + m_cpu) / cnn_cpu, 3)}))
    if a.folds:
        cv, cv_cpu, _ = timed(lambda: mil.train(mpipe, out / "f.zarr", out / "mil-cv", folds=a.folds, log=None))
        print(json.dumps({"path": f"ABMIL {a.folds}-fold CV", "test_auc": cv["cv"]["test_auc"], "mean": cv["cv"]["mean"],
                          "sd": cv["cv"]["sd"], "cpu_s": round(cv_cpu, 1)}))


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

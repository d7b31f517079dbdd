#!/usr/bin/env python3
"""Training and inference throughput per classifier architecture, store loader vs in-memory tensors.

For each architecture: training images/s (forward + backward + Adam step) fed (a) by the streaming store
loader (``engine/loader.py``: zarr chunk reads + normalization + conversion) and (b) from a tensor already
in memory (the compute-only ceiling), then inference patches/s. One JSON line per architecture on stdout.

  python bench/train.py --arch small_cnn --arch resnet18 --arch resnet50 --size 128 --steps 4
Runs on CUDA when present (the loader then uses its DALI path), else CPU. A synthetic store is built once
in --work (patches cut from ``engine/synthetic`` renders).

Loader alone (``--loader``): img/s of whole epochs of the store loader (block reads + ``gray_clahe_gamma`` +
resize to ``--input`` + standardisation, no network) and the mean number of different slides in a batch of
16, on a store of ``--slides`` slides x ``--per-slide`` patches (chunk 32, as liu2020.json). ``--ab REV`` also
times ``engine/loader.py`` as of git revision REV in the same run, interleaved, ``--repeat`` times each:

  python bench/train.py --loader --ab ee73ff0 --repeat 3
"""
import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import time

import numpy as np
import torch

from slidestream.engine import registry
from slidestream.engine.bench import timed_train
from slidestream.engine.loader import PatchLoader, norm_chain
from slidestream.engine.store import PatchStore
from slidestream.engine.synthetic import make_store


def bench_store(path: str, **kw) -> PatchStore:
    """The synthetic store at ``path``, (re)built when missing or of another store format."""
    try:
        return PatchStore.open(path)
    except Exception:
        shutil.rmtree(path, ignore_errors=True)
        make_store(path, **kw)
        return PatchStore.open(path)


def loader_at(rev: str):
    """``engine/loader.py`` as of git revision ``rev``, imported beside the current one."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = subprocess.check_output(["git", "show", f"{rev}:engine/loader.py"], cwd=root, text=True)
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader(f"slidestream.engine._loader_{rev}", loader=None))
    mod.__package__ = "slidestream.engine"
    exec(compile(src, f"{rev}:engine/loader.py", "exec"), mod.__dict__)
    return mod


def bench_loader(a):
    from slidestream.engine import loader as current

    st = bench_store(os.path.join(a.work, f"loader{a.size}-{a.slides}x{a.per_slide}"), n_patients=a.slides,
                     per_patient=a.per_slide, patch=a.size, chunk=32)
    chain, _ = norm_chain({"normalization": {"classifier": {"name": "gray_clahe_gamma"}}})
    slide = st.column("slide_id")
    rows = np.arange(len(st))
    versions = {"current": current}
    if a.ab:
        versions[f"at {a.ab}"] = loader_at(a.ab)
    times: dict[str, list] = {k: [] for k in versions}
    cpu: dict[str, list] = {k: [] for k in versions}
    mix: dict[str, float] = {}
    for rep in range(a.repeat):
        for name in (list(versions) if rep % 2 == 0 else list(versions)[::-1]):  # ABBA: drifting load hits both
            loader = versions[name].PatchLoader(st, rows, a.batch, chain, seed=0, workers=2)
            t0, c0, n, per = time.perf_counter(), time.process_time(), 0, []
            for x, _, r in loader.tensors(rep, a.input, "cpu"):
                n += len(x)
                if len(r) == a.batch:
                    per.append(len(set(slide[r])))
            times[name].append(n / (time.perf_counter() - t0))
            cpu[name].append(1000 * (time.process_time() - c0) / n)
            mix[name] = float(np.mean(per))
    for name in versions:
        print(json.dumps({"loader": name, "slides": a.slides, "patches": len(st), "blocks": len(st.blocks()),
                          "size": a.size, "input": a.input, "img_s_median": round(float(np.median(times[name])), 1),
                          "img_s_runs": [round(t, 1) for t in times[name]],
                          "cpu_ms_per_img_median": round(float(np.median(cpu[name])), 2),
                          "slides_per_batch_mean": round(mix[name], 2)}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", action="append")
    ap.add_argument("--size", type=int, default=128, help="patch side (paper: 256)")
    ap.add_argument("--batch", type=int, default=16, help="batch size (paper: 16)")
    ap.add_argument("--steps", type=int, default=4, help="timed training steps per measurement")
    ap.add_argument("--channels", type=int, default=1, choices=(1, 3), help="1 = gray_clahe_gamma input (paper)")
    ap.add_argument("--work", default="/tmp/slidestream-bench-train")
    ap.add_argument("--loader", action="store_true", help="time the store loader alone (no network)")
    ap.add_argument("--ab", metavar="REV", help="with --loader: also time engine/loader.py of git revision REV")
    ap.add_argument("--slides", type=int, default=32, help="with --loader: slides in the store")
    ap.add_argument("--per-slide", type=int, default=192, help="with --loader: patches per slide")
    ap.add_argument("--input", type=int, default=224, help="with --loader: network input side (resize)")
    ap.add_argument("--repeat", type=int, default=3, help="with --loader: epochs timed per loader")
    a = ap.parse_args()
    if a.loader:
        return bench_loader(a)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    store_path = os.path.join(a.work, f"store{a.size}")
    st = bench_store(store_path, n_patients=8, per_patient=a.batch * (a.steps + 2) // 8 + 1, patch=a.size, chunk=32)
    pipe = {"normalization": {"classifier": {"name": "gray_clahe_gamma"}}} if a.channels == 1 else {}
    chain, ch = norm_chain(pipe)
    for arch in a.arch or ["small_cnn", "resnet18", "resnet50"]:
        torch.manual_seed(0)
        model = registry.get("classifier", arch).build(num_classes=2, in_channels=ch, dropout=0.5).to(dev).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-5)
        loader = PatchLoader(st, np.arange(len(st)), a.batch, chain, seed=0, workers=2)
        streamed = timed_train(model, ((x, y) for x, y, _ in loader.tensors(0, a.size, dev)), opt, a.steps)
        x = torch.randn(a.batch, ch, a.size, a.size, device=dev)
        y = torch.randint(0, 2, (a.batch,), device=dev)
        memory = timed_train(model, ((x, y) for _ in range(a.steps + 2)), opt, a.steps)
        model.eval()
        xb = torch.randn(64, ch, a.size, a.size, device=dev)
        with torch.no_grad():
            model(xb[:8])
            t0 = time.perf_counter()
            reps = 2
            for _ in range(reps):
                model(xb)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            infer = reps * len(xb) / (time.perf_counter() - t0)
        print(json.dumps({"arch": arch, "device": str(dev), "threads": torch.get_num_threads(), "size": a.size,
                          "channels": ch, "batch": a.batch, "train_img_s_store_loader": round(streamed, 1),
                          "train_img_s_in_memory": round(memory, 1), "infer_patches_s": round(infer, 1)}), flush=True)


if __name__ == "__main__":
    main()

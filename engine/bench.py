"""Throughput measurements behind ``slidestream bench`` (and the thin ``bench/*.py`` scripts).

Each function returns one flat dict of numbers; the baseline of a comparison is measured in the same
run. Every result carries ``peak_rss_mb`` (the whole process) and, on CUDA, ``gpu_peak_mb`` (torch's
peak allocation).
"""
from __future__ import annotations

import os
import platform
import resource
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


def _memory(device: str) -> dict[str, Any]:
    out: dict[str, Any] = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device == "cuda":
        import torch

        out["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
        out["gpu"] = torch.cuda.get_device_name()
    return out


def _device(device: str) -> str:
    from .device import resolve_device

    return resolve_device(device)


# ------------------------------------------------------------------------------------- extraction
def bare_decode(path: str, tiles: list[dict], scale: float, factor: float, threads: int, device: str = "cpu") -> float:
    """Seconds to decode the thumbnail's level and the kept tiles' regions with cuCIM, nothing else."""
    from .slide import open_slide

    s = open_slide(path, order=["cucim"], mpp=None, device=device)
    r = s.reader
    r.direct_jpeg = False  # cuCIM's own decode, as the bound was defined (the reader's libjpeg path: no faster)
    t0 = time.perf_counter()
    lvl = s.best_level(scale)
    r.read_region((0, 0), lvl, r.level_dimensions[lvl])
    tl = s.best_level(factor)
    ds = r.level_downsamples[tl]

    def read(t):
        n = int(round(t["w"] / ds))
        return r.read_region((t["x"], t["y"]), tl, (n, n)).shape

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(read, tiles))
    dt = time.perf_counter() - t0
    s.close()
    return dt


def extract_bench(slides: list[str], pipeline: dict[str, Any] | None = None, device: str = "cpu", repeat: int = 3,
                  threads: int | None = None, reader: str | None = None) -> dict[str, Any]:
    """Extract ``slides`` (a cohort, one store) ``repeat`` times, interleaved with the bare cuCIM decode of
    the same pixels (the thumbnail's level plus the kept tiles); medians. ``reader`` is tried first
    (e.g. ``dali``)."""
    from . import config
    from .cohort import read_cohort
    from .errors import SlideError
    from .runner import extract
    from .store import PatchStore

    pipeline = dict(pipeline or config.load(config.example("liu2020")))
    pipeline["device"] = dev = _device(device)
    if reader:  # tried first, then the others in their usual order
        from . import registry

        rest = sorted(registry.plugins("reader").items(), key=lambda kv: kv[1].priority)
        pipeline["reader"] = {**pipeline.get("reader", {}), "order": [reader] + [n for n, _ in rest if n != reader]}
    threads = threads or os.cpu_count() or 1
    cohort = [row for s in slides for row in read_cohort(s)]
    for s in slides:  # warm the page cache so neither side pays for the first disk read
        with open(s, "rb") as f:
            while f.read(1 << 24):
                pass
    scale = float(pipeline["thumbnail"]["scale"])
    out_px = int(pipeline["tiling"]["params"].get("size", 1024))
    tmp = Path(tempfile.mkdtemp(prefix="ss-bench-"))
    runs, bares = [], []
    try:
        for _ in range(repeat):
            shutil.rmtree(tmp / "store", ignore_errors=True)
            t0 = time.perf_counter()
            summary = extract(pipeline, cohort, tmp / "store", threads=threads, qa=False, progress=False)
            runs.append(time.perf_counter() - t0)
            bad = [s for s in summary["slides"] if s.get("status") == "error"]
            if bad or not summary.get("rows"):  # a benchmark of failed slides measures nothing: never report it
                why = f"{bad[0].get('slide_id', '?')}: {bad[0].get('reason', '?')}" if bad else "no patches"
                raise SlideError(f"bench extract on {dev}: {len(bad)} of {len(cohort)} slides failed ({why})")
            recs = PatchStore.open(tmp / "store").records("slides")
            bare = 0.0
            for row in cohort:
                rec = recs.get(row.slide_id, {})
                bare += bare_decode(row.slide_path, rec.get("tiles", []), scale, rec.get("factor", 1.0), threads, dev)
            bares.append(bare)
        n_tiles = sum(len(r.get("tiles", [])) for r in recs.values())
        patch_bytes = sum(f.stat().st_size for f in (tmp / "store").rglob("*") if f.is_file())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    engine_s, bare_s = float(np.median(runs)), float(np.median(bares))
    n = int(summary.get("rows", 0))
    mp = n_tiles * out_px * out_px / 1e6
    readers = sorted({r.get("reader", "?") for r in recs.values()})
    decoded_on = sorted({r.get("decode_device", "?") for r in recs.values()})
    return {"bench": "extract", "device": dev, "reader": ",".join(readers), "decode_device": ",".join(decoded_on), "slides": len(cohort), "threads": threads, "repeat": repeat,
            "tiles": n_tiles, "patches": n, "engine_s": round(engine_s, 3), "engine_s_min": round(min(runs), 3),
            "tiles_per_s": round(n_tiles / engine_s, 2), "patches_per_s": round(n / engine_s, 1),
            "decode_mp_per_s": round(mp / bare_s, 1) if bare_s else None, "bare_decode_s": round(bare_s, 3),
            "engine_over_decode": round(engine_s / bare_s, 2) if bare_s else None,
            "store_bytes_per_patch": int(patch_bytes / max(n, 1)), **_memory(dev)}


# ------------------------------------------------------------------------------------- training
def timed_train(model, batches, opt, steps: int) -> float:
    """Training images per second over ``steps`` optimizer steps of ``(x, y)`` batches (the first is warm-up)."""
    import torch
    import torch.nn.functional as F

    n, t0, x = 0, None, None
    for i, (x, y) in enumerate(batches):
        if i == 1:  # the first step is warm-up
            if x.is_cuda:
                torch.cuda.synchronize()
            t0, n = time.perf_counter(), 0
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(x) if i >= 1 else 0
        if i >= steps:
            break
    if x is not None and x.is_cuda:
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def train_bench(device: str = "cpu", archs: tuple[str, ...] = ("small_cnn", "resnet18"), size: int = 128,
                batch: int = 16, steps: int = 4, work: str | None = None) -> dict[str, Any]:
    """Training images/s fed by the store loader and from an in-memory tensor, inference patches/s."""
    import torch

    from . import registry
    from .loader import PatchLoader, norm_chain
    from .store import PatchStore
    from .synthetic import make_store

    dev = torch.device(_device(device))
    work = Path(work or tempfile.mkdtemp(prefix="ss-bench-train-"))
    store_path = work / f"store{size}"
    if not (store_path / "zarr.json").exists():  # a store of an earlier call in the same --work folder is reused
        make_store(store_path, n_patients=8, per_patient=batch * (steps + 2) // 8 + 1, patch=size, chunk=32)
    st = PatchStore.open(store_path)
    chain, ch = norm_chain({"normalization": {"classifier": {"name": "gray_clahe_gamma"}}})

    def timed(model, batches, opt):
        return timed_train(model, batches, opt, steps)

    out: dict[str, Any] = {"bench": "train", "device": dev.type, "size": size, "batch": batch, "steps": steps}
    for arch in archs:
        torch.manual_seed(0)
        model = registry.get("classifier", arch).build(num_classes=2, in_channels=ch, dropout=0.5).to(dev).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=1e-6)
        loader = PatchLoader(st, np.arange(len(st)), batch, chain, seed=0, workers=2)
        streamed = timed(model, ((x, y) for x, y, _ in loader.tensors(0, size, dev)), opt)
        x = torch.randn(batch, ch, size, size, device=dev)
        y = torch.randint(0, 2, (batch,), device=dev)
        memory = timed(model, ((x, y) for _ in range(steps + 2)), opt)
        model.eval()
        xb = torch.randn(64, ch, size, size, device=dev)
        with torch.no_grad():
            model(xb[:8])
            t0 = time.perf_counter()
            for _ in range(2):
                model(xb)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            infer = 2 * len(xb) / (time.perf_counter() - t0)
        out[f"{arch}_train_img_s_loader"] = round(streamed, 1)
        out[f"{arch}_train_img_s_memory"] = round(memory, 1)
        out[f"{arch}_infer_patches_s"] = round(infer, 1)
    return {**out, **_memory(dev.type)}


# ------------------------------------------------------------------------------------- PG-GAN
def gan_bench(device: str = "cpu", steps: int | None = None, max_res: int = 32, amp: bool = True,
              compile_: bool = False) -> dict[str, Any]:
    """PG-GAN (paper-size networks) training images/s per resolution, and the paper schedule's hours."""
    import torch

    from slidestream.plugins.augmenters import pggan

    dev_name = _device(device)
    steps = steps or (20 if dev_name == "cuda" else 2)
    cfg = pggan.resolve({"device": dev_name, "amp": amp, "compile": compile_})
    dev = pggan.pick_device(dev_name)
    trainer = pggan.Trainer(cfg, dev)
    R = int(np.log2(cfg["resolution"]))
    data = torch.randint(0, 256, (64, 3, 256, 256), dtype=torch.uint8, device=dev)
    rng = np.random.default_rng(0)
    ips = {}
    for res in [r for r in pggan.RESOLUTIONS if 4 <= r <= min(max_res, cfg["resolution"])]:
        mb = int(cfg["minibatch"].get(str(res), cfg["minibatch_default"]))
        phase = pggan.Phase(float(R - np.log2(res)), res, 1.0, mb)

        def step():
            idx = rng.integers(0, len(data), mb)
            trainer.step(pggan.real_batch(data, idx, rng.random(mb) < 0.5, phase, dev), phase)

        step()  # warm-up (cuDNN autotune, compile, optimizer state)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        ips[res] = steps * mb / (time.perf_counter() - t)
    kimg: dict[int, float] = {}
    k = 0.0
    while k < cfg["total_kimg"]:  # kimg spent at each resolution over the paper's schedule
        res = pggan.schedule(int((k + 0.5) * 1000), cfg).resolution
        kimg[res] = kimg.get(res, 0.0) + 1.0
        k += 1.0
    measured = {r: v for r, v in kimg.items() if r in ips}
    seconds = sum(v * 1000 / ips[r] for r, v in measured.items())
    return {"bench": "gan", "device": dev.type, "torch": torch.__version__, "steps_per_resolution": steps,
            "amp_bf16": bool(amp and dev.type == "cuda"), "compile": bool(compile_ and dev.type == "cuda"),
            **{f"img_s_{r}": round(v, 2) for r, v in ips.items()},
            "schedule_hours": round(seconds / 3600, 2) if len(measured) == len(kimg) else None,
            "schedule_hours_measured_resolutions": round(seconds / 3600, 2),
            "cpu": platform.processor() or platform.machine(), **_memory(dev.type)}


# ------------------------------------------------------------------------------------- features
def features_bench(slide: str, device: str = "cpu", encoder: str | None = None, batch: int = 64) -> dict[str, Any]:
    """Encoder patches/s over one extracted slide (random-init weights: throughput only): wall-clock
    including the model build, and the feature store's encoding-only rate."""
    from . import config, features, registry
    from .cohort import read_cohort
    from .runner import extract

    dev = _device(device)
    names = sorted(registry.plugins("encoder"))
    name = encoder or ("resnet50_trunc" if "resnet50_trunc" in names else names[0])  # CLAM's baseline
    pipeline = dict(config.load(config.example("liu2020")), device=dev, encoder={"name": name})
    tmp = Path(tempfile.mkdtemp(prefix="ss-bench-feat-"))
    try:
        extract(pipeline, read_cohort(slide), tmp / "store", qa=False, progress=False)
        t0 = time.perf_counter()
        s = features.extract_features(pipeline, tmp / "store", tmp / "feats.zarr", device=dev, batch_size=batch,
                                      progress=False, log=lambda *a, **k: None)
        dt = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = int(s.get("encoded", s.get("rows", 0)) or 0)
    enc = s.get("patches_per_s")  # the feature store's own rate: encoding only, no model build
    return {"bench": "features", "available": True, "device": dev, "encoder": name, "batch": batch, "patches": n,
            "seconds": round(dt, 3), "patches_per_s": round(n / dt, 1) if n else None,
            "encode_patches_per_s": round(float(enc), 1) if enc else None, **_memory(dev)}


# ------------------------------------------------------------------------------------- decoders
def decode_bench(slide: str, level: int = 1, size: int = 1024, n: int = 32, threads: int | None = None,
                 device: str = "cpu", repeat: int = 3, seed: int = 0) -> dict[str, Any]:
    """Region reads of ``n`` random, non-overlapping ``size``-px squares of ``level``'s grid (like
    extraction's tiles): cuCIM vs DALI tile decoding (engine/dali_decode.py), interleaved, same regions,
    same thread count; medians of ``repeat``."""
    from .dali_decode import DaliTiles
    from .slide import open_slide

    dev = _device(device)
    threads = threads or os.cpu_count() or 1
    s = open_slide(slide, order=["cucim"], device=dev)
    r = s.reader
    W, H = r.level_dimensions[level]
    ds = r.level_downsamples[level]
    rng = np.random.default_rng(seed)  # distinct cells of the level's size x size grid (as extraction tiles)
    cells = rng.permutation((W // size) * (H // size))[:n]
    regs = [(int(c % (W // size) * size * ds), int(c // (W // size) * size * ds)) for c in cells]
    d = DaliTiles(slide, device="mixed" if dev == "cuda" else "cpu", threads=threads, batch=32)
    got = d.read_region(regs[0], level, (size, size))  # builds the DALI pipeline outside the timing
    max_diff = int(np.abs(got.astype(np.int16) - r.read_region(regs[0], level, (size, size))).max())
    tc, td = [], []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeat):
            t0 = time.perf_counter()
            list(pool.map(lambda loc: r.read_region(loc, level, (size, size)), regs))
            tc.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            d.read_regions([(loc, level, (size, size)) for loc in regs])
            td.append(time.perf_counter() - t0)
    s.close()
    d.close()
    n = len(regs)
    mp = n * size * size / 1e6
    c, g = float(np.median(tc)), float(np.median(td))
    return {"bench": "decode", "device": dev, "cucim_decode_device": r.decode_device, "dali_backend": d.device,
            "slide": os.path.basename(slide), "level": level, "regions": n,
            "region_px": size, "threads": threads, "cucim_s": round(c, 3), "dali_s": round(g, 3),
            "cucim_mp_per_s": round(mp / c, 1), "dali_mp_per_s": round(mp / g, 1),
            "dali_over_cucim_speed": round(c / g, 2), "max_abs_diff_first_region": max_diff, **_memory(dev)}

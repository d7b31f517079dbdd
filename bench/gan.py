"""PG-GAN training throughput per resolution, and the wall time of the paper's schedule on this device.

    python bench/gan.py [--device auto|cpu|cuda] [--steps N] [--max-resolution 256] [--no-amp] [--compile]

Builds the paper-size networks (256x256, fmap_base 8192, fmap_max 512; ``pggan.DEFAULTS``) and times full
training steps (WGAN-GP D step + G step + EMA, real batches built on the device as in training) at every
resolution with the spec's minibatch (4:128, 8:128, 16:128, 32:64, 64:32, 128:16, 256:8). The estimate
walks the schedule (600 kimg stabilization + 600 kimg fade-in per level, 12,000 kimg in total) and divides
each resolution's kimg by its measured images/s (fade-in steps are priced like stabilization steps).
Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from slidestream.plugins.augmenters import pggan


def schedule_kimg(cfg: dict, step_kimg: float = 1.0) -> dict[int, float]:
    """kimg spent at each network resolution over the whole schedule."""
    out: dict[int, float] = {}
    k = 0.0
    while k < cfg["total_kimg"]:
        res = pggan.schedule(int((k + step_kimg / 2) * 1000), cfg).resolution  # the bin's midpoint
        out[res] = out.get(res, 0.0) + step_kimg
        k += step_kimg
    return out


def bench(device: str, steps: int, max_res: int, amp: bool, compile_: bool) -> dict:
    cfg = pggan.resolve({"device": device, "amp": amp, "compile": compile_})
    dev = pggan.pick_device(device)
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
    kimg = schedule_kimg(cfg)
    measured = {r: k for r, k in kimg.items() if r in ips}
    seconds = sum(k * 1000 / ips[r] for r, k in measured.items())
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {"bench": "pggan_train", "device": name, "torch": torch.__version__, "amp_bf16": bool(amp and dev.type == "cuda"),
            "compile": bool(compile_ and dev.type == "cuda"), "steps_per_resolution": steps,
            "images_per_s": {str(r): round(v, 2) for r, v in ips.items()},
            "minibatch": {str(r): int(cfg["minibatch"].get(str(r), cfg["minibatch_default"])) for r in ips},
            "schedule_kimg": {str(r): k for r, k in sorted(kimg.items())}, "total_kimg": cfg["total_kimg"],
            "estimated_schedule_hours": round(seconds / 3600, 2) if len(measured) == len(kimg) else None,
            "estimated_hours_measured_resolutions": round(seconds / 3600, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=None, help="timed steps per resolution (default 2 on CPU, 20 on GPU)")
    ap.add_argument("--max-resolution", type=int, default=256)
    ap.add_argument("--no-amp", action="store_true", help="fp32 on CUDA instead of bf16 autocast")
    ap.add_argument("--compile", action="store_true", help="torch.compile the generator (CUDA)")
    a = ap.parse_args()
    cuda = a.device != "cpu" and torch.cuda.is_available()
    steps = a.steps or (20 if cuda else 2)
    print(json.dumps(bench(a.device, steps, a.max_resolution, not a.no_amp, a.compile)))


if __name__ == "__main__":
    main()

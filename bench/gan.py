"""PG-GAN training throughput per resolution, and the wall time of the paper's schedule on this device.

    python bench/gan.py [--device auto|cpu|cuda] [--steps N] [--max-resolution 256] [--no-amp] [--compile]

A thin wrapper over ``slidestream.engine.bench.gan_bench`` (also ``slidestream bench gan``): builds the
paper-size networks (256x256, fmap_base 8192, fmap_max 512; ``pggan.DEFAULTS``) and times full training
steps (WGAN-GP D step + G step + EMA, real batches built on the device as in training) at every
resolution with the spec's minibatch (4:128, 8:128, 16:128, 32:64, 64:32, 128:16, 256:8). The estimate
walks the schedule (600 kimg stabilization + 600 kimg fade-in per level, 12,000 kimg in total) and divides
each resolution's kimg by its measured images/s (fade-in steps are priced like stabilization steps).
Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json

from slidestream.engine.bench import gan_bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=None, help="timed steps per resolution (default 2 on CPU, 20 on GPU)")
    ap.add_argument("--max-resolution", type=int, default=256)
    ap.add_argument("--no-amp", action="store_true", help="fp32 on CUDA instead of bf16 autocast")
    ap.add_argument("--compile", action="store_true", help="torch.compile the generator (CUDA)")
    a = ap.parse_args()
    print(json.dumps(gan_bench(a.device, a.steps, a.max_resolution, not a.no_amp, a.compile)))


if __name__ == "__main__":
    main()

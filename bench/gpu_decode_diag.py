"""GPU decode diagnosis (run by bench/gpu_check.sh on a GPU machine): are the GPU decoders' pixels right?

1. cuCIM ``read_region(device="cuda")`` against its CPU decode, in a fresh process per cuFile setting
   (default; ``CUFILE_FORCE_COMPAT_MODE``; a cufile.json allowing/forcing compatibility mode), since on
   a machine without GPUDirect Storage cuFile cannot register the file and cuCIM 26.10 returned wrong
   pixels with no error.
2. DALI ``mixed`` (nvJPEG) against DALI ``cpu`` (libjpeg-turbo) with and without
   ``jpeg_fancy_upsampling`` and with the hardware decoder off (``hw_decoder_load=0``).

    python bench/gpu_decode_diag.py [slide.svs ...]     # default: the real SVS files in tests/data

Prints one JSON line (mean / 99.9th percentile / max |GPU - CPU| per case).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SLIDES = [ROOT / "tests/data/wsi/CMU-1-Small-Region.svs", ROOT / "tests/data/wsi/tcga-cr-7395-01a-01-ts1.svs"]

CUCIM_CHILD = r"""
import json, sys, numpy as np, cupy
from cucim import CuImage
img = CuImage(sys.argv[1])
w, h = img.resolutions["level_dimensions"][0]
n = min(512, w, h); loc = ((w - n) // 2, (h - n) // 2)
cpu = np.asarray(img.read_region(location=loc, size=(n, n), level=0))
gpu = cupy.asnumpy(cupy.asarray(img.read_region(location=loc, size=(n, n), level=0, device="cuda")))
d = np.abs(gpu.astype(int) - cpu) if gpu.shape == cpu.shape else np.full(1, 255)
print(json.dumps({"mean": round(float(d.mean()), 3), "p999": float(np.percentile(d, 99.9)), "max": int(d.max())}))
"""


def cucim_case(slide: Path, env_extra: dict) -> dict:
    env = {**os.environ, **env_extra}
    r = subprocess.run([sys.executable, "-c", CUCIM_CHILD, str(slide)], env=env, capture_output=True, text=True,
                       timeout=120)
    out = {"rc": r.returncode, "cufile_error": "cuFileHandleRegister" in r.stderr}
    try:
        out.update(json.loads(r.stdout.strip().splitlines()[-1]))
    except Exception:  # noqa: BLE001
        out["stderr_tail"] = r.stderr[-400:]
    return out


def dali_cases(slide: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from slidestream.engine.dali_decode import DaliTiles

    out = {}
    with DaliTiles(slide, device="cpu") as c:
        w, h = c.level_dimensions[0]
        rng = np.random.default_rng(0)
        n = min(1024, w, h)
        reqs = [((int(rng.integers(0, w - n + 1)), int(rng.integers(0, h - n + 1))), 0, (n, n)) for _ in range(8)]
        ref = [a.copy() for a in c.read_regions(reqs)]
    for name, args in {"default_nvjpeg": {"jpeg_fancy_upsampling": False},
                       "fancy_upsampling": {"jpeg_fancy_upsampling": True},
                       "fancy_no_hw": {"jpeg_fancy_upsampling": True, "hw_decoder_load": 0.0},
                       "no_hw": {"jpeg_fancy_upsampling": False, "hw_decoder_load": 0.0}}.items():
        try:
            with DaliTiles(slide, device="mixed", decoder_args=args) as g:
                g.read_regions(reqs[:1])
                t0 = time.perf_counter()
                got = [a.copy() for a in g.read_regions(reqs)]
                dt = time.perf_counter() - t0
            d = np.concatenate([np.abs(a.astype(int) - b).ravel() for a, b in zip(got, ref)])
            out[name] = {"mean": round(float(d.mean()), 3), "p999": float(np.percentile(d, 99.9)),
                         "max": int(d.max()), "s": round(dt, 3)}
        except Exception as e:  # noqa: BLE001
            out[name] = {"error": f"{type(e).__name__}: {e}"[:400]}
    return out


def main(argv: list[str]) -> None:
    slides = [Path(a) for a in argv] or SLIDES
    tmp = Path(tempfile.mkdtemp())
    compat = tmp / "cufile.json"
    compat.write_text(json.dumps({"properties": {"allow_compat_mode": True, "force_compat_mode": True}}))
    allow = tmp / "cufile_allow.json"
    allow.write_text(json.dumps({"properties": {"allow_compat_mode": True}}))
    settings = {"default": {}, "CUFILE_FORCE_COMPAT_MODE": {"CUFILE_FORCE_COMPAT_MODE": "true"},
                "json_allow_compat": {"CUFILE_ENV_PATH_JSON": str(allow)},
                "json_force_compat": {"CUFILE_ENV_PATH_JSON": str(compat)}}
    res = {}
    for s in slides:
        try:
            dali = dali_cases(s)
        except Exception as e:  # noqa: BLE001 - e.g. a JPEG 2000 slide: DALI decodes JPEG tiles only
            dali = {"error": f"{type(e).__name__}: {e}"[:400]}
        res[s.name] = {"cucim": {k: cucim_case(s, v) for k, v in settings.items()}, "dali": dali}
    print(json.dumps({"bench": "gpu_decode_diag", "slides": res}))


if __name__ == "__main__":
    main(sys.argv[1:])

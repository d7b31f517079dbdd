#!/usr/bin/env bash
# On the GPU machine, the last of bench/gpu_pack.sh's calls: join the parts copied to /root/p by the earlier
# calls with the one carried now ($1), install them into the image's python, check the imports, run
# bench/gpu_check.sh (BUDGET seconds, default 420) and print its steps.
set -uo pipefail
LAST=${1:?usage: gpu_unpack_and_check.sh .pN}
ROOT=$PWD
mkdir -p /root/p && cp "$LAST"/* /root/p/
cat /root/p/site.tar.xz.part-* | xz -T0 -dc | tar -xf - -C /tmp || { echo "unpacking failed"; exit 1; }
SP=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp -r /tmp/site312/. "$SP"/
cd "$ROOT"
python3 - <<'PY'
import importlib
for m in ["nvidia.dali", "nvidia.dali.plugin.pytorch", "cucim", "cupy", "zarr", "dask", "typer", "openslide", "cc3d",
          "imagecodecs", "simplejpeg", "pydicom", "jsonschema", "torch", "torchvision", "timm", "skimage"]:
    try:
        print("ok", m, getattr(importlib.import_module(m), "__version__", ""))
    except Exception as e:  # noqa: BLE001
        print("FAIL", m, repr(e)[:300])
import torch; print("cuda", torch.cuda.is_available())
PY
export PYTHON=python3 WHEELS=/nonexistent GPU_CHECK_BUDGET_S=${BUDGET:-420} PYTHONUNBUFFERED=1
bash bench/gpu_check.sh 2>&1 | tee "${OUT:-.}/gpu_check.log"
python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))
for k, v in d['steps'].items(): print(k, json.dumps(v)[:600])" "${OUT:-.}/gpu_check.json"

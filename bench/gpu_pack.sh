#!/usr/bin/env bash
# Pack what the GPU machine lacks for bench/gpu_check.sh into parts that fit one device call each.
#
#   bash bench/gpu_pack.sh          # here (needs pip + xz; ~4 min): writes .p0/ .. .pN/ (git-ignored via
#                                   # .git/info/exclude), ~218 MB in 50 MiB parts
# Then, on the lent machine, one call per part, back to back (it stays warm only ~30 s between calls):
#   run(command="mkdir -p /root/p && cp .p0/* /root/p/", carry=[".p0"])   ... same for .p1 .. .p(N-1)
#   run(command="bash bench/gpu_unpack_and_check.sh .pN", carry=[".pN"], timeout_s=530)
# Used on 2026-12-04 (H200, Python 3.12, torch 2.11 preinstalled): five calls, 13 min of device time in all.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYV=${GPU_PY:-3.12}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64
      --platform manylinux_2_5_x86_64)
# the project's dependencies the GPU image lacks (or has in other versions), and DALI's and cuCIM's own;
# nvidia-libnvcomp (28 MB) is left out: DALI opens it only for its decompression operators
PKGS=(cucim-cu13==26.10.0 nvidia-dali-cuda130==2.4.0 nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-nvjpeg==13.3.2.43
      nvidia-nvjpeg2k-cu13==0.11.0.51 nvidia-nvtiff-cu13==0.8.0.82 astunparse==1.6.3 gast==0.7.0 optree==0.20.0
      nvtx==0.2.17 makefun==1.16.0 libcst==1.9.0 dask==2026.8.0 distributed==2026.8.0 zarr==3.1.6
      numcodecs==0.16.6 google-crc32c==1.9.0 donfig==0.8.1.post1 connected-components-3d==4.1.1
      jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
      openslide-python==1.4.7 openslide-bin==4.0.1.2 pydicom==3.0.2 imagecodecs==2026.3.6 simplejpeg==1.9.0
      typer==0.29.2 rich==15.0.0 pluggy==1.7.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0
      typing-inspection==0.4.5 annotated-doc==0.0.7 shellingham==1.5.4 partd==1.4.2 locket==1.0.0
      tornado==6.6.1 tblib==3.2.2 zict==3.0.0)
python -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  "${PLAT[@]}" --platform any -d "$W/whl" "${PKGS[@]}"
python -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version "$PYV" --implementation cp \
  "${PLAT[@]}" --target "$W/site312" "$W"/whl/*.whl
# DALI ships a backend per Python version: keep the target's only
find "$W/site312/nvidia/dali" -maxdepth 1 -name 'backend_impl.cpython-*.so' ! -name "*cpython-${PYV/./}-*" -delete
tar -cf - -C "$W" site312 | xz -T0 -6 >"$W/site.tar.xz"
rm -rf .p[0-9]
split -b 50M -d "$W/site.tar.xz" "$W/site.tar.xz.part-"
i=0
for part in "$W"/site.tar.xz.part-*; do
  mkdir -p ".p$i"
  mv "$part" ".p$i/"
  grep -qx "/.p$i/" .git/info/exclude 2>/dev/null || echo "/.p$i/" >>.git/info/exclude
  i=$((i + 1))
done
ls -la .p[0-9]/

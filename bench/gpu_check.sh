#!/usr/bin/env bash
# GPU check: every `gpu`-marked test, then the extraction, decode, training, GAN and feature benchmarks on
# cpu and cuda, written as ONE JSON file to $OUT/gpu_check.json (or ./gpu_check.json). Budget: ~8 minutes
# on one H100/H200 (each step has its own timeout; a step that times out is recorded, not fatal).
#
#   bash bench/gpu_check.sh                 # on the GPU machine, from the repository root
#   bash bench/gpu_check.sh --cpu-dry-run   # here: same steps, tiny sizes, cuda steps recorded as skipped
# Environment: OUT (output folder), GPU_CHECK_BUDGET_S (default 450), GPU_CHECK_TESTS (pytest paths,
# default tests), GPU_CHECK_ONLY (e.g. "extract features": run only these benchmarks), PYTHON, WHEELS.
#
# A fresh GPU machine has Python, torch and CuPy but no PyPI. What ran on an H200 (2026-12-04, results in
# bench/README.md): `bash bench/gpu_pack.sh` here, then its five device calls, the last of which runs
# bench/gpu_unpack_and_check.sh (it installs the packed site-packages and calls this script). Or carry the
# wheels in ./wheels (or $WHEELS):
#   - cucim-cu13            (pip download cucim-cu13 --no-deps -d wheels)
#   - nvidia-dali-cuda130   (pip download nvidia-dali-cuda130 --no-deps -d wheels; it is ~0.5 GB: split
#                            it to fit the transfer, `split -b 60M X.whl wheels/X.whl.part-`, the script
#                            joins `*.whl.part-*` back in name order)
#   - the project's pure-Python dependencies the machine lacks (typer, rich, pluggy, zarr, numcodecs,
#     donfig, tifffile, imagecodecs, jsonschema, openslide-python/openslide-bin, scikit-image, timm,
#     dask, ...: `pip download -d wheels <name> --no-deps` for each one `pip check` reports missing)
# It installs them with `pip install --no-index --no-deps wheels/*.whl`, then the project itself with
# `pip install --no-index --no-deps --no-build-isolation -e .`.
set -uo pipefail

DRY=0
[[ "${1:-}" == "--cpu-dry-run" ]] && DRY=1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUTDIR="${OUT:-$PWD}"
mkdir -p "$OUTDIR"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export SLIDESTREAM_CACHE="$WORK/cache"
LINES="$WORK/results.jsonl"
: >"$LINES"
PY="${PYTHON:-python}"
T_START=$(date +%s)

record() {  # record NAME JSON-LINE
  "$PY" -c 'import json,sys; print(json.dumps({"step": sys.argv[1], **json.loads(sys.argv[2])}))' "$1" "$2" >>"$LINES"
}

BUDGET=${GPU_CHECK_BUDGET_S:-450}  # seconds for everything; each step gets min(its limit, what is left)

step() {  # step NAME TIMEOUT_S CMD...: the command's last stdout line is its JSON result
  local name=$1 limit=$2
  shift 2
  if [[ -n "${GPU_CHECK_ONLY:-}" && " $GPU_CHECK_ONLY " != *" ${name%_*} "* ]]; then
    record "$name" '{"skipped": "not in GPU_CHECK_ONLY"}'
    return
  fi
  local left=$(( BUDGET - ($(date +%s) - T_START) ))
  if (( left < 15 )); then
    record "$name" '{"skipped": "time budget spent"}'
    return
  fi
  (( limit > left )) && limit=$left
  local t0 out rc
  t0=$(date +%s.%N)
  out=$(timeout "$limit" "$@" 2>"$WORK/$name.err")
  rc=$?
  local dt
  dt=$("$PY" -c "import sys; print(round($(date +%s.%N) - $t0, 2))")
  local last
  last=$(printf '%s\n' "$out" | tail -n 1)
  if [[ $rc -eq 0 ]] && "$PY" -c 'import json,sys; json.loads(sys.argv[1])' "$last" 2>/dev/null; then
    record "$name" "$("$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); d["wall_s"]=float(sys.argv[2]); print(json.dumps(d))' "$last" "$dt")"
  else
    local why="exit $rc"
    [[ $rc -eq 124 ]] && why="timed out after ${limit}s"
    record "$name" "$("$PY" -c 'import json,sys; print(json.dumps({"error": sys.argv[1], "stderr_tail": open(sys.argv[2]).read()[-800:], "wall_s": float(sys.argv[3])}))' "$why" "$WORK/$name.err" "$dt")"
  fi
  echo "[gpu_check] $name: rc=$rc (${dt}s)" >&2
}

skip() {
  record "$1" '{"skipped": "cpu dry run: no GPU"}'
  echo "[gpu_check] $1: skipped (cpu dry run)" >&2
}

# --------------------------------------------------------------------------- install (GPU machine only)
if [[ $DRY -eq 0 ]]; then
  WHEELS="${WHEELS:-$ROOT/wheels}"
  if [[ -d "$WHEELS" ]]; then
    for first in "$WHEELS"/*.whl.part-aa; do
      [[ -e "$first" ]] || continue
      whl="${first%.part-aa}"
      [[ -e "$whl" ]] || cat "$whl".part-* >"$whl"
    done
    "$PY" -m pip install --no-index --no-deps -q "$WHEELS"/*.whl || echo "[gpu_check] some wheels did not install" >&2
  fi
  "$PY" -m pip install --no-index --no-deps --no-build-isolation -q -e . || echo "[gpu_check] project install failed" >&2
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$WORK/gpu.txt" 2>&1
  record environment "$("$PY" -c 'import json,sys; print(json.dumps({"gpu": open(sys.argv[1]).read().strip()}))' "$WORK/gpu.txt")"
fi
SS=(slidestream)
command -v slidestream >/dev/null || SS=("$PY" -m slidestream.engine)

# --------------------------------------------------------------------------- gpu-marked tests
TESTS="${GPU_CHECK_TESTS:-tests}"
timeout 200 "$PY" -m pytest -q -m gpu -p no:cacheprovider --junitxml="$WORK/gpu_tests.xml" $TESTS >"$WORK/gpu_tests.log" 2>&1
rc=$?
record gpu_tests "$("$PY" - "$WORK/gpu_tests.xml" "$rc" "$WORK/gpu_tests.log" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
try:
    s = ET.parse(sys.argv[1]).getroot()
    s = s.find("testsuite") if s.tag == "testsuites" else s
    d = {k: int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    d["failed"] = [c.get("classname") + "::" + c.get("name") for c in s.iter("testcase")
                   if c.find("failure") is not None or c.find("error") is not None]
except Exception as e:
    d = {"error": f"no junit report: {e}"}
d["exit"] = int(sys.argv[2])
d["log_tail"] = open(sys.argv[3]).read()[-1500:]
print(json.dumps(d))
EOF
)"
echo "[gpu_check] gpu tests: rc=$rc" >&2

# --------------------------------------------------------------------------- benchmarks
if [[ $DRY -eq 1 ]]; then
  SLIDE=(--size 4096 4096); TRAIN=(--arch small_cnn --patch 32 --steps 1); GAN=(--steps 1 --max-resolution 4)
  DEC=(--n 2 --region 256); REP=(--repeat 1)
else
  SLIDE=(--size 32768 24576); TRAIN=(--arch resnet50 --arch inception_v3 --patch 256 --steps 10)
  GAN=(--max-resolution 256); DEC=(--n 64); REP=(--repeat 3)
fi
for dev in cpu cuda; do
  if [[ $dev == cuda && $DRY -eq 1 ]]; then
    for b in extract extractdali decode train gan features; do skip "${b}_cuda"; done
    continue
  fi
  step "extract_$dev" 120 "${SS[@]}" bench extract --device "$dev" "${SLIDE[@]}" "${REP[@]}" --json
  step "extractdali_$dev" 60 "${SS[@]}" bench extract --device "$dev" --reader dali "${SLIDE[@]}" "${REP[@]}" --json
  step "decode_$dev" 45 "${SS[@]}" bench decode --device "$dev" "${SLIDE[@]}" "${DEC[@]}" --json
  if [[ $dev == cpu && $DRY -eq 0 ]]; then  # the paper-size networks on CPU: small measurements only
    step train_cpu 40 "${SS[@]}" bench train --device cpu --arch resnet50 --patch 128 --steps 2 --json
    step gan_cpu 40 "${SS[@]}" bench gan --device cpu --steps 1 --max-resolution 16 --json
  else
    step "train_$dev" 90 "${SS[@]}" bench train --device "$dev" "${TRAIN[@]}" --json
    step "gan_$dev" 100 "${SS[@]}" bench gan --device "$dev" "${GAN[@]}" --json
  fi
  step "features_$dev" 45 "${SS[@]}" bench features --device "$dev" "${SLIDE[@]}" --json
done
if [[ $DRY -eq 0 ]]; then  # are the GPU decoders' pixels right (cuCIM per cuFile setting, DALI mixed options)
  step decode_diag 90 "$PY" bench/gpu_decode_diag.py
fi

# --------------------------------------------------------------------------- one JSON file
"$PY" - "$LINES" "$OUTDIR/gpu_check.json" "$DRY" "$(( $(date +%s) - T_START ))" <<'EOF'
import json, platform, sys
steps = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    steps[d.pop("step")] = d
out = {"dry_run": sys.argv[3] == "1", "wall_s": int(sys.argv[4]), "python": platform.python_version(),
       "host": platform.node(), "steps": steps}
json.dump(out, open(sys.argv[2], "w"), indent=1)
print(f"[gpu_check] wrote {sys.argv[2]} ({len(steps)} steps, {sys.argv[4]} s)", file=sys.stderr)
EOF
# every step's stderr, the gpu tests' log and junit report, for reading after the machine is gone
tar -czf "$OUTDIR/gpu_check_logs.tgz" -C "$WORK" --exclude=cache . 2>/dev/null || true

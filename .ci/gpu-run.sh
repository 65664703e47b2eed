#!/usr/bin/env bash
# The GPU check, on a machine with a GPU and the CUDA 13.0 driver/toolkit but no Rust: runs the
# executables .ci/gpu-prepare.sh built into device-bin/ and writes logs under $OUT (default
# gpu-out/). Every step has its own time limit so one hang cannot eat the whole budget.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
B=device-bin

# NVRTC and cuBLAS: the toolkit's lib64 if present, else wherever the libraries are.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
if ! ls /usr/local/cuda/lib64/libnvrtc.so* >/dev/null 2>&1; then
  for lib in libnvrtc.so libcublas.so; do
    f=$(find / -xdev \( -name "$lib.13*" -o -name "$lib.12*" \) 2>/dev/null | head -1)
    [ -n "$f" ] && export LD_LIBRARY_PATH="$(dirname "$f")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  done
fi
export TESSERA_CUDA_INCLUDE="${TESSERA_CUDA_INCLUDE:-/usr/local/cuda/include}"
export TESSERA_PTXAS="${TESSERA_PTXAS:-/usr/local/cuda/bin/ptxas}"
# Test binaries read tests/conformance relative to the crate root.
export CARGO_MANIFEST_DIR="$PWD"

{
  nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  ls /usr/local/cuda/lib64 2>/dev/null | grep -E "nvrtc|cublas" | head
} 2>&1 | tee "$OUT/gpu.txt"

step() { # step NAME SECONDS COMMAND...
  local name=$1 secs=$2
  shift 2
  echo "== $name"
  local t0=$SECONDS
  timeout "$secs" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "rc=$rc seconds=$((SECONDS - t0))" | tee -a "$OUT/$name.log"
  grep -E "test result|passed|failed|accuracy|FAILED|panicked|error" "$OUT/$name.log" | tail -8
}

# Ordered by what a failure would tell; limits sum to ~7 min so one device call (10 min at most)
# holds the whole check with the machine's start. The conformance and training test binaries
# repeat what `tessera conformance` and `tessera train` run, so they are left out here.
step cuda-backend 60 "$B/backend" --test-threads=1 --nocapture
step conformance 60 "$B/tessera" conformance tests/conformance --device cuda
step train 90 "$B/tessera" train --device cuda --out "$OUT/train"
step bench 120 "$B/workloads" --device cuda
step gradcheck 60 env TESSERA_TEST_DEVICE=cuda "$B/gradcheck"
step kernels-compile 30 "$B/kernels_compile" --nocapture
grep '^{' "$OUT/bench.log" >"$OUT/bench.jsonl" 2>/dev/null || true

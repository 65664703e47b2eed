#!/usr/bin/env bash
# NVRTC, the CUDA headers and ptxas from PyPI wheels (no GPU, no toolkit needed), cached in
# $CUDA_WHEELS_DIR. Source it: it exports LD_LIBRARY_PATH, TESSERA_CUDA_INCLUDE, TESSERA_PTXAS.
# Pinned to 13.0.x: newer NVRTC emits PTX that a CUDA 13.0 (driver 580) machine rejects.
CUDA_WHEELS_DIR="${CUDA_WHEELS_DIR:-$HOME/.cache/tessera/cuda-wheels-13.0.88}"
C13="$CUDA_WHEELS_DIR/nvidia/cu13"
if [ ! -x "$C13/bin/ptxas" ] || [ ! -e "$C13/lib/libnvrtc.so.13" ] || [ ! -e "$C13/include/cuda_fp16.h" ] || [ ! -e "$C13/include/crt/mma.h" ]; then
  rm -rf "$CUDA_WHEELS_DIR" "$CUDA_WHEELS_DIR.tmp"
  python3 -m pip install --quiet --no-deps --disable-pip-version-check --target "$CUDA_WHEELS_DIR.tmp" \
      nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 nvidia-cuda-nvcc==13.0.88
  T="$CUDA_WHEELS_DIR.tmp/nvidia/cu13"
  rm -f "$T"/lib/*.alt.so* "$T"/lib/*.a                                 # the alternative NVRTC, static libs
  find "$T/bin" -mindepth 1 -maxdepth 1 ! -name ptxas -exec rm -rf {} +  # keep only ptxas
  mv "$CUDA_WHEELS_DIR.tmp" "$CUDA_WHEELS_DIR"
fi
export LD_LIBRARY_PATH="$C13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TESSERA_CUDA_INCLUDE="$C13/include"
export TESSERA_PTXAS="$C13/bin/ptxas"

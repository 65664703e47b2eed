#!/usr/bin/env bash
# Builds here (the GPU machine has no Rust toolchain) every executable the GPU check runs and
# copies them, stripped, into device-bin/ (git-ignored; pass it in the device tool's `carry`).
# Then, on the GPU machine, from the repository root: bash .ci/gpu-run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf device-bin
mkdir -p device-bin
json=$(mktemp)
cargo test --release --no-run --message-format=json \
  -p tessera-cuda --test backend --test kernels_compile >>"$json"
cargo test --release --no-run --message-format=json \
  -p tessera --test gradcheck >>"$json"
cargo bench --no-run --message-format=json --bench workloads >>"$json"
cargo build --release --message-format=json --bin tessera >>"$json"
python3 - "$json" <<'PY'
import json, shutil, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable") if m.get("reason") == "compiler-artifact" else None
    if exe:
        name = m["target"]["name"]
        shutil.copy(exe, f"device-bin/{name}")
        print("device-bin/" + name)
PY
rm -f "$json"
strip device-bin/* 2>/dev/null || true
du -ch device-bin/* | tail -1
total=$(du -cb device-bin/* | tail -1 | cut -f1)
if [ "$total" -gt $((64 * 1024 * 1024)) ]; then
  echo "device-bin is over the 64 MiB carry limit" >&2
  exit 1
fi

#!/usr/bin/env bash
# Runs the GPU benchmark of the reference trainer and keeps its log and figures.
# Usage: bench/gpu_bench.sh [OUT_DIR] [extra gpu_bench.py flags, e.g. --toy]
# Needs python3 with torch, transformers, peft and tokenizers (trainer/requirements.txt); it
# downloads nothing. On the device machine: bash trainer/bench/gpu_bench.sh "$OUT".
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-${OUT:-$(mktemp -d)}}"
shift || true
mkdir -p "$out"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' | tee "$out/env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$out/env.txt" 2>/dev/null || true
python3 "$here/gpu_bench.py" --out "$out" "$@" 2>&1 | tee "$out/stdout.txt"

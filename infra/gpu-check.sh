#!/usr/bin/env bash
# GPU check (issue #15): on a CUDA machine, bf16 + DDP training on every visible GPU, autocast
# encode, throughput vs the CPU and fp32-vs-bf16 code agreement (benchmarks/gpu_check.py).
# Without CUDA it prints "gpu-check: skipped: ..." and exits 0. Run from the repository root:
#   infra/gpu-check.sh [--items 60000] [--epochs 3] [--out bench-out/gpu-check]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" -m benchmarks.gpu_check "$@"

#!/usr/bin/env bash
# One run on a lent GPU: refiner ms/face (batch 1/8/16, bf16, with and without torch.compile) and training
# samples/s + peak memory (batch 1/4/8, with and without gradient checkpointing and cached moments) on the
# real SD 2.1-base configuration with random weights (no downloads). Writes bench/results/gpu_pilot.json.
#   bench/gpu_pilot.sh            # GPU
#   bench/gpu_pilot.sh --tiny     # CPU dry run of the same code on tiny configs
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
mkdir -p bench/results
out="bench/results/gpu_pilot.json"
[ "${1:-}" = "--tiny" ] && out="bench/results/gpu_pilot_tiny.json"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" bench/gpu_pilot.py --out "$out" "$@"

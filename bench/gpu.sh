#!/usr/bin/env bash
# GPU check (#19): one H100/H200, under 8 minutes. Measures a random-init dream-7b's forward latency against the
# roofline bound, the KV-cached AR baseline, one training step and one FSDP step with their MFU, the CUDA tests
# (`pytest -m cuda`, run as one of the sections so they land in the JSON and under the budget) and
# every decoder's tokens/s; writes reports/gpu/<date>-<gpu>.json and prints a one-line summary. The logic is
# bench/gpu_check.py; this script only sets the environment.
#
#   bench/gpu.sh                     # on the GPU machine (options: bench/gpu.sh --help)
#   bench/gpu.sh --dry-run           # every code path on CPU with the tiny `test` preset, in seconds (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# Fewer allocator fragments between the sections' differently sized models (7B bf16, then fp32 + AdamW).
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" bench/gpu_check.py "$@"

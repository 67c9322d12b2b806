#!/usr/bin/env bash
# The previous default model, trained from scratch (the baseline of reports/pipeline.md, and the model the older
# reports under reports/ were measured on): masked-diffusion pretraining on the standard library, then SFT on the
# procedural benchmark's train split, then export (bfloat16), held-out evaluation and the model card. The shipped
# default model is now adapted from an autoregressive model: recipes/diffucoder-mini.sh.
#
#   bash recipes/default-model.sh            # ~1 h on 2 CPU cores; every stage resumes if killed
#
# Environment: UNMASK (the CLI, default .venv/bin/unmask), RUN (run root), OUT (model directory).
set -euo pipefail
cd "$(dirname "$0")/.."
UNMASK=${UNMASK:-.venv/bin/unmask}
PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/default-model}
OUT=${OUT:-$RUN/model}
mkdir -p "$RUN"

# 1. Pretraining: BPE (4096) trained on the stdlib's training split, `small` preset, 1000 steps x 16 x 256 tokens.
$UNMASK train --config recipes/default-pretrain.yaml --run-dir "$RUN/pretrain" --resume
$UNMASK convert "$RUN/pretrain/$(cat "$RUN/pretrain/latest")" "$RUN/pretrained" --force

# 2. SFT on 20,000 procedural train-split tasks (held-out structures never appear in them).
$UNMASK tasks synthetic-train --n 20000 --seed 1 --format sft --out "$RUN/sft.jsonl"
$UNMASK train --config recipes/default-sft.yaml --run-dir "$RUN/sft" --init-from "$RUN/pretrained" \
    --data "$RUN/sft.jsonl" --resume

# 3. Export in bfloat16 with the recommended sampler settings as generation_config.json defaults.
$UNMASK convert "$RUN/sft/$(cat "$RUN/sft/latest")" "$OUT" --dtype bfloat16 --force \
    --generation max_new_tokens=64 --generation steps=64 --generation alg=entropy --generation temperature=0.0

# 4. Held-out pass@1 (200 procedural tasks whose compositions never occur in training), then the model card.
$UNMASK eval "$OUT" --benchmark synthetic --synthetic-tasks 200 --samples 1 --out "$RUN/eval-heldout"
$UNMASK eval "$OUT" --benchmark synthetic-train --synthetic-tasks 200 --seed 7 --samples 1 \
    --out "$RUN/eval-train-dist"
$PY -m unmask.modelcard "$OUT" --pretrain "$RUN/pretrain" --sft "$RUN/sft" \
    --eval "$RUN/eval-heldout" --eval "$RUN/eval-train-dist" --command "bash recipes/default-model.sh"

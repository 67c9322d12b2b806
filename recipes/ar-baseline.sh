#!/usr/bin/env bash
# The autoregressive baseline of the decoding benchmark (bench/decode.py --ar-model): the shipped default
# model's recipe (recipes/default-model.sh) with causal attention and the next-token loss instead of the
# masked-diffusion ELBO — same preset, tokenizer, data, steps, batch and learning-rate schedule. The result
# is a Qwen2-format checkpoint; it is not shipped (the recipe rebuilds it, every stage resumes).
#
#   bash recipes/ar-baseline.sh        # ~1 h on 2 CPU cores
set -euo pipefail
cd "$(dirname "$0")/.."
UNMASK=${UNMASK:-.venv/bin/unmask}
RUN=${RUN:-runs/ar-baseline}
TOKENIZER=${TOKENIZER:-models/unmask-small}   # the diffusion model's tokenizer, so the two see the same ids
SFT_DATA=${SFT_DATA:-runs/default-model/sft.jsonl}
SFT_STEPS=${SFT_STEPS:-3000}                   # the diffusion model's SFT steps
mkdir -p "$RUN"

$UNMASK train --config recipes/default-pretrain.yaml --objective autoregressive --tokenizer "$TOKENIZER" \
    --run-dir "$RUN/pretrain" --resume
$UNMASK convert "$RUN/pretrain/$(cat "$RUN/pretrain/latest")" "$RUN/pretrained" --force

[[ -f "$SFT_DATA" ]] || $UNMASK tasks synthetic-train --n 20000 --seed 1 --format sft --out "$SFT_DATA"
$UNMASK train --config recipes/default-sft.yaml --objective autoregressive --run-dir "$RUN/sft" \
    --init-from "$RUN/pretrained" --data "$SFT_DATA" --max-steps "$SFT_STEPS" --resume
$UNMASK convert "$RUN/sft/$(cat "$RUN/sft/latest")" "$RUN/model" --dtype bfloat16 --force

#!/usr/bin/env bash
# What was varied around the pipeline of recipes/diffucoder-mini.sh (run that first; reports/pipeline.md, "what was
# varied"): the fast adaptation shipped before, semi-AR block rows, adaptation on code first, and the decoder. Every
# stage resumes; evaluations use the held-out split (200 tasks, seed 0) as in the main recipe.
#
#   bash recipes/pipeline-variants.sh     # ~3 h of one CPU core
set -euo pipefail
cd "$(dirname "$0")/.."
UNMASK=${UNMASK:-.venv/bin/unmask}
RUN=${RUN:-runs/pipeline}
export OMP_NUM_THREADS=${THREADS:-${OMP_NUM_THREADS:-2}}
latest() { echo "$1/$(cat "$1/latest")"; }
sft() { $UNMASK train --config "recipes/pipeline/$1.yaml" --init-from "$2" --data "$RUN/sft.jsonl" --run-dir "$RUN/$3" \
  --resume; }
GEN="--generation max_new_tokens=64 --generation steps=64 --generation alg=entropy --generation temperature=0.0
     --generation early_stop=true --generation decoder=blocks --generation block_length=8"
export_model() { $UNMASK convert "$(latest "$RUN/$1")" "$RUN/$2" --dtype bfloat16 --force $GEN; }
heldout() { $UNMASK eval "$RUN/$1" --benchmark synthetic --synthetic-tasks 200 --samples 1 --out "$RUN/eval/$2" "${@:3}"; }

# the fast adaptation (shipped before): anneal over 250 steps at LR 5e-4, 1000 steps, then 500 more SFT steps
sft variant-adapt-fast "$RUN/ar-twin" diffusion-sft && export_model diffusion-sft diffusion
sft variant-fast-sft-more "$(latest "$RUN/diffusion-sft")" diffusion-sft-more && export_model diffusion-sft-more diffusion-more
heldout diffusion diffusion-heldout-blocks8
heldout diffusion diffusion-heldout-plain --decoder reference
heldout diffusion diffusion-heldout --decoder reference --stop-last
heldout diffusion-more diffusion-more-heldout
for BL in 1 2 32; do heldout diffusion-more "diffusion-more-heldout-blocks$BL" --block-length $BL; done

# semi-AR block rows (docs/training.md) after the fast adaptation, and after the shipped slow one
sft variant-block-sft "$(latest "$RUN/diffusion-sft")" variant-block-sft && export_model variant-block-sft variant-block
sft variant-block-long "$(latest "$RUN/diffusion-sft")" variant-block-long-sft && export_model variant-block-long-sft variant-block-long
sft variant-block-sft "$(latest "$RUN/adapt-sft")" variant-slow-block-sft && export_model variant-slow-block-sft variant-slow-block
heldout variant-block variant-block-heldout
heldout variant-block-long variant-block-long-heldout
heldout variant-slow-block variant-slow-block-heldout

# adaptation on code first (DiffuCoder's order), then SFT
$UNMASK train --config recipes/pipeline/variant-adapt-code.yaml --init-from "$RUN/stage1" --run-dir "$RUN/variant-adapt-code" \
  --resume
$UNMASK convert "$(latest "$RUN/variant-adapt-code")" "$RUN/variant-adapted" --force
sft variant-sft "$RUN/variant-adapted" variant-sft && export_model variant-sft variant-model
heldout variant-model variant-code-adapt-heldout --decoder reference --stop-last

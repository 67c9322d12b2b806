#!/usr/bin/env bash
# Block diffusion, the AR-diffusion hybrid (issue #21; docs/training.md "Block diffusion"): the AR twin of
# recipes/diffucoder-mini.sh adapted to a block-causal masked-diffusion model (blocks of 8 after the prompt; exact KV
# cache when decoding), on the SFT data of the shipped model, then exported and evaluated like it.
#
#   bash recipes/hybrid.sh                # the real run: 2000 steps, ~2x the shipped adaptation's 75 min of a core
#   SMOKE=1 bash recipes/hybrid.sh        # a few steps and one generation, to check the wiring (minutes)
#   CONTROL=1 bash recipes/hybrid.sh      # then the control: the AR twin trained as long with its own objective
#   FROM_DIFFUSION=1 bash recipes/hybrid.sh   # and/or the hybrid adapted from the full-attention model (DIFFUSION)
#
# Needs the AR twin and the SFT data of recipes/diffucoder-mini.sh (TWIN, DATA). Training resumes from its latest
# checkpoint, so the script can be killed and run again. One thread by default (THREADS).
# Environment: UNMASK, PY, TWIN, DATA, DIFFUSION, RUN (run root), THREADS, SMOKE, CONTROL, FROM_DIFFUSION.
set -euo pipefail
cd "$(dirname "$0")/.."
UNMASK=${UNMASK:-.venv/bin/unmask}
TWIN=${TWIN:-runs/pipeline/ar-twin}
DATA=${DATA:-runs/pipeline/sft.jsonl}
DIFFUSION=${DIFFUSION:-models/unmask-small}
RUN=${RUN:-runs/hybrid}
export OMP_NUM_THREADS=${THREADS:-1}
latest() { echo "$1/$(cat "$1/latest")"; }
for need in "$TWIN/config.json" "$DATA"; do
  [[ -f $need ]] || { echo "missing $need: run recipes/diffucoder-mini.sh first (or set TWIN / DATA)" >&2; exit 1; }
done
mkdir -p "$RUN"

SHORT=()
if [[ -n ${SMOKE:-} ]]; then  # a handful of steps at a visible LR; the loss is logged every step
  SHORT=(--max-steps 6 --anneal-steps 3 --warmup-steps 1 --lr 1e-3 --batch-size 4 --eval-every 3 --save-every 3
         --log-every 1 --eval-batches 1 --sample-prompts 1 --sample-tokens 16)
  RUN=$RUN-smoke
fi

# adaptation: the AR twin -> block diffusion (block_size 8), two-stream masked-diffusion SFT
$UNMASK train --config recipes/pipeline/stage2-hybrid-sft.yaml --init-from "$TWIN" --data "$DATA" \
  --run-dir "$RUN/train" --resume "${SHORT[@]}"

# export with the recommended decoding: the block decoder at the model's block size (its KV cache is exact)
GEN=(--generation max_new_tokens=64 --generation steps=64 --generation alg=entropy --generation temperature=0.0
     --generation early_stop=true --generation decoder=blocks --generation block_length=8)
$UNMASK convert "$(latest "$RUN/train")" "$RUN/model" --dtype bfloat16 --force "${GEN[@]}"

if [[ -n ${SMOKE:-} ]]; then
  $UNMASK generate "$RUN/model" 'def add(a, b):' --max-new-tokens 16 --steps 16 --json
  exit 0
fi
# held-out pass@1 on the shipped model's tasks (200, seeds 0 and 1) and the training distribution, greedy, as
# reports/pipeline.md measures; NAME is the evaluation's prefix
evals() {
  local model=$1 name=$2
  for seed in 0 1; do
    $UNMASK eval "$model" --benchmark synthetic --synthetic-tasks 200 --seed $seed --samples 1 \
      --out "$RUN/eval/$name-heldout-seed$seed"
  done
  $UNMASK eval "$model" --benchmark synthetic-train --synthetic-tasks 200 --seed 7 --samples 1 \
    --out "$RUN/eval/$name-train-dist"
}
evals "$RUN/model" hybrid

# the control (reports/hybrid.md): the twin had 1000 SFT steps and was still improving; 2000 more causal SFT steps
# at the adaptation's schedule tell how much of the hybrid's gain is more training rather than block diffusion
if [[ -n ${CONTROL:-} ]]; then
  $UNMASK train --config recipes/pipeline/control-ar-more-sft.yaml --init-from "$TWIN" --data "$DATA" \
    --run-dir "$RUN/ar-more-sft" --resume
  $UNMASK convert "$(latest "$RUN/ar-more-sft")" "$RUN/ar-more" --dtype bfloat16 --force
  evals "$RUN/ar-more" ar-more
fi

# the other parent: block diffusion from the full-attention diffusion model (the shipped one), 500 steps
if [[ -n ${FROM_DIFFUSION:-} ]]; then
  $UNMASK train --config recipes/pipeline/stage2-hybrid-from-diffusion.yaml --init-from "$DIFFUSION" --data "$DATA" \
    --run-dir "$RUN/from-diffusion-sft" --resume
  $UNMASK convert "$(latest "$RUN/from-diffusion-sft")" "$RUN/from-diffusion" --dtype bfloat16 --force "${GEN[@]}"
  evals "$RUN/from-diffusion" from-diffusion
  # its control: the same 500 steps with full attention kept (more steps alone)
  $UNMASK train --config recipes/pipeline/control-full-more-sft.yaml --init-from "$DIFFUSION" --data "$DATA" \
    --run-dir "$RUN/full-more-sft" --resume
  $UNMASK convert "$(latest "$RUN/full-more-sft")" "$RUN/full-more" --dtype bfloat16 --force "${GEN[@]}"
  evals "$RUN/full-more" full-more
fi

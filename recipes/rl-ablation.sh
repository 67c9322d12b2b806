#!/usr/bin/env bash
# DRAFT: the RL ablation of SPEC §5 in miniature — SFT vs diffu-GRPO vs decoupled vs coupled-GRPO.
#
# Every arm starts from the same SFT checkpoint and gets the same compute: the same prompts in the same
# order (one --seed), the same G rollouts per prompt with the same sampler settings, the same number of
# steps and updates. Rollouts dominate the cost (STEPS forwards per completion vs 3 x MU masked passes
# per update for coupled/decoupled and 1 x MU for diffu-GRPO), so equal steps is equal compute to within
# the estimator passes; the table reports the measured wall time per arm so this can be checked.
#
#   SFT=runs/sft/checkpoint-0002000 bash recipes/rl-ablation.sh
set -euo pipefail

SFT=${SFT:?set SFT to the SFT model directory (an HF-format checkpoint)}
OUT=${OUT:-runs/rl-ablation}
STEPS_RL=${STEPS_RL:-200}      # RL steps per arm
G=${G:-10}                     # completions per prompt (DiffuCoder: 10)
PROMPTS=${PROMPTS:-4}          # prompts per step
TOKENS=${TOKENS:-64}           # completion length (DiffuCoder: 256)
SEED=${SEED:-0}
EVAL="--benchmark synthetic --samples 1 --limit 40 --temperature 0 --max-new-tokens $TOKENS --steps $TOKENS"
RUN="${LAUNCH:-unmask}"        # e.g. LAUNCH="torchrun --nproc_per_node 2 -m unmask.cli"

mkdir -p "$OUT"
unmask eval --model "$SFT" $EVAL --out "$OUT/eval-sft" --no-progress

for arm in diffu-grpo decoupled coupled; do
  start=$(date +%s)
  $RUN rl --model "$SFT" --data synthetic-train --estimator "$arm" --run-dir "$OUT/$arm" \
    --num-generations "$G" --prompts-per-step "$PROMPTS" --max-steps "$STEPS_RL" \
    --max-new-tokens "$TOKENS" --steps "$TOKENS" --temperature 1.2 --alg entropy \
    --lr 1e-5 --mu 2 --beta 0.01 --eps-clip 0.5 --ref-sync-every 64 \
    --eval-every 50 --eval-benchmark synthetic --eval-limit 40 --save-every 50 --seed "$SEED" --no-progress
  echo "{\"arm\": \"$arm\", \"wall_s\": $(( $(date +%s) - start ))}" >> "$OUT/wall.jsonl"
  last=$(tr -d '\n' < "$OUT/$arm/latest")
  unmask eval --model "$OUT/$arm/$last" $EVAL --out "$OUT/eval-$arm" --no-progress
done

python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
walls = {json.loads(l)["arm"]: json.loads(l)["wall_s"] for l in (out / "wall.jsonl").read_text().splitlines()}
print(f"{'arm':<12} {'held-out pass@1':>16} {'wall s':>8}")
for arm in ("sft", "diffu-grpo", "decoupled", "coupled"):
    s = json.loads((out / f"eval-{arm}" / "summary.json").read_text())
    print(f"{arm:<12} {100 * s['pass@k'].get('pass@1', 0):>15.1f}% {walls.get(arm, 0):>8}")
PY

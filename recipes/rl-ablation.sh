#!/usr/bin/env bash
# DiffuCoder's RL ablation (docs/rl.md) in miniature, on the shipped default model: SFT only vs diffu-GRPO vs
# decoupled vs coupled-GRPO (rollout temperature 1.2), plus coupled at rollout temperature 1.0; every RL arm
# repeated over seeds.
#
# Equal compute: every arm starts from the same SFT model and gets the same number of steps, prompts per
# step, completions per prompt and sampler settings, so the same number of rollouts (which dominate the
# cost). The estimators differ in masked passes per update (coupled/decoupled 3, diffu-GRPO 1); each run's
# measured wall time is in its metrics.jsonl (step_s) and in the report.
#
# Jobs are claimed with flock, so any number of workers can share the queue (WORKERS=2 on a 2-core
# machine: one thread each), a killed worker's job is taken up again by the next one, and every stage
# resumes (RL from its latest checkpoint, evaluations per finished chunk). The report is written by
#   python bench/rl_report.py runs/rl-ablation > reports/rl-ablation.md
#
#   bash recipes/rl-ablation.sh                 # the whole queue, WORKERS=2
#   SEEDS="0 1 2" STEPS_RL=24 bash recipes/rl-ablation.sh
set -euo pipefail

MODEL=${MODEL:-models/unmask-small}
OUT=${OUT:-runs/rl-ablation}
STEPS_RL=${STEPS_RL:-12}        # RL steps per run
G=${G:-8}                       # completions per prompt (DiffuCoder: 10)
PROMPTS=${PROMPTS:-4}           # prompts per step
TOKENS=${TOKENS:-64}            # completion length (DiffuCoder: 256); the held-out solutions need <= 71
ROLLOUT_STEPS=${ROLLOUT_STEPS:-32}  # denoising steps per rollout (DiffuCoder: = TOKENS)
LR=${LR:-2e-5}                  # DiffuCoder 1e-6 at 7B; a 5M-parameter model needs a larger step
SEEDS=${SEEDS:-"0 1"}
WORKERS=${WORKERS:-2}
HELDOUT=${HELDOUT:-200}         # held-out tasks for greedy pass@1
SAMPLED=${SAMPLED:-20}          # held-out tasks for pass@10 (10 samples at temperature 1.0) and AR-ness
TRAINDIST=${TRAINDIST:-100}     # fresh train-distribution tasks for greedy pass@1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
UNMASK=${UNMASK:-unmask}

# job names: sft, or ESTIMATOR-tTEMP-sSEED
jobs=(sft)
for seed in $SEEDS; do
  for arm in coupled diffu-grpo decoupled; do jobs+=("$arm-t1.2-s$seed"); done
  jobs+=("coupled-t1.0-s$seed")
done

DECODE="--max-new-tokens $TOKENS --steps $TOKENS --alg entropy --no-progress"

evaluate() {  # model dir, job dir
  $UNMASK eval "$1" --benchmark synthetic --synthetic-tasks "$HELDOUT" --samples 1 --temperature 0 \
    $DECODE --out "$2/eval-heldout"
  $UNMASK eval "$1" --benchmark synthetic-train --synthetic-tasks "$TRAINDIST" --seed 7 --samples 1 \
    --temperature 0 $DECODE --out "$2/eval-train-dist"
  $UNMASK arness "$1" --benchmark synthetic --synthetic-tasks "$SAMPLED" --limit "$SAMPLED" --samples 10 \
    --temperatures 1.0 --top-p 0.95 --pass-k 1,10 $DECODE --out "$2/arness"
}

run_job() {
  local job=$1 dir="$OUT/$1"
  mkdir -p "$dir"
  if [[ $job == sft ]]; then
    evaluate "$MODEL" "$dir"
  else
    local arm=${job%-t*} rest=${job#*-t}
    local temp=${rest%-s*} seed=${rest#*-s}
    local start=$SECONDS
    $UNMASK rl "$MODEL" --data synthetic-train --synthetic-tasks 2000 --estimator "$arm" \
      --run-dir "$dir/rl" --resume --num-generations "$G" --prompts-per-step "$PROMPTS" --max-steps "$STEPS_RL" \
      --max-new-tokens "$TOKENS" --steps "$ROLLOUT_STEPS" --temperature "$temp" --alg entropy \
      --lr "$LR" --mu 2 --beta 0.01 --eps-clip 0.5 --ref-sync-every 64 --eval-every 0 --save-every 4 \
      --seed "$seed" --no-progress > "$dir/rl.log" 2>&1
    echo "{\"job\": \"$job\", \"rl_wall_s\": $((SECONDS - start))}" >> "$dir/wall.jsonl"
    evaluate "$dir/rl/$(tr -d '\n' < "$dir/rl/latest")" "$dir"
  fi
  touch "$dir/done"
}

worker() {
  for job in "${jobs[@]}"; do
    [[ -e "$OUT/$job/done" ]] && continue
    mkdir -p "$OUT/$job"
    # -n: a job another worker holds is skipped; the lock dies with its holder, so a killed job is retried.
    exec {fd}> "$OUT/$job/.lock"
    if flock -n "$fd"; then
      [[ -e "$OUT/$job/done" ]] || run_job "$job" > "$OUT/$job/job.log" 2>&1 || echo "job $job failed: see $OUT/$job/job.log" >&2
    fi
    exec {fd}>&-
  done
}

mkdir -p "$OUT"
for _ in $(seq "$WORKERS"); do worker & done
wait
echo "all jobs done: python bench/rl_report.py $OUT"

#!/usr/bin/env bash
# The paper's findings on the default model (#16, reports/findings.md): the RL arms over seeds, each scored on
# 500 held-out tasks; decode order and pass@k across temperatures; fewer decoding steps before and after RL.
#
# Jobs, in priority order (a cut-short run still answers the first questions):
#   base                 the starting model: greedy pass@1 on HELDOUT tasks (blocks of 8 + prefix cache), and at
#                        half the decoding steps
#   ARM-sSEED            RL (coupled | diffu-grpo | decoupled) for STEPS_RL steps, then the same two evaluations
#   temps-base           AR-ness and pass@1/pass@10 at temperatures TEMPS with the reference sampler (full-canvas
#                        order freedom), SAMPLED tasks x 10 samples
#   passk-MODEL          pass@1/pass@10 at the rollout temperature on PASSK tasks x 10 samples (fast decoder)
#   temps-coupled-s0     AR-ness of an RL model at the lowest and highest temperature
#   VARIANT-sSEED        coupled RL with one setting changed (EXTRA): coupled-t1.0 samples rollouts at temperature
#                        1.0 instead of 1.2 (paper Fig. 7); coupled-loo uses the leave-one-out baseline
#   base-nocache         the base greedy evaluation without the prefix cache (is the cached evaluation faithful?)
#
# Every arm starts from the same model with the same prompts, rollouts per step and steps (equal rollout
# compute); rollouts use the blocks-of-8 decoder with a prefix cache (docs/rl.md, "Fast rollouts"). Jobs are
# claimed with flock, so WORKERS processes share the queue (2 on a 2-core machine, one thread each); every stage
# resumes (RL from its latest checkpoint, evaluations per finished chunk). Then:
#   python bench/findings_report.py runs/findings --out reports/findings
#
#   bash recipes/findings.sh                 # ~2.5 h of 2 CPU cores
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-models/unmask-small}
OUT=${OUT:-runs/findings}
STEPS_RL=${STEPS_RL:-16}      # RL steps per run (4 prompts x 8 rollouts each)
LR=${LR:-2e-5}                # DiffuCoder 1e-6 at 7B; a 5M-parameter model needs a larger step
SEEDS=${SEEDS:-"0 1 2"}
ARMS=${ARMS:-"coupled diffu-grpo decoupled"}
EXTRA=${EXTRA:-"coupled-t1.0 coupled-loo"}  # variants of the coupled arm, greedy-evaluated at full steps only
WORKERS=${WORKERS:-2}
HELDOUT=${HELDOUT:-500}       # held-out tasks for greedy pass@1 (SE ~1.8 points at 80%)
SAMPLED=${SAMPLED:-20}        # held-out tasks x 10 samples per temperature for AR-ness
TEMPS=${TEMPS:-"0.2,0.8,1.2"}
PASSK=${PASSK:-100}           # held-out tasks x 10 samples at the rollout temperature for pass@10
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
UNMASK=${UNMASK:-.venv/bin/unmask}

jobs=(base)
first=${SEEDS%% *}
for seed in $SEEDS; do
  for arm in $ARMS; do jobs+=("$arm-s$seed"); done
  [[ $seed == "$first" ]] && jobs+=(temps-base)
done
jobs+=(passk-base)
for arm in $ARMS; do jobs+=("passk-$arm-s$first"); done
jobs+=("temps-coupled-s$first" base-nocache)
for seed in $SEEDS; do
  for arm in $EXTRA; do jobs+=("$arm-s$seed"); done
done

greedy() {  # model dir, output dir, extra flags
  $UNMASK eval "$1" --benchmark synthetic --synthetic-tasks "$HELDOUT" --samples 1 --temperature 0 --cache prefix \
    --no-progress --out "$2" "${@:3}"
}

arm_flags() {  # arm -> the RL flags that define it
  case $1 in
    coupled-t1.0) echo "--estimator coupled --temperature 1.0" ;;
    coupled-loo) echo "--estimator coupled --baseline leave_one_out" ;;
    *) echo "--estimator $1 --temperature 1.2" ;;
  esac
}

model_of() {  # job name -> model directory
  if [[ $1 == base ]]; then echo "$MODEL"; else echo "$OUT/$1/rl/$(tr -d '\n' < "$OUT/$1/rl/latest")"; fi
}

run_job() {
  local job=$1 dir="$OUT/$1"
  case $job in
    base)
      greedy "$MODEL" "$dir/eval-heldout"
      greedy "$MODEL" "$dir/eval-heldout-half" --steps 32 ;;
    base-nocache)
      greedy "$MODEL" "$dir/eval-heldout" --cache none ;;
    temps-*)
      local m; m=$(model_of "${job#temps-}")
      local temps=$TEMPS; [[ $job != temps-base ]] && temps="${TEMPS%%,*},${TEMPS##*,}"
      $UNMASK arness "$m" --benchmark synthetic --synthetic-tasks "$SAMPLED" --limit "$SAMPLED" --samples 10 \
        --temperatures "$temps" --top-p 0.95 --pass-k 1,10 --decoder reference --cache none --no-early-stop \
        --max-new-tokens 64 --steps 64 --positions content --no-progress --out "$dir/arness" ;;
    passk-*)
      $UNMASK eval "$(model_of "${job#passk-}")" --benchmark synthetic --synthetic-tasks "$PASSK" --samples 10 \
        --temperature 1.2 --top-p 0.95 --cache prefix --no-progress --out "$dir/eval-heldout-t1.2" ;;
    *)
      local arm=${job%-s*} seed=${job##*-s} start=$SECONDS
      # shellcheck disable=SC2046  # the arm's flags are words
      $UNMASK rl "$MODEL" --data synthetic-train --synthetic-tasks 2000 $(arm_flags "$arm") --run-dir "$dir/rl" \
        --resume --num-generations 8 --prompts-per-step 4 --max-steps "$STEPS_RL" --max-new-tokens 64 --steps 32 \
        --alg entropy --lr "$LR" --mu 2 --beta 0.01 --eps-clip 0.5 --ref-sync-every 64 \
        --rollout-decoder blocks --rollout-block-length 8 --rollout-cache prefix --rollout-early-stop \
        --eval-every 0 --save-every 8 --seed "$seed" --no-progress > "$dir/rl.log" 2>&1
      echo "{\"job\": \"$job\", \"rl_wall_s\": $((SECONDS - start))}" >> "$dir/wall.jsonl"
      greedy "$(model_of "$job")" "$dir/eval-heldout"
      if [[ " $ARMS " == *" $arm "* ]]; then greedy "$(model_of "$job")" "$dir/eval-heldout-half" --steps 32; fi ;;
  esac
  touch "$dir/done"
}

ready() {  # a job's inputs exist (an evaluation of an RL model waits for its run)
  case $1 in
    temps-base|passk-base|base-nocache|base) return 0 ;;
    temps-*|passk-*) [[ -e "$OUT/${1#*-}/done" ]] ;;
    *) return 0 ;;
  esac
}

worker() {
  local pending=1
  while (( pending )); do
    pending=0
    for job in "${jobs[@]}"; do
      [[ -e "$OUT/$job/done" ]] && continue
      pending=1
      ready "$job" || continue
      mkdir -p "$OUT/$job"
      # -n: a job another worker holds is skipped; the lock dies with its holder, so a killed job is retried.
      exec {fd}> "$OUT/$job/.lock"
      if flock -n "$fd"; then
        [[ -e "$OUT/$job/done" ]] || run_job "$job" > "$OUT/$job/job.log" 2>&1 \
          || { echo "job $job failed: see $OUT/$job/job.log" >&2; touch "$OUT/$job/failed"; }
      fi
      exec {fd}>&-
      [[ -e "$OUT/$job/failed" ]] && { rm -f "$OUT/$job/failed"; return 1; }
    done
    (( pending )) && sleep 5
  done
}

mkdir -p "$OUT"
for _ in $(seq "$WORKERS"); do worker & done
wait
echo "all jobs done: python bench/findings_report.py $OUT --out reports/findings"

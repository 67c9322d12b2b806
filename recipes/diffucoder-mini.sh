#!/usr/bin/env bash
# The DiffuCoder pipeline in miniature (docs: reports/pipeline.md): an autoregressive model adapted to masked
# diffusion, as DiffuCoder adapts Qwen2.5-Coder, instead of a diffusion model trained from scratch.
#
#   stage 0  tokenizer: the project's 4096-token byte-level BPE, <|dlm_pad|> as the pad token
#   stage 1  AR pretraining on code (the standard library)                      -> $RUN/stage1
#   stage 1b AR SFT on procedural train-split tasks: the AR twin, and the parent -> $RUN/ar-twin
#   stage 2+3 adaptation: masked-diffusion SFT initialised from the AR twin, attention annealed causal -> full
#            over 1000 of 2000 steps at a low LR, shift kept, prompt never masked, pads learned -> $RUN/adapted
#            (shipped)
#   stage 4  coupled-GRPO from the shipped model, sandboxed rewards             -> $RUN/rl-model
#   eval     held-out split (200 tasks, seed 0; a fresh seed-1 split for the shipped model and the twin) and
#            train distribution (200 tasks, seed 7), greedy, then the shipped model's card
#
#   bash recipes/diffucoder-mini.sh      # ~2.5 h of one CPU core for stages 1-3, ~1.5 h with two
#   bash recipes/pipeline-variants.sh    # what was varied (reports/pipeline.md), after this script
#
# Every stage resumes (training from its latest checkpoint, evaluations per finished chunk), so the script can
# be killed and run again. Environment: UNMASK, RUN (run root), OUT (model directory), THREADS.
set -euo pipefail
cd "$(dirname "$0")/.."
UNMASK=${UNMASK:-.venv/bin/unmask}
PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/pipeline}
OUT=${OUT:-models/unmask-small}
export OMP_NUM_THREADS=${THREADS:-${OMP_NUM_THREADS:-2}}
mkdir -p "$RUN"
latest() { echo "$1/$(cat "$1/latest")"; }

# stage 0: the shipped BPE with <|dlm_pad|> as the pad token (SFT rows: [prompt][response][eos][pad ...])
if [[ ! -f $RUN/tokenizer/tokenizer.json ]]; then
  mkdir -p "$RUN/tokenizer"
  $PY - "$RUN/tokenizer" <<'PYEOF'
import json, shutil, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("tokenizer.json", "tokenizer_config.json", "added_tokens.json"):
    shutil.copy(Path("models/unmask-small") / name, out / name)
config = json.loads((out / "tokenizer_config.json").read_text())
config["pad_token"] = "<|dlm_pad|>"
(out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
PYEOF
fi

# stage 1: AR pretraining on code
$UNMASK train --config recipes/pipeline/stage1-ar-pretrain.yaml --tokenizer "$RUN/tokenizer" \
  --run-dir "$RUN/stage1-ar" --resume
$UNMASK convert "$(latest "$RUN/stage1-ar")" "$RUN/stage1" --force

# stage 1b: the AR twin (causal SFT on the same tasks the diffusion model sees)
[[ -f $RUN/sft.jsonl ]] || $UNMASK tasks synthetic-train --n 20000 --seed 1 --format sft --out "$RUN/sft.jsonl"
$UNMASK train --config recipes/pipeline/stage1-ar-sft.yaml --init-from "$RUN/stage1" --data "$RUN/sft.jsonl" \
  --run-dir "$RUN/ar-sft" --resume
$UNMASK convert "$(latest "$RUN/ar-sft")" "$RUN/ar-twin" --dtype bfloat16 --force

# stages 2+3: adaptation to masked diffusion on the SFT data (the shipped model recommends semi-AR blocks of 8)
GEN="--generation max_new_tokens=64 --generation steps=64 --generation alg=entropy --generation temperature=0.0
     --generation early_stop=true --generation decoder=blocks --generation block_length=8"
$UNMASK train --config recipes/pipeline/stage2-adapt-sft.yaml --init-from "$RUN/ar-twin" --data "$RUN/sft.jsonl" \
  --run-dir "$RUN/adapt-sft" --resume
$UNMASK convert "$(latest "$RUN/adapt-sft")" "$RUN/adapted" --dtype bfloat16 --force $GEN

# stage 4: coupled-GRPO on train-split prompts with sandboxed rewards (12 steps; #16 studies it at length)
$UNMASK rl "$RUN/adapted" --data synthetic-train --synthetic-tasks 2000 --estimator coupled --run-dir "$RUN/rl" \
  --resume --num-generations 8 --prompts-per-step 4 --max-steps 12 --max-new-tokens 64 --steps 32 \
  --temperature 1.2 --alg entropy --lr 2e-5 --mu 2 --beta 0.01 --eps-clip 0.5 --ref-sync-every 64 --eval-every 0 \
  --save-every 4 --seed 0
$UNMASK convert "$(latest "$RUN/rl")" "$RUN/rl-model" --dtype bfloat16 --force $GEN

# evaluation: the same tasks for every model (the diffusion models' own recommended decoding unless a flag says
# otherwise; the AR twin left to right)
heldout() { $UNMASK eval "$1" --benchmark synthetic --synthetic-tasks 200 --samples 1 --out "$RUN/eval/$2" "${@:3}"; }
traindist() { $UNMASK eval "$1" --benchmark synthetic-train --synthetic-tasks 200 --seed 7 --samples 1 \
  --out "$RUN/eval/$2" "${@:3}"; }
AR="--max-new-tokens 64 --temperature 0"
heldout "$RUN/ar-twin" ar-twin-heldout $AR
heldout "$RUN/ar-twin" ar-twin-heldout-seed1 --seed 1 $AR
traindist "$RUN/ar-twin" ar-twin-train-dist $AR
heldout "$RUN/adapted" adapted-heldout
heldout "$RUN/adapted" adapted-heldout-seed1 --seed 1
traindist "$RUN/adapted" adapted-train-dist
heldout "$RUN/adapted" adapted-heldout-reference --decoder reference
heldout "$RUN/adapted" adapted-heldout-steps32 --steps 32
heldout "$RUN/rl-model" rl-heldout

# ship the adapted model with its model card
SHIP=${SHIP:-adapted}
rm -rf "$OUT" && cp -r "$RUN/$SHIP" "$OUT"
$PY -m unmask.modelcard "$OUT" --stage "stage 1 (AR pretraining)=$RUN/stage1-ar" \
  --stage "AR SFT (the AR twin)=$RUN/ar-sft" --stage "adaptation + SFT=$RUN/adapt-sft" \
  --eval "$RUN/eval/$SHIP-heldout" --eval "$RUN/eval/$SHIP-train-dist" \
  --command "bash recipes/diffucoder-mini.sh"

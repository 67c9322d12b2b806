#!/usr/bin/env bash
# The DiffuCoder pipeline in miniature (docs: reports/pipeline.md): an autoregressive model adapted to masked
# diffusion, as DiffuCoder adapts Qwen2.5-Coder, instead of a diffusion model trained from scratch.
#
#   stage 0  tokenizer: the project's 4096-token byte-level BPE, <|dlm_pad|> as the pad token
#   stage 1  AR pretraining on code (the standard library)                      -> $RUN/stage1
#   stage 1b AR SFT on procedural train-split tasks: the AR twin, and the parent -> $RUN/ar-twin
#   stage 2+3 adaptation: masked-diffusion SFT initialised from the AR twin, attention annealed causal -> full,
#            shift kept, prompt never masked, pads learned                      -> $RUN/diffusion
#   export   bf16, the recommended sampler/decoder in generation_config.json    -> $OUT
#   eval     held-out split (200 tasks, seed 0) and train distribution (200 tasks, seed 7), greedy, for the AR
#            twin and the diffusion model (reference sampler with and without stop_last, blocks of 8)
#
#   bash recipes/diffucoder-mini.sh      # ~1.5 h on 2 CPU cores with the machine otherwise idle
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

# stages 2+3: adaptation to masked diffusion on the SFT data
$UNMASK train --config recipes/pipeline/stage2-adapt-sft.yaml --init-from "$RUN/ar-twin" --data "$RUN/sft.jsonl" \
  --run-dir "$RUN/diffusion-sft" --resume
$UNMASK convert "$(latest "$RUN/diffusion-sft")" "$OUT" --dtype bfloat16 --force \
  --generation max_new_tokens=64 --generation steps=64 --generation alg=entropy --generation temperature=0.0 \
  --generation stop_last=true --generation early_stop=true

# evaluation: the same tasks for every model and decoder
heldout() { $UNMASK eval --model "$1" --benchmark synthetic --synthetic-tasks 200 --samples 1 --out "$2" "${@:3}"; }
traindist() { $UNMASK eval --model "$1" --benchmark synthetic-train --synthetic-tasks 200 --seed 7 --samples 1 \
  --out "$2" "${@:3}"; }
heldout "$RUN/ar-twin" "$RUN/eval/ar-twin-heldout" --max-new-tokens 64 --temperature 0
traindist "$RUN/ar-twin" "$RUN/eval/ar-twin-train-dist" --max-new-tokens 64 --temperature 0
heldout "$OUT" "$RUN/eval/diffusion-heldout"
traindist "$OUT" "$RUN/eval/diffusion-train-dist"
heldout "$OUT" "$RUN/eval/diffusion-heldout-plain" --no-stop-last
heldout "$OUT" "$RUN/eval/diffusion-heldout-blocks8" --no-stop-last --decoder blocks --block-length 8

$PY -m unmask.modelcard "$OUT" --stage "stage 1 (AR pretraining)=$RUN/stage1-ar" \
  --stage "AR SFT (the AR twin)=$RUN/ar-sft" --stage "adaptation + SFT=$RUN/diffusion-sft" \
  --eval "$RUN/eval/diffusion-heldout" --eval "$RUN/eval/diffusion-train-dist" \
  --command "bash recipes/diffucoder-mini.sh"

#!/usr/bin/env bash
# Issue "fewer sampling steps": distil the 800-step KJV masked and embedding models and put teacher and students on
# one frontier each, then write the results file. Each step is skipped when its output exists, so a stopped suite
# resumes where it stopped.
#
#   TEXTDIFF_DATA_DIR=../shared/data bash benchmarks/distill_suite.sh RUNS [OUT.md]
#
# RUNS/<backend>-800       the teacher, trained from recipes/kjv/<backend>.yaml when absent (or link a trained one)
# RUNS/distill/<backend>   `textdiff distill`: STAGES stages from STEPS_START steps, ITERS iterations each
# RUNS/distill/<backend>-frontier
#                          `textdiff bench frontier`: the teacher at every step count of the ladder (its own
#                          distillation-free baseline) and stage k at its own STEPS_START / 2**k steps; judged
# OUT.md                   benchmarks/distill_report.py over both frontiers (default benchmarks/results/kjv_distill.md)
#
# Knobs (environment): BACKENDS ("masked embedding"), STEPS_START (64), STAGES (2), ITERS (200), LR (`textdiff
# distill`'s default), NUM_SAMPLES (64), DEVICE (cpu), JUDGE (the frontier's --judge; default SmolLM2-135M),
# PYTHON (python3).
set -euo pipefail
RUNS=${1:?usage: distill_suite.sh RUNS [OUT.md]}
OUT=${2:-benchmarks/results/kjv_distill.md}
BACKENDS=${BACKENDS:-"masked embedding"} START=${STEPS_START:-64} STAGES=${STAGES:-2} ITERS=${ITERS:-200}
NUM=${NUM_SAMPLES:-64} DEVICE=${DEVICE:-cpu} PY=${PYTHON:-python3} JUDGE=(${JUDGE:+--judge "$JUDGE"}) LR=(${LR:+--lr "$LR"})
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
declare -A SAMPLER=([masked]=ancestral [embedding]=ddim)
frontiers=()
for b in $BACKENDS; do
  teacher=$RUNS/$b-800 d=$RUNS/distill/$b f=$RUNS/distill/$b-frontier
  [[ -f $teacher/model.safetensors ]] || $PY -m textdiff train "recipes/kjv/$b.yaml" --set "out_dir=$teacher" \
    --no-samples --device "$DEVICE"
  [[ -d $d/stage$STAGES ]] || $PY -m textdiff distill "$teacher" --stages "$STAGES" --steps-start "$START" \
    --iters "$ITERS" "${LR[@]}" --out "$d" --device "$DEVICE"
  ladder=() students=()
  for ((k = 0; k <= STAGES; k++)); do
    ladder+=($((START >> k)))
    ((k)) && students+=("$d/stage$k@$((START >> k))")
  done
  if [[ ! -f $f/frontier.json ]]; then
    $PY -m textdiff bench frontier "$teacher@$(IFS=,; echo "${ladder[*]}")" "${students[@]}" --samplers "${SAMPLER[$b]}" \
      --num-samples "$NUM" --device "$DEVICE" --out-dir "$f" "${JUDGE[@]}"
  fi
  frontiers+=("$f/frontier.json")
done
$PY benchmarks/distill_report.py "${frontiers[@]}" --out "$OUT"

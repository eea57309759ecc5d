#!/usr/bin/env bash
# Every benchmark that needs a GPU, as parallel jobs on one GPU, stopped at a deadline; the judge-free half of the
# results (the SmolLM2 judge scores the samples afterwards, wherever it is installed):
#
#   kjv-800-*, kjv-3200-*  benchmarks/run_all.py on recipes/kjv at 1x and 4x the anchors' budget: test ELBO and
#                          samples at 16 / 64 / 256 steps of masked and embedding (each with and without
#                          self-conditioning) and the AR baseline, and at 1x of uniform
#   distill-masked, distill-embedding
#                          after their 800-step teacher: `textdiff distill` (4 stages, each halving the steps), then
#                          samples of the teacher and every student at every step count
#   s2s-<task>-<backend>   benchmarks/seq2seq.py: train every recipes/{e2e,kjv-asv}/*.yaml, BLEU / ROUGE-L on test
#
#   TEXTDIFF_DATA_DIR=../shared/data bash benchmarks/device_suite.sh RUNS [PACK_DIR]
#
# then, where the judge is installed (each frontier.json drawn here is scored in place), the reports:
#   for f in RUNS/kjv/results/*/*-frontier/frontier.json RUNS/distill/*-frontier/frontier.json; do textdiff bench judge $f; done
#   python benchmarks/run_all.py --from-cache --runs RUNS/kjv --steps 800 ...   (the same --variant and --only)
#   python benchmarks/seq2seq.py --from-cache --runs RUNS/s2s
#
# Knobs (environment): DEVICE (cuda), DEADLINE (seconds from the start after which unfinished jobs are stopped and
# what exists is packed; 3000), BUDGETS ("800 3200"; BASE, 800, is the one with uniform and distillation), NUM_SAMPLES (64), DRAWS (32), GENPPL_STEPS ("16 64 256"),
# DISTILL_ITERS (500), S2S_ARGS (extra benchmarks/seq2seq.py arguments), S2S_BACKENDS (the seq2seq back-ends, in
# the order their jobs start; default: every recipe of the task), JOBS (a regex of job names to run),
# PARALLEL (jobs at a time, 4: CUDA time-slices between processes, so 21 at once ran each ~10x slower on an H100).
# With PACK_DIR, everything but weights is packed into PACK_DIR/results.tgz at the end.
set -u
RUNS=${1:?usage: device_suite.sh RUNS [PACK_DIR]}
PACK=${2:-}
DEVICE=${DEVICE:-cuda} DEADLINE=${DEADLINE:-3000} BUDGETS=${BUDGETS:-"800 3200"} BASE=${BASE:-800} NUM=${NUM_SAMPLES:-64}
DRAWS=${DRAWS:-32} GSTEPS=${GENPPL_STEPS:-"16 64 256"} ITERS=${DISTILL_ITERS:-500} S2S_ARGS=${S2S_ARGS:-} JOBS=${JOBS:-.}
PARALLEL=${PARALLEL:-4}
cd "$(dirname "$0")/.."
mkdir -p "$RUNS/logs"
START=$(date +%s)
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
PY=${PYTHON:-python3}
VARIANTS="--variant masked-selfcond=masked:model.self_conditioning=true \
--variant embedding-selfcond=embedding:model.self_conditioning=true \
--variant simplex-no-selfcond=simplex:model.self_conditioning=false"

job() {  # job NAME COMMAND...: run in the background once fewer than PARALLEL run, logged, stopped at the deadline
  local name=$1; shift
  [[ $name =~ $JOBS ]] || return 0
  while (( $(jobs -pr | wc -l) >= PARALLEL )); do sleep 2; done
  local left=$(( DEADLINE - ($(date +%s) - START) ))
  (( left > 0 )) || return 0
  ( export HF_HOME="/tmp/hf-$name"; timeout --signal=TERM --kill-after=10 "$left" bash -c "set -e; $*" \
      > "$RUNS/logs/$name.log" 2>&1; echo "exit $?" >> "$RUNS/logs/$name.log" ) &
}
lm() {  # lm STEPS NAME: train and evaluate one KJV language model (judge deferred)
  echo "$PY benchmarks/run_all.py --device $DEVICE --steps $1 --runs $RUNS/kjv --only $2 $VARIANTS --judge none \
--skip throughput report --num-samples $NUM --draws $DRAWS --genppl-steps $GSTEPS --frontier-steps ${GSTEPS// /,}"
}
distill() {  # distill NAME SAMPLER STEPS_START FRONTIER_STEPS: distil the BASE-step teacher, then every stage's samples
  local d=$RUNS/distill/$1
  echo "$PY -m textdiff distill $RUNS/kjv/$1-$BASE --stages 4 --steps-start $3 --iters $ITERS --out $d --device $DEVICE \
&& $PY -m textdiff bench frontier $RUNS/kjv/$1-$BASE $d/stage1 $d/stage2 $d/stage3 $d/stage4 --steps $4 --samplers $2 \
--judge none --num-samples $NUM --device $DEVICE --out-dir $RUNS/distill/$1-frontier"
}

for steps in $BUDGETS; do
  for name in ar uniform masked-selfcond embedding-selfcond; do
    [[ $steps == "$BASE" || $name != uniform ]] && job "kjv-$steps-$name" "$(lm "$steps" "$name")"
  done
  if [[ $steps == "$BASE" ]]; then
    job "kjv-$steps-masked" "$(lm "$steps" masked) && $(distill masked ancestral 128 4,8,16,32,64,128)"
    job "kjv-$steps-embedding" "$(lm "$steps" embedding) && $(distill embedding ddim 256 8,16,32,64,128,256)"
  else
    job "kjv-$steps-masked" "$(lm "$steps" masked)"
    job "kjv-$steps-embedding" "$(lm "$steps" embedding)"
  fi
done
for task in e2e kjv-asv; do
  for backend in ${S2S_BACKENDS:-$(cd recipes/$task && ls *.yaml | sed 's/\.yaml$//' | grep -v '^lm-')}; do
    [[ -f recipes/$task/$backend.yaml ]] || continue
    mbr=8; [[ $task == kjv-asv ]] && mbr=4
    job "s2s-$task-$backend" "$PY benchmarks/seq2seq.py --device $DEVICE --runs $RUNS/s2s --tasks $task \
--only $task/$backend --skip report --mbr $mbr --batch-size 256 $S2S_ARGS"
  done
done

echo "all jobs started; deadline ${DEADLINE}s"
while [[ -n $(jobs -pr) ]]; do  # a progress line a minute (the GPU's load with it, where there is one)
  sleep 15
  elapsed=$(( $(date +%s) - START ))
  (( elapsed % 60 < 15 )) || continue
  gpu=$(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null | head -1)
  echo "[${elapsed}s] $(jobs -pr | wc -l) jobs running${gpu:+; GPU $gpu}"
done
wait
for log in "$RUNS"/logs/*.log; do echo "== $(basename "$log" .log): $(tail -1 "$log")"; done
if [[ -n $PACK ]]; then
  tar czf "$PACK/results.tgz" -C "$RUNS" --exclude='*.safetensors' --exclude='tokenizer*' --exclude='*.pt' .
  ls -la "$PACK"
fi

#!/bin/bash
# The block-diffusion sampling frontier of benchmarks/results/block_frontier_remasking_cpu (issue 33): the K = 4
# and K = 16 KJV block models and the AR baseline of benchmarks/kjv_ratio.py, 16 samples x 128 tokens a point,
# judged by SmolLM2-135M. Seed 0 is timed as the median of 3 draws; seeds 1-3 (one draw each) give the pooled
# quality that benchmarks/frontier_target.py reads the target off. Run it alone on the machine, from the
# repository root, after training the three runs:
#
#   python benchmarks/kjv_ratio.py --families ar block-masked --budgets 1 --draws 8 --set train.threads=2 \
#       --runs runs/kjv-block4
#   python benchmarks/kjv_ratio.py --families block-masked --budgets 1 --draws 8 --set train.threads=2 \
#       --set model.block_size=16 --runs runs/kjv-block16
#   bash benchmarks/block_frontier.sh            # SEEDS="0" for the timed frontier only; OUT=... elsewhere
set -euo pipefail
B=${B:-runs/kjv-block4/block-masked-800-threads2}
A=${A:-runs/kjv-block4/ar-800-threads2}
B16=${B16:-runs/kjv-block16/block-masked-800-threads2-block_size16}
OUT=${OUT:-benchmarks/results/block_frontier_remasking_cpu}
SPECS=("$B@2,4" "$B#remasking=random@2,4" "$B#remasking=random,temperature=0.9@2" "$B#remasking=dilated@2,3"
       "$B#remasking=dilated,temperature=0.95@2" "$B#remasking=dilated,temperature=0.97@2" "$B#remasking=entropy@2"
       "$B#remasking=margin@2" "$B16@4,8,16" "$B16#remasking=random@8,16" "$B16#remasking=dilated@4,8"
       "$B16#remasking=dilated,temperature=0.97@8" "$A")
for seed in ${SEEDS:-0 1 2 3}; do
  repeats=1
  if [ "$seed" = 0 ]; then repeats=3; fi
  textdiff bench frontier "${SPECS[@]}" --samplers confidence,ar --num-samples 16 --repeats "$repeats" \
    --seed "$seed" --out-dir "$OUT/seed$seed"
done
python benchmarks/frontier_target.py "$OUT/seed0/frontier.json" --out "$OUT/target_seed0.md"
python benchmarks/frontier_target.py "$OUT"/seed*/frontier.json --out "$OUT/target.md"

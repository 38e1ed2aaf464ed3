#!/usr/bin/env bash
# Canvas 30 vs size-bucketed canvases on bench/learn.py, same tasks and seeds:
#   equal minutes: both layouts train MINUTES each, side by side (one torch thread each, so
#                  both see the same machine load);
#   equal steps:   buckets train exactly the steps canvas 30 reached in its MINUTES.
# Prints a markdown table of every run's last line.
#   bash bench/learn_compare.sh [MINUTES=10] [SEEDS="0 1 2"] [extra Hydra overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
seeds=${2:-"0 1 2"}
shift $(( $# > 2 ? 2 : $# ))
out=bench/results/learn
# Issue 15's protocol, as measured then: <= 12 per side, a seeded fifth scored, trm_tiny at batch 32 and
# lr 1e-3 with a flat lr (learn.py's defaults are now the README's set and recipe).
issue15=(--scored fifth --max-side 12 arch=trm_tiny global_batch_size=32 optimizer.lr=1e-3
         lr_warmup_steps=50 epochs=1000000 compile=false)
for seed in $seeds; do
  python bench/learn.py --canvas 30 --minutes "$minutes" --seed "$seed" --threads 1 \
    --out "$out/30-seed$seed" "${issue15[@]}" "$@" > "$out-30-seed$seed.log" 2>&1 &
  python bench/learn.py --canvas buckets --minutes "$minutes" --seed "$seed" --threads 1 \
    --out "$out/buckets-seed$seed" "${issue15[@]}" "$@" > "$out-buckets-seed$seed.log" 2>&1 &
  wait
done
for seed in $seeds; do
  steps=$(python -c "import json; print(json.load(open('$out/30-seed$seed/result.json'))['steps'])")
  python bench/learn.py --canvas buckets --steps "$steps" --minutes 1000 --seed "$seed" --threads 1 \
    --out "$out/buckets-steps-seed$seed" "${issue15[@]}" "$@" > "$out-buckets-steps-seed$seed.log" 2>&1
done
python bench/learn.py --table "$out"

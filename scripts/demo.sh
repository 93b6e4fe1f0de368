#!/usr/bin/env bash
# One command for a newcomer: set everything up (scripts/setup.sh), then train on Fashion-MNIST
# three ways with the same recipe -- dense timm, tri-level, and dense for the tri-level run's
# wall-clock (the honest baseline) -- and print val top-1, training wall-clock and speedup.
# About 12-14 minutes on 2 CPU cores. Extra arguments go to `trilevel bench train`
# (e.g. --epochs 2 for a quicker look).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${DEMO_OUT:-runs/demo-$(date +%Y%m%d-%H%M%S)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
.venv/bin/trilevel bench train -c configs/demo.yaml --configs dense,trilevel,dense-same-time \
    --output-dir "$OUT" "$@"
echo
echo "Runs, metrics, checkpoints and accuracy_vs_time.png are in $OUT"
echo "Next: .venv/bin/trilevel visualize --checkpoint $OUT/trilevel/checkpoint.pt --images 6 --output $OUT/pruning.png"

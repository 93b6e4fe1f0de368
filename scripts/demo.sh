#!/usr/bin/env bash
# One command for a newcomer: set everything up (scripts/setup.sh), then train dense timm and the
# recommended tri-level settings (--preset fast) at two compute budgets each (2 and 4.5 dense
# epochs of a 12-block ViT on 20,000 Fashion-MNIST images), and print accuracy against wall-clock
# and the time-to-accuracy speedup against budget-matched dense training. About 10-12 minutes on
# 2 CPU cores from a fresh clone. Extra arguments go to `trilevel bench train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${DEMO_OUT:-runs/demo-$(date +%Y%m%d-%H%M%S)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
.venv/bin/trilevel bench train -c configs/demo.yaml --configs dense,fast --budgets 2,4.5 \
    --output-dir "$OUT" "$@"
echo
echo "Runs, bench_tta.md and accuracy_vs_time.png are in $OUT"
echo "Next: .venv/bin/trilevel visualize --checkpoint $OUT/fast/b4.5-s0/checkpoint.pt --images 6 --keep-ratio 0.5"
echo "  (the fast preset ends at full tokens; --keep-ratio 0.5 shows which patches its token level keeps)"

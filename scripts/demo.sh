#!/usr/bin/env bash
# One command for a newcomer: set everything up (scripts/setup.sh), then train dense timm and the
# default tri-level settings (--preset fast-patchdrop) at two compute budgets each (8 and 16 dense
# epochs of a 12-block ViT on 3,000 Fashion-MNIST images: the long-schedule regime of
# docs/benchmarks.md), and print FLOPs to accuracy and time to accuracy against budget-matched
# dense training. About 10 minutes on 2 CPU cores from a fresh clone. Extra arguments go to
# `trilevel bench train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${DEMO_OUT:-runs/demo-$(date +%Y%m%d-%H%M%S)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
.venv/bin/trilevel bench train -c configs/demo.yaml --configs dense,fast-patchdrop --budgets 8,16 \
    --output-dir "$OUT" "$@"
cat <<MSG

How to read it: one seed (seed 0), so the figures above carry seed noise; docs/benchmarks.md gives
three seeds with intervals (long regime: FLOPs to accuracy 2.18x, 1.97-2.45). FLOPs to accuracy is
the method's figure, the same on any hardware; time to accuracy also depends on this machine, and
on a shared machine timings move by 5-25% within an hour (compare CPU seconds beside wall-clock).
Runs, bench_tta.md, accuracy_vs_flops.png and accuracy_vs_time.png are in $OUT
Next: .venv/bin/trilevel visualize --checkpoint $OUT/fast-patchdrop/b16-s0/checkpoint.pt --images 6 --keep-ratio 0.5
  (the default ends at full tokens; --keep-ratio 0.5 shows which patches its token level keeps)
MSG

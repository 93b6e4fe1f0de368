#!/usr/bin/env bash
# The step-throughput benchmarks of docs/benchmarks.md on one CUDA GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUTDIR=${OUT:-.}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
$PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
run() { echo "### $*"; $PY -m trilevel.bench speed --device cuda --rounds 7 --steps-per-round 10 --warmup-steps 5 "$@"; }
# (a) DeiT-Tiny-shaped ViT on 28x28 one-channel images, 4x4 patches
for amp in bf16 none; do
  run --img-size 28 --patch-size 4 --in-chans 1 --embed-dim 192 --depth 12 --num-heads 3 --batch-size 128 --amp $amp
done
# (b) deit_tiny_patch16_224
for amp in bf16 none; do
  run --model deit_tiny_patch16_224 --batch-size 32 --amp $amp
done
# (c) larger batches, where a GPU is busy: deit_tiny 256, deit_small 128 (bf16)
run --model deit_tiny_patch16_224 --batch-size 256 --amp bf16
run --model deit_small_patch16_224 --batch-size 128 --amp bf16

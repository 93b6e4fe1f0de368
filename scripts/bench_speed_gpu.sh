#!/usr/bin/env bash
# The step-throughput benchmarks of docs/benchmarks.md on one CUDA GPU.
# Each table also has the training memory of every configuration: bytes saved for backward per
# image (exact), against dense, against the kept-token fraction of the FLOP model, the batch that
# fits in dense's memory, and the CUDA allocator peak per image. The --compile runs (d) add the
# step speedup of torch.compile (inductor) over eager and the compile time of each configuration.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUTDIR=${OUT:-.}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
$PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
run() { echo "### $*"; $PY -m trilevel bench speed --device cuda --rounds 7 --steps-per-round 10 --warmup-steps 5 "$@"; }
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
# (d) eager and torch.compile in the same rotation (compilation is in the untimed warm-up;
#     the "compile s" column is the wall time of each configuration's first compiled step)
run --img-size 28 --patch-size 4 --in-chans 1 --embed-dim 192 --depth 12 --num-heads 3 --batch-size 128 --amp bf16 --compile
run --model deit_small_patch16_224 --batch-size 128 --amp bf16 --compile

# From FLOPs to time to accuracy on your card
# -------------------------------------------
# `trilevel bench train --budgets ...` writes bench_tta.md, whose "FLOPs-to-accuracy speedup" is
# the FLOP-counted speedup of reaching the target top-1 against dense (hardware-free). To turn it
# into the time-to-accuracy speedup to expect on this GPU, multiply it by the "measured / implied"
# column of the table above, for the same configuration, model, batch size and --amp:
#   expected TTA speedup = FLOPs-to-accuracy speedup x (measured speedup / FLOP-implied speedup)
# (measured / implied is this card's inverse of bench_tta.md's "CPU s per FLOP vs dense" column).
# e.g. 1.40x FLOPs-to-accuracy with measured / implied 0.85 -> about 1.19x less wall-clock to the
# target; dense's time to target on the card divided by that is the configuration's expected one.
# Training under torch.compile: use the compiled ratio instead, i.e. measured / implied x the
# configuration's compile speedup / dense's compile speedup (the --compile table's columns).

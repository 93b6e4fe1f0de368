#!/usr/bin/env bash
# Sets up everything trilevel needs on a fresh Debian/Ubuntu machine: the Fashion-MNIST dataset
# (Debian package dataset-fashion-mnist) when missing, a virtual env in .venv, pinned dependencies.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=/usr/share/datasets/fashion-mnist
if [ ! -f "$DATA/train-images-idx3-ubyte.gz" ]; then
  echo "[setup] installing Debian package dataset-fashion-mnist"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import trilevel, timm, torchvision, pytest, tyro, lightning, tensorboard, hypothesis" 2>/dev/null \
   || [ constraints.txt -nt .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  echo "[setup] installing pinned dependencies (constraints.txt)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev,lightning,tensorboard]"
  touch .venv/.installed
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__)')"

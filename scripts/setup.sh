#!/usr/bin/env bash
# Sets up everything trilevel needs on a fresh Debian/Ubuntu machine: the Fashion-MNIST dataset
# (Debian package dataset-fashion-mnist) and chromium (the headless browser that renders `trilevel
# report`'s page in tests/cli/test_viz_html.py) when missing, a virtual env in .venv, pinned dependencies.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
APT_UPDATED=""
apt_install() {  # apt_install PACKAGE: one `apt-get update` per run, then the package
  echo "[setup] installing Debian package $1"
  if [ -z "$APT_UPDATED" ]; then
    $SUDO apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$1"
}
DATA=/usr/share/datasets/fashion-mnist
if [ ! -f "$DATA/train-images-idx3-ubyte.gz" ]; then
  apt_install dataset-fashion-mnist
fi
if ! command -v chromium >/dev/null 2>&1; then
  apt_install chromium
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

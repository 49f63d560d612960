#!/usr/bin/env bash
# Set up mres on a fresh machine: the Debian Fashion-MNIST package and a .venv with mres + deps.
# Idempotent: a second run only checks.  Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. Fashion-MNIST from Debian (the bundled default dataset); best effort, mres says how if absent.
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
  echo "setup: installing dataset-fashion-mnist (Debian)" >&2
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1 \
    || echo "setup: warning: could not install dataset-fashion-mnist (mres datasets explains how to get it)" >&2
fi

# 2. The virtual environment (standard CUDA build of torch: torchvision needs it; runs on CPU).
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import mres, torch, torchvision, pytest" >/dev/null 2>&1 || [ pyproject.toml -nt .venv/.mres-installed ]; then
  echo "setup: installing mres and its dependencies into .venv (torch is several GB the first time)" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch .venv/.mres-installed
fi
echo "setup: ready (.venv/bin/mres)" >&2

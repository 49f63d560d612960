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
# Dependencies are pinned to the releases the tests passed with (constraints.txt), so a new upstream
# release cannot change results unnoticed; MRES_UNPINNED=1 installs the newest allowed instead.
MARKER=.venv/.mres-installed
if [ "${MRES_UNPINNED:-0}" = 1 ]; then MODE=unpinned; else MODE=pinned; fi
pins_match() {  # installed versions vs constraints.txt (exact pins, local labels like +cu130 ignored)
  .venv/bin/python - <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
bad = []
for line in open("constraints.txt"):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, want = (s.strip() for s in line.split("=="))
    try:
        have = version(name).split("+")[0]
    except PackageNotFoundError:
        have = "not installed"
    if have != want:
        bad.append(f"{name} {have} (pinned {want})")
if bad:
    print("setup: differs from constraints.txt: " + ", ".join(bad), file=sys.stderr)
sys.exit(1 if bad else 0)
EOF
}
if ! .venv/bin/python -c "import mres, torch, torchvision, pytest" >/dev/null 2>&1 || [ ! -e "$MARKER" ] \
   || [ pyproject.toml -nt "$MARKER" ] || [ constraints.txt -nt "$MARKER" ] \
   || [ "$(cat "$MARKER" 2>/dev/null)" != "$MODE" ] || { [ "$MODE" = pinned ] && ! pins_match 2>/dev/null; }; then
  echo "setup: installing mres and its dependencies into .venv ($MODE; torch is several GB the first time)" >&2
  if [ "$MODE" = pinned ]; then
    .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev,tensorboard]'
    pins_match || { echo "setup: error: .venv does not match constraints.txt (see above)" >&2; exit 1; }
  else
    echo "setup: MRES_UNPINNED=1: newest releases allowed by pyproject.toml, not the tested ones" >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[dev,tensorboard]'
  fi
  echo "$MODE" > "$MARKER"
fi
echo "setup: ready (.venv/bin/mres)" >&2

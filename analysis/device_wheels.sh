#!/usr/bin/env bash
# Fetch, here, the wheels of mres's dependencies that the lent accelerator machines' image lacks
# (pydantic and its own needs; the image has torch, numpy, scipy, typer, rich, matplotlib, PyYAML)
# into .whl/ (git-ignored), for analysis/device_check.sh: carry .whl with the run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ver() { "$PY" -c "from importlib.metadata import version; print(version('$1'))"; }
mkdir -p .whl
for pkg in pydantic pydantic-core annotated-types typing-inspection; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$pkg==$(ver "$pkg")"
done
ls .whl

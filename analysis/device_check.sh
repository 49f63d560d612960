#!/usr/bin/env bash
# The prepared check for an accelerator machine (issue: scale out, item 5): about 6 minutes on one
# H100/H200, each section bounded by its own timeout (the whole script by 8 minutes).
#
#   bash analysis/device_check.sh [OUTDIR]          # OUTDIR default: $OUT, else runs/device_check
#
# Setup: where a .venv with CUDA torch works, it is used; where python3 already holds CUDA torch
# (the lent machines: offline, torch preinstalled) mres runs from this checkout on it, with the
# packages that image lacks (pydantic) installed from wheels in .whl/ (fetch them here with
# `bash analysis/device_wheels.sh`, then carry .whl); else scripts/setup.sh makes the .venv.
# Sections: pytest -m cuda (cuda equals cpu, AMP, landscape vmap = loop, 2-GPU DDP when two GPUs),
# the GPU sections of bench_overhead / bench_landscape / bench_throughput, and a few epochs of the
# poly_g4 main job at full width on a synthetic CIFAR-format folder. Everything printed also goes
# to OUTDIR/device_check.log; one failing section does not stop the others.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-runs/device_check}}
mkdir -p "$OUTDIR"
exec > >(tee "$OUTDIR/device_check.log") 2>&1
export PYTHONUNBUFFERED=1
deadline=$(( $(date +%s) + 480 ))
left() { echo $(( deadline - $(date +%s) )); }
status=0
section() {  # section NAME SECONDS CMD...: run CMD within min(SECONDS, time left)
  local name=$1 limit=$2; shift 2
  local t=$(( limit < $(left) ? limit : $(left) ))
  echo; echo "=== $name (limit ${t}s) ==="
  if [ "$t" -le 5 ]; then echo "skipped: out of time"; status=1; return; fi
  local start=$(date +%s)
  timeout "$t" "$@"; local rc=$?
  echo "--- $name: exit $rc, $(( $(date +%s) - start )) s"
  [ "$rc" -ne 0 ] && status=1
}

if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch, mres; assert torch.cuda.is_available()" 2>/dev/null; then
  PY=.venv/bin/python
elif python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  PY=python3
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/mres-site .whl/*.whl \
      && export PYTHONPATH=/tmp/mres-site${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  section setup 300 bash scripts/setup.sh
  PY=.venv/bin/python
fi
MRES=("$PY" -m mres)
"$PY" - <<'EOF' || { echo "device_check: mres or CUDA torch does not import (see above)"; exit 1; }
import torch, mres, pydantic, typer, scipy, matplotlib
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): "
      + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
EOF

section "pytest -m cuda" 150 "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider
section "bench_throughput (images/s per model and grid; amp, compile)" 120 "$PY" analysis/bench_throughput.py --compile
section "bench_overhead (mres fit vs bare loop on cuda)" 60 "$PY" analysis/bench_overhead.py --dataset synthetic --n 20000 --repeats 3
section "bench_landscape (vmap vs loop on cuda)" 90 "$PY" analysis/bench_landscape.py --device cuda --quick
data=$(mktemp -d)
"${MRES[@]}" datasets --sample-cifar "$data" --train 5000 --test 1000 >/dev/null
section "poly_g4 main job, full width, 2+2 epochs on synthetic CIFAR (5000/1000)" 120 \
  "${MRES[@]}" coarse-to-fine --recipe recipes/poly_g4_cifar.yaml --set dataset.data_root="$data" \
  --set coarse.epochs=2 --set fine.epochs=2 --out "$OUTDIR/poly_g4" --quiet
if [ -f "$OUTDIR/poly_g4/summary.json" ]; then
  "$PY" - "$OUTDIR/poly_g4" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
for res in sorted(run.glob("trial0/*/*/result.json")):
    r = json.loads(res.read_text())
    n = 5000 * len(r["metrics"])
    print(f"{res.parent.parent.name:<34} {res.parent.name:<10} {n / max(r['train_seconds'], 1e-9):>10,.0f} images/s "
          f"(train seconds {r['train_seconds']:.1f}, final test {100 * (r['metrics'][-1]['test_acc'] or 0):.1f} %)")
EOF
fi
rm -rf "$data"
echo; echo "device_check: $( [ $status = 0 ] && echo all sections passed || echo some sections failed ), $(( 480 - $(left) )) s"
exit $status

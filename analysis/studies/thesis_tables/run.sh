#!/usr/bin/env bash
# Thesis Tables 4.1-4.4 (seed 003), the protocol as written: one coarse-to-fine run per table.
# Resumable: rerun this script and every finished phase is reused (runs/thesis_tables/table4N/).
# Usage: bash analysis/studies/thesis_tables/run.sh [41 42 43 44]   (default: all, cheapest first)
# THREADS=1 runs with one CPU thread (two lanes side by side on a 2-core machine: ~17 % more throughput).
set -euo pipefail
cd "$(dirname "$0")/../../.."
MRES=${MRES:-.venv/bin/mres}
tables=${*:-42 43 41 44}
extra=()
[ -n "${THREADS:-}" ] && extra=(--set "threads=$THREADS")
for t in $tables; do
  out=runs/thesis_tables/table$t
  start=$(date +%s)
  if [ "$t" = 43 ] || [ "$t" = 44 ]; then
    # the same coarse phase as Table 4.2 (same recipe block and seeds): reuse it, which also pairs the trials
    for c in runs/thesis_tables/table42/trial*/coarse-14; do
      trial=$(basename "$(dirname "$c")")
      if [ -f "$c/result.json" ] && [ ! -e "$out/$trial/coarse-14" ]; then
        mkdir -p "$out/$trial" && cp -r "$c" "$out/$trial/"
      fi
    done
  fi
  if [ -f "$out/recipe.yaml" ]; then
    $MRES coarse-to-fine --resume "$out" "${extra[@]}"
  else
    $MRES coarse-to-fine --recipe "recipes/thesis_table$t.yaml" --out "$out" "${extra[@]}"
  fi
  echo "table $t: $(( $(date +%s) - start )) s wall" | tee -a runs/thesis_tables/wall.txt
  mkdir -p "analysis/studies/thesis_tables/table$t"
  cp -r "$out/summary.json" "$out/report.md" "$out/figures" "analysis/studies/thesis_tables/table$t/"
done

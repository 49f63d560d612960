#!/usr/bin/env bash
# Thesis Tables 4.1-4.4 (seed 003), the protocol as written: one coarse-to-fine run per table.
# Resumable: rerun this script and every finished phase is reused (runs/thesis_tables/table4N/).
# Usage: bash analysis/studies/thesis_tables/run.sh [41 42 43 44]   (default: all, cheapest first)
set -euo pipefail
cd "$(dirname "$0")/../../.."
MRES=${MRES:-.venv/bin/mres}
tables=${*:-42 43 41 44}
for t in $tables; do
  out=runs/thesis_tables/table$t
  start=$(date +%s)
  if [ -f "$out/recipe.yaml" ]; then
    $MRES coarse-to-fine --resume "$out"
  else
    $MRES coarse-to-fine --recipe "recipes/thesis_table$t.yaml" --out "$out"
  fi
  echo "table $t: $(( $(date +%s) - start )) s wall" | tee -a runs/thesis_tables/wall.txt
  mkdir -p "analysis/studies/thesis_tables/table$t"
  cp -r "$out/summary.json" "$out/report.md" "$out/figures" "analysis/studies/thesis_tables/table$t/"
done

"""Thesis Tables 4.1–4.4 beside ours: each cell mean ± std over the trials finished so far, and the
ordering verdicts (paired tests from mres.c2f.stats; Welch's t-test between tables of different models).

Reads the run directories of run.sh (``runs/thesis_tables/table4N[_*]/trial*/<variant>/fine-28/result.json``),
so a study still running is summarised as far as it got; a table with no run directory here is taken from the
committed tables.json (its per-trial cells), so runs of earlier sessions count.  Writes tables.md and tables.json here.

    .venv/bin/python analysis/studies/thesis_tables/compare.py [--runs runs/thesis_tables]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import stats as sps

from mres.c2f.stats import paired_test

HERE = Path(__file__).resolve().parent
ROWS = {"fresh": "New", "transfer": "Transfer", "galerkin": "Multigrid"}
# seed 003, MNIST: Tables 4.1/4.2 (Initial train, Initial val, ReTrain train, ReTrain val) and 4.3/4.4
# (classifier stage: Initial train, Initial val, After val; network stage: the same three)
THESIS = {
    "41": {"fresh": [88.4, 85.0, 96.4, 91.9], "transfer": [97.9, 93.5, 99.4, 94.6], "galerkin": [97.5, 62.9, 99.9, 63.6]},
    "42": {"fresh": [91.1, 89.0, 97.0, 93.2], "transfer": [96.7, 91.5, 98.3, 92.8], "galerkin": [96.8, 84.1, 99.8, 88.0]},
    "43": {"fresh": [32.5, 34.1, 75.3, 91.1, 89.0, 92.2], "transfer": [94.4, 82.1, 92.9, 99.1, 94.0, 93.8],
           "galerkin": [85.2, 34.1, 38.3, 97.6, 60.3, 62.4]},
    "44": {"fresh": [51.8, 50.3, 76.6, 91.9, 77.1, 79.5], "transfer": [92.8, 81.5, 91.4, 99.7, 91.7, 92.4],
           "galerkin": [85.2, 32.6, 35.9, 97.2, 42.4, 50.8]},
}
COLUMNS = {"41": ["Initial train", "Initial val.", "ReTrain train", "ReTrain val."],
           "43": ["Classifier: Initial train", "Initial val.", "After val.",
                  "Network: Initial train", "Initial val.", "After val."]}
COLUMNS["42"], COLUMNS["44"] = COLUMNS["41"], COLUMNS["43"]
TITLES = {"41": "Table 4.1 — baseline (no pool, SGD)", "42": "Table 4.2 — pooling",
          "43": "Table 4.3 — classifier by CG-Steihaug (5 ep.), then network by SGD (10 ep.)",
          "44": "Table 4.4 — classifier by CG-Steihaug (5 ep.), then network by CG-Steihaug (10 ep.)"}


def cells_of(metrics: list[dict[str, Any]], staged: bool) -> list[float | None]:
    """One trial's cells (accuracy in %) from its fine phase's per-epoch metrics."""
    pct = lambda v: None if v is None else 100 * v  # noqa: E731
    if not staged:
        if not metrics:
            return [None] * 4
        a, z = metrics[0], metrics[-1]
        return [pct(a.get("train_eval_acc")), pct(a.get("test_acc")), pct(z.get("train_eval_acc")), pct(z.get("test_acc"))]
    out: list[float | None] = []
    for stage in (1, 2):
        rows = [m for m in metrics if m.get("stage") == stage]
        out += [pct(rows[0].get("train_eval_acc")), pct(rows[0].get("test_acc")), pct(rows[-1].get("test_acc"))] \
            if rows else [None] * 3
    return out


def load_table(runs: Path, table: str, recorded: dict[str, Any]) -> dict[str, Any]:
    """Per strategy, per finished trial: the cells, by trial index (a trial counts once its fine phase ended).

    Reads every run directory of the table (``table4N`` and ``table4N_*``: a run started with ``--set seed=S``
    holds trial S/1000 + k as its trial k, since a trial's seed is seed + 1000·trial); trials found in no run
    directory are taken from ``recorded`` (the committed tables.json), so a finished trial is never lost with
    its run directory (runs/ is not committed)."""
    out: dict[str, Any] = {s: {} for s in ROWS}
    wall = 0.0
    seen: set[int] = set()
    for run in sorted(runs.glob(f"table{table}")) + sorted(runs.glob(f"table{table}_*")):
        if not (run / "recipe.yaml").exists():
            continue
        base = int(yaml.safe_load((run / "recipe.yaml").read_text()).get("seed", 0)) // 1000
        for tdir in sorted(run.glob("trial*"), key=lambda p: int(p.name[5:])):
            k = base + int(tdir.name[5:])
            coarse = tdir / "coarse-14" / "result.json"
            if coarse.exists():
                wall += json.loads(coarse.read_text())["seconds"]
            for s in ROWS:
                res = tdir / s / "fine-28" / "result.json"
                if res.exists():
                    r = json.loads(res.read_text())
                    wall += r["seconds"]
                    seen.add(k)
                    if not r.get("diverged"):
                        out[s][k] = cells_of(r["metrics"], staged=table in ("43", "44"))
    if recorded and not seen:  # no run directory here: the record of an earlier session
        for s in ROWS:
            out[s] = {int(k): v for k, v in recorded["cells"][s].items()}
        wall = recorded["seconds"]
    return {"cells": out, "seconds": wall, "from_record": bool(recorded) and not seen}


def ms(values: list[float | None]) -> str:
    a = np.asarray([v for v in values if v is not None], dtype=float)
    if not len(a):
        return "—"
    return f"{a.mean():.1f} ± {a.std(ddof=1):.1f}" if len(a) > 1 else f"{a.mean():.1f} (1 trial)"


def column(cells: dict[int, list], col: int) -> dict[int, float | None]:
    return {k: v[col] for k, v in cells.items()}


def paired(a: dict[int, float | None], b: dict[int, float | None]) -> dict[str, Any]:
    keys = sorted(set(a) & set(b))
    return paired_test([a[k] for k in keys], [b[k] for k in keys])


def fmt_test(t: dict[str, Any]) -> str:
    if t["mean_diff"] is None:
        return "no common trials"
    p = t["p_t"] if t["p_t"] is not None else t["p_sign"]
    ci = f" [{t['ci'][0]:+.1f}, {t['ci'][1]:+.1f}]" if t.get("ci") else ""
    return (f"{t['mean_diff']:+.1f} pts{ci}, p = {p:.3g}, n = {t['n']}" if p is not None
            else f"{t['mean_diff']:+.1f} pts, n = {t['n']} (one trial: an anecdote)")


def ordering_lines(table: str, cells: dict[str, dict[int, list]]) -> list[str]:
    """For each pair of strategies at Initial and ReTrain/After validation: our difference, its paired test,
    and whether the thesis's sign holds (significantly)."""
    cols = {"41": {"Initial val.": 1, "ReTrain val.": 3}, "43": {"network Initial val.": 4, "network After val.": 5}}
    cols["42"], cols["44"] = cols["41"], cols["43"]
    th = THESIS[table]
    lines = []
    for name, c in cols[table].items():
        parts = []
        for a, b in (("transfer", "galerkin"), ("transfer", "fresh"), ("galerkin", "fresh")):
            t = paired(column(cells[a], c), column(cells[b], c))
            want = th[a][c] - th[b][c]
            sign_ok = t["mean_diff"] is not None and np.sign(t["mean_diff"]) == np.sign(want)
            verdict = ("no trials yet" if t["mean_diff"] is None else "holds" if sign_ok and t["significant"]
                       else "same sign, not significant" if sign_ok
                       else "reversed" if t["significant"] else "not reproduced (opposite sign, not significant)")
            parts.append(f"{ROWS[a]} − {ROWS[b]}: thesis {want:+.1f}, here {fmt_test(t)} → {verdict}")
        lines.append(f"- {name}: " + "; ".join(parts))
    return lines


def welch(a: list[float], b: list[float]) -> str:
    a, b = [x for x in a if x is not None], [x for x in b if x is not None]
    if len(a) < 2 or len(b) < 2:
        return f"{np.mean(a) - np.mean(b):+.1f} pts (too few trials for a test)" if a and b else "no trials"
    r = sps.ttest_ind(a, b, equal_var=False)
    return f"{np.mean(a) - np.mean(b):+.1f} pts (Welch t-test p = {r.pvalue:.3g}, n = {len(a)}/{len(b)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=HERE.parents[2] / "runs" / "thesis_tables")
    args = ap.parse_args()
    record = json.loads((HERE / "tables.json").read_text()) if (HERE / "tables.json").exists() else {}
    data = {t: load_table(args.runs, t, record.get(t, {})) for t in THESIS}
    data = {t: d for t, d in data.items() if any(d["cells"].values())}
    md = ["# Thesis Tables 4.1–4.4: the thesis (MNIST) beside mres (Fashion-MNIST), the protocol as written", "",
          "Cells: accuracy in %, mean ± std over the finished trials; the thesis's printed value after the slash. "
          "The thesis ran MNIST; these runs are Fashion-MNIST (no MNIST here), so levels differ and orderings are "
          "what can be compared. Paired tests: `mres.c2f.stats.paired_test` (t-test; sign test without spread; "
          "Wilcoxon from 6 trials).", ""]
    out_json: dict[str, Any] = {}
    for t, d in data.items():
        cells = d["cells"]
        n = max((len(v) for v in cells.values()), default=0)
        md += [f"## {TITLES[t]}", "", f"{n} trial(s) finished; {d['seconds'] / 60:.0f} min of phase wall-clock"
               + (" (from the committed record: its run directories are not on this machine)." if d["from_record"] else "."), "",
               "| | " + " | ".join(COLUMNS[t]) + " |", "|---" * (len(COLUMNS[t]) + 1) + "|"]
        for s, label in ROWS.items():
            row = [f"{ms(list(column(cells[s], c).values()))} / {THESIS[t][s][c]:.1f}" for c in range(len(COLUMNS[t]))]
            md.append(f"| {label} | " + " | ".join(row) + " |")
        md += ["", "Ordering (validation accuracy):", *ordering_lines(t, cells), ""]
        out_json[t] = {"trials": n, "cells": {s: cells[s] for s in ROWS}, "thesis": THESIS[t], "seconds": d["seconds"]}
    md.append("## Across tables")
    if "41" in data and "42" in data:
        gap = {t: [cells_t - cells_g for k in data[t]["cells"]["galerkin"]
                   if k in data[t]["cells"]["transfer"]
                   for cells_t, cells_g in [(data[t]["cells"]["transfer"][k][3], data[t]["cells"]["galerkin"][k][3])]
                   if cells_t is not None and cells_g is not None] for t in ("41", "42")}
        md.append(f"- Does pooling close the multigrid gap (Transfer − Multigrid, ReTrain val.)? thesis 31.0 → 4.8 pts; "
                  f"here {ms(gap['41'])} → {ms(gap['42'])}: change {welch(gap['42'], gap['41'])}.")
    for t in ("43", "44"):
        if t in data and "42" in data:
            parts = []
            for s, label in ROWS.items():
                # same recipe up to the fine phase and the same seeds: trial k of both shares its coarse run
                test = paired(column(data[t]["cells"][s], 5), column(data["42"]["cells"][s], 3))
                want = THESIS[t][s][5] - THESIS["42"][s][3]
                parts.append(f"{label}: thesis {want:+.1f}, here {fmt_test(test)}")
            md.append(f"- Does CG-Steihaug hurt (Table {t[0]}.{t[1]} final val. − Table 4.2 ReTrain val., paired by "
                      f"trial)? " + "; ".join(parts) + ".")
    (HERE / "tables.md").write_text("\n".join(md) + "\n")
    (HERE / "tables.json").write_text(json.dumps(out_json, indent=1))
    print("\n".join(md))


if __name__ == "__main__":
    main()

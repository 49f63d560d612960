"""The poly-coefficients study's table: per placement row, strategy and policy, final test accuracy
(mean ± std over trials) with a paired test against `keep`, the ĝ steps' measured scale sensitivity,
and how many roots sit inside A's spectral box after the transfer.

    .venv/bin/python analysis/studies/poly_coefficients/compare.py [--runs runs/poly_coefficients]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mres.stats import paired_test

HERE = Path(__file__).resolve().parent
ROWS = ("default", "eq22", "eq23", "eq24", "eq23+24")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=HERE.parents[2] / "runs" / "poly_coefficients")
    args = ap.parse_args()
    lines = ["| row | variant | final test % | Δ vs keep [95 % CI], p | ĝ logit change (×2) | roots in box (dst) |",
             "|---|---|---|---|---|---|"]
    for row in ROWS:
        summary_path = args.runs / row / "summary.json"
        if not summary_path.exists():
            lines.append(f"| {row} | not run | | | | |")
            continue
        strategies = json.loads(summary_path.read_text())["strategies"]
        for label, s in strategies.items():
            acc = [a for a in s["acc_final"] if a is not None]
            keep_label = s["strategy"] + (f"(lam={s['lam']:g})" if s["strategy"] == "galerkin-reg" else "")
            test = paired_test(s["acc_final"], strategies[keep_label]["acc_final"]) if label != keep_label else None
            sens = _sensitivity(args.runs / row, label)
            roots = _roots_inside(args.runs / row, label)
            diff = "·" if test is None else (f"{100 * test['mean_diff']:+.2f} [{100 * test['ci'][0]:+.2f}, "
                                             f"{100 * test['ci'][1]:+.2f}], p={test['p_t']:.3g}"
                                             if test.get("ci") and test.get("p_t") is not None else "n/a")
            lines.append(f"| {row} | {label} | {100 * np.mean(acc):.2f} ± {100 * np.std(acc, ddof=1):.2f} | {diff} | "
                         f"{sens} | {roots} |")
    text = "\n".join(lines) + "\n"
    (HERE / "table.md").write_text(text)
    print(text)


def _sensitivity(run: Path, label: str) -> str:
    slug = label.replace("(", "-").replace(")", "").replace("[", "-").replace("]", "").replace("=", "")
    vals = []
    for f in run.glob(f"trial*/{slug}/fine-*/sensitivity.json"):
        vals += [r["logit_change"] for r in json.loads(f.read_text()) if r["kind"] == "g"]
    return f"{np.median(vals):.1e}" if vals else "—"


def _roots_inside(run: Path, label: str) -> str:
    slug = label.replace("(", "-").replace(")", "").replace("[", "-").replace("]", "").replace("=", "")
    counts = []
    for f in run.glob(f"trial*/{slug}/fine-*/diagnostics.json"):
        for lv in json.loads(f.read_text()).get("spectra", []):
            counts.append(f"{lv['dst']['roots_inside_box']}/{len(lv['dst']['roots'])}")
    return ", ".join(counts[:4]) or "—"


if __name__ == "__main__":
    main()

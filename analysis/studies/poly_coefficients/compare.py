"""The poly-coefficients study's table: per placement row, strategy and policy, final test accuracy
(mean ± std over the trials that finished), diverged trials, a paired test against `keep` (trials where
both finished), the measured scale sensitivity of the ĝ steps, and where the roots land after the transfer
(roots inside the moved A's spectral box, over levels and trials).

    .venv/bin/python analysis/studies/poly_coefficients/compare.py [--runs runs/poly_coefficients]

Writes table.md here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mres.c2f.report import variant_dir_name as slug
from mres.c2f.stats import paired_test
from mres.grids.transfer import inside_box

HERE = Path(__file__).resolve().parent
ROWS = ("default", "eq22", "eq23", "eq24", "eq23+24")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=HERE.parents[2] / "runs" / "poly_coefficients")
    args = ap.parse_args()
    lines = ["| row | variant | finished / diverged / skipped | final test % | Δ vs keep (points) [95 % CI], p, n | "
             "ĝ logit change (coeff ×2), median | roots in the moved A's box | A's box (level 1): before → after |",
             "|---|---|---|---|---|---|---|---|"]
    for row in ROWS:
        summary_path = args.runs / row / "summary.json"
        if not summary_path.exists():
            summary_path = HERE / row / "summary.json"  # the committed copy (runs/ is not committed)
        if not summary_path.exists():
            lines.append(f"| {row} | not run | | | | | | |")
            continue
        summary = json.loads(summary_path.read_text())
        strategies = summary["strategies"]
        for label, s in strategies.items():
            acc = [a for a in s["acc_final"] if a is not None]
            keep = s["strategy"] + (f"(lam={s['lam']:g})" if s["strategy"] == "galerkin-reg" else "")
            diff = "·"
            if label != keep and keep in strategies:
                pairs = [(a, b) for a, b in zip(s["acc_final"], strategies[keep]["acc_final"])
                         if a is not None and b is not None]
                t = paired_test([a for a, _ in pairs], [b for _, b in pairs]) if pairs else {"mean_diff": None}
                if t["mean_diff"] is None:
                    diff = "no common finished trials"
                else:
                    p = t["p_t"] if t.get("p_t") is not None else t.get("p_sign")
                    ci = f" [{100 * t['ci'][0]:+.2f}, {100 * t['ci'][1]:+.2f}]" if t.get("ci") else ""
                    diff = f"{100 * t['mean_diff']:+.2f}{ci}, p={p:.3g}, n={t['n']}" if p is not None else \
                        f"{100 * t['mean_diff']:+.2f}, n={t['n']}"
            accs = f"{100 * np.mean(acc):.2f} ± {100 * np.std(acc, ddof=1):.2f}" if len(acc) > 1 else \
                (f"{100 * acc[0]:.2f}" if acc else "—")
            lines.append(f"| {row} | {label} | {len(acc)} / {sum(bool(d) for d in s['diverged'])} / "
                         f"{sum(bool(k) for k in s['skipped'])} | {accs} | {diff} | "
                         f"{_sensitivity(args.runs / row, label)} | {_roots(args.runs / row, label)} | "
                         f"{_boxes(args.runs / row, label)} |")
    lines += ["", *divergence_lines(args.runs)]
    text = "\n".join(lines) + "\n"
    (HERE / "table.md").write_text(text)
    print(text)


def divergence_lines(runs: Path) -> list[str]:
    """Over the rows without the cancelling BN: per (row, strategy, trial) whose coarse phase finished, does
    ``keep`` diverge where a policy does not (and the reverse)? An exact sign test on the discordant pairs."""
    from scipy.stats import binomtest

    out = ["Divergence in the rows without the cancelling BN (pairs: row × strategy × trial with a finished coarse "
           "phase; a discordant pair is one where exactly one of keep / the policy diverged):", ""]
    for policy in ("rescale", "respectral"):
        keep_only = pol_only = both = n = 0
        for row in ROWS[1:]:
            path = runs / row / "summary.json"
            path = path if path.exists() else HERE / row / "summary.json"
            if not path.exists():
                continue
            st = json.loads(path.read_text())["strategies"]
            for label, s in st.items():
                if s["policy"] != "keep" or s["strategy"] in ("fresh", "fine-only"):
                    continue
                other = st.get(f"{label}[{policy}]")
                if other is None:
                    continue
                for k, (dk, do, sk) in enumerate(zip(s["diverged"], other["diverged"], s["skipped"])):
                    if sk:
                        continue
                    n += 1
                    keep_only += bool(dk) and not do
                    pol_only += bool(do) and not dk
                    both += bool(dk) and bool(do)
        disc = keep_only + pol_only
        p = binomtest(keep_only, disc, 0.5).pvalue if disc else float("nan")
        out.append(f"- keep vs {policy}: {n} pairs; keep alone diverged in {keep_only}, {policy} alone in {pol_only}, "
                   f"both in {both}; sign test p = {p:.3g}")
    return out


def _sensitivity(run: Path, label: str) -> str:
    vals = []
    for f in run.glob(f"trial*/{slug(label)}/fine-*/sensitivity.json"):
        vals += [r["logit_change"] for r in json.loads(f.read_text()) if r["kind"] == "g"]
    return f"{np.median(vals):.1e}" if vals else "—"


def _levels(run: Path, label: str) -> list[dict]:
    out = []
    for f in sorted(run.glob(f"trial*/{slug(label)}/fine-*/diagnostics.json")):
        out += json.loads(f.read_text()).get("spectra", [])
    return out


def _roots(run: Path, label: str) -> str:
    inside = total = 0
    for lv in _levels(run, label):
        box = lv["dst"]["box"]
        roots = [complex(*z) for z in lv["dst"]["roots"]]
        inside += sum(inside_box(z, box) for z in roots)
        total += len(roots)
    return f"{inside}/{total}" if total else "—"


def _boxes(run: Path, label: str) -> str:
    lv = next((x for x in _levels(run, label) if x["level"] == 1), None)
    if lv is None:
        return "—"
    a, b = lv["src"]["box"], lv["dst"]["box"]
    return f"Re [{a[0]:.2g}, {a[1]:.2g}] → [{b[0]:.2g}, {b[1]:.2g}]"


if __name__ == "__main__":
    main()

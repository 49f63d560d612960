"""What each transfer keeps on the thesis CNN, MgNet and Poly-MgNet (issue 30, Build 8).

Per model one coarse-to-fine job (``mres.c2f.job``, the user's code path) on Fashion-MNIST, 14×14 → 28×28,
3 trials, strategies copy (``transfer``), ``galerkin``, ``galerkin-reg`` (λ 0.1), ``galerkin-data`` (its
defaults: λ by GCV, BN per layer, 2 sweeps) and ``distill`` (100 steps); one fine epoch (the kept column is
measured before it). Written per model as it finishes: ``kept/<model>.json`` and ``kept/table.md``.

    .venv/bin/python analysis/studies/keeping_transfers/kept.py          # ~20 min on 2 free cores
    .venv/bin/python analysis/studies/keeping_transfers/kept.py --models cnn --trials 1
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from scipy import stats

from mres.c2f.job import run_coarse_to_fine
from mres.recipe import CoarseToFineRecipe, validate_recipe
from mres.training.fit import console

HERE = Path(__file__).parent
MODELS = {"cnn": {"name": "cnn"}, "mgnet-pi2": {"name": "mgnet[2,2]-[16]-Bl", "pi": "pi2"},
          "poly-q2": {"name": "poly-q2", "widths": [8, 16]}}
STRATEGIES = ["transfer", "galerkin", "galerkin-reg", "galerkin-data", "distill"]
SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4}


def recipe(model: dict, trials: int) -> CoarseToFineRecipe:
    block = {"batch_size": 128, "optimizer": SGD, "schedule": "cosine"}
    return validate_recipe({
        "dataset": {"name": "fashion-mnist", "test_subset": 2000}, "model": model, "resolutions": [14, 28],
        "family": "average-bilinear", "strategies": STRATEGIES, "lams": [0.1], "coarse_subset": 10000,
        "fine_subset": 5000, "coarse": {**block, "epochs": 4}, "fine": {**block, "epochs": 1}, "trials": trials,
        "eval_train": False, "seed": 0}, CoarseToFineRecipe)


def rows_of(model: str, summary: dict, run: Path) -> list[dict]:
    rows = []
    for label, s in summary["strategies"].items():
        distill_s = []
        if s["strategy"] == "distill":
            for t in range(summary["trials"]):
                d = json.loads((run / f"trial{t}" / "distill" / "fine-28" / "diagnostics.json").read_text())
                distill_s.append(d["distill"]["seconds"])
        rows.append({"model": model, "strategy": label, "coarse_acc": s["coarse_acc"], "at_transfer": s["acc_at_transfer"],
                     "kept": s["kept"], "transfer_seconds": s["transfer_seconds"], "distill_seconds": distill_s,
                     "after_fine_epoch": s["acc_final"]})
    return rows


def _ms(xs: list[float], scale: float = 100.0) -> str:
    xs = [x * scale for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return "—"
    m = sum(xs) / len(xs)
    return f"{m:.1f}" if len(xs) < 2 else f"{m:.1f} ± {(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5:.1f}"


def table(rows: list[dict]) -> str:
    out = ["| model | transfer | after transfer % | kept (points) | seconds (transfer) | after 1 fine epoch % | "
           "paired vs copy (after transfer) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = next(q for q in rows if q["model"] == r["model"] and q["strategy"] == "transfer")
        test = "—"
        if r["strategy"] != "transfer" and len(r["at_transfer"]) > 1:
            d = [a - b for a, b in zip(r["at_transfer"], ref["at_transfer"])]
            p = stats.ttest_rel(r["at_transfer"], ref["at_transfer"]).pvalue
            test = f"{sum(d) / len(d) * 100:+.1f} points, p = {p:.3f}"
        secs = _ms(r["transfer_seconds"], 1.0)
        if r["distill_seconds"]:
            secs += f" (+ {_ms(r['distill_seconds'], 1.0)} of steps)"
        out.append(f"| {r['model']} | {r['strategy']} | {_ms(r['at_transfer'])} | {_ms(r['kept'])} | {secs} | "
                   f"{_ms(r['after_fine_epoch'])} | {test} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--runs", type=Path, default=Path("runs/keeping_transfers"), help="the jobs' run directories")
    args = ap.parse_args()
    out = HERE / "kept"
    out.mkdir(exist_ok=True)
    console.quiet = True
    for m in args.models.split(","):
        run = args.runs / m
        summary = run_coarse_to_fine(recipe(MODELS[m], args.trials), run, progress=False)  # a rerun resumes
        (out / f"{m}.json").write_text(json.dumps(rows_of(m, summary, run), indent=1))
        print(f"{m}: done", flush=True)
    rows = [r for m in MODELS if (out / f"{m}.json").exists() for r in json.loads((out / f"{m}.json").read_text())]
    (out / "table.md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()

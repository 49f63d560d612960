"""Which BN rule (and how many sweeps) keeps galerkin-data's fit on MgNet and Poly-MgNet (issue 30, Build 2).

Per model and seed: a coarse model trained at 14×14 on Fashion-MNIST, then from the same copy start each
condition — ``copy`` (the plain transfer, BN recalibrated on the fine data, as the job does), and
galerkin-data with ``bn`` = after / per-layer / keep (and per-layer with 2 sweeps) — gives the test
accuracy right after the transfer at 28×28 and after one fine epoch (SGD lr 0.02, constant).  λ by GCV,
1024 calibration images.  Paired t-tests against ``after`` (today's rule) over the seeds.

    .venv/bin/python analysis/studies/keeping_transfers/bn_rule.py --seeds 0,1,2   # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from scipy import stats

from mres.grids.datafit import fit_to_coarse
from mres.grids.transfer import recalibrate_bn, transfer_weights
from mres.models import build_model
from mres.recipe import DatasetConfig, TrainConfig
from mres.training.data import iterate_batches, load_dataset
from mres.training.fit import configure_runtime, evaluate, fit

FAMILY = "average-bilinear"
MODELS = {"mgnet-pi2": ("mgnet[2,2]-[16]-Bl", {"pi": "pi2"}), "poly-q2": ("poly-q2", {"widths": [8, 16]})}
CONDITIONS = [("copy", None, 1), ("after", "after", 1), ("per-layer", "per-layer", 1), ("keep", "keep", 1),
              ("per-layer, 2 sweeps", "per-layer", 2)]
SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4}


def run(model_key: str, seed: int, data) -> list[dict]:
    name, opts = MODELS[model_key]
    d14, d28 = data.at_resolution(14, FAMILY), data.at_resolution(28, FAMILY)
    torch.manual_seed(seed)
    coarse = build_model(name, opts, 1, 10, 14)
    fit(coarse, d14, TrainConfig(epochs=3, batch_size=128, optimizer=SGD, schedule="cosine"), seed=seed, progress=False)
    coarse_acc = evaluate(coarse, d14.x_test, d14.y_test)[1]
    rows = []
    for label, rule, sweeps in CONDITIONS:
        torch.manual_seed(seed + 1)
        fine = build_model(name, opts, 1, 10, 28)
        transfer_weights(coarse, fine, "transfer", FAMILY)
        t0 = time.perf_counter()
        if rule is not None:
            fit_to_coarse(coarse, fine, d28.x_train[:1024], FAMILY, None, 128, sweeps, rule)
        if rule in (None, "after"):
            g = torch.Generator().manual_seed(seed)
            recalibrate_bn(fine, (xb for xb, _ in iterate_batches(d28.x_train, d28.y_train, 256, g)))
        seconds = time.perf_counter() - t0
        at_transfer = evaluate(fine, d28.x_test, d28.y_test)[1]
        one_epoch = TrainConfig(epochs=1, batch_size=128, optimizer={**SGD, "lr": 0.02}, schedule="constant")
        fit(fine, d28, one_epoch, seed=seed, progress=False)
        after_one = evaluate(fine, d28.x_test, d28.y_test)[1]
        rows.append({"model": model_key, "seed": seed, "condition": label, "coarse_acc": coarse_acc,
                     "at_transfer": at_transfer, "after_one_epoch": after_one, "seconds": seconds})
        print(f"{model_key:<10} seed {seed} {label:<20} coarse {coarse_acc * 100:5.2f}  at transfer "
              f"{at_transfer * 100:5.2f}  after 1 epoch {after_one * 100:5.2f}  ({seconds:.1f} s)", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| model | condition | at transfer % | kept (points) | after 1 fine epoch % | fit s | paired vs after (at transfer) |",
           "|---|---|---|---|---|---|---|"]
    for m in dict.fromkeys(r["model"] for r in rows):
        ref = {r["seed"]: r["at_transfer"] for r in rows if r["model"] == m and r["condition"] == "after"}
        for c, _, _ in CONDITIONS:
            rs = [r for r in rows if r["model"] == m and r["condition"] == c]
            if not rs:
                continue
            at = torch.tensor([r["at_transfer"] for r in rs]) * 100
            kept = torch.tensor([r["at_transfer"] - r["coarse_acc"] for r in rs]) * 100
            one = torch.tensor([r["after_one_epoch"] for r in rs]) * 100
            sd = lambda t: f" ± {t.std().item():.1f}" if len(t) > 1 else ""  # noqa: E731
            test = "—"
            if c != "after" and len(rs) > 1:
                a = [r["at_transfer"] for r in rs]
                b = [ref[r["seed"]] for r in rs]
                res = stats.ttest_rel(a, b)
                test = f"{(sum(a) - sum(b)) / len(a) * 100:+.1f} points, p = {res.pvalue:.3f}"
            out.append(f"| {m} | {c} | {at.mean():.1f}{sd(at)} | {kept.mean():+.1f} | {one.mean():.1f}{sd(one)} | "
                       f"{sum(r['seconds'] for r in rs) / len(rs):.1f} | {test} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "bn_rule")
    args = ap.parse_args()
    configure_runtime(os.cpu_count())
    data = load_dataset(DatasetConfig(name="fashion-mnist", train_subset=10000, test_subset=2000))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "rows.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    for m in args.models.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            if any(r["model"] == m and r["seed"] == seed for r in rows):
                continue  # measured in an earlier run: kept
            rows += run(m, seed, data)
            path.write_text(json.dumps(rows, indent=1))
    (args.out / "table.md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()

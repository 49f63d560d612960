"""Time to accuracy: coarse-to-fine (best strategy) versus fine-only training, one run.

1. fine-only: the thesis CNN trained at the fine grid for ``--fine-epochs``; its final test
   accuracy is the target A, and the training seconds until it first reached A are T_fine.
2. coarse-to-fine: the same model trained at the coarse grid (R-restricted images, same
   examples), transferred with each strategy, then trained at the fine grid until its test
   accuracy reaches A (a cosine schedule planned over ``--c2f-fine-epochs`` epochs).
   T_c2f = coarse + transfer + fine seconds until A.
Training seconds only (per-epoch evaluations are monitoring, not counted for either side).
Prints T_c2f / T_fine for every strategy and for the best (goal <= 0.5).

    python analysis/bench_c2f.py [--n-train 20000] [--coarse-epochs 3] [--fine-epochs 4]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from mres.data import load_dataset
from mres.models import build_model
from mres.recipe import DatasetConfig, TrainConfig
from mres.train import configure_runtime, fit
from mres.transfer import recalibrate_bn, transfer_weights


class Reached(Exception):
    pass


def seconds_to(metrics: list[dict], target: float) -> float | None:
    """Training seconds until test accuracy first reached ``target`` (None: never)."""
    total = 0.0
    for row in metrics:
        total += row["train_seconds"]
        if row["test_acc"] >= target:
            return total
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "synthetic"])
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--n-test", type=int, default=5000)
    ap.add_argument("--coarse", type=int, default=14)
    ap.add_argument("--fine", type=int, default=28)
    ap.add_argument("--coarse-epochs", type=int, default=4)
    ap.add_argument("--fine-epochs", type=int, default=4, help="epochs of the fine-only baseline")
    ap.add_argument("--c2f-fine-epochs", type=int, default=2,
                    help="planned epochs of the fine phase after the transfer (its cosine schedule's length)")
    ap.add_argument("--strategies", default="transfer,galerkin-reg,galerkin")
    ap.add_argument("--lam", type=float, default=0.1)
    ap.add_argument("--family", default="average-bilinear")
    ap.add_argument("--pool", action="store_true")
    args = ap.parse_args()

    configure_runtime(os.cpu_count())
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    data = load_dataset(DatasetConfig(name=args.dataset, train_subset=args.n_train, test_subset=args.n_test,
                                      synthetic={"n_train": args.n_train, "n_test": args.n_test}), dev)
    fine_data = data.at_resolution(args.fine, args.family)
    coarse_data = data.at_resolution(args.coarse, args.family)
    opt = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}

    def model(res: int, seed: int = 0):
        torch.manual_seed(seed)
        return build_model("cnn", {"pool": args.pool}, data.in_channels, data.num_classes, res)

    print(f"{args.dataset}: {len(data.y_train)} train / {len(data.y_test)} test images, grids {args.coarse} -> "
          f"{args.fine}, device {dev}, threads {torch.get_num_threads()}")
    fine_cfg = TrainConfig(epochs=args.fine_epochs, optimizer=opt)
    fine_only = fit(model(args.fine), fine_data, fine_cfg, label="fine-only")
    target = fine_only[-1]["test_acc"]
    t_fine = seconds_to(fine_only, target)
    print(f"fine-only: final test accuracy A = {target:.4f} after {args.fine_epochs} epochs; "
          f"reached A after {t_fine:.1f} s of training")

    coarse_model = model(args.coarse)
    coarse_m = fit(coarse_model, coarse_data, TrainConfig(epochs=args.coarse_epochs, optimizer=opt), label="coarse")
    t_coarse = sum(r["train_seconds"] for r in coarse_m)
    print(f"coarse: {args.coarse_epochs} epochs, {t_coarse:.1f} s, test accuracy {coarse_m[-1]['test_acc']:.4f}")

    results = {}
    for strategy in args.strategies.split(","):
        fine_model = model(args.fine, seed=1)
        t0 = time.perf_counter()
        transfer_weights(coarse_model, fine_model, strategy, args.family, args.lam if strategy == "galerkin-reg" else 0.0)
        recalibrate_bn(fine_model, (fine_data.x_train[i:i + 256] for i in range(0, 2048, 256)))
        t_transfer = time.perf_counter() - t0

        def stop(row, target=target):
            if row["test_acc"] >= target:
                raise Reached

        cfg = TrainConfig(epochs=args.c2f_fine_epochs, optimizer={**opt, "lr": 0.02})
        rows: list[dict] = []
        try:
            fit(fine_model, fine_data, cfg, label=f"fine {strategy}", on_epoch=lambda r: (rows.append(r), stop(r)))
        except Reached:
            pass
        t_f = seconds_to(rows, target)
        if t_f is None:
            print(f"{strategy:>14}: did not reach A in {args.c2f_fine_epochs} fine epochs "
                  f"(best {max(r['test_acc'] for r in rows):.4f})")
            continue
        total = t_coarse + t_transfer + t_f
        results[strategy] = total
        print(f"{strategy:>14}: coarse {t_coarse:.1f} s + transfer {t_transfer:.2f} s + fine {t_f:.1f} s "
              f"({len(rows)} epochs) = {total:.1f} s  ratio {total / t_fine:.3f}")
    if results:
        best = min(results, key=results.get)
        print(f"time-to-accuracy ratio c2f/fine-only (best: {best}) = {results[best] / t_fine:.3f}  (goal <= 0.5)")
    else:
        print("no strategy reached the fine-only accuracy")


if __name__ == "__main__":
    main()

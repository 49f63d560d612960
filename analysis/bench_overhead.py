"""Framework overhead: training throughput of mres's `fit` versus a bare PyTorch loop.

Same model (thesis CNN), same data (device-resident tensors), same batch size, optimizer,
threads and memory format; both measured in this one run, alternating, best of N repeats.
Prints images/s of each and the ratio mres/bare (goal >= 0.95).

    python analysis/bench_overhead.py [--dataset fashion-mnist|synthetic] [--n 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from mres.training.data import load_dataset
from mres.models import build_model
from mres.recipe import DatasetConfig, TrainConfig
from mres.training.fit import build_optimizer, configure_runtime, fit, lr_factor


def bare_loop(model, x, y, cfg: TrainConfig) -> float:
    """The loop a person writes by hand; returns seconds for one epoch of training."""
    opt = build_optimizer(model, cfg.optimizer)
    spe = (len(y) + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg.schedule, s, spe, cfg.epochs))
    g = torch.Generator().manual_seed(0)
    model.train()
    t0 = time.perf_counter()
    order = torch.randperm(len(y), generator=g)
    for i in range(0, len(y), cfg.batch_size):
        idx = order[i:i + cfg.batch_size]
        xb, yb = x[idx], y[idx]
        if cfg.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "synthetic"])
    ap.add_argument("--n", type=int, default=10000, help="training images per epoch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--pool", action="store_true", help="the CNN with the 2x2 pool")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()

    configure_runtime(os.cpu_count())
    dcfg = DatasetConfig(name=args.dataset, train_subset=args.n, test_subset=500,
                         synthetic={"n_train": args.n, "n_test": 500})
    data = load_dataset(dcfg, "cuda" if torch.cuda.is_available() else "cpu")
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, channels_last=args.channels_last, amp=False)

    def fresh_model():
        torch.manual_seed(0)
        m = build_model("cnn", {"pool": args.pool}, data.in_channels, data.num_classes, data.resolution).to(
            data.x_train.device)
        return m.to(memory_format=torch.channels_last) if args.channels_last else m

    # warm-up both paths (allocator, kernels)
    bare_loop(fresh_model(), data.x_train[:512], data.y_train[:512], cfg)
    fit(fresh_model(), data.subset(512, 100), cfg, progress=False)

    bare_t, mres_t = [], []
    for _ in range(args.repeats):  # alternate so that machine noise hits both alike
        bare_t.append(bare_loop(fresh_model(), data.x_train, data.y_train, cfg))
        mres_t.append(fit(fresh_model(), data, cfg, progress=False)[0]["train_seconds"])
    n = len(data.y_train)
    bare_ips, mres_ips = n / min(bare_t), n / min(mres_t)
    print(f"device {data.x_train.device}, threads {torch.get_num_threads()}, {args.dataset} {n} images "
          f"{data.resolution}x{data.resolution}, batch {args.batch_size}, channels_last {args.channels_last}")
    print(f"bare PyTorch loop : {bare_ips:8.0f} images/s  (best of {args.repeats}: {min(bare_t):.2f} s)")
    print(f"mres fit          : {mres_ips:8.0f} images/s  (best of {args.repeats}: {min(mres_t):.2f} s)")
    print(f"ratio mres/bare   : {mres_ips / bare_ips:.3f}  (goal >= 0.95)")


if __name__ == "__main__":
    main()

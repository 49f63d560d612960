"""Why joint training diverges at the fine-only's lr: the sharpness (largest Hessian eigenvalue) of
the fine loss and of the joint loss at initialisation, on one fixed batch.

SGD on a quadratic is stable for lr < 2/λ_max; the ratio λ_max(joint)/λ_max(fine) says how much
smaller the joint loss's step must be to be as stable as the fine-only's.

    python analysis/studies/multilevel_training/sharpness.py [--batch 512] [--seeds 0,1000,2000]
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from mres.training.data import load_dataset, restrict_to
from mres.models import build_model
from mres.c2f.multilevel import batch_loss, tied_weights
from mres.recipe import DatasetConfig
from mres.training.fit import configure_runtime


def top_eigenvalue(loss_fn, params: list[torch.Tensor], iters: int = 30) -> float:
    """λ_max of the Hessian of ``loss_fn()`` by power iteration on Hessian-vector products (double backward)."""
    g = torch.autograd.grad(loss_fn(), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(g, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v)))
        v = [h.detach() for h in hv]
    return lam


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--seeds", default="0,1000,2000")
    args = ap.parse_args()
    configure_runtime(os.cpu_count())
    data = load_dataset(DatasetConfig(name="fashion-mnist", train_subset=args.batch * 2, test_subset=100), "cpu")
    x, y = data.x_train[: args.batch], data.y_train[: args.batch]
    xc = restrict_to(x.contiguous(), x.shape[-1] // 2, "average-bilinear")
    print(f"thesis CNN (no pool), Fashion-MNIST batch {args.batch}, 28×28 and its 14×14 restriction")
    print(f"{'seed':>6} {'λ fine':>9} {'λ ½coarse(galerkin)':>20} {'λ joint(galerkin)':>18} {'ratio':>6}"
          f" {'λ joint(copy)':>14} {'ratio':>6}")
    for seed in map(int, args.seeds.split(",")):
        torch.manual_seed(seed)
        fine = build_model("cnn", {"pool": False}, 1, 10, 28)
        coarse = build_model("cnn", {"pool": False}, 1, 10, 14)
        w = dict(fine.named_parameters())
        params = list(w.values())

        def fine_loss():
            return F.cross_entropy(fine(x), y)

        def coarse_loss(tie):
            return lambda: 0.5 * batch_loss(coarse, tied_weights([fine, coarse], w, "average-bilinear", tie)[1], xc, y)

        lf = top_eigenvalue(fine_loss, params)
        lc = top_eigenvalue(coarse_loss("galerkin"), params)
        lj = top_eigenvalue(lambda: fine_loss() + coarse_loss("galerkin")(), params)
        lk = top_eigenvalue(lambda: fine_loss() + coarse_loss("copy")(), params)
        print(f"{seed:>6} {lf:>9.2f} {lc:>20.2f} {lj:>18.2f} {lj / lf:>6.2f} {lk:>14.2f} {lk / lf:>6.2f}")


if __name__ == "__main__":
    main()

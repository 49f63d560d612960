"""Multigrid training in weight space: grid operators for a whole model, MG/OPT cycles, Galerkin-tied
coarse models (issue: multigrid training beyond one-shot transfer).

Conventions, stated once. A *level* is one model of the architecture, built at one grid; level 0 is
the finest, level ℓ+1 has half the grid. Weights are dicts ``parameter name → tensor`` (the
``named_parameters`` of a level's model); every operator is linear and is ``mres.grids.transfer``'s
per-tensor rules run differentiably (:func:`mres.grids.transfer.move_tensors`), so no rule exists twice:

* restriction ``I_h^H w``: the Galerkin map ``θ_2h = M θ_h`` for stencils, ``Pᵀ`` for flatten heads,
  identity for pointwise tensors (biases, BN affine, 1×1 convs, polynomial coefficients);
* prolongation of a correction ``I_H^h e``: ``galerkin`` (solve ``M θ_h = θ_2h``; heads ``P(PᵀP)⁻¹``,
  so ``I_h^H I_H^h = I``) or ``copy`` (stencils copied; heads ``P/4``: mres's ``transfer``);
* adjoints by vector–Jacobian products of those linear maps (exact, not a transpose written out).

MG/OPT (Nash 2000) with f_h the fine batch loss and f_H the coarse model's loss on the restricted
batch: ``τ = ∇f_H(I_h^H w_h) − (I_H^h)ᵀ∇f_h(w_h)``, so the coarse problem ``f_H(v) − ⟨τ, v⟩`` has at
``v = I_h^H w_h`` the gradient ``(I_H^h)ᵀ∇f_h(w_h)`` (first-order coherence): its descent
directions, prolongated, descend f_h to first order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from ..training.data import restrict_to
from ..training.hooks import FitHook
from ..grids.transfer import move_tensors

Weights = dict[str, torch.Tensor]
PROLONGATIONS = {"galerkin": "galerkin", "copy": "transfer"}  # name here → mres.grids.transfer strategy


def weights_of(model: nn.Module) -> Weights:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def restrict_weights(fine: nn.Module, coarse: nn.Module, w: Weights, family: str) -> Weights:
    """``I_h^H w``: fine weights (or any fine-shaped tensors) → coarse."""
    return move_tensors(fine, coarse, w, "galerkin", family, direction="restrict")


def prolongate_weights(coarse: nn.Module, fine: nn.Module, e: Weights, family: str,
                       prolongation: str = "galerkin") -> Weights:
    """``I_H^h e``: a coarse correction → fine (``galerkin`` or ``copy``)."""
    if prolongation not in PROLONGATIONS:
        raise ValueError(f"prolongation must be one of {', '.join(PROLONGATIONS)}, not {prolongation!r}")
    return move_tensors(coarse, fine, e, PROLONGATIONS[prolongation], family, direction="prolongate")


def _adjoint(apply: Callable[[Weights], Weights], like: Weights, g: Weights) -> Weights:
    """``Aᵀ g`` for the linear map ``apply`` at inputs shaped like ``like`` (one vjp)."""
    zeros = {k: torch.zeros_like(v) for k, v in like.items()}
    out, vjp = torch.func.vjp(apply, zeros)
    (adj,) = vjp({k: g[k].to(out[k].dtype) for k in out})
    return adj


def prolongation_adjoint(coarse: nn.Module, fine: nn.Module, g: Weights, family: str,
                         prolongation: str = "galerkin") -> Weights:
    """``(I_H^h)ᵀ g``: a fine gradient → the coarse grid (what τ subtracts)."""
    like = {k: v.detach().to(next(iter(g.values())).dtype) for k, v in coarse.named_parameters()}
    return _adjoint(lambda e: prolongate_weights(coarse, fine, e, family, prolongation), like, g)


def restriction_adjoint(fine: nn.Module, coarse: nn.Module, g: Weights, family: str) -> Weights:
    """``(I_h^H)ᵀ g``: a coarse gradient → the fine grid (the Galerkin tie's backward pass)."""
    like = {k: v.detach().to(next(iter(g.values())).dtype) for k, v in fine.named_parameters()}
    return _adjoint(lambda w: restrict_weights(fine, coarse, w, family), like, g)


def dot(a: Weights, b: Weights) -> torch.Tensor:
    return sum((a[k].double() * b[k].double()).sum() for k in a)


def axpy(alpha: float, x: Weights, y: Weights) -> Weights:
    """``y + α x``."""
    return {k: y[k] + alpha * x[k].to(y[k].dtype) for k in y}


# ----------------------------------------------------------------------------- losses on a batch
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batch_loss(model: nn.Module, w: Weights, x: torch.Tensor, y: torch.Tensor,
               loss: Loss = F.cross_entropy) -> torch.Tensor:
    """``loss`` (default: mean cross-entropy) of ``model`` with weights ``w`` (train-mode BN: the batch's
    statistics)."""
    return loss(functional_call(model, w, (x,)), y)


def coarse_batch(x: torch.Tensor, y: torch.Tensor, family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch one grid down: images restricted with R; targets too when they are images (regression)."""
    half = x.shape[-1] // 2
    return restrict_to(x, half, family), (restrict_to(y, half, family) if y.dim() == 4 else y)


def loss_and_grad(model: nn.Module, w: Weights, x: torch.Tensor, y: torch.Tensor,
                  loss_fn: Loss = F.cross_entropy) -> tuple[float, Weights]:
    w = {k: v.detach().requires_grad_(True) for k, v in w.items()}
    loss = batch_loss(model, w, x, y, loss_fn)
    grads = torch.autograd.grad(loss, list(w.values()))
    return float(loss.detach()), {k: g.detach() for k, g in zip(w, grads)}


def tau_correction(fine: nn.Module, coarse: nn.Module, w_h: Weights, x: torch.Tensor, y: torch.Tensor,
                   family: str, prolongation: str = "galerkin",
                   loss_fn: Loss = F.cross_entropy) -> tuple[Weights, Weights, Weights]:
    """(w_H, τ, ∇f_h(w_h)) on one batch shared by both grids (``x`` fine; the coarse grid sees R x)."""
    w_H = restrict_weights(fine, coarse, w_h, family)
    _, g_h = loss_and_grad(fine, w_h, x, y, loss_fn)
    _, g_H = loss_and_grad(coarse, w_H, *coarse_batch(x, y, family), loss_fn)
    pg = prolongation_adjoint(coarse, fine, g_h, family, prolongation)
    return w_H, {k: g_H[k] - pg[k].to(g_H[k].dtype) for k in g_H}, g_h


def armijo(f: Callable[[Weights], float], w: Weights, e: Weights, f0: float, slope: float,
           c: float = 1e-4, shrink: float = 0.5, max_halvings: int = 12) -> tuple[float, float]:
    """Backtracking on ``f(w + α e)`` from α = 1: the first α with ``f ≤ f0 + c α slope``; (α, f) —
    α = 0 (no step) when none is found or ``e`` is not a descent direction, so f never increases."""
    if not slope < 0:
        return 0.0, f0
    alpha = 1.0
    for _ in range(max_halvings + 1):
        val = f(axpy(alpha, e, w))
        if val <= f0 + c * alpha * slope:
            return alpha, val
        alpha *= shrink
    return 0.0, f0


# ----------------------------------------------------------------------------- MG/OPT
@dataclass
class CycleConfig:
    pre: int = 1             # fine optimizer steps before the coarse correction
    post: int = 1            # and after it
    coarse_steps: int = 5    # steps on f_H(v) − ⟨τ, v⟩ (at the coarsest level; a V-cycle recurses above it)
    coarse_lr: float = 0.05
    prolongation: str = "galerkin"
    line_search: bool = True
    loss: Loss = F.cross_entropy
    # the coarsest problem's solver, (model, v, x, y, τ) → v; default: coarse_steps gradient steps
    coarse_solve: Callable[[nn.Module, Weights, torch.Tensor, torch.Tensor, Weights], Weights] | None = None


@dataclass
class CycleLog:
    alpha: list[float] = field(default_factory=list)       # per level, the accepted correction step
    loss_before: list[float] = field(default_factory=list)  # the τ batch's loss at w_h before the correction
    loss_after: list[float] = field(default_factory=list)   # and after it


def mgopt_cycle(levels: Sequence[nn.Module], w: Weights, x: torch.Tensor, y: torch.Tensor, family: str,
                cfg: CycleConfig, smooth: Callable[[int, Weights, int], Weights],
                log: CycleLog | None = None, tau: Weights | None = None) -> Weights:
    """One MG/OPT V-cycle from level 0 of ``levels`` (fine → coarse models) at weights ``w``.

    ``smooth(level, w, steps)`` takes ``steps`` optimizer steps at a level and returns the new weights
    (the fine optimizer at level 0; the caller decides the batches). ``x, y`` is the τ batch, shared by
    every level (restricted images below level 0); the coarse problems are ``f_H(v) − ⟨τ, v⟩`` on it.
    ``tau`` is this level's own linear term (None at the finest level)."""
    log = log if log is not None else CycleLog()
    fine = levels[0]
    w = smooth(0, w, cfg.pre) if tau is None else _tau_steps(fine, w, x, y, tau, cfg.pre, cfg.coarse_lr, cfg.loss)
    if len(levels) == 1:
        return w
    coarse = levels[1]
    w_H, tau_H, g_h = tau_correction(fine, coarse, w, x, y, family, cfg.prolongation, cfg.loss)
    if tau is not None:  # a level below the finest: its objective is f − ⟨τ, ·⟩, whose gradient is g − τ
        pg = prolongation_adjoint(coarse, fine, tau, family, cfg.prolongation)
        tau_H = {k: tau_H[k] + pg[k].to(tau_H[k].dtype) for k in tau_H}
        g_h = {k: g_h[k] - tau[k] for k in g_h}
    x_H, y_H = coarse_batch(x, y, family)
    if len(levels) > 2:  # V-cycle: the coarse problem is solved by a cycle of its own
        v = mgopt_cycle(levels[1:], w_H, x_H, y_H, family, cfg, smooth, log, tau_H)
    elif cfg.coarse_solve is not None:
        v = cfg.coarse_solve(coarse, w_H, x_H, y_H, tau_H)
    else:
        v = _tau_steps(coarse, w_H, x_H, y_H, tau_H, cfg.coarse_steps, cfg.coarse_lr, cfg.loss)
    e = prolongate_weights(coarse, fine, {k: v[k] - w_H[k] for k in v}, family, cfg.prolongation)

    def f(wt: Weights) -> float:
        with torch.no_grad():
            val = batch_loss(fine, wt, x, y, cfg.loss)
            return float(val - dot(tau, wt)) if tau is not None else float(val)

    f0 = f(w)
    slope = float(dot(g_h, e))
    alpha, f1 = armijo(f, w, e, f0, slope) if cfg.line_search else (1.0, f(axpy(1.0, e, w)))
    log.alpha.append(alpha), log.loss_before.append(f0), log.loss_after.append(f1)
    w = axpy(alpha, e, w)
    return smooth(0, w, cfg.post) if tau is None else _tau_steps(fine, w, x, y, tau, cfg.post, cfg.coarse_lr, cfg.loss)


def _tau_steps(model: nn.Module, w: Weights, x: torch.Tensor, y: torch.Tensor, tau: Weights, steps: int,
               lr: float, loss_fn: Loss = F.cross_entropy) -> Weights:
    """Gradient steps on ``f(v) − ⟨τ, v⟩`` (a coarse level's problem) on the τ batch."""
    for _ in range(steps):
        _, g = loss_and_grad(model, w, x, y, loss_fn)
        w = {k: w[k] - lr * (g[k] - tau[k]) for k in w}
    return w


# ----------------------------------------------------------------------------- Galerkin-tied levels
def tied_weights(levels: Sequence[nn.Module], w: Weights, family: str, tie: str = "galerkin") -> list[Weights]:
    """Every level's weights as a differentiable function of the finest level's ``w``: ``galerkin``
    (θ_2h = M θ_h, heads Pᵀ w_h, recursively) or ``copy`` (MGE's choice: the same tensors; heads
    restricted with R·4, mres's ``transfer`` rule fine → coarse)."""
    if tie not in ("galerkin", "copy"):
        raise ValueError(f"tie must be galerkin or copy, not {tie!r}")
    out = [w]
    for fine, coarse in zip(levels, levels[1:]):
        out.append(move_tensors(fine, coarse, out[-1], "galerkin" if tie == "galerkin" else "transfer", family,
                                direction="restrict"))
    return out


def joint_loss(levels: Sequence[nn.Module], w: Weights, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor],
               weights: Sequence[float], family: str, tie: str = "galerkin") -> torch.Tensor:
    """Σ_ℓ c_ℓ L(model_ℓ(x_ℓ)) with tied weights; ``xs[ℓ]`` are images at level ℓ's grid (the caller
    restricts them and sizes the batches, e.g. larger ones where images are cheap)."""
    tied = tied_weights(levels, w, family, tie)
    return sum(c * batch_loss(m, wl, xb, yb) for m, wl, xb, yb, c in zip(levels, tied, xs, ys, weights))


# ----------------------------------------------------------------------------- in the training loop (fit hooks)
DATA_PARALLEL_REFUSAL = ("the mgopt and joint variants do not run data-parallel (their coarse levels are not "
                         "sharded); under torchrun use parallel: variants")


class Corrector(FitHook):
    """MG/OPT coarse corrections inside a training run: every ``every`` optimizer steps of the fine
    optimizer (they are the smoothing), one cycle's coarse correction on a fresh τ batch of
    ``tau_batch`` training examples (drawn from a seed and the step, so a resumed run draws the same),
    accepted by the Armijo search. BN running statistics touched by the cycle's forwards are put back.
    ``alphas`` logs each accepted step (0: refused)."""

    data_parallel, refusal = False, DATA_PARALLEL_REFUSAL

    def __init__(self, coarse_levels: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, family: str,
                 every: int, tau_batch: int, cfg: CycleConfig, seed: int = 0):
        self.levels, self.x, self.y, self.family = list(coarse_levels), x, y, family
        self.every, self.tau_batch, self.seed = every, tau_batch, seed
        self.cfg = CycleConfig(**{**cfg.__dict__, "pre": 0, "post": 0})  # the loop's own steps smooth
        self.alphas: list[float] = []

    def after_step(self, model: nn.Module, step: int) -> None:
        if (step + 1) % self.every:
            return
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        idx = torch.randperm(len(self.y), generator=g)[: self.tau_batch].to(self.y.device)
        buffers = {k: b.clone() for k, b in model.named_buffers()}
        w = {k: p.detach() for k, p in model.named_parameters()}
        log = CycleLog()
        new = mgopt_cycle([model, *self.levels], w, self.x[idx], self.y[idx], self.family, self.cfg,
                          lambda level, wt, n: wt, log)
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(new[k])
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
        self.alphas.append(log.alpha[0])

    def record(self) -> dict[str, Any]:
        return {"mgopt_alphas": self.alphas} if self.alphas else {}

    def files(self) -> dict[str, Any]:
        return {"mgopt.json": {"alphas": self.alphas, "every": self.every}} if self.alphas else {}


class JointTerm(FitHook):
    """Joint multiscale training (MGE-style, with the exact tie): the coarse levels' loss added to each
    training step's, Σ_{ℓ≥1} c_ℓ L(model_ℓ(R^ℓ x_ℓ), y_ℓ) with the coarse weights a differentiable function of
    the fine ones (:func:`tied_weights`). Level ℓ's batch has ``batch_scale[ℓ]`` × the step's rows (a coarse
    image costs 4^-ℓ of a fine one): the step's batch first, then examples drawn from a seed and the step."""

    data_parallel, refusal = False, DATA_PARALLEL_REFUSAL

    def __init__(self, coarse_levels: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, family: str,
                 tie: str, weights: Sequence[float], batch_scale: Sequence[int], seed: int = 0):
        self.levels, self.x, self.y, self.family, self.tie = list(coarse_levels), x, y, family, tie
        self.weights, self.batch_scale, self.seed = list(weights), list(batch_scale), seed

    def extra_loss(self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, step: int) -> torch.Tensor:
        levels = [model, *self.levels]
        tied = tied_weights(levels, dict(model.named_parameters()), self.family, self.tie)
        total = torch.zeros((), device=xb.device)
        for ell in range(1, len(levels)):
            extra = (self.batch_scale[ell] - 1) * len(yb)
            xs, ys = xb, yb
            if extra > 0:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
                idx = torch.randint(len(self.y), (extra,), generator=g).to(self.y.device)
                xs, ys = torch.cat([xb, self.x[idx].to(xb.dtype)]), torch.cat([yb, self.y[idx]])
            xs = restrict_to(xs.contiguous(), xs.shape[-1] >> ell, self.family)
            total = total + self.weights[ell] * batch_loss(levels[ell], tied[ell], xs, ys)
        return total

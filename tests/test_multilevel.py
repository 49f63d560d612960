"""Weight-space grid operators, MG/OPT and the Galerkin tie (mres/c2f/multilevel.py), checked against dense
matrices, finite differences and closed-form quadratics."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mres.c2f import multilevel as ml
from mres.training.data import restrict_to
from mres.models import build_model

FAMILY = "average-bilinear"


def _levels(name: str, opts: dict, grids: list[int], channels: int = 1) -> list[nn.Module]:
    out = []
    for g in grids:
        torch.manual_seed(0)
        out.append(build_model(name, opts, channels, 10, g).double().train())
    return out


def _smooth_images(n: int, size: int, channels: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, channels, size // 4, size // 4, generator=g, dtype=torch.float64)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def _flat(w: ml.Weights) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in w.values()])


def _unflat(v: torch.Tensor, like: ml.Weights) -> ml.Weights:
    out, i = {}, 0
    for k, t in like.items():
        out[k] = v[i:i + t.numel()].reshape(t.shape)
        i += t.numel()
    return out


@pytest.mark.parametrize("prolongation", ["galerkin", "copy"])
def test_prolongation_adjoint_is_the_transpose_of_the_dense_prolongation(prolongation):
    fine, coarse = _levels("cnn", {"pool": True, "width1": 2, "width2": 2}, [16, 8])
    like_c = ml.weights_of(coarse)
    n = _flat(like_c).numel()
    # the dense matrix of I_H^h, column by column (the operator applied to unit vectors)
    cols = [_flat(ml.prolongate_weights(coarse, fine, _unflat(torch.eye(n, dtype=torch.float64)[j], like_c), FAMILY,
                                        prolongation)) for j in range(n)]
    dense = torch.stack(cols, 1)
    g = _unflat(torch.randn(dense.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1)),
                ml.weights_of(fine))
    adj = _flat(ml.prolongation_adjoint(coarse, fine, g, FAMILY, prolongation))
    assert torch.allclose(adj, dense.T @ _flat(g), rtol=1e-12, atol=1e-12)
    if prolongation == "galerkin":  # restriction ∘ Galerkin prolongation = identity (heads: the dual pair)
        e = _unflat(torch.randn(n, dtype=torch.float64), like_c)
        back = ml.restrict_weights(fine, coarse, ml.prolongate_weights(coarse, fine, e, FAMILY), FAMILY)
        assert torch.allclose(_flat(back), _flat(e), rtol=1e-10, atol=1e-12)


CASES = [("cnn", {"pool": False, "width1": 3, "width2": 4}, [16, 8], 1),
         ("cnn", {"pool": True, "width1": 3, "width2": 4}, [16, 8], 1),
         ("poly-g4", {"widths": [4, 8]}, [16, 8], 3)]


@pytest.mark.parametrize("name,opts,grids,channels", CASES, ids=["cnn", "cnn-pool", "poly-g4"])
def test_first_order_coherence_of_the_tau_corrected_coarse_problem(name, opts, grids, channels):
    fine, coarse = _levels(name, opts, grids, channels)
    x = _smooth_images(12, grids[0], channels)
    y = torch.arange(12) % 10
    w_h = ml.weights_of(fine)
    w_H, tau, g_h = ml.tau_correction(fine, coarse, w_h, x, y, FAMILY)
    # the gradient of f_H − ⟨τ, ·⟩ at w_H, by autograd on the coarse model
    _, g_H = ml.loss_and_grad(coarse, w_H, restrict_to(x, grids[1], FAMILY), y)
    lhs = {k: g_H[k] - tau[k] for k in g_H}
    rhs = ml.prolongation_adjoint(coarse, fine, g_h, FAMILY)
    assert torch.allclose(_flat(lhs), _flat(rhs), rtol=1e-8, atol=1e-12)
    # ... and independently, by central differences of f_h along prolongated coarse directions
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        d = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in w_H.items()}
        e = ml.prolongate_weights(coarse, fine, d, FAMILY)
        scale = 1 / float(_flat(e).norm())  # a unit fine step: few ReLU kinks within ±eps
        d, e = ({k: scale * v for k, v in t.items()} for t in (d, e))
        eps = 1e-6
        with torch.no_grad():
            fd = (ml.batch_loss(fine, ml.axpy(eps, e, w_h), x, y) - ml.batch_loss(fine, ml.axpy(-eps, e, w_h), x, y)) / (2 * eps)
        assert float(ml.dot(lhs, d)) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


def _periodic_smooth_images(n: int, size: int, kmax: int = 2, seed: int = 0) -> torch.Tensor:
    """Random sums of the Fourier modes |a|, |b| ≤ kmax on a periodic size×size grid."""
    g = torch.Generator().manual_seed(seed)
    i = torch.arange(size, dtype=torch.float64)
    x = torch.zeros(n, 1, size, size, dtype=torch.float64)
    for a in range(-kmax, kmax + 1):
        for b in range(-kmax, kmax + 1):
            c = torch.randn(n, 2, generator=g, dtype=torch.float64)
            phase = 2 * torch.pi * (a * i[:, None] + b * i[None, :]) / size
            x[:, 0] += c[:, :1, None] * torch.cos(phase) + c[:, 1:, None] * torch.sin(phase)
    return x


def test_two_grid_cycle_with_an_exact_coarse_solve_beats_the_smoother_per_fine_gradient():
    # a convex quadratic: one linear 3×3 conv (periodic), MSE against a target stencil's output on smooth
    # periodic images — ill-conditioned (smooth data barely sees the stencil's higher moments)
    conv = lambda: nn.Conv2d(1, 1, 3, padding=1, bias=False, padding_mode="circular").double()  # noqa: E731
    fine, coarse = conv(), conv()
    x = _periodic_smooth_images(16, 32)
    star = torch.randn(1, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    t = ml.batch_loss(fine, {"weight": star}, x, x, lambda out, _: out).detach()  # the target: the star stencil's output
    mse = F.mse_loss
    w0 = {"weight": torch.zeros(1, 1, 3, 3, dtype=torch.float64)}
    lr = 0.9 / float(torch.linalg.eigvalsh(_hessian(fine, w0, x, t)).max())  # a stable smoother step

    def gd(level: int, w: ml.Weights, steps: int) -> ml.Weights:
        for _ in range(steps):
            _, g = ml.loss_and_grad(fine, w, x, t, mse)
            w = {k: w[k] - lr * g[k] for k in w}
        return w

    def exact_coarse(model, v, xc, tc, tau):  # minimise f_H(v) − ⟨τ, v⟩ exactly: one Newton step
        _, g = ml.loss_and_grad(model, v, xc, tc, mse)
        h = _hessian(model, v, xc, tc)
        step = torch.linalg.solve(h, (g["weight"] - tau["weight"]).reshape(-1))
        return {"weight": v["weight"] - step.reshape(v["weight"].shape)}

    # the energy-norm error of a quadratic: f(w) − f(w*) = f(w) (the target is exact, f* = 0)
    err = lambda w: float(ml.batch_loss(fine, w, x, t, mse))  # noqa: E731
    cfg = ml.CycleConfig(pre=1, post=1, loss=mse, coarse_solve=exact_coarse)
    log = ml.CycleLog()
    cycle = ml.mgopt_cycle([fine, coarse], w0, x, t, FAMILY, cfg, gd, log)
    fine_grads = cfg.pre + 1 + cfg.post  # pre, τ's fine gradient, post (line search: function values only)
    smoother = gd(0, w0, fine_grads)
    per_grad_cycle = (err(cycle) / err(w0)) ** (1 / fine_grads)
    per_grad_smoother = (err(smoother) / err(w0)) ** (1 / fine_grads)
    print(f"energy error per fine gradient: cycle {per_grad_cycle:.3g}, smoother {per_grad_smoother:.3g}")
    assert log.alpha == [1.0]  # the exact coarse correction is taken whole
    assert per_grad_cycle < 0.6 * per_grad_smoother  # measured here: 0.34 against 0.72


def _hessian(model: nn.Module, w: ml.Weights, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    shape = w["weight"].shape
    f = lambda v: ml.batch_loss(model, {"weight": v.reshape(shape)}, x, t, F.mse_loss)  # noqa: E731
    return torch.autograd.functional.hessian(f, w["weight"].reshape(-1))


def test_the_line_search_never_increases_the_batch_loss():
    fine, coarse = _levels("cnn", {"pool": True, "width1": 3, "width2": 4}, [16, 8])
    x, y = _smooth_images(16, 16), torch.arange(16) % 10
    w = ml.weights_of(fine)
    f = lambda wt: float(ml.batch_loss(fine, wt, x, y))  # noqa: E731
    _, g = ml.loss_and_grad(fine, w, x, y)
    f0 = f(w)
    ascent = {k: 10 * v for k, v in g.items()}
    assert ml.armijo(f, w, ascent, f0, float(ml.dot(g, ascent))) == (0.0, f0)  # not a descent direction
    # cycles whose coarse steps are far too long: the correction is bad, the search must refuse or shorten it
    for coarse_lr in (0.1, 10.0, 1000.0):
        log = ml.CycleLog()
        cfg = ml.CycleConfig(pre=0, post=0, coarse_steps=3, coarse_lr=coarse_lr)
        ml.mgopt_cycle([fine, coarse], w, x, y, FAMILY, cfg, lambda lv, wt, n: wt, log)
        assert log.loss_after[0] <= log.loss_before[0] + 1e-12
    assert log.alpha[0] < 1.0  # the longest steps were shortened (or refused)


@pytest.mark.parametrize("tie", ["galerkin", "copy"])
def test_the_tied_joint_loss_gradient_equals_finite_differences(tie):
    levels = _levels("cnn", {"pool": True, "width1": 3, "width2": 4}, [16, 8, 4])
    x = _smooth_images(8, 16)
    y = torch.arange(8) % 10
    xs = [x, restrict_to(x, 8, FAMILY), restrict_to(x, 4, FAMILY)]
    w = {k: v.detach().clone().requires_grad_(True) for k, v in ml.weights_of(levels[0]).items()}
    loss = ml.joint_loss(levels, w, xs, [y] * 3, [1.0, 0.5, 0.25], FAMILY, tie)
    grads = dict(zip(w, torch.autograd.grad(loss, list(w.values()))))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _ in range(3):
            d = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in w.items()}
            eps = 1e-5
            f = lambda s: float(ml.joint_loss(levels, ml.axpy(s, d, w), xs, [y] * 3, [1.0, 0.5, 0.25], FAMILY, tie))  # noqa: E731
            fd = (f(eps) - f(-eps)) / (2 * eps)
            assert float(ml.dot(grads, d)) == pytest.approx(fd, rel=1e-6, abs=1e-9)
    # the coarse levels do depend on the fine weights (the tie is not a constant)
    assert all(g.abs().max() > 0 for g in grads.values())

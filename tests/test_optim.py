"""CG-Steihaug against scipy's trust-ncg (an independent implementation of the same algorithm)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from mres.training.optim import CGSteihaug, steihaug_cg


def _logistic_problem(seed: int = 0, n: int = 60, d: int = 5, k: int = 3):
    """Multinomial logistic regression + ½·μ‖W‖² in float64: smooth and strictly convex."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=g)
    mu = 0.05

    def f_torch(w: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(x @ w.view(d, k), y) + 0.5 * mu * (w ** 2).sum()

    def f_np(w: np.ndarray) -> float:
        return float(f_torch(torch.as_tensor(w)))

    def jac(w: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(w).clone().requires_grad_(True)
        return torch.autograd.grad(f_torch(t), t)[0].numpy()

    def hessp(w: np.ndarray, v: np.ndarray) -> np.ndarray:
        # an independent route to H·v: the dense Hessian from torch.autograd.functional
        h = torch.autograd.functional.hessian(f_torch, torch.as_tensor(w))
        return (h @ torch.as_tensor(v)).numpy()

    return f_torch, f_np, jac, hessp, d * k


@pytest.mark.parametrize("radius", [1.0, 0.05])
def test_iterates_equal_scipy_trust_ncg(radius: float) -> None:
    f_torch, f_np, jac, hessp, n = _logistic_problem()
    x0 = np.full(n, 0.3)
    x0[::2] = -0.7
    ref: list[np.ndarray] = []
    res = minimize(f_np, x0, method="trust-ncg", jac=jac, hessp=hessp, callback=lambda xk: ref.append(np.copy(xk)),
                   options={"initial_trust_radius": radius, "gtol": 1e-8})
    assert res.success and len(ref) >= 4
    w = torch.nn.Parameter(torch.as_tensor(x0).clone())
    opt = CGSteihaug([w], radius=radius)
    ours = []
    for _ in ref:
        opt.step(lambda: f_torch(w))
        ours.append(w.detach().numpy().copy())
    for k, (a, b) in enumerate(zip(ours, ref)):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12, err_msg=f"iterate {k + 1}")
    if radius < 0.1:  # a small radius must have made scipy and us take boundary steps and grow Δ
        assert opt.param_groups[0]["radius"] > radius


def test_negative_curvature_reaches_the_boundary() -> None:
    # f(x) = ½ xᵀAx + bᵀx with an indefinite A: CG meets negative curvature; the step goes to ‖p‖ = Δ
    a = torch.tensor([[1.0, 0.0], [0.0, -2.0]], dtype=torch.float64)
    b = torch.tensor([0.1, 0.5], dtype=torch.float64)
    x = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    p, hits, iters, exit_ = steihaug_cg(b, lambda v: a @ v, radius=0.7)
    assert exit_ == "negative-curvature" and hits
    assert float(p.norm()) == pytest.approx(0.7, rel=1e-12)
    # the model value at p beats the Cauchy-free origin: m(p) < m(0) = 0
    assert float(b @ p + 0.5 * p @ a @ p) < 0
    opt = CGSteihaug([x], radius=0.7)
    opt.step(lambda: 0.5 * x @ a @ x + b @ x)
    assert opt.last["exit"] == "negative-curvature"
    assert float(x.detach().norm()) == pytest.approx(0.7, rel=1e-12)  # a quadratic: ρ = 1, accepted


def test_positive_definite_quadratic_is_solved_in_n_cg_iterations() -> None:
    # on a large radius, CG solves Hp = −g exactly (independent check: numpy's solve)
    g = torch.Generator().manual_seed(1)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.T + 6 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    p, hits, iters, exit_ = steihaug_cg(b, lambda v: a @ v, radius=1e6)
    assert exit_ == "converged" and not hits and iters <= 6
    np.testing.assert_allclose(p.numpy(), np.linalg.solve(a.numpy(), -b.numpy()), rtol=0.5 * float(b.norm()) ** 0.5,
                               atol=1e-2)


def test_rejected_step_leaves_the_parameters_and_quarters_the_radius() -> None:
    # a loss that is a quadratic at x0 but explodes just beyond it: ρ < η → reject, Δ/4
    x = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))

    def closure() -> torch.Tensor:
        return (x ** 2).sum() + 1e6 * torch.relu(0.9 - x).pow(3).sum()

    before = x.detach().clone()
    opt = CGSteihaug([x], radius=0.5)
    opt.step(closure)
    assert opt.last["accepted"] == 0.0 and opt.last["rho"] < 0.15
    assert torch.equal(x.detach(), before)
    assert opt.param_groups[0]["radius"] == pytest.approx(0.125)


def test_max_cg_iters_and_state_dict_round_trip() -> None:
    f_torch, _, _, _, n = _logistic_problem(seed=2)
    w = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))
    opt = CGSteihaug([w], radius=10.0, max_cg_iters=2)
    opt.step(lambda: f_torch(w))
    assert opt.last["cg_iters"] <= 2
    state = opt.state_dict()
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = CGSteihaug([w2])
    opt2.load_state_dict(state)
    assert opt2.param_groups[0]["radius"] == opt.param_groups[0]["radius"]
    assert opt2.param_groups[0]["max_cg_iters"] == 2

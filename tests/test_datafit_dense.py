"""galerkin-data's hard cases, each against an independent dense construction (a hand-written im2col,
dense restriction matrices, numpy's lstsq on the ridge problem written as extra rows, an explicit hat
matrix for GCV): a conv called several times, a grouped conv, Poly-MgNet's A inside its polynomial,
the dual solve with θ_start ≠ 0, the BN rules, float64 sums, and the plan's refusals."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import Gain
from mres.errors import UserError
from mres.grids.datafit import dual_solve, fit_to_coarse, plan_fit, primal_solve
from mres.grids.operators import restriction_matrix_1d
from mres.models.poly import PolyLevel

FAMILY = "average-bilinear"


@pytest.fixture(autouse=True)
def _float64_default():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def dense_r(h: int) -> np.ndarray:
    r1 = restriction_matrix_1d(h, FAMILY, periodic=False).numpy()
    return np.kron(r1, r1)


def dense_rows(a: torch.Tensor, bias: bool = False) -> np.ndarray:
    """Rows of a 3×3, zero-padded conv on ``a`` (N, C, h, w): per kernel offset a shifted copy, each
    restricted by the dense 2-D R, then (``bias``) a ones column."""
    a = a.detach().numpy()
    n, c, h, w = a.shape
    pad = np.zeros((n, c, h + 2, w + 2))
    pad[:, :, 1:-1, 1:-1] = a
    r2 = dense_r(h)
    cols = [pad[:, ch, dy:dy + h, dx:dx + w].reshape(n, h * w) @ r2.T
            for ch in range(c) for dy in range(3) for dx in range(3)]
    if bias:
        cols.append(np.ones_like(cols[0]))
    return np.stack(cols, -1).reshape(-1, len(cols))


def targets(b: torch.Tensor) -> np.ndarray:
    return b.detach().numpy().transpose(0, 2, 3, 1).reshape(-1, b.shape[1])


def ridge(x: np.ndarray, b: np.ndarray, theta0: np.ndarray, lam: float) -> np.ndarray:
    """min (1/M)‖Xθ − B‖² + λ‖θ − θ0‖² by lstsq on the stacked system [X; √(λM) I] θ ≈ [B; √(λM) θ0]."""
    s = (lam * len(x)) ** 0.5
    aug = np.vstack([x, s * np.eye(x.shape[1])])
    return np.linalg.lstsq(aug, np.vstack([b, s * theta0]), rcond=None)[0]


def conv_theta(w: torch.Tensor) -> np.ndarray:
    """(O, C, 3, 3) of a bias-free conv → (C·9, O)."""
    return w.detach().reshape(w.shape[0], -1).numpy().T


def restrict(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    return torch.from_numpy(x.reshape(n * c, h * w).numpy() @ dense_r(h).T).reshape(n, c, h // 2, w // 2)


# ----------------------------------------------------------------------------- a conv called twice
class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.A = nn.Conv2d(2, 2, 3, padding=1, bias=False)

    def forward(self, x):
        return self.A(F.relu(self.A(x))).mean((2, 3))


def test_a_conv_called_twice_is_fitted_on_the_rows_of_both_calls():
    torch.manual_seed(0)
    coarse, fine = Twice(), Twice()
    x = torch.randn(6, 2, 8, 8)
    lam = 0.02
    a1, a2 = x, F.relu(fine.A(x))  # the fine calls' inputs (start weights)
    xc = restrict(x)
    b1, b2 = coarse.A(xc), coarse.A(F.relu(coarse.A(xc)))
    rows = np.vstack([dense_rows(a1), dense_rows(a2)])
    want = ridge(rows, np.vstack([targets(b1), targets(b2)]), conv_theta(fine.A.weight), lam)
    first_only = ridge(dense_rows(a1), targets(b1), conv_theta(fine.A.weight), lam)
    rep = fit_to_coarse(coarse, fine, x, FAMILY, lam=lam, bn="keep")
    got = conv_theta(fine.A.weight)
    assert rep[0]["calls"] == 2 and rep[0]["rows"] == 2 * 6 * 16
    assert np.abs(got - want).max() < 1e-9
    assert np.abs(got - first_only).max() > 1e-3  # the second call's rows matter


def test_a_second_sweep_fits_the_inputs_the_first_sweep_left():
    torch.manual_seed(1)
    coarse, fine = Twice(), Twice()
    x = torch.randn(6, 2, 8, 8)
    fit_to_coarse(coarse, fine, x, FAMILY, lam=0.02, bn="keep", sweeps=1)
    theta1 = conv_theta(fine.A.weight)
    a2 = F.relu(fine.A(x))  # inputs of the second call after sweep 1
    xc = restrict(x)
    b1, b2 = coarse.A(xc), coarse.A(F.relu(coarse.A(xc)))
    want = ridge(np.vstack([dense_rows(x), dense_rows(a2)]), np.vstack([targets(b1), targets(b2)]), theta1, 0.02)
    torch.manual_seed(1)
    coarse2, fine2 = Twice(), Twice()
    fit_to_coarse(coarse2, fine2, x, FAMILY, lam=0.02, bn="keep", sweeps=2)
    assert np.abs(conv_theta(fine2.A.weight) - want).max() < 1e-9


# ----------------------------------------------------------------------------- a grouped conv
def test_a_grouped_conv_is_one_ridge_problem_per_group():
    torch.manual_seed(2)
    make = lambda: nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=True))  # noqa: E731
    coarse, fine = make(), make()
    start = copy.deepcopy(fine)
    x = torch.randn(5, 4, 8, 8)
    b = coarse(restrict(x))
    fit_to_coarse(coarse, fine, x, FAMILY, lam=0.01, bn="keep")
    for g in range(2):
        cin, cout = slice(2 * g, 2 * g + 2), slice(3 * g, 3 * g + 3)
        theta0 = np.vstack([start[0].weight[cout].detach().reshape(3, -1).numpy().T,
                            start[0].bias[cout].detach().numpy()[None]])
        want = ridge(dense_rows(x[:, cin], bias=True), targets(b[:, cout]), theta0, 0.01)
        got = np.vstack([fine[0].weight[cout].detach().reshape(3, -1).numpy().T, fine[0].bias[cout].detach().numpy()[None]])
        assert np.abs(got - want).max() < 1e-9, g


# ----------------------------------------------------------------------------- Poly-MgNet's A
PLAIN = dict(residual="plain", update="plain", pair_residual="plain", pair_update="plain", output="plain",
             output_at="level")


class Block(nn.Module):
    """One Poly-MgNet level, g4 (two squared steps), no BN/ReLU: A is called three times."""

    def __init__(self):
        super().__init__()
        self.level = PolyLevel(("g", "g"), 2, PLAIN, True)
        with torch.no_grad():
            for step, c in zip(self.level.steps, (0.7, -0.4)):
                step.coeff.fill_(c)

    def forward(self, x):
        return self.level(x, None)


def _poly_calls(A, a1, a2, f):
    """By hand: u1 = A(α1 f); r = f − A(u1); u2 = u1 + A(α2 r). Returns the inputs of A's three calls."""
    u1 = A(a1 * f)
    r = f - A(u1)
    return [a1 * f, u1, a2 * r]


def test_poly_mgnet_stencil_inside_the_polynomial_against_the_dense_construction():
    torch.manual_seed(3)
    coarse, fine = Block(), Block()
    x = torch.randn(4, 2, 8, 8)
    ins_f = _poly_calls(fine.level.A, 0.7, -0.4, x)
    ins_c = _poly_calls(coarse.level.A, 0.7, -0.4, restrict(x))
    rows = np.vstack([dense_rows(a) for a in ins_f])
    tgt = np.vstack([targets(coarse.level.A(a)) for a in ins_c])
    want = ridge(rows, tgt, conv_theta(fine.level.A.weight), 1e-3)
    rep = fit_to_coarse(coarse, fine, x, FAMILY, lam=1e-3, bn="keep")
    assert [(r["layer"], r["calls"]) for r in rep] == [("level.A", 3)]
    assert np.abs(conv_theta(fine.level.A.weight) - want).max() < 1e-9
    assert [float(s.coeff.detach()) for s in fine.level.steps] == [0.7, -0.4]  # carried, not refitted


# ----------------------------------------------------------------------------- the dual solve
def test_the_dual_solve_equals_the_primal_and_lstsq_with_a_nonzero_start():
    rng = np.random.default_rng(4)
    m, d, o = 12, 40, 3  # more unknowns than rows: the dual's case
    x, b, t0 = rng.normal(size=(m, d)), rng.normal(size=(m, o)), rng.normal(size=(d, o))
    X, B, T0 = (torch.from_numpy(v) for v in (x, b, t0))
    for lam in (1e-3, 0.5):
        dual = dual_solve(X[None], B[None], T0[None], lam)[0][0].numpy()
        primal = primal_solve((X.T @ X)[None], (X.T @ B)[None], (B ** 2).sum()[None], m, T0[None], lam)[0][0].numpy()
        want = ridge(x, b, t0, lam)
        assert np.abs(dual - want).max() < 1e-9 and np.abs(primal - want).max() < 1e-8, lam
        assert np.abs(dual - ridge(x, b, 0 * t0, lam)).max() > 1e-2  # θ_start matters


def test_a_flatten_head_with_more_unknowns_than_rows_takes_the_dual_and_keeps_its_start():
    torch.manual_seed(5)
    fine = nn.Sequential(nn.Flatten(), nn.Linear(2 * 8 * 8, 3))
    coarse = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    x = torch.randn(20, 2, 8, 8)  # 20 rows < 129 unknowns
    theta0 = np.vstack([fine[1].weight.detach().numpy().T, fine[1].bias.detach().numpy()[None]])
    rows = np.hstack([x.reshape(20, -1).numpy(), np.ones((20, 1))])
    want = ridge(rows, coarse(restrict(x)).detach().numpy(), theta0, 0.05)
    rep = fit_to_coarse(coarse, fine, x, FAMILY, lam=0.05, bn="keep")
    got = np.vstack([fine[1].weight.detach().numpy().T, fine[1].bias.detach().numpy()[None]])
    assert rep[0]["solve"] == "dual"
    assert np.abs(got - want).max() < 1e-9


# ----------------------------------------------------------------------------- GCV
def _gcv_dense(x: np.ndarray, b: np.ndarray, t0: np.ndarray, mu: float) -> float:
    h = x @ np.linalg.solve(x.T @ x + mu * np.eye(x.shape[1]), x.T)
    res = (np.eye(len(x)) - h) @ (b - x @ t0)
    return float((res ** 2).sum() / (1 - np.trace(h) / len(x)) ** 2)


@pytest.mark.parametrize("m,d", [(60, 8), (10, 30)])
def test_gcv_is_the_explicit_hat_matrix_formula_and_its_minimum_is_found(m, d):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(m, d)) * np.linspace(0.05, 2, d)
    b = x @ rng.normal(size=(d, 2)) + 0.5 * rng.normal(size=(m, 2))
    t0 = 0.3 * rng.normal(size=(d, 2))
    X, B, T0 = (torch.from_numpy(v) for v in (x, b, t0))
    if m >= d:
        theta, lam, spec = primal_solve((X.T @ X)[None], (X.T @ B)[None], (B ** 2).sum()[None], m, T0[None], None)
    else:
        theta, lam, spec = dual_solve(X[None], B[None], T0[None], None)
    for mu in (1e-3, 0.1, 3.0, 50.0):
        assert spec.gcv(mu) == pytest.approx(_gcv_dense(x, b, t0, mu), rel=1e-8)
    grid = np.logspace(-6, 4, 400)
    assert _gcv_dense(x, b, t0, lam * m) <= min(_gcv_dense(x, b, t0, mu) for mu in grid) * (1 + 1e-6)
    assert np.abs(theta[0].numpy() - ridge(x, b, t0, lam)).max() < 1e-8


# ----------------------------------------------------------------------------- BN rules
class ConvBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(2)
        self.c2 = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1), self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 1.5), self.bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.c2(F.relu(self.bn(self.c1(x)))).mean((2, 3))


@pytest.mark.parametrize("rule", ["keep", "per-layer"])
def test_bn_rules_against_statistics_and_rows_computed_by_hand(rule):
    torch.manual_seed(7)
    coarse, fine = ConvBn(), ConvBn()
    fine.load_state_dict(coarse.state_dict())
    x = torch.randn(8, 1, 8, 8)
    xc = restrict(x)
    coarse.eval()
    t1 = coarse.c1(xc)
    t2 = coarse.c2(F.relu(coarse.bn(t1)))
    start = {k: v.clone() for k, v in fine.state_dict().items()}
    fit_to_coarse(coarse, fine, x, FAMILY, lam=1e-3, bn=rule, chunk=len(x))
    # conv 1 against the dense construction
    w1 = ridge(dense_rows(x), targets(t1), conv_theta(start["c1.weight"]), 1e-3)
    assert np.abs(conv_theta(fine.c1.weight) - w1).max() < 1e-9
    z = fine.c1(x)  # the fitted conv 1's output on the calibration images
    if rule == "keep":
        mean, var = start["bn.running_mean"], start["bn.running_var"]
    else:  # recalibrated by hand: this batch's mean and unbiased variance
        mean, var = z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=True)
    assert torch.allclose(fine.bn.running_mean, mean, atol=1e-12)
    assert torch.allclose(fine.bn.running_var, var, atol=1e-12)
    a2 = F.relu((z - mean[:, None, None]) / torch.sqrt(var[:, None, None] + fine.bn.eps)
                * fine.bn.weight[:, None, None] + fine.bn.bias[:, None, None])
    w2 = ridge(dense_rows(a2), targets(t2), conv_theta(start["c2.weight"]), 1e-3)
    assert np.abs(conv_theta(fine.c2.weight) - w2).max() < 1e-9


# ----------------------------------------------------------------------------- precision and the plan
def test_a_float32_model_is_fitted_as_accurately_as_a_float64_one():
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(8)
    make = lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(),  # noqa: E731
                                 nn.Conv2d(8, 8, 3, padding=1, bias=False))
    coarse, fine = make(), make()
    x = torch.randn(64, 3, 16, 16) * 10 + 3  # large means: float32 Gram sums lose digits
    c64, f64 = make().double(), make().double()
    c64.load_state_dict(coarse.state_dict()), f64.load_state_dict(fine.state_dict())
    fit_to_coarse(coarse, fine, x, FAMILY, lam=1e-6, bn="keep")
    fit_to_coarse(c64, f64, x.double(), FAMILY, lam=1e-6, bn="keep")
    for a, b in zip(fine.parameters(), f64.parameters()):
        assert float((a.detach().double() - b.detach()).norm() / b.detach().norm()) < 1e-5


def test_the_plan_names_what_it_cannot_fit_and_what_does_not_fit_in_memory():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Gain(), nn.Flatten(), nn.Linear(2 * 8 * 8, 3))
    with pytest.raises(UserError, match=r"1 \(Gain: parameters gain\)"):
        plan_fit(model, torch.randn(1, 1, 8, 8), 100)
    seq = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 8 * 8, 3))
    plans = plan_fit(seq, torch.randn(1, 1, 8, 8), 100)
    assert [(p.name, p.rows, p.unknowns, p.dual) for p in plans] == [("0", 1600, 10, False), ("2", 100, 129, True)]
    with pytest.raises(UserError, match=r"layer 2: 100 rows × 129 unknowns \(dual"):
        plan_fit(seq, torch.randn(1, 1, 8, 8), 100, available=plans[1].bytes - 1)


def test_a_model_without_shared_layers_gets_one_pass_whatever_sweeps_says():
    torch.manual_seed(9)
    make = lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1))  # noqa: E731
    rep = fit_to_coarse(make(), make(), torch.randn(4, 1, 8, 8), FAMILY, lam=1e-3, bn="keep", sweeps=3)
    assert [r["sweep"] for r in rep] == [1, 1]
    rep = fit_to_coarse(Twice(), Twice(), torch.randn(4, 2, 8, 8), FAMILY, lam=1e-3, bn="keep", sweeps=3)
    assert [r["sweep"] for r in rep] == [1, 2, 3]

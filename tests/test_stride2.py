"""The exact stride-2 Galerkin map for average-constant, against dense R·S·K·P (issue: stride-2 rule)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from mres.grids.operators import (FAMILIES, prolongate_stencils, prolongation_matrix_1d, restrict_images,
                                  restrict_stencils, restriction_matrix_1d, stencil_map_1d, strided_stencil_map_1d,
                                  strided_stencil_map_is_exact)
from mres.grids.transfer import transfer_weights


def _circulant(theta: torch.Tensor, n: int) -> torch.Tensor:
    """Dense periodic cross-correlation (K x)_i = Σ_k θ_k x_{i+k}, k = −1..1 (built entry by entry)."""
    k = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for off, t in zip((-1, 0, 1), theta.tolist()):
            k[i, (i + off) % n] += t
    return k


def _every_other_row(n: int) -> torch.Tensor:
    s = torch.zeros(n // 2, n, dtype=torch.float64)
    s[torch.arange(n // 2), 2 * torch.arange(n // 2)] = 1.0
    return s


def _dense_error(family: str, coarse_map: torch.Tensor, n: int = 16, seed: int = 0) -> float:
    """‖R S K(θ_h) P − S K(M θ_h)‖ / ‖S K(M θ_h)‖ on periodic 1-D grids (fine input n, coarse input n/2)."""
    theta = torch.randn(3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    fine = restriction_matrix_1d(n // 2, family) @ _every_other_row(n) @ _circulant(theta, n) \
        @ prolongation_matrix_1d(n, family)
    coarse = _every_other_row(n // 2) @ _circulant(coarse_map @ theta, n // 2)
    return float((fine - coarse).norm() / coarse.norm())


def test_average_constant_map_is_the_closed_form_and_exact_on_dense_operators():
    m1 = strided_stencil_map_1d("average-constant")
    assert torch.equal(m1, torch.tensor([[.5, 0, 0], [.5, .5, .5], [0, .5, .5]], dtype=torch.float64))
    assert torch.linalg.matrix_rank(m1) == 2
    for seed in range(3):
        assert _dense_error("average-constant", m1, seed=seed) < 1e-14  # after: exact
        assert _dense_error("average-constant", stencil_map_1d("average-constant"), seed=seed) > 0.05  # before


def test_exactness_is_reported_per_family():
    assert [strided_stencil_map_is_exact(f) for f in FAMILIES] == [f == "average-constant" for f in FAMILIES]


def test_conv_layers_with_zero_padding_restrict_exactly_in_2d():
    # real nn.Conv2d (zero padding, stride 2, channels): R(fine(P y)) == coarse(y) after restriction
    torch.manual_seed(0)
    fine = nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False).double()
    coarse = nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False).double()
    diag = transfer_weights(fine, coarse, "galerkin", family="average-constant", direction="restrict")
    assert diag[0].kind == "conv3x3-s2" and diag[0].galerkin_residual < 1e-14
    y = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    x = y.repeat_interleave(2, -1).repeat_interleave(2, -2)  # P of average-constant: piecewise constant
    with torch.no_grad():
        err = (restrict_images(fine(x), "average-constant") - coarse(y)).abs().max().item()
        old = coarse.weight.clone()
        coarse.weight.copy_(restrict_stencils(fine.weight, "average-constant", stride=1))  # the old rule
        err_old = (restrict_images(fine(x), "average-constant") - coarse(y)).abs().max().item()
        coarse.weight.copy_(old)
    assert err < 1e-12 and err_old > 0.1


def test_prolongation_is_least_squares_and_warned():
    torch.manual_seed(1)
    theta_h0 = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    theta_2h = restrict_stencils(theta_h0, "average-constant", stride=2)  # in the range of M
    with pytest.warns(UserWarning, match="rank 4 of 9"):
        theta_h = prolongate_stencils(theta_2h, "average-constant", stride=2)
    torch.testing.assert_close(restrict_stencils(theta_h, "average-constant", stride=2), theta_2h)
    # minimum norm among the exact preimages (M has a 5-dim kernel): never longer than the one we started from
    assert theta_h.norm() <= theta_h0.norm() + 1e-12
    # regularised: the normal equations (MᵀM + λI) θ_h = Mᵀθ_2h + λθ_2h hold (scipy-free dense check)
    m = torch.kron(strided_stencil_map_1d("average-constant"), strided_stencil_map_1d("average-constant"))
    rough = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = prolongate_stencils(rough, "average-constant", lam=0.1, stride=2).reshape(-1, 9).T
    rhs = rough.reshape(-1, 9).T
    torch.testing.assert_close((m.T @ m + 0.1 * torch.eye(9, dtype=torch.float64)) @ reg, m.T @ rhs + 0.1 * rhs)


def test_galerkin_transfer_of_a_strided_conv_warns_with_the_layer_name():
    src = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1))
    dst = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1))
    with pytest.warns(UserWarning, match=r"0\.weight: 3×3 stride-2 kernel .* rank-deficient; least squares with lam=0.5"):
        diag = transfer_weights(src, dst, "galerkin-reg", family="average-constant", lam=0.5)
    assert diag[0].kind == "conv3x3-s2"

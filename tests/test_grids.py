"""Grid operators and the Galerkin stencil map, checked against independent dense matrices."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mres.grids.operators import (FAMILIES, OperatorFamily, get_family, prolongate_images, prolongate_stencils,
                                  prolongation_matrix_1d, restrict_images, restrict_stencils, restriction_matrix_1d,
                                  stencil_map, stencil_map_1d)



pytestmark = pytest.mark.usefixtures("float64")  # dense comparisons at 1e-10 need double precision


# The DESIGN §3.1 table written out independently of mres.grids.operators: 1-D weights by offset.
# R: (R x)_I = Σ_α r_α x_{2I+α};  P: P[2I+β, I] = p_β.
SPEC = {
    "average-constant": ({0: 0.5, 1: 0.5}, {0: 1.0, 1: 1.0}),
    "average-bilinear": ({0: 0.5, 1: 0.5}, {-1: 0.25, 0: 0.75, 1: 0.75, 2: 0.25}),
    "fullweighting-linear": ({-1: 0.25, 0: 0.5, 1: 0.25}, {-1: 0.5, 0: 1.0, 1: 0.5}),
}


def dense_r(n: int, name: str) -> torch.Tensor:
    """Periodic 1-D restriction, (n/2, n)."""
    r = torch.zeros(n // 2, n)
    for i in range(n // 2):
        for a, w in SPEC[name][0].items():
            r[i, (2 * i + a) % n] += w
    return r


def dense_p(n: int, name: str) -> torch.Tensor:
    """Periodic 1-D prolongation, (n, n/2)."""
    p = torch.zeros(n, n // 2)
    for i in range(n // 2):
        for b, w in SPEC[name][1].items():
            p[(2 * i + b) % n, i] += w
    return p


def dense_k1(theta: torch.Tensor, n: int) -> torch.Tensor:
    """Circular 1-D cross-correlation: (K x)_i = Σ_k θ[k+1] x_{i+k}."""
    k = torch.zeros(n, n)
    for i in range(n):
        for off in (-1, 0, 1):
            k[i, (i + off) % n] += theta[off + 1]
    return k


def dense_k2(theta: torch.Tensor, n: int) -> torch.Tensor:
    """Circular 2-D cross-correlation on a row-major flattened n×n grid."""
    k = torch.zeros(n * n, n * n)
    for y in range(n):
        for x in range(n):
            for r in (-1, 0, 1):
                for s in (-1, 0, 1):
                    k[y * n + x, ((y + r) % n) * n + (x + s) % n] += theta[r + 1, s + 1]
    return k


def test_families_match_design_table():
    assert set(FAMILIES) == set(SPEC)
    for name, (r, p) in SPEC.items():
        fam = get_family(name)
        assert dict(zip(fam.r_offsets, fam.r_weights)) == r
        assert dict(zip(fam.p_offsets, fam.p_weights)) == p


def test_unknown_family_names_the_allowed_ones():
    with pytest.raises(ValueError, match="average-bilinear"):
        get_family("bicubic")


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("periodic", [True, False])
def test_dense_builders(name, periodic):
    n = 8
    if periodic:
        assert torch.equal(restriction_matrix_1d(n, name), dense_r(n, name))
        assert torch.equal(prolongation_matrix_1d(n, name), dense_p(n, name))
    # every row of R averages (sums to 1); P maps constants to constants (replicate / periodic)
    r = restriction_matrix_1d(n, name, periodic=periodic)
    p = prolongation_matrix_1d(n, name, periodic=periodic)
    assert torch.allclose(r.sum(1), torch.ones(n // 2))
    assert torch.allclose(p.sum(1), torch.ones(n))


def test_average_constant_r_p_is_identity_and_bilinear_is_not():
    rp = dense_r(8, "average-constant") @ dense_p(8, "average-constant")
    assert torch.allclose(rp, torch.eye(4), atol=1e-14)
    rp = dense_r(8, "average-bilinear") @ dense_p(8, "average-bilinear")
    assert not torch.allclose(rp, torch.eye(4), atol=1e-3)  # a blur


@pytest.mark.parametrize("name", FAMILIES)
def test_galerkin_1d_against_dense(name):
    n = 8
    gen = torch.Generator().manual_seed(0)
    m1 = stencil_map_1d(name)
    for _ in range(5):
        theta = torch.randn(3, generator=gen)
        galerkin = dense_r(n, name) @ dense_k1(theta, n) @ dense_p(n, name)
        assert (galerkin - dense_k1(m1 @ theta, n // 2)).abs().max() < 1e-12


@pytest.mark.parametrize("name", FAMILIES)
def test_galerkin_2d_against_dense(name):
    n = 8
    r2 = torch.kron(dense_r(n, name), dense_r(n, name))
    p2 = torch.kron(dense_p(n, name), dense_p(n, name))
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(4, 3, 3, generator=gen)
    theta_2h = restrict_stencils(theta, name)
    for t_h, t_2h in zip(theta, theta_2h):
        err = (r2 @ dense_k2(t_h, n) @ p2 - dense_k2(t_2h, n // 2)).abs().max()
        assert err < 1e-10
        # and prolongation inverts it: R K(prolong θ_2h) P == K(θ_2h)
        t_back = prolongate_stencils(t_2h, name)
        assert (r2 @ dense_k2(t_back, n) @ p2 - dense_k2(t_2h, n // 2)).abs().max() < 1e-10


def test_dense_k_is_pytorch_cross_correlation():
    # anchors the offset convention of dense_k2 (and so of M) to F.conv2d
    n = 6
    gen = torch.Generator().manual_seed(2)
    theta, x = torch.randn(3, 3, generator=gen), torch.randn(n, n, generator=gen)
    conv = F.conv2d(F.pad(x[None, None], (1, 1, 1, 1), mode="circular"), theta[None, None])[0, 0]
    assert torch.allclose(conv.flatten(), dense_k2(theta, n) @ x.flatten(), atol=1e-13)


def test_stencil_map_is_kron_and_float64():
    for name in FAMILIES:
        m = stencil_map(name)
        assert m.dtype == torch.float64 and m.shape == (9, 9)
        assert torch.equal(m, torch.kron(stencil_map_1d(name), stencil_map_1d(name)))


def test_fullweighting_gives_the_same_map_as_average_bilinear():
    assert torch.allclose(stencil_map("fullweighting-linear"), stencil_map("average-bilinear"), atol=1e-15)


def test_eigenvalues_and_condition_numbers():
    # average-bilinear: eigenvalues 2^-(p+q), p, q ∈ {0, 1, 2} derivative orders
    ev = torch.linalg.eigvals(stencil_map("average-bilinear"))
    assert ev.imag.abs().max() < 1e-12
    expect = sorted(2.0 ** -(p + q) for p in range(3) for q in range(3))
    assert torch.allclose(ev.real.sort().values, torch.tensor(expect), atol=1e-12)
    assert torch.linalg.cond(stencil_map("average-bilinear")).item() == pytest.approx(26.9, abs=0.05)
    # average-constant: 1-D eigenvalues {1, ½, ½}
    ev = torch.linalg.eigvals(stencil_map("average-constant")).real.sort().values
    expect = sorted(a * b for a in (1, 0.5, 0.5) for b in (1, 0.5, 0.5))
    assert torch.allclose(ev, torch.tensor(expect), atol=1e-12)
    assert torch.linalg.cond(stencil_map("average-constant")).item() == pytest.approx(10.2, abs=0.05)


def test_identity_stencil_maps_to_itself_under_average_constant():
    delta = torch.zeros(3, 3)
    delta[1, 1] = 1
    assert torch.allclose(restrict_stencils(delta, "average-constant"), delta)
    assert torch.allclose(prolongate_stencils(delta, "average-constant"), delta)
    # average-bilinear turns it into a sharpener: negative off-centre entries, centre > 1
    sharp = prolongate_stencils(delta, "average-bilinear")
    assert sharp[1, 1] > 1 and (sharp[0, 1] < 0)


@pytest.mark.parametrize("name", FAMILIES)
def test_restrict_prolongate_is_identity(name):
    gen = torch.Generator().manual_seed(3)
    theta = torch.randn(5, 4, 3, 3, generator=gen)
    assert (restrict_stencils(prolongate_stencils(theta, name), name) - theta).abs().max() < 1e-10


def test_regularised_prolongation_limits():
    gen = torch.Generator().manual_seed(4)
    theta = torch.randn(6, 3, 3, 3, generator=gen)
    exact = prolongate_stencils(theta, "average-bilinear")
    assert torch.equal(prolongate_stencils(theta, "average-bilinear", lam=0.0), exact)
    assert (prolongate_stencils(theta, "average-bilinear", lam=1e-10) - exact).abs().max() < 1e-6
    assert (prolongate_stencils(theta, "average-bilinear", lam=1e10) - theta).abs().max() < 1e-6
    mid = prolongate_stencils(theta, "average-bilinear", lam=1.0)
    # residual and distance to the copy are both in between
    res = (restrict_stencils(mid, "average-bilinear") - theta).norm()
    assert 0 < res < (restrict_stencils(theta, "average-bilinear") - theta).norm()
    assert 0 < (mid - theta).norm() < (exact - theta).norm()
    with pytest.raises(ValueError):
        prolongate_stencils(theta, "average-bilinear", lam=-1.0)


def test_multichannel_matmul_equals_per_channel_loop():
    gen = torch.Generator().manual_seed(5)
    theta = torch.randn(7, 5, 3, 3, generator=gen)
    m = stencil_map("average-bilinear")
    loop = torch.stack([torch.stack([(m @ t.flatten()).reshape(3, 3) for t in row]) for row in theta])
    assert torch.allclose(restrict_stencils(theta, "average-bilinear"), loop, atol=1e-14)
    loop = torch.stack([torch.stack([torch.linalg.solve(m, t.flatten()).reshape(3, 3) for t in row]) for row in theta])
    assert torch.allclose(prolongate_stencils(theta, "average-bilinear"), loop, atol=1e-12)


def test_stencils_keep_dtype_and_any_leading_shape():
    theta = torch.randn(8, 1, 3, 3, dtype=torch.float32)  # depthwise conv weight
    assert prolongate_stencils(theta, "average-bilinear").dtype == torch.float32
    assert restrict_stencils(theta, "average-bilinear").shape == (8, 1, 3, 3)
    assert prolongate_stencils(torch.randn(2, 3, 4, 3, 3), "average-constant").shape == (2, 3, 4, 3, 3)


def test_larger_kernels_warn_and_least_squares():
    gen = torch.Generator().manual_seed(6)
    theta = torch.randn(3, 5, 5, generator=gen)
    assert torch.linalg.cond(stencil_map("average-bilinear", 5)).item() == pytest.approx(916, rel=0.01)
    with pytest.warns(UserWarning, match="least squares"):
        fine = prolongate_stencils(theta, "average-bilinear")
    # 5×5 average-bilinear M is invertible: the least-squares solution is exact
    assert (restrict_stencils(fine, "average-bilinear") - theta).abs().max() < 1e-8
    # 7×7 maps into 5×5: M is singular, restriction still exact against dense matrices
    n = 16
    t7 = torch.randn(7, 7, generator=gen)
    r, p = dense_r(n, "average-bilinear"), dense_p(n, "average-bilinear")
    t7_2h = restrict_stencils(t7, "average-bilinear")
    assert t7_2h[0].abs().max() == 0 and t7_2h[:, 0].abs().max() == 0  # outer ring empty
    conv = lambda t, m: torch.stack([F.conv2d(F.pad(e.reshape(1, 1, m, m), (3,) * 4, mode="circular"),
                                              t[None, None])[0, 0].flatten() for e in torch.eye(m * m)], 1)
    galerkin = torch.kron(r, r) @ conv(t7, n) @ torch.kron(p, p)
    assert (galerkin - conv(t7_2h, n // 2)).abs().max() < 1e-10
    with pytest.warns(UserWarning):
        prolongate_stencils(t7[None], "average-bilinear", lam=0.1)


@pytest.mark.parametrize("name", FAMILIES)
def test_restrict_images_against_dense(name):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 8, 6, generator=gen)
    for boundary, periodic in (("circular", True), ("replicate", False)):
        ry = restriction_matrix_1d(8, name, periodic=periodic)
        rx = restriction_matrix_1d(6, name, periodic=periodic)
        expect = torch.einsum("iy,ncyx,jx->ncij", ry, x, rx)
        assert torch.allclose(restrict_images(x, name, boundary=boundary), expect, atol=1e-13)
        py = prolongation_matrix_1d(8, name, periodic=periodic)
        px = prolongation_matrix_1d(6, name, periodic=periodic)
        y = x[..., :4, :3]
        expect = torch.einsum("yi,ncij,xj->ncyx", py, y, px)
        assert torch.allclose(prolongate_images(y, name, boundary=boundary), expect, atol=1e-13)


def test_image_operators_match_pytorch_pooling_and_interpolation():
    x = torch.randn(2, 3, 8, 8)
    for name in ("average-constant", "average-bilinear"):
        assert torch.equal(restrict_images(x, name), F.avg_pool2d(x, 2))
    assert torch.allclose(prolongate_images(x, "average-bilinear"),
                          F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False), atol=1e-14)
    assert torch.equal(prolongate_images(x, "average-constant"), x.repeat_interleave(2, -1).repeat_interleave(2, -2))
    # zero boundary: bilinear prolongation of ones is ¾ next to the edge
    ones = prolongate_images(torch.ones(1, 1, 4, 4), "average-bilinear", boundary="zeros")
    assert ones[0, 0, 0, 3].item() == pytest.approx(0.75) and ones[0, 0, 3, 3].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="odd"):
        restrict_images(torch.ones(1, 1, 5, 4), "average-bilinear")


def test_custom_family_is_accepted():
    fam = OperatorFamily("injection-constant", (0,), (1.0,), (0, 1), (1.0, 1.0))
    m1 = stencil_map_1d(fam)
    n = 8
    r = restriction_matrix_1d(n, fam)
    p = prolongation_matrix_1d(n, fam)
    theta = torch.tensor([0.3, -1.0, 2.0])
    assert torch.allclose(r @ dense_k1(theta, n) @ p, dense_k1(m1 @ theta, n // 2), atol=1e-14)


# ---------------------------------------------------------------------------------------------
# dual (head) transfer: w_2h = Pᵀ w_h, w_h = P (PᵀP)⁻¹ w_2h — checked against dense 2-D matrices
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["average-constant", "average-bilinear", "fullweighting-linear"])
def test_dual_head_transfer_against_dense_matrices(family):
    from mres.grids.operators import prolongate_dual_images, restrict_dual_images

    nc = 5
    p1 = prolongation_matrix_1d(2 * nc, family, periodic=False)
    p2 = torch.kron(p1, p1)  # 2-D P acting on row-major flattened images
    gen = torch.Generator().manual_seed(0)
    w_c = torch.randn(3, nc, nc, generator=gen, dtype=torch.float64)
    w_f = prolongate_dual_images(w_c, family)
    dense = (p2 @ torch.linalg.solve(p2.T @ p2, w_c.reshape(3, -1).T)).T.reshape(3, 2 * nc, 2 * nc)
    assert (w_f - dense).abs().max() < 1e-10
    assert (restrict_dual_images(w_f, family) - w_c).abs().max() < 1e-10
    # logits are exact for fine features in the range of P
    g_c = torch.randn(nc * nc, generator=gen, dtype=torch.float64)
    g_f = p2 @ g_c
    assert (w_f.reshape(3, -1) @ g_f - w_c.reshape(3, -1) @ g_c).abs().max() < 1e-10
    w_f2 = torch.randn(3, 2 * nc, 2 * nc, generator=gen, dtype=torch.float64)
    assert (restrict_dual_images(w_f2, family).reshape(3, -1) @ g_c - w_f2.reshape(3, -1) @ g_f).abs().max() < 1e-10
    if family == "average-constant":  # coincides with the area-ratio rule P w / 4
        assert (w_f - prolongate_images(w_c, family) / 4).abs().max() < 1e-12

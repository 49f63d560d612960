"""Spectrum of conv operators, root choice (seed 000 Alg. 3) and the polynomial smoothing steps."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from mres.models.poly import PolyStep
from mres.analysis.spectrum_plot import plot_spectrum
from mres.grids.spectrum import (choose_roots, conv_spectrum, init_coefficients, polynomial_roots,
                                 residual_polynomial, spectral_roots, step_coefficients, step_roots)


def dense_circular_conv(weight: torch.Tensor, n: int) -> torch.Tensor:
    """The (C·n·n)² matrix of a cross-correlation with periodic wrap, entry by entry."""
    c_out, c_in, k, _ = weight.shape
    h = k // 2
    m = torch.zeros(c_out * n * n, c_in * n * n, dtype=torch.float64)
    for c in range(c_out):
        for y in range(n):
            for x in range(n):
                row = (c * n + y) * n + x
                for d in range(c_in):
                    for r in range(k):
                        for s in range(k):
                            col = (d * n + (y + r - h) % n) * n + (x + s - h) % n
                            m[row, col] += weight[c, d, r, s].item()
    return m


def assert_same_multiset(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    a, b = a.numpy(), b.numpy()
    assert a.shape == b.shape
    cost = np.abs(a[:, None] - b[None, :])
    i, j = linear_sum_assignment(cost)
    assert cost[i, j].max() < tol


def dense_matrix_of(fn, shape: tuple[int, ...]) -> torch.Tensor:
    """Matrix of a linear map on tensors of ``shape`` from its action on unit vectors (columns)."""
    size = math.prod(shape)
    cols = []
    for k in range(size):
        e = torch.zeros(size, dtype=torch.float64)
        e[k] = 1
        cols.append(fn(e.view(1, *shape)).reshape(-1))
    return torch.stack(cols, dim=1)


@pytest.mark.parametrize("c,n", [(2, 4), (3, 3), (1, 5)])
def test_conv_spectrum_equals_dense_eigenvalues(c, n):
    torch.manual_seed(c * 10 + n)
    w = torch.randn(c, c, 3, 3, dtype=torch.float64)
    eig_dense = torch.linalg.eigvals(dense_circular_conv(w, n))
    eig = conv_spectrum(w, n)
    assert eig.shape == (c * n * n,) and eig.dtype == torch.complex128
    assert_same_multiset(eig, eig_dense, 1e-6)
    # the fast single-precision path agrees to its precision
    assert_same_multiset(conv_spectrum(w.float(), n, dtype=torch.complex64).to(torch.complex128), eig_dense, 1e-4)


def test_conv_spectrum_of_laplacian_is_known():
    lap = torch.tensor([[0.0, -1, 0], [-1, 4, -1], [0, -1, 0]]).view(1, 1, 3, 3)
    n = 8
    k = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    expect = (4 - 2 * torch.cos(k)[:, None] - 2 * torch.cos(k)[None, :]).reshape(-1)
    eig = conv_spectrum(lap, n)
    assert eig.imag.abs().max() < 1e-12
    assert torch.allclose(torch.sort(eig.real).values, torch.sort(expect).values, atol=1e-12)


def test_conv_spectrum_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        conv_spectrum(torch.randn(2, 3, 3, 3), 4)


def brute_force_alg3(lam: torch.Tensor, degree: int) -> list[complex]:
    """Seed 000 Alg. 3 written out plainly, as an independent reference."""
    roots = [complex(lam.real.max()), complex(lam.real.min())]
    if degree >= 4:
        z = complex(lam[lam.imag.argmax()])
        roots += [z, z.conjugate()]
    while len(roots) < degree:
        q = [abs(np.prod([1 - complex(l) / r for r in roots])) for l in lam]
        z = complex(lam[int(np.argmax(q))])
        z = z if z.imag >= 0 else z.conjugate()
        roots += [z, z.conjugate()]
    return roots[:degree]


def test_choose_roots_follows_algorithm_3():
    torch.manual_seed(0)
    lam = conv_spectrum(torch.randn(4, 4, 3, 3, dtype=torch.float64), 6)
    for d in (2, 4, 6, 8):
        got = choose_roots(lam, d)
        assert got.shape == (d,)
        assert np.allclose(got.numpy(), np.array(brute_force_alg3(lam, d)), atol=1e-12)
    r = choose_roots(lam, 4)
    assert r[0].real == lam.real.max() and r[1].real == lam.real.min()
    assert r[2].imag == lam.imag.max() and r[3] == r[2].conj()
    # each extra pair removes the spectrum's worst point: max |q| does not grow with the degree here
    assert residual_polynomial(choose_roots(lam, 2), lam).abs().max() > 0
    with pytest.raises(ValueError, match="degree"):
        choose_roots(lam, 3)


@pytest.mark.parametrize("kind,coeff", [("q", [0.7]), ("g", [2.5]), ("g", [-0.5]), ("c", [1.2, 0.9]), ("c", [1.0, 0.1])])
def test_step_roots_are_roots_of_the_residual_factor(kind, coeff):
    c = torch.tensor(coeff, dtype=torch.float64)
    lam = torch.tensor([0.3 + 0.2j, -1.1 + 0.5j, 2.0 + 0j], dtype=torch.complex128)
    factor = {"q": 1 - c[0] * lam, "g": 1 - c[0] * lam**2, "c": 1 - c[0] * lam + c[-1] * lam**2}[kind]
    assert torch.allclose(residual_polynomial(step_roots(kind, c), lam), factor, atol=1e-12)
    back = step_coefficients(kind, step_roots(kind, c))
    if not (kind == "c" and c[0] ** 2 > 4 * c[1]):  # real-root pairs are not a conjugate pair
        assert torch.allclose(back.double(), c, atol=1e-6)


def test_pair_coefficients_are_the_papers_quadratic_block():
    z = complex(0.6, 0.8)
    c1, c2 = step_coefficients("c", torch.tensor([z])).tolist()
    assert c1 == pytest.approx(2 * z.real / abs(z) ** 2) and c2 == pytest.approx(1 / abs(z) ** 2)
    roots = step_roots("c", torch.tensor([c1, c2]))
    assert roots[0] == pytest.approx(z, abs=1e-6) and roots[1] == pytest.approx(z.conjugate(), abs=1e-6)


def test_init_coefficients_spectral_uniform_xavier():
    lam = torch.tensor([-1.0 + 0j, 2.0 + 0j, 0.5 + 1.5j, 0.5 - 1.5j, 0.2 + 0.3j, 0.2 - 0.3j], dtype=torch.complex128)
    q1, q2 = init_coefficients(["q", "q"], lam, "spectral")
    assert q1.item() == pytest.approx(1 / 2.0) and q2.item() == pytest.approx(-1.0)
    g1, g2, pair = init_coefficients(["g", "g", "c"], lam, "spectral")
    assert g1.item() == pytest.approx(1 / 4.0) and g2.item() == pytest.approx(1 / 4.0)  # ζ = max(|2|, |−1|)
    z = 0.5 + 1.5j
    assert pair.tolist() == pytest.approx([2 * z.real / abs(z) ** 2, 1 / abs(z) ** 2])
    assert torch.allclose(torch.cat(spectral_roots(["q", "q", "c"], lam)), choose_roots(lam, 4))

    gen = torch.Generator().manual_seed(0)
    for coeffs in [init_coefficients(["q", "g", "c"], lam, "uniform-spectrum", generator=gen) for _ in range(20)]:
        roots = polynomial_roots(["q", "g", "c"], coeffs)
        assert -1.0 - 1e-6 <= roots[0].real.item() <= 2.0 + 1e-6
        assert abs(roots[0].real.item()) >= 0.2 - 1e-6  # pushed away from 0
        assert -1.0 - 1e-6 <= roots[3].real.item() <= 2.0 + 1e-6
        assert 0 <= roots[3].imag.item() <= 1.5 + 1e-6 and roots[4] == roots[3].conj()

    # xavier draws roots from U(−t, t) (reference: α = 1/v); the coefficients are their inverses
    t = math.sqrt(6 / (2 * 16))
    signs = set()
    for _ in range(50):
        xs = init_coefficients(["q", "g", "c"], None, "xavier", channels=16, generator=gen)
        assert [x.numel() for x in xs] == [1, 1, 2]
        q, g, (c1, c2) = xs[0].item(), xs[1].item(), xs[2].tolist()
        assert abs(q) >= 1 / t - 1e-4 and g >= 1 / t**2 * (1 - 1e-6)  # |ζ| ≤ t
        signs.add(q > 0)
        z_abs2 = 1 / c2  # pair root z = a + ib: |a| ≤ t, 0 ≤ b ≤ t
        a = c1 * z_abs2 / 2
        assert abs(a) <= t + 1e-6 and 0 <= z_abs2 - a * a <= t * t + 1e-6
    assert signs == {True, False}
    with pytest.raises(ValueError, match="allowed"):
        init_coefficients(["q"], lam, "lfa")


def _step(kind: str, coeff: list[float], a_conv: torch.nn.Conv2d) -> tuple[PolyStep, tuple[torch.Tensor, torch.Tensor]]:
    """A step without BN/ReLU, and the dense matrices of A and of the step's error propagator."""
    step = PolyStep(kind, a_conv.in_channels, "plain", "plain", "plain").double()
    with torch.no_grad():
        step.coeff.copy_(torch.tensor(coeff))
    shape = (a_conv.in_channels, 4, 4)
    a_dense = dense_matrix_of(a_conv, shape)
    # with f = 0 the step maps u to (error propagator) · u
    e_dense = dense_matrix_of(lambda u: step(a_conv, torch.zeros_like(u), u), shape)
    return step, (a_dense, e_dense)


@pytest.fixture
def a_conv():
    torch.manual_seed(3)
    return torch.nn.Conv2d(2, 2, 3, padding=1, bias=False).double()


def test_g_step_error_propagator_is_one_minus_alpha_a_squared(a_conv):
    alpha = 0.37
    _, (a, e) = _step("g", [alpha], a_conv)
    eye = torch.eye(a.shape[0], dtype=torch.float64)
    assert torch.allclose(e, eye - alpha * a @ a, atol=1e-12)


def test_q_step_error_propagator(a_conv):
    _, (a, e) = _step("q", [0.8], a_conv)
    assert torch.allclose(e, torch.eye(a.shape[0], dtype=torch.float64) - 0.8 * a, atol=1e-12)


def test_pair_step_has_roots_z_and_conjugate(a_conv):
    z = complex(0.9, 0.7)
    coeff = step_coefficients("c", torch.tensor([z])).double().tolist()
    _, (a, e) = _step("c", coeff, a_conv)
    eye = torch.eye(a.shape[0], dtype=torch.float64)
    m = abs(z) ** 2
    assert torch.allclose(e, eye - (2 * z.real * eye - a) @ a / m, atol=1e-6)
    ac = a.to(torch.complex128)
    eyec = eye.to(torch.complex128)
    product = (eyec - ac / z) @ (eyec - ac / z.conjugate())
    assert product.imag.abs().max() < 1e-12
    assert torch.allclose(e, product.real, atol=1e-6)


def test_plot_spectrum_writes_png(tmp_path):
    torch.manual_seed(1)
    lam = conv_spectrum(torch.randn(3, 3, 3, 3), 4)
    p = plot_spectrum(lam, choose_roots(lam, 6), tmp_path / "s" / "spec.png", title="t")
    assert p.exists() and p.stat().st_size > 1000
    p2 = plot_spectrum(lam, None, tmp_path / "plain.png")
    assert p2.exists()

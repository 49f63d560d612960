"""Zero-padded conv spectra against an independent dense construction (numpy loops, numpy eigvals)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from mres.models import build_model
from mres.grids.spectrum import conv_operator, conv_spectrum, spectrum_boundary


def _dense_loops(w: np.ndarray, n: int, periodic: bool) -> np.ndarray:
    """(C n², C n²) matrix of y[o, i, j] = Σ w[o, c, r, s] x[c, i + r − 1, j + s − 1], entry by entry."""
    c_out, c_in, k, _ = w.shape
    m = np.zeros((c_out * n * n, c_in * n * n))
    for o in range(c_out):
        for i in range(n):
            for j in range(n):
                for c in range(c_in):
                    for r in range(k):
                        for s in range(k):
                            y, x = i + r - k // 2, j + s - k // 2
                            if periodic:
                                y, x = y % n, x % n
                            elif not (0 <= y < n and 0 <= x < n):
                                continue
                            m[(o * n + i) * n + j, (c * n + y) * n + x] += w[o, c, r, s]
    return m


def _same_multiset(a: np.ndarray, b: np.ndarray) -> float:
    """Largest distance after the best one-to-one matching of two eigenvalue sets."""
    cost = np.abs(a[:, None] - b[None, :])
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].max())


@pytest.mark.parametrize("n, c", [(2, 3), (4, 2), (5, 1)])
def test_zero_padded_spectrum_equals_dense_eigvals(n, c):
    w = torch.randn(c, c, 3, 3, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    ref = np.linalg.eigvals(_dense_loops(w.numpy(), n, periodic=False))
    ours = conv_spectrum(w, n, boundary="zeros").numpy()
    assert len(ours) == c * n * n and _same_multiset(ours, ref) < 1e-9
    np.testing.assert_allclose(conv_operator(w, n).numpy(), _dense_loops(w.numpy(), n, periodic=False), atol=1e-12)
    # the periodic (Fourier-symbol) spectrum matches the wrapped loops — and differs from the zero-padded one
    periodic = conv_spectrum(w, n).numpy()
    assert _same_multiset(periodic, np.linalg.eigvals(_dense_loops(w.numpy(), n, periodic=True))) < 1e-9
    assert _same_multiset(periodic, ref) > 1e-3


def test_zero_padded_spectrum_is_refused_above_the_dense_limit():
    w = torch.randn(4, 4, 3, 3)
    with pytest.raises(ValueError, match=r"dense 256×256 .* C·n² ≤ 100.*periodic"):
        conv_spectrum(w, 8, boundary="zeros", max_dense=100)


def test_auto_boundary_takes_zeros_on_small_cheap_grids_only():
    assert spectrum_boundary("auto", 8, 16) == "zeros" and spectrum_boundary("auto", 2, 256) == "zeros"
    assert spectrum_boundary("auto", 16, 4) == "periodic" and spectrum_boundary("auto", 4, 256) == "periodic"
    assert spectrum_boundary("periodic", 2, 1) == "periodic" and spectrum_boundary("zeros", 32, 1) == "zeros"


def test_poly_spectral_init_reads_the_zero_padded_spectrum_on_deep_levels():
    # 16 px input: levels on 16, 8, 4, 2; 'auto' zero-pads levels 2-4 — the init differs from 'periodic' there
    opts = {"widths": [4, 4, 4, 4]}
    torch.manual_seed(0)
    auto = build_model("poly-g4", {**opts, "spectrum_boundary": "auto"}, 1, 10, 16)
    torch.manual_seed(0)
    periodic = build_model("poly-g4", {**opts, "spectrum_boundary": "periodic"}, 1, 10, 16)
    la, lp = auto.smoothing_levels(), periodic.smoothing_levels()
    assert all(torch.equal(a.A.weight, p.A.weight) for a, p in zip(la, lp))  # same A's
    assert all(torch.equal(x, y) for x, y in zip(la[0].coeffs, lp[0].coeffs))  # 16×16: periodic in both
    assert any(not torch.allclose(x, y) for a, p in zip(la[2:], lp[2:]) for x, y in zip(a.coeffs, p.coeffs))

"""Spectrum of a conv operator from its Fourier symbol, and polynomial roots chosen from it.

Pure tensor functions (no nn.Module knowledge), DESIGN §4.1.

On an n×n periodic grid a 3×3 conv ``A`` (C×C×k×k, PyTorch cross-correlation) is block-
diagonalised by the discrete Fourier modes: for every frequency ω = 2π(k_y, k_x)/n its C×C
symbol is ``Â(ω) = Σ_{r,s} A[:, :, r, s] e^{i(ω_y r + ω_x s)}`` (r, s = stencil offsets), and the
spectrum of A is the union of the eigenvalues of all n² symbols.  That is exact for circular
padding.  The models zero-pad, which moves the spectrum on small grids (the spectral init's first
root of a default poly-g4 level-4 A on 4×4: 14 %); ``boundary="zeros"`` gives that spectrum
exactly, from the dense operator (C·n² ≤ ``DENSE_SPECTRUM_MAX``).  ``spectrum_boundary("auto", …)``
picks it where it matters and is affordable: grids ≤ 8 with C·n² ≤ 1024.

Poly-MgNet smoothing steps and their learnable coefficients (seed 000).  Every step is a factor
of the residual polynomial ``r ← q(A) r``:

========  =====================================  ====================  ======================
kind      update                                 residual factor       coefficients
========  =====================================  ====================  ======================
``q``     ``u ← u + α r``                        ``1 − αλ``            ``[α]``, root ``1/α``
``g``     ``u ← u + A(α r)``                     ``1 − αλ²``           ``[α]``, roots ``±1/√α``
``c``     ``u ← u + c1 r − c2 A r``              ``1 − c1 λ + c2 λ²``  ``[c1, c2]``
========  =====================================  ====================  ======================

For a complex pair of roots z = a + ib, z̄ the ``c`` step is the paper's quadratic block
``u ← u + (2a − A) r / (a² + b²)``: c1 = 2a/|z|², c2 = 1/|z|².  Coefficients (not roots) are the
learnable parameters: the update is linear in them, so gradients stay tame near |z| → ∞.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

STEP_KINDS = ("q", "g", "c")
SPECTRUM_BOUNDARIES = ("periodic", "zeros")
DENSE_SPECTRUM_MAX = 16384  # C·n² up to which the zero-padded spectrum is computed (a dense eig)
AUTO_ZEROS_GRID = 8  # 'auto' takes the zero-padded spectrum on grids this small ...
AUTO_DENSE_MAX = 1024  # ... when its dense operator is this small (C = 256: 2×2 took 6 s, 4×4 143 s on 2 busy cores)
COEFF_INITS = ("spectral", "uniform-spectrum", "xavier")


# --------------------------------------------------------------------------- spectrum


def conv_symbol(weight: torch.Tensor, n: int) -> torch.Tensor:
    """Fourier symbols of a conv on an n×n periodic grid: complex (n, n, C_out, C_in), float64 precision.

    Entry ``[k_y, k_x]`` belongs to the frequency ω = 2π(k_y, k_x)/n.
    """
    if weight.dim() != 4 or weight.shape[-1] != weight.shape[-2] or weight.shape[-1] % 2 == 0:
        raise ValueError(f"expected a (C_out, C_in, k, k) stencil with odd k, got shape {tuple(weight.shape)}")
    if n < 1:
        raise ValueError(f"grid size must be positive, got {n}")
    k = weight.shape[-1]
    w = weight.detach().to(torch.float64).cpu()
    offsets = torch.arange(k, dtype=torch.float64) - k // 2
    omega = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    phase = torch.exp(1j * omega[:, None] * offsets[None, :])  # (n, k): e^{i ω r}
    return torch.einsum("ar,bs,cdrs->abcd", phase, phase, w.to(torch.complex128))


def _eigvals_one_thread(batch: torch.Tensor) -> torch.Tensor:
    """Batched eigvals with intra-op threading off for the call.

    LAPACK's geev is called matrix by matrix; for the small C×C symbols MKL threading gains nothing
    and on a busy machine it made the call 5–20× slower (measured: 256×256 ×32 complex64, 1.9 s on one
    thread vs 10–26 s with two).
    """
    if batch.device.type != "cpu":
        return torch.linalg.eigvals(batch)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        return torch.linalg.eigvals(batch)
    finally:
        torch.set_num_threads(prev)


def conv_operator(weight: torch.Tensor, n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The dense matrix (C_out·n², C_in·n²) of a stride-1 conv with zero 'same' padding on an n×n grid;
    vectors are flattened (channel, y, x). Column j is the conv of the j-th unit image (in blocks)."""
    c_out, c_in, k, _ = weight.shape
    w = weight.detach().to(dtype).cpu()
    size = c_in * n * n
    cols = []
    for start in range(0, size, 1024):
        eye = torch.zeros(min(1024, size - start), size, dtype=dtype)
        eye[torch.arange(eye.shape[0]), torch.arange(start, start + eye.shape[0])] = 1.0
        out = torch.nn.functional.conv2d(eye.view(-1, c_in, n, n), w, padding=k // 2)
        cols.append(out.reshape(eye.shape[0], c_out * n * n))
    return torch.cat(cols).T


def spectrum_boundary(policy: str, n: int, channels: int) -> str:
    """The boundary a level's spectrum is taken with: ``periodic``, ``zeros``, or ``auto`` — zeros on
    grids ≤ 8 whose dense operator has C·n² ≤ 1024, periodic elsewhere."""
    if policy not in (*SPECTRUM_BOUNDARIES, "auto"):
        raise ValueError(f"unknown spectrum boundary {policy!r}; allowed: auto, {', '.join(SPECTRUM_BOUNDARIES)}")
    if policy == "auto":
        return "zeros" if n <= AUTO_ZEROS_GRID and channels * n * n <= AUTO_DENSE_MAX else "periodic"
    return policy


def conv_spectrum(weight: torch.Tensor, n: int, dtype: torch.dtype = torch.complex128,
                  boundary: str = "periodic", max_dense: int = DENSE_SPECTRUM_MAX) -> torch.Tensor:
    """Eigenvalues of a square conv (C, C, k, k) acting on an n×n grid: complex (n·n·C,).

    ``periodic``: one batched ``torch.linalg.eigvals`` over the C×C symbols.  A real stencil has
    Â(−ω) = conj Â(ω), so only one frequency of each pair ±ω is decomposed and the other contributes
    the conjugate eigenvalues (half the work, exact).  ``zeros`` (the models' padding): eigvals of the
    dense operator, refused above ``max_dense`` unknowns.  ``dtype=torch.complex64`` is faster, enough
    for root choice.
    """
    if weight.dim() == 4 and weight.shape[0] != weight.shape[1]:
        raise ValueError(f"the spectrum needs a square operator (C_out == C_in), got shape {tuple(weight.shape)}")
    if boundary not in SPECTRUM_BOUNDARIES:
        raise ValueError(f"unknown boundary {boundary!r}; allowed: {', '.join(SPECTRUM_BOUNDARIES)}")
    if boundary == "zeros":
        size = weight.shape[0] * n * n
        if size > max_dense:
            raise ValueError(f"the zero-padded spectrum of a {weight.shape[0]}-channel conv on {n}×{n} needs a dense "
                             f"{size}×{size} eigendecomposition (limit C·n² ≤ {max_dense}); use boundary 'periodic' "
                             "(exact for circular padding, close on large grids)")
        real = torch.float32 if dtype == torch.complex64 else torch.float64
        return torch.linalg.eigvals(conv_operator(weight, n, real)).to(dtype)
    sym = conv_symbol(weight, n)
    c = sym.shape[-1]
    k = torch.arange(n)
    idx = (k[:, None] * n + k[None, :]).reshape(-1)
    neg = (((-k) % n)[:, None] * n + ((-k) % n)[None, :]).reshape(-1)
    keep = idx <= neg  # one representative of each pair {ω, −ω}
    paired = (idx < neg)[keep]
    eig = _eigvals_one_thread(sym.reshape(-1, c, c)[keep].to(dtype))
    return torch.cat([eig.reshape(-1), eig[paired].conj().reshape(-1)])


def level_spectrum(weight: torch.Tensor, n: int, policy: str = "periodic") -> torch.Tensor:
    """complex64 spectrum of a smoothing level's A on its n×n grid, boundary by ``policy`` (see
    :func:`spectrum_boundary`) — what the spectral init and the coefficient policies read."""
    boundary = spectrum_boundary(policy, n, weight.shape[0])
    return conv_spectrum(weight, n, dtype=torch.complex64, boundary=boundary)


# --------------------------------------------------------------------------- polynomials


def residual_polynomial(roots: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """q(λ) = Π_k (1 − λ/ζ_k), normalised so q(0) = 1; infinite roots contribute the factor 1."""
    lam = torch.as_tensor(lam).to(torch.complex128)
    out = torch.ones_like(lam)
    for z in torch.as_tensor(roots).to(torch.complex128).reshape(-1):
        if torch.isfinite(z.real) and torch.isfinite(z.imag):
            out = out * (1 - lam / z)
    return out


def step_roots(kind: str, coeff: torch.Tensor) -> torch.Tensor:
    """Roots (complex128) of one step's residual factor; a vanishing coefficient gives a root at ∞."""
    c = torch.as_tensor(coeff).detach().to(torch.float64).cpu().reshape(-1)
    inf = complex(math.inf, 0.0)
    if kind == "q":
        a = c[0].item()
        return torch.tensor([1 / a if a != 0 else inf], dtype=torch.complex128)
    if kind == "g":
        a = c[0].item()
        if a == 0:
            return torch.tensor([inf, inf], dtype=torch.complex128)
        z = 1 / torch.sqrt(torch.tensor(a, dtype=torch.complex128))  # α < 0 gives ±i/√|α|
        return torch.stack([z, -z])
    if kind == "c":
        c1, c2 = torch.tensor(c[0].item(), dtype=torch.complex128), torch.tensor(c[1].item(), dtype=torch.complex128)
        # roots of 1 − c1 λ + c2 λ² as 2/(c1 ∓ √(c1² − 4c2)): stable, and c2 = 0 degrades to 1/c1 and ∞
        disc = torch.sqrt(c1 * c1 - 4 * c2)
        out = []
        for den in (c1 + disc, c1 - disc):
            out.append(2 / den if den.abs() > 0 else torch.tensor(inf, dtype=torch.complex128))
        # order: the root with Im ≥ 0 first (z, then z̄)
        out.sort(key=lambda z: -float(z.imag) if torch.isfinite(z.imag) else 0.0)
        return torch.stack(out)
    raise ValueError(f"unknown step kind {kind!r}; allowed: {', '.join(STEP_KINDS)}")


def step_coefficients(kind: str, roots: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`step_roots`: coefficients (float32) whose step has the given root(s).

    ``q``: one root ζ → α = 1/ζ (real part).  ``g``: root ζ (its negative is implied) → α = 1/ζ².
    ``c``: root z (its conjugate is implied) → [2 Re z/|z|², 1/|z|²].
    """
    z = torch.as_tensor(roots).to(torch.complex128).reshape(-1)[0]
    if kind == "q":
        return torch.tensor([1 / z.real.item()], dtype=torch.float32)
    if kind == "g":
        return torch.tensor([(1 / (z * z)).real.item()], dtype=torch.float32)
    if kind == "c":
        m = (z.abs() ** 2).item()
        return torch.tensor([2 * z.real.item() / m, 1 / m], dtype=torch.float32)
    raise ValueError(f"unknown step kind {kind!r}; allowed: {', '.join(STEP_KINDS)}")


def polynomial_roots(kinds: Sequence[str], coeffs: Sequence[torch.Tensor]) -> torch.Tensor:
    """All roots of the residual polynomial of a sequence of steps (complex128, degree entries)."""
    if len(kinds) != len(coeffs):
        raise ValueError(f"{len(kinds)} step kinds but {len(coeffs)} coefficient tensors")
    if not kinds:
        return torch.zeros(0, dtype=torch.complex128)
    return torch.cat([step_roots(k, c) for k, c in zip(kinds, coeffs)])


def step_degree(kind: str) -> int:
    return {"q": 1, "g": 2, "c": 2}[kind]


# --------------------------------------------------------------------------- root choice


def _nonzero(x: float, scale: float) -> float:
    """Keep a root away from 0 (1/ζ must stay finite): |ζ| ≥ 1e-6 · spectral scale."""
    floor = 1e-6 * max(scale, 1e-30)
    if abs(x) >= floor:
        return x
    return floor if x >= 0 else -floor


def spectral_roots(kinds: Sequence[str], eigs: torch.Tensor) -> list[torch.Tensor]:
    """Roots for a sequence of steps chosen from the spectrum (seed 000, Alg. 3), one tensor per step.

    ``q`` steps take the real extremes max Re Λ, then min Re Λ (further ``q`` steps: the real part of
    argmax |q(Λ)|).  ``g`` steps take α = 1/ζ², ζ = max(|max Re Λ|, |min Re Λ|), roots ±ζ (seed 000
    after eq. 20).  The first ``c`` pair is the eigenvalue of largest imaginary part and its
    conjugate; every further pair is argmax |q(Λ)| over the polynomial built so far, and its conjugate.
    """
    lam = torch.as_tensor(eigs).to(torch.complex128).reshape(-1)
    if lam.numel() == 0:
        raise ValueError("empty spectrum")
    scale = lam.abs().max().item()
    re_max, re_min = lam.real.max().item(), lam.real.min().item()
    chosen: list[torch.Tensor] = []
    so_far = torch.zeros(0, dtype=torch.complex128)
    n_q = n_pairs = 0

    def worst() -> complex:
        return complex(lam[residual_polynomial(so_far, lam).abs().argmax()].item())

    for kind in kinds:
        if kind == "q":
            if n_q < 2:
                zeta = re_max if n_q == 0 else re_min
            else:
                zeta = worst().real
            n_q += 1
            r = torch.tensor([complex(_nonzero(zeta, scale), 0.0)], dtype=torch.complex128)
        elif kind == "g":
            zeta = _nonzero(max(abs(re_max), abs(re_min)), scale)
            r = torch.tensor([complex(zeta, 0.0), complex(-zeta, 0.0)], dtype=torch.complex128)
        elif kind == "c":
            z = complex(lam[lam.imag.argmax()].item()) if n_pairs == 0 else worst()
            n_pairs += 1
            if z.imag < 0:
                z = z.conjugate()
            if abs(z) < 1e-6 * scale:
                z = complex(_nonzero(z.real, scale), z.imag)
            r = torch.tensor([z, z.conjugate()], dtype=torch.complex128)
        else:
            raise ValueError(f"unknown step kind {kind!r}; allowed: {', '.join(STEP_KINDS)}")
        chosen.append(r)
        so_far = torch.cat([so_far, r])
    return chosen


def degree_kinds(degree: int) -> list[str]:
    """Step kinds of the Alg. 3 polynomial of a degree: 1 → [q], 2 → [q, q], even d ≥ 4 → 2 q + (d−2)/2 pairs."""
    if degree == 1:
        return ["q"]
    if degree >= 2 and degree % 2 == 0:
        return ["q", "q"] + ["c"] * ((degree - 2) // 2)
    raise ValueError(f"degree must be 1, 2 or even (two real roots + conjugate pairs), got {degree}")


def choose_roots(eigs: torch.Tensor, degree: int) -> torch.Tensor:
    """Seed 000 Alg. 3: the roots (complex128, ``degree`` entries) of a polynomial small on the spectrum.

    ζ1 = max Re Λ, ζ2 = min Re Λ (real linear factors); ζ3 = argmax Im Λ, ζ4 = ζ̄3; then repeatedly
    ζ = argmax |q(Λ)| of the polynomial built so far, and its conjugate.
    """
    return torch.cat(spectral_roots(degree_kinds(degree), eigs))


# --------------------------------------------------------------------------- coefficient init


def init_coefficients(kinds: Sequence[str], eigs: torch.Tensor | None = None, method: str = "spectral",
                      channels: int | None = None, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Initial coefficients (float32, one tensor per step) for a sequence of steps.

    All three choose roots; the coefficients follow from them (:func:`step_coefficients`).
    Seed 000 Table 2 says "coefficients drawn from U(λmin, λmax) or U(−t, t)"; the reference code
    (vanbetteray/Poly-MgNet, ``make_polynomial_block``) draws a value v from either law and sets
    α = 1/v, i.e. both draws are roots — the only reading under which "drawn from the spectrum" fits.

    ``spectral``: the roots of :func:`spectral_roots` (needs ``eigs``).
    ``uniform-spectrum``: roots drawn from U(min Re Λ, max Re Λ); a pair's imaginary part from
    U(0, max Im Λ).  Draws closer to 0 than 10 % of max |Re Λ| are pushed out to that bound, so that
    α = 1/ζ stays finite on spectra that straddle 0.
    ``xavier``: roots drawn from U(−t, t), t = √(6/(c_in + c_out)) = √(3/C) (needs ``channels``); a
    pair's imaginary part from U(0, t).  For ``q`` steps this is the reference's α = 1/v exactly; for
    ``g`` steps α = 1/ζ² (roots ±ζ, as for the other inits) where the reference takes α = 1/v; the
    reference's pair step has b = 0.  |α| is heavy-tailed (no floor, as in the reference).
    """
    if method not in COEFF_INITS:
        raise ValueError(f"unknown coefficient init {method!r}; allowed: {', '.join(COEFF_INITS)}")
    for k in kinds:
        if k not in STEP_KINDS:
            raise ValueError(f"unknown step kind {k!r}; allowed: {', '.join(STEP_KINDS)}")

    def draw(a: float, b: float) -> float:
        return a + (b - a) * torch.rand(1, generator=generator, dtype=torch.float64).item()

    if method == "xavier":
        if channels is None:
            raise ValueError("xavier init needs the channel count")
        t = math.sqrt(6.0 / (2 * channels))
        roots = []
        for k in kinds:
            # only an exact 0 is moved (α = 1/ζ must be finite); small |ζ| keep their large α
            re = _nonzero(draw(-t, t), t)
            roots.append(complex(re, draw(0.0, t) if k == "c" else 0.0))
        return [step_coefficients(k, torch.tensor([z])) for k, z in zip(kinds, roots)]
    if eigs is None:
        raise ValueError(f"{method} init needs the spectrum of A")
    if method == "spectral":
        return [step_coefficients(k, r) for k, r in zip(kinds, spectral_roots(kinds, eigs))]
    lam = torch.as_tensor(eigs).to(torch.complex128).reshape(-1)
    lo, hi = lam.real.min().item(), lam.real.max().item()
    im_max = max(lam.imag.max().item(), 0.0)
    floor = 0.1 * max(abs(lo), abs(hi), 1e-12)

    out = []
    for k in kinds:
        re = draw(lo, hi)
        if abs(re) < floor:
            re = floor if re >= 0 else -floor
        im = draw(0.0, im_max) if k == "c" else 0.0
        out.append(step_coefficients(k, torch.tensor([complex(re, im)])))
    return out

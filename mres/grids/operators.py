"""Grid transfer operators, the Galerkin stencil map and image restriction (DESIGN §3.1–3.2).

Pure functions on tensors; nothing here knows about ``nn.Module`` (that is ``mres.grids.transfer``).

Conventions
-----------
* Every operator is separable: a 1-D weight vector applied along each axis.
* A fine grid has ``n`` points (spacing h), its coarse grid ``n/2`` (spacing 2h). Coarse point
  ``I`` sits over fine points ``2I`` (vertex-centred) or ``2I, 2I+1`` (cell-centred).
* Restriction:  ``(R x)_I = Σ_α r_α x_{2I+α}``      (``r_offsets`` = α, ``r_weights`` = r_α)
* Prolongation: ``(P y)_{2I+β} += p_β y_I``, i.e. ``P[i, I] = p_{i−2I}``  (β, p_β)
* Stencils are PyTorch cross-correlation kernels: ``(K(θ) x)_i = Σ_k θ_k x_{i+k}``, offsets
  ``k = −s..s`` stored at index ``k + s``; 2-D kernels are flattened row-major (y, then x).

With these, ``R K(θ_h) P = K(θ_2h)`` with ``θ_2h[m] = Σ_k c(k − 2m) θ_h[k]`` where
``c(d) = Σ_{β−α=d} r_α p_β``: substitute ``J = I + m`` in ``Σ_α r_α Σ_k θ_k (P y)_{2I+α+k}``.
So ``M1[m, k] = c(k − 2m)`` and ``M = M1 ⊗ M1`` (DESIGN §3.2).

Boundary handling for images (``restrict_images`` / ``prolongate_images``): ``"replicate"``
(default; the ghost value is the edge value — for cell-centred grids this is the even
reflection about the grid edge, a homogeneous Neumann condition, so constants are preserved up
to the border), ``"zeros"`` or ``"circular"`` (periodic; matches the ``periodic=True`` dense
matrices). The average-family restriction never reads outside the grid, so it ignores the
boundary and equals ``F.avg_pool2d(x, 2)`` exactly.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Boundary = Literal["replicate", "zeros", "circular"]
BOUNDARIES: tuple[str, ...] = ("replicate", "zeros", "circular")


@dataclass(frozen=True)
class OperatorFamily:
    """A pair of 1-D restriction / prolongation weight vectors with their integer offsets."""

    name: str
    r_offsets: tuple[int, ...]
    r_weights: tuple[float, ...]
    p_offsets: tuple[int, ...]
    p_weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.r_offsets) != len(self.r_weights) or len(self.p_offsets) != len(self.p_weights):
            raise ValueError(f"operator family {self.name!r}: offsets and weights differ in length")
        if not self.r_offsets or not self.p_offsets:
            raise ValueError(f"operator family {self.name!r}: empty weight vector")


# Offsets follow the conventions in the module docstring.
#  - average-*: cell-centred; coarse cell I covers fine cells 2I, 2I+1.  Bilinear: fine cell 2I
#    (centre 2I+½) lies ½ from coarse centre I (2I+1) and 3/2 from centre I−1, hence ¾ / ¼.
#  - fullweighting-linear: vertex-centred; coarse point I sits on fine point 2I.
_FAMILY_TABLE: dict[str, OperatorFamily] = {
    f.name: f
    for f in (
        OperatorFamily("average-constant", (0, 1), (0.5, 0.5), (0, 1), (1.0, 1.0)),
        OperatorFamily("average-bilinear", (0, 1), (0.5, 0.5), (-1, 0, 1, 2), (0.25, 0.75, 0.75, 0.25)),
        OperatorFamily("fullweighting-linear", (-1, 0, 1), (0.25, 0.5, 0.25), (-1, 0, 1), (0.5, 1.0, 0.5)),
    )
}
FAMILIES: tuple[str, ...] = tuple(_FAMILY_TABLE)


def get_family(family: str | OperatorFamily) -> OperatorFamily:
    """The operator family of that name (an ``OperatorFamily`` is passed through)."""
    if isinstance(family, OperatorFamily):
        return family
    try:
        return _FAMILY_TABLE[family]
    except (KeyError, TypeError):
        raise ValueError(f"unknown operator family {family!r}; allowed: {', '.join(FAMILIES)}") from None


# ---------------------------------------------------------------------------------------------
# The Galerkin stencil map
# ---------------------------------------------------------------------------------------------


def galerkin_correlation(family: str | OperatorFamily) -> dict[int, float]:
    """``c(d) = Σ_{β−α=d} r_α p_β``: the cross-correlation of the 1-D R and P weights."""
    fam = get_family(family)
    c: dict[int, float] = {}
    for a, ra in zip(fam.r_offsets, fam.r_weights):
        for b, pb in zip(fam.p_offsets, fam.p_weights):
            c[b - a] = c.get(b - a, 0.0) + ra * pb
    return c


def _check_size(size: int) -> int:
    if size < 3 or size % 2 == 0:
        raise ValueError(f"stencil size must be odd and at least 3, got {size}")
    return size // 2


def stencil_map_1d(family: str | OperatorFamily, size: int = 3) -> torch.Tensor:
    """1-D Galerkin map ``M1`` (size × size, float64): ``θ_2h = M1 θ_h`` along one axis.

    ``M1[m, k] = c(k − 2m)`` for offsets ``m, k ∈ {−s..s}``, ``s = size // 2``. For size 3 it is
    exact for every family here; larger sizes drop coarse offsets beyond ``s`` if the coarse
    operator is wider (see :func:`stencil_map_is_exact`).
    """
    s = _check_size(size)
    c = galerkin_correlation(family)
    offs = range(-s, s + 1)
    return torch.tensor([[c.get(k - 2 * m, 0.0) for k in offs] for m in offs], dtype=torch.float64)


def stencil_map_is_exact(family: str | OperatorFamily, size: int = 3) -> bool:
    """Whether ``R K(θ_h) P`` of every size×size ``θ_h`` fits in a size×size coarse stencil."""
    s = _check_size(size)
    c = galerkin_correlation(family)
    reach = max(abs(d) for d, v in c.items() if v != 0.0)
    # coarse offset m is hit when |k − 2m| ≤ reach for some |k| ≤ s, i.e. |m| ≤ (s + reach) / 2
    return (s + reach) // 2 <= s


def strided_stencil_map_1d(family: str | OperatorFamily, size: int = 3) -> torch.Tensor:
    """1-D Galerkin map of a stride-2 conv ``S K(θ)`` (S keeps every other output): ``R S K(θ_h) P = S K(θ_2h)``.

    ``(R S K P y)_I = Σ_α r_α Σ_k θ_k (P y)_{4I+2α+k}`` and ``(P y)_{2J+β} = p_β y_J``; with
    ``J = 2I + m``, ``k = 2m + β − 2α``, so ``M1s[m, k] = Σ_{α,β: k−β+2α = 2m} r_α p_β``. Exact when
    no term lands beyond offset ``s`` (:func:`strided_stencil_map_is_exact`); for average-constant
    it is ``[[½,0,0],[½,½,½],[0,½,½]]`` (rank 2).
    """
    s = _check_size(size)
    fam = get_family(family)
    m1 = torch.zeros(size, size, dtype=torch.float64)
    for a, ra in zip(fam.r_offsets, fam.r_weights):
        for b, pb in zip(fam.p_offsets, fam.p_weights):
            for k in range(-s, s + 1):
                if (k - b + 2 * a) % 2 == 0 and abs(m := (k - b + 2 * a) // 2) <= s:
                    m1[m + s, k + s] += ra * pb
    return m1


def strided_stencil_map_is_exact(family: str | OperatorFamily, size: int = 3) -> bool:
    """Whether ``R S K(θ_h) P`` of every size×size ``θ_h`` is a stride-2 conv with a size×size stencil."""
    s = _check_size(size)
    fam = get_family(family)
    return all(abs((k - b + 2 * a) // 2) <= s for a in fam.r_offsets for b in fam.p_offsets
               for k in range(-s, s + 1) if (k - b + 2 * a) % 2 == 0)


def stencil_map(family: str | OperatorFamily, size: int = 3, stride: int = 1) -> torch.Tensor:
    """2-D Galerkin map ``M = M1 ⊗ M1`` (size² × size², float64) on row-major flattened stencils;
    ``stride=2``: the map of a stride-2 conv (:func:`strided_stencil_map_1d`)."""
    if stride not in (1, 2):
        raise ValueError(f"stencil maps exist for stride 1 and 2, got {stride}")
    m1 = stencil_map_1d(family, size) if stride == 1 else strided_stencil_map_1d(family, size)
    return torch.kron(m1, m1)


def transposed_stencil_map_1d(family: str | OperatorFamily, size: int, padding: int) -> torch.Tensor:
    """1-D Galerkin map of a stride-2 transposed conv T(w) (PyTorch ``conv_transpose``, kernel ``size``,
    ``padding``): ``R T(w_h) P = T(w_2h)`` with ``w_2h = M1t w_h``.

    ``(T z)_j = Σ_{i,t: j = 2i+t−pad} w_t z_i``; with ``(P y)_{2I+β} = p_β y_I`` and ``(R z)_J = Σ_α r_α z_{2J+α}``
    the output index is ``J = 2I + β + (t − pad − α)/2``, the coarse one ``J = 2I + τ − pad``, so
    ``M1t[τ, t] = Σ_{α,β: 2τ = 2β + t + pad − α} r_α p_β``. Exact when every τ lands in 0 … size−1.
    """
    fam = get_family(family)
    m1 = torch.zeros(size, size, dtype=torch.float64)
    for a, ra in zip(fam.r_offsets, fam.r_weights):
        for b, pb in zip(fam.p_offsets, fam.p_weights):
            for t in range(size):
                if (t + padding - a) % 2 == 0 and 0 <= (tau := b + (t + padding - a) // 2) < size:
                    m1[tau, t] += ra * pb
    return m1


def transposed_stencil_map_is_exact(family: str | OperatorFamily, size: int, padding: int) -> bool:
    """Whether ``R T(w_h) P`` of every kernel is again a stride-2 transposed conv of this size and padding."""
    fam = get_family(family)
    return all(0 <= b + (t + padding - a) // 2 < size for a in fam.r_offsets for b in fam.p_offsets
               for t in range(size) if (t + padding - a) % 2 == 0)


def restrict_transposed(weight: torch.Tensor, family: str | OperatorFamily, padding: int) -> torch.Tensor:
    """Fine → coarse kernels of a stride-2 transposed conv (weight (C_in, C_out, k, k)): ``w_2h = M w_h``."""
    m1 = transposed_stencil_map_1d(family, weight.shape[-1], padding)
    return _apply_map(weight, torch.kron(m1, m1))


def prolongate_transposed(weight: torch.Tensor, family: str | OperatorFamily, padding: int,
                          lam: float = 0.0) -> torch.Tensor:
    """Coarse → fine kernels of a stride-2 transposed conv: least squares ``M w_h ≈ w_2h``, regularised by
    ``lam ‖w_h − w_2h‖²`` (minimum-norm when ``lam == 0``); M is singular for every family here."""
    if lam < 0 or not math.isfinite(lam):
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")
    m1 = transposed_stencil_map_1d(family, weight.shape[-1], padding)
    return _solve_map(weight, torch.kron(m1, m1), lam, singular=True)


def _kernel_size(weight: torch.Tensor) -> int:
    if weight.dim() < 2 or weight.shape[-1] != weight.shape[-2]:
        raise ValueError(f"stencils must have a square trailing (k, k) shape, got {tuple(weight.shape)}")
    k = weight.shape[-1]
    _check_size(k)
    return k


def restrict_stencils(weight: torch.Tensor, family: str | OperatorFamily, stride: int = 1) -> torch.Tensor:
    """Fine → coarse stencils: ``θ_2h = M θ_h`` for every leading index (channel pair) at once.

    ``weight``: (..., k, k), e.g. a conv weight (C_out, C_in/groups, k, k). One matmul in float64;
    the result has the input's shape and dtype. ``stride=2``: the stride-2 map.
    """
    k = _kernel_size(weight)
    exact = stencil_map_is_exact(family, k) if stride == 1 else strided_stencil_map_is_exact(family, k)
    if not exact:
        warnings.warn(
            f"{get_family(family).name}: the coarse operator of a {k}×{k} stencil{' (stride 2)' * (stride == 2)} "
            f"is wider than {k}×{k}; restriction truncates it", stacklevel=2)
    return _apply_map(weight, stencil_map(family, k, stride))


def prolongate_stencils(weight: torch.Tensor, family: str | OperatorFamily, lam: float = 0.0,
                        stride: int = 1) -> torch.Tensor:
    """Coarse → fine stencils: solve ``M θ_h = θ_2h`` for every leading index at once.

    ``lam > 0`` returns ``argmin ‖M θ_h − θ_2h‖² + lam ‖θ_h − θ_2h‖²`` (normal equations
    ``(MᵀM + lam I) θ_h = Mᵀ θ_2h + lam θ_2h``): ``lam → 0`` is the exact Galerkin solution,
    ``lam → ∞`` copies the coarse stencil. One factorisation for all channels (float64); the
    result has the input's shape and dtype.

    Kernels larger than 3×3 have a badly conditioned (5×5 average-bilinear: cond ≈ 916) or
    singular M; they are solved by (regularised) least squares — minimum-norm when
    ``lam == 0`` — and a warning is issued. So is every stride-2 map (rank 4 of 9 for 3×3
    average-constant): a coarse stencil outside its range has no exact fine preimage.
    """
    if lam < 0 or not math.isfinite(lam):
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")
    k = _kernel_size(weight)
    m = stencil_map(family, k, stride).to(weight.device)
    singular = k > 3 or stride == 2
    if singular:
        what = "ill-conditioned or singular" if stride == 1 else f"rank {int(torch.linalg.matrix_rank(m))} of {k * k}"
        warnings.warn(
            f"prolongating {k}×{k}{' stride-2' * (stride == 2)} stencils with {get_family(family).name}: M is "
            f"{what} (cond = {torch.linalg.cond(m).item():.3g}); using least squares with lam={lam}",
            stacklevel=2)
    return _solve_map(weight, m, lam, singular)


def _apply_map(weight: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``M θ`` for every leading index of ``weight`` (..., k, k), one float64 matmul; shape and dtype kept."""
    k = weight.shape[-1]
    flat = weight.reshape(-1, k * k).to(torch.float64)
    return (flat @ m.to(weight.device).T).reshape(weight.shape).to(weight.dtype)


def _solve_map(weight: torch.Tensor, m: torch.Tensor, lam: float, singular: bool) -> torch.Tensor:
    """``M θ_h = θ_2h`` for every leading index: ``lam > 0`` the regularised normal equations
    ``(MᵀM + lam I) θ_h = Mᵀ θ_2h + lam θ_2h``, else minimum-norm least squares (``singular``) or a solve."""
    k = weight.shape[-1]
    rhs = weight.reshape(-1, k * k).to(torch.float64).T  # (k², channels)
    m = m.to(weight.device)
    if lam > 0:
        eye = torch.eye(k * k, dtype=torch.float64, device=m.device)
        sol = torch.linalg.solve(m.T @ m + lam * eye, m.T @ rhs + lam * rhs)
    elif singular:
        sol = torch.linalg.pinv(m) @ rhs
    else:
        sol = torch.linalg.solve(m, rhs)
    return sol.T.reshape(weight.shape).to(weight.dtype)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def _pad_last(x: torch.Tensor, lo: int, hi: int, boundary: str) -> torch.Tensor:
    """Pad the last axis by ``lo`` / ``hi`` ghost points (gather, so any leading shape works)."""
    if lo == 0 and hi == 0:
        return x
    if boundary not in BOUNDARIES:
        raise ValueError(f"unknown boundary {boundary!r}; allowed: {', '.join(BOUNDARIES)}")
    n = x.shape[-1]
    idx = torch.arange(-lo, n + hi, device=x.device)
    if boundary == "circular":
        return x.index_select(-1, idx % n)
    out = x.index_select(-1, idx.clamp(0, n - 1))
    if boundary == "zeros":
        out = out * ((idx >= 0) & (idx < n)).to(x.dtype)
    return out


def _restrict_last(x: torch.Tensor, fam: OperatorFamily, boundary: str) -> torch.Tensor:
    n = x.shape[-1]
    if n % 2:
        raise ValueError(f"cannot restrict an axis of odd length {n}")
    nc = n // 2
    lo, hi = max(0, -min(fam.r_offsets)), max(0, max(fam.r_offsets) - 1)
    xp = _pad_last(x, lo, hi, boundary)
    out = torch.zeros(*x.shape[:-1], nc, dtype=x.dtype, device=x.device)
    for a, w in zip(fam.r_offsets, fam.r_weights):
        start = a + lo  # fine point 2I + α in the padded array
        out = out + w * xp[..., start : start + 2 * nc - 1 : 2]
    return out


def _prolongate_last(y: torch.Tensor, fam: OperatorFamily, boundary: str) -> torch.Tensor:
    nc = y.shape[-1]
    # fine point 2J + s receives p_β y_{J − t} for every β ≡ s (mod 2), t = (β − s) / 2
    taps = [[((b - s) // 2, w) for b, w in zip(fam.p_offsets, fam.p_weights) if (b - s) % 2 == 0] for s in (0, 1)]
    ts = [t for parity in taps for t, _ in parity]
    lo, hi = max(0, max(ts)), max(0, -min(ts))
    yp = _pad_last(y, lo, hi, boundary)
    parts = []
    for parity in taps:
        out = torch.zeros_like(y)
        for t, w in parity:
            out = out + w * yp[..., lo - t : lo - t + nc]
        parts.append(out)
    return torch.stack(parts, dim=-1).reshape(*y.shape[:-1], 2 * nc)


def _is_pair_mean(fam: OperatorFamily) -> bool:
    return fam.r_offsets == (0, 1) and fam.r_weights == (0.5, 0.5)


def restrict_images(x: torch.Tensor, family: str | OperatorFamily = "average-bilinear",
                    boundary: Boundary = "replicate") -> torch.Tensor:
    """Apply the family's 2-D restriction R: (..., H, W) → (..., H/2, W/2).

    For the average families this is exactly ``F.avg_pool2d(x, 2)`` (used directly).
    """
    fam = get_family(family)
    if x.dim() < 2:
        raise ValueError(f"images need at least 2 dims (H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(f"cannot restrict an image of odd size {h}×{w}")
    if _is_pair_mean(fam):
        lead = x.shape[:-2]
        return F.avg_pool2d(x.reshape(-1, h, w), 2).reshape(*lead, h // 2, w // 2)
    x = _restrict_last(x, fam, boundary)
    return _restrict_last(x.transpose(-1, -2), fam, boundary).transpose(-1, -2)


def prolongate_images(x: torch.Tensor, family: str | OperatorFamily = "average-bilinear",
                      boundary: Boundary = "replicate") -> torch.Tensor:
    """Apply the family's 2-D prolongation P: (..., H, W) → (..., 2H, 2W).

    ``average-bilinear`` with the default replicate boundary equals
    ``F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)``.
    """
    fam = get_family(family)
    if x.dim() < 2:
        raise ValueError(f"images need at least 2 dims (H, W), got shape {tuple(x.shape)}")
    x = _prolongate_last(x, fam, boundary)
    return _prolongate_last(x.transpose(-1, -2), fam, boundary).transpose(-1, -2)


# ---------------------------------------------------------------------------------------------
# Dense matrices (tests, small analyses)
# ---------------------------------------------------------------------------------------------


def restriction_matrix_1d(n_fine: int, family: str | OperatorFamily, periodic: bool = True) -> torch.Tensor:
    """Dense 1-D R, shape (n_fine/2, n_fine), float64. ``periodic=False`` = replicate boundary."""
    fam = get_family(family)
    if n_fine % 2 or n_fine < 2:
        raise ValueError(f"n_fine must be a positive even number, got {n_fine}")
    nc = n_fine // 2
    r = torch.zeros(nc, n_fine, dtype=torch.float64)
    for i_c in range(nc):
        for a, w in zip(fam.r_offsets, fam.r_weights):
            j = 2 * i_c + a
            j = j % n_fine if periodic else min(max(j, 0), n_fine - 1)
            r[i_c, j] += w
    return r


def prolongation_matrix_1d(n_fine: int, family: str | OperatorFamily, periodic: bool = True) -> torch.Tensor:
    """Dense 1-D P, shape (n_fine, n_fine/2), float64. ``periodic=False`` = replicate boundary."""
    fam = get_family(family)
    if n_fine % 2 or n_fine < 2:
        raise ValueError(f"n_fine must be a positive even number, got {n_fine}")
    nc = n_fine // 2
    p = torch.zeros(n_fine, nc, dtype=torch.float64)
    for i in range(n_fine):
        for b, w in zip(fam.p_offsets, fam.p_weights):
            if (i - b) % 2:
                continue
            j = (i - b) // 2
            j = j % nc if periodic else min(max(j, 0), nc - 1)
            p[i, j] += w
    return p


# ---------------------------------------------------------------------------------------------
# Weights that pair with feature images (flatten heads): the dual transfer
# ---------------------------------------------------------------------------------------------


def _p_and_gram(n_coarse: int, family: str | OperatorFamily) -> tuple[torch.Tensor, torch.Tensor]:
    p = prolongation_matrix_1d(2 * n_coarse, family, periodic=False)
    return p, p.T @ p


def restrict_dual_images(w: torch.Tensor, family: str | OperatorFamily = "average-bilinear") -> torch.Tensor:
    """Fine → coarse for weights w that pair with features: w_2h = Pᵀ w_h (per axis).

    Exact logit preservation for fine features in the range of P:
    Σ_fine w_h · (P g) = Σ_coarse (Pᵀ w_h) · g.  For ``average-constant`` Pᵀ = 4R (2-D).
    """
    h, wd = w.shape[-2:]
    py, _ = _p_and_gram(h // 2, family)
    px, _ = _p_and_gram(wd // 2, family)
    return (py.T.to(w.dtype) @ w @ px.to(w.dtype))


def prolongate_dual_images(w: torch.Tensor, family: str | OperatorFamily = "average-bilinear") -> torch.Tensor:
    """Coarse → fine, the right inverse of :func:`restrict_dual_images`: w_h = P (PᵀP)⁻¹ w_2h.

    ``restrict_dual_images(prolongate_dual_images(w)) == w`` exactly.  PᵀP ≈ 2I per axis on
    smooth data, so for smooth w this is ≈ P w / 4 (the area-ratio rule); for
    ``average-constant`` PᵀP = 2I exactly and the two rules coincide.
    """
    h, wd = w.shape[-2:]
    py, gy = _p_and_gram(h, family)
    px, gx = _p_and_gram(wd, family)
    dt = w.dtype
    inner = torch.linalg.solve(gy, w.to(torch.float64))                     # Gy⁻¹ W
    inner = torch.linalg.solve(gx, inner.transpose(-1, -2)).transpose(-1, -2)  # ... Gx⁻¹ (G symmetric)
    return (py @ inner @ px.T).to(dt)

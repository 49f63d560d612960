"""Poly-MgNet (seed 000; reference code vanbetteray/Poly-MgNet): MgNet whose smoother B is a polynomial in A.

Name grammar (case-insensitive)::

    poly-q<d>     d = 1, 2 or even ≥ 4: min(d, 2) real linear steps q̂ + (d−2)/2 complex-pair steps
    poly-g<d>     d = 2 or even ≥ 4:    min(d/2, 2) squared steps ĝ (I − αA²) + (d−4)/2 pair steps
    poly-<steps>  the steps spelled out, one letter each: q (linear), g (squared), c (complex pair)

so ``poly-q2`` = ``poly-qq``, ``poly-g4`` = ``poly-gg``, ``poly-g6`` = ``poly-ggc``, ``poly-g8`` = ``poly-ggcc``
(seed 000 limits the real factors to two and says g_d > 4 adds complex-pair terms).  The reference
code builds one pair step at most, so its g8 (Table 4) is ĝĝĝq̃: ``poly-gggc`` (same weight count up
to one coefficient per level).  Every level runs the same steps.

Each step is one factor of the residual polynomial (kinds and coefficients: :mod:`mres.grids.spectrum`)::

    q:  u ← u + α r                 r ← (1 − αA) r
    g:  u ← u + A(α r)              r ← (1 − αA²) r
    c:  u ← u + (c1 − c2 A) r       r ← (1 − c1 A + c2 A²) r;  c1 = 2a/|z|², c2 = 1/|z|² for z = a + ib

with r = f − A u, A one 3×3 conv per level.  The pair step is the paper's quadratic block
u ← u + (2a − A) r/(a² + b²) with a true imaginary part b (the reference code's b is always 0).

ReLU/BN placements (seed 000 Tables 1, 3, 4) are options, each one of plain / bn / relu / bn-relu
(BN first, then ReLU): ``residual`` (on r, real steps), ``update`` (on p(A) r, real steps),
``pair_residual``/``pair_update`` (the same for pair steps), ``output`` (on u, the column σ u_ℓ^(ν))
applied after every step or once per level (``output_at``).  Left unset, they follow the best row of
the paper for the polynomial:

=================  ===========  ==========  ===============  =============  ========  =========
polynomial          residual    update      pair_residual    pair_update    output    output_at
=================  ===========  ==========  ===============  =============  ========  =========
q_d (Table 3)       bn          plain       bn-relu          plain          bn-relu   step
g4 (Table 3)        bn-relu     bn-relu     –                –              plain     level
g6 (Table 4)        bn-relu     bn-relu     bn-relu          plain          bn-relu   level
g8+ (Table 4)       bn-relu     bn-relu     bn-relu          bn             relu      level
=================  ===========  ==========  ===============  =============  ========  =========

Table columns → options: "bn σr" → residual (pair_residual for Table 4), "bn σp_{d−1}(A)" → update
(pair_update), "bn σu_ℓ^(ν)" → output; a ticked σ adds ``relu``, a ticked bn ``bn`` (bn before σ, as in
the reference code).  Table 1's rows are the same options without bn (eq. 22: residual=update=relu;
eq. 23: output=relu; eq. 24: residual=relu; eq. 23+24: both).  The pair-step defaults of q_d (d ≥ 4)
are not from a table (the paper reports no q_d with d > 2).

q2's best row (94.89 %) was measured with the reference code, which applies BN+ReLU on u after
every step (its ``outside`` variant), hence ``output_at: step``; the paper's eq. 23 reads "once per
level", which ``output_at: level`` gives.  (The reference applies a bare σu — Table 3 rows without
the bn — once per level, its ``relu-outside`` variants: ``output: relu, output_at: level``.)  g polynomials take the g4 row for their ĝ steps (seed 000
§4: "for the ĝ-terms the placement follows the optimal configuration of g4").

Between levels (reference layout): u' = Π u, f' = R(ReLU(f − A u)) + A'(u') with Π, R grouped
stride-2 3×3 convs, groups = c_in (each input channel feeds c_out/c_in outputs), and no BN.  Widths 64/128/256/256 by default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, PositiveInt

from ..grids.spectrum import init_coefficients, level_spectrum
from .mgnet import MultilevelNet, SmoothingLevel, conv3x3, scale_widths, transfer_conv, zeros_like_grid
from .registry import ModelFamily, ModelOptions, register_family

Tensor = torch.Tensor
Placement = Literal["plain", "bn", "relu", "bn-relu"]


# --------------------------------------------------------------------------- name grammar


@dataclass(frozen=True)
class PolySpec:
    kinds: tuple[str, ...]

    @property
    def degree(self) -> int:
        return sum(1 if k == "q" else 2 for k in self.kinds)


_GRAMMAR = "poly-q<d> (d = 1, 2 or even), poly-g<d> (d = 2 or even) or poly-<steps> with steps from q, g, c"


def parse_poly_name(name: str) -> PolySpec:
    n = name.strip().lower()
    if not n.startswith("poly-"):
        raise ValueError(f"malformed Poly-MgNet name {name!r}; expected {_GRAMMAR}")
    body = n[len("poly-"):]
    m = re.fullmatch(r"([qg])(\d+)", body)
    if m:
        kind, d = m[1], int(m[2])
        if kind == "q":
            if d in (1, 2):
                return PolySpec(("q",) * d)
            if d >= 4 and d % 2 == 0:
                return PolySpec(("q", "q") + ("c",) * ((d - 2) // 2))
            raise ValueError(f"model {name!r}: q_d needs d = 1, 2 or an even d ≥ 4 (two real roots + conjugate pairs)")
        if d == 2:
            return PolySpec(("g",))
        if d >= 4 and d % 2 == 0:
            return PolySpec(("g", "g") + ("c",) * ((d - 4) // 2))
        raise ValueError(f"model {name!r}: g_d needs an even degree d ≥ 2")
    if re.fullmatch(r"[qgc]+", body):
        return PolySpec(tuple(body))
    raise ValueError(f"malformed Poly-MgNet name {name!r}; expected {_GRAMMAR}")


# --------------------------------------------------------------------------- options


class PolyOptions(ModelOptions):
    widths: list[PositiveInt] = Field(default_factory=lambda: [64, 128, 256, 256], min_length=1)
    width_scale: float = Field(1.0, gt=0, allow_inf_nan=False)  # Poly-MgNet Fig. 5 channel scaling
    pi: Literal["pi0", "pi1", "pi2"] = "pi2"  # Π0 = 0, Π1 full conv, Π2 channel-wise (reference)
    restriction: Literal["dense", "channelwise"] = "channelwise"
    coeff_init: Literal["spectral", "uniform-spectrum", "xavier"] = "spectral"
    # the spectrum of A for the spectral init and respectral/rescale: zero-padded (exact, dense) on
    # small grids under 'auto' (grid ≤ 8, C·n² ≤ 1024), periodic (Fourier symbols) elsewhere
    spectrum_boundary: Literal["auto", "periodic", "zeros"] = "auto"
    train_coeffs: bool = True
    residual: Placement | None = None
    update: Placement | None = None
    pair_residual: Placement | None = None
    pair_update: Placement | None = None
    output: Placement | None = None
    output_at: Literal["step", "level"] | None = None


def resolve_placements(kinds: tuple[str, ...], opts: PolyOptions) -> dict[str, str]:
    """The placements a model uses: the options given, the paper's best row for the rest.

    g polynomials pick their Table 3/4 row by degree, not by pair count: the reference code's g8 is
    ĝĝĝq̃ (``poly-gggc``, one pair), the paper's reading ĝĝq̃q̃ (``poly-g8``); both get the g8 row.
    """
    if "g" in kinds:
        degree = PolySpec(kinds).degree
        if "c" not in kinds:
            pair_update, output = "plain", "plain"  # g4 row (pair settings unused)
        elif degree <= 6:
            pair_update, output = "plain", "bn-relu"  # g6 row
        else:
            pair_update, output = "bn", "relu"  # g8 row
        best = dict(residual="bn-relu", update="bn-relu", pair_residual="bn-relu", pair_update=pair_update,
                    output=output, output_at="level")
    else:
        best = dict(residual="bn", update="plain", pair_residual="bn-relu", pair_update="plain",
                    output="bn-relu", output_at="step")
    return {k: (getattr(opts, k) if getattr(opts, k) is not None else v) for k, v in best.items()}


# --------------------------------------------------------------------------- modules


class BnRelu(nn.Module):
    """plain / bn / relu / bn-relu on a feature map (BN first, then ReLU)."""

    def __init__(self, placement: str, channels: int):
        super().__init__()
        self.placement = placement
        self.bn = nn.BatchNorm2d(channels) if "bn" in placement else None
        self.relu = "relu" in placement

    def forward(self, x: Tensor) -> Tensor:
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x

    def extra_repr(self) -> str:
        return self.placement


class PolyStep(nn.Module):
    """One polynomial smoothing step (kind q, g or c) with its learnable coefficient(s) ``coeff``.

    A is the level's shared conv, passed in (not registered here, so each tensor exists once).
    ``galerkin-data`` fits A and carries the coefficients as the start rule left them (``fit_carries``).
    """

    fit_carries = ("coeff",)

    def __init__(self, kind: str, channels: int, residual: str, update: str, output: str = "plain",
                 train_coeff: bool = True):
        super().__init__()
        if kind not in ("q", "g", "c"):
            raise ValueError(f"unknown step kind {kind!r}")
        self.kind = kind
        self.coeff = nn.Parameter(torch.zeros(2 if kind == "c" else 1), requires_grad=train_coeff)
        self.residual_norm = BnRelu(residual, channels)
        self.update_norm = BnRelu(update, channels)
        self.output_norm = BnRelu(output, channels)

    def forward(self, A: nn.Module, f: Tensor, u: Tensor | None) -> Tensor:
        r = f if u is None else f - A(u)
        r = self.residual_norm(r)
        if self.kind == "q":
            w = self.coeff[0] * r
        elif self.kind == "g":
            w = A(self.coeff[0] * r)
        else:
            w = self.coeff[0] * r - self.coeff[1] * A(r)  # (2a − A) r / |z|²
        w = self.update_norm(w)
        return self.output_norm(w if u is None else u + w)

    def extra_repr(self) -> str:
        return f"kind={self.kind}"


class PolyLevel(nn.Module):
    def __init__(self, kinds: tuple[str, ...], channels: int, place: dict[str, str], train_coeffs: bool):
        super().__init__()
        self.channels = channels
        self.kinds = list(kinds)
        self.A = conv3x3(channels, channels)
        per_step_output = place["output"] if place["output_at"] == "step" else "plain"
        self.steps = nn.ModuleList(
            PolyStep(k, channels,
                     place["pair_residual"] if k == "c" else place["residual"],
                     place["pair_update"] if k == "c" else place["update"],
                     per_step_output, train_coeffs)
            for k in kinds
        )
        self.output_norm = BnRelu(place["output"] if place["output_at"] == "level" else "plain", channels)

    def forward(self, f: Tensor, u: Tensor | None) -> Tensor:
        for step in self.steps:
            u = step(self.A, f, u)
        if u is None:
            u = zeros_like_grid(f, self.channels)
        return self.output_norm(u)


class PolyTransfer(nn.Module):
    """ℓ → ℓ+1 (reference layout): u' = Π u, f' = R(ReLU(f − A u)) + A'(u'); no BN."""

    def __init__(self, c: int, c_next: int, pi: str, restriction: str):
        super().__init__()
        self.Pi = None if pi == "pi0" else transfer_conv(c, c_next, "dense" if pi == "pi1" else "channelwise")
        self.R = transfer_conv(c, c_next, restriction)

    def forward(self, level: PolyLevel, next_level: PolyLevel, f: Tensor, u: Tensor) -> tuple[Tensor, Tensor | None]:
        f_next = self.R(F.relu(f - level.A(u)))
        if self.Pi is None:
            return f_next, None
        u_next = self.Pi(u)
        return f_next + next_level.A(u_next), u_next


class PolyMgNet(MultilevelNet):
    def __init__(self, spec: PolySpec, opts: PolyOptions, in_channels: int, num_classes: int, resolution: int):
        super().__init__()
        widths = scale_widths(list(opts.widths), opts.width_scale)
        self.spec = spec
        self.widths = widths
        self.placements = resolve_placements(spec.kinds, opts)
        self.stem = conv3x3(in_channels, widths[0])
        self.stem_bn = nn.BatchNorm2d(widths[0])
        self.levels = nn.ModuleList(PolyLevel(spec.kinds, c, self.placements, opts.train_coeffs) for c in widths)
        self.transfers = nn.ModuleList(
            PolyTransfer(widths[i], widths[i + 1], opts.pi, opts.restriction) for i in range(len(widths) - 1)
        )
        self.head = nn.Linear(widths[-1], num_classes)
        self.spectrum_boundary = opts.spectrum_boundary
        self.init_coefficients(opts.coeff_init, resolution)

    @torch.no_grad()
    def init_coefficients(self, method: str = "spectral", resolution: int | None = None) -> None:
        """(Re)initialise every level's coefficients from its current A (seed 000 Alg. 3 for ``spectral``).

        The spectrum of A is taken on the level's grid at ``resolution`` (the build resolution).
        """
        resolution = resolution or getattr(self, "resolution", None) or 32
        for info in self.smoothing_levels():
            eigs = None
            if method != "xavier":
                eigs = level_spectrum(info.A.weight, max(1, resolution // info.coarsening), self.spectrum_boundary)
            values = init_coefficients(info.kinds, eigs, method, channels=info.A.weight.shape[0])
            for p, v in zip(info.coeffs, values):
                p.copy_(v.to(p))

    def smoothing_levels(self) -> list[SmoothingLevel]:
        """Per level: (level, A, coefficient parameters, step kinds, coarsening) for the spectrum code."""
        return [SmoothingLevel(i + 1, lvl.A, [s.coeff for s in lvl.steps], list(lvl.kinds), 2 ** i)
                for i, lvl in enumerate(self.levels)]


def _build(name: str, opts: PolyOptions, in_channels: int, num_classes: int, resolution: int) -> nn.Module:
    return PolyMgNet(parse_poly_name(name), opts, in_channels, num_classes, resolution)


register_family(
    ModelFamily(
        family="poly",
        matches=lambda n: n.strip().lower().startswith("poly"),
        options=PolyOptions,
        build=_build,
        divisor=lambda name, o: 2 ** (len(o.widths) - 1),
        examples=("poly-q2", "poly-g4", "poly-g6", "poly-g8"),
        parse=parse_poly_name,
    )
)

"""MgNet (seed 001 Alg. 3, seed 002 Alg. 2; reference code XuTeam/MgNet_Code).

Name grammar (case-insensitive)::

    mgnet[ν1,…,νJ]-[widths]-Bl      one smoother B per level (B^ℓ)
    mgnet[ν1,…,νJ]-[widths]-Bli     one smoother per step (B^{ℓ,i})

``widths`` is one entry (used on every level) or J entries; an entry is ``c`` (c_u = c_f = c) or
``(c_u,c_f)``.  The ``-Bl``/``-Bli`` suffix may be left out (then ``Bl``).  Examples:
``mgnet[2,2,2,2]-[256]-Bl``, ``mgnet[2,2,2,2]-[64,128,256,512]-Bli``, ``mgnet[2,2]-[(64,128)]``.

Structure (J levels, total coarsening 2^(J−1))::

    f = ReLU(BN(conv3×3 x)),  u = 0
    level ℓ, step i:   u ← u + ReLU(BN(B(ReLU(BN(f − A u)))))         (A shared by the level)
    ℓ → ℓ+1:           u' = ReLU(BN(Π u)),  f' = ReLU(BN(R(f − A u))) + A'(u')
    head:              global average pool of u → linear

Π, R are 3×3 stride-2 convs, as in the reference code (seed 002's text says 1×1, but its 8.2M /
8.3M counts need 3×3: 1×1 would give 5.1M); Π0 = 0 (u' = 0, so f' = ReLU(BN(R(f − A u)))), Π1 a
full conv, Π2 channel-wise: a grouped conv with one trained stencil per channel (seed 001 eq. 6.24
"group convolution with channels as groups number"; the formula Π̄ ⊗ I read literally ties one
stencil across all channels — a special case of this one, and undefined when c_u changes between
levels, which the seed 000 baseline MgNet needs).  Options also give the multi-step (seed 001
eq. 6.8) and Chebyshev-semi (eq. 6.9) smoothers (see :class:`MgLevel`), a channel-wise R (the
transfer Poly-MgNet uses) and a width scaling factor.  BN weights and biases count as weights,
convs have no bias: this reproduces the reference code's 8,278,794 weights for
MgNet[2,2,2,2]-[256]-Bl on CIFAR-10 (10,638,090 with Bli).  Init: PyTorch defaults, as the
reference code (the papers name Kaiming's init).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from .registry import ModelFamily, ModelOptions, register_family

Tensor = torch.Tensor


# --------------------------------------------------------------------------- shared pieces


def conv3x3(c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, groups=groups, bias=False)


def transfer_conv(c_in: int, c_out: int, kind: Literal["dense", "channelwise"]) -> nn.Conv2d:
    """3×3 stride-2 conv between levels; ``channelwise`` groups the channels (one stencil per channel)."""
    groups = math.gcd(c_in, c_out) if kind == "channelwise" else 1
    return conv3x3(c_in, c_out, stride=2, groups=groups)


def scale_widths(widths: list[int], factor: float) -> list[int]:
    """Widths × factor (Poly-MgNet Fig. 5).  Integer ratios between widths are kept (64,128,256 ×1/√2 →
    45,90,180), so channel-wise transfer convs keep one group per input channel."""
    if factor == 1:
        return list(widths)
    base = min(widths)
    if all(c % base == 0 for c in widths):
        b = max(1, int(round(base * factor)))
        return [b * (c // base) for c in widths]
    return [max(1, int(round(c * factor))) for c in widths]


class SmoothingLevel(NamedTuple):
    """One level of an MgNet-type model, as the spectrum code needs it.

    ``coeffs``/``kinds``: the polynomial smoothing steps (Poly-MgNet; empty for MgNet), see
    :mod:`mres.grids.spectrum` for the kinds.  ``coarsening``: the level's grid is the input grid / coarsening.
    """

    level: int
    A: nn.Conv2d
    coeffs: list[nn.Parameter]
    kinds: list[str]
    coarsening: int


def zeros_like_grid(f: Tensor, channels: int) -> Tensor:
    return f.new_zeros(f.shape[0], channels, *f.shape[2:])


# --------------------------------------------------------------------------- name grammar


@dataclass(frozen=True)
class MgNetSpec:
    smoothings: tuple[int, ...]
    widths: tuple[tuple[int, int], ...]  # (c_u, c_f) per level
    b_per_step: bool


_MGNET_RE = re.compile(r"^mgnet\[(?P<nu>[^\]]*)\]-\[(?P<widths>[^\]]*)\](?:-(?P<b>[A-Za-z]+))?$", re.IGNORECASE)
_MGNET_GRAMMAR = ("mgnet[ν1,…,νJ]-[c]-Bl, mgnet[ν1,…,νJ]-[c1,…,cJ]-Bli or entries (c_u,c_f), "
                  "e.g. mgnet[2,2,2,2]-[256]-Bl")


def parse_int_list(text: str, what: str, name: str, minimum: int = 0) -> tuple[int, ...]:
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t.isdigit() for t in items):
        raise ValueError(f"model {name!r}: {what} must be a comma-separated list of integers, got [{text}]")
    vals = tuple(int(t) for t in items)
    if any(v < minimum for v in vals):
        raise ValueError(f"model {name!r}: {what} must be ≥ {minimum}, got [{text}]")
    return vals


def parse_widths(text: str, levels: int, name: str) -> tuple[tuple[int, int], ...]:
    """``256`` / ``64,128`` / ``(64,128),(128,256)`` → (c_u, c_f) per level (one entry = every level)."""
    compact = text.replace(" ", "")
    entries = re.findall(r"\(\d+,\d+\)|\d+", compact)
    if not entries or ",".join(entries) != compact:
        raise ValueError(f"model {name!r}: widths must be integers c or pairs (c_u,c_f), got [{text}]")
    widths = []
    for e in entries:
        if e.startswith("("):
            cu, cf = (int(v) for v in e[1:-1].split(","))
        else:
            cu = cf = int(e)
        if cu < 1 or cf < 1:
            raise ValueError(f"model {name!r}: widths must be positive, got [{text}]")
        widths.append((cu, cf))
    if len(widths) == 1:
        widths *= levels
    if len(widths) != levels:
        raise ValueError(f"model {name!r}: {len(widths)} widths for {levels} levels; give one width or one per level")
    return tuple(widths)


def parse_mgnet_name(name: str) -> MgNetSpec:
    m = _MGNET_RE.match(name.strip())
    if not m:
        raise ValueError(f"malformed MgNet name {name!r}; expected {_MGNET_GRAMMAR}")
    nu = parse_int_list(m["nu"], "smoothing counts", name)
    widths = parse_widths(m["widths"], len(nu), name)
    b = (m["b"] or "Bl").lower()
    if b not in ("bl", "bli"):
        raise ValueError(f"model {name!r}: smoother suffix must be Bl (one B per level) or Bli (one per step), got {m['b']!r}")
    return MgNetSpec(nu, widths, b == "bli")


# --------------------------------------------------------------------------- options


class MgNetOptions(ModelOptions):
    pi: Literal["pi0", "pi1", "pi2"] = "pi1"  # Π0 = 0, Π1 learned stride-2 conv, Π2 channel-wise (seed 001 §9.1)
    restriction: Literal["dense", "channelwise"] = "dense"  # R: full conv (reference) or grouped conv
    smoothing: Literal["plain", "multistep", "chebyshev-semi"] = "plain"  # seed 001 eqs 6.7 / 6.8 / 6.9
    width_scale: float = Field(1.0, gt=0, allow_inf_nan=False)  # every width × factor (Poly-MgNet Fig. 5)


# --------------------------------------------------------------------------- modules


class MgLevel(nn.Module):
    """Smoothing on one grid: A shared by all steps; B per level or per application; BN pair per application.

    An *application* is one σ∘BN∘B∘σ∘BN(f − A u^j) term.  Plain and Chebyshev-semi smoothing have one
    per step (ν); multi-step smoothing (seed 001 eq. 6.8) has one per pair (i, j), j < i — the paper's
    B_j^{ℓ,i} — so ν(ν+1)/2, application (i, j) at index i(i−1)/2 + j.  ``Bli`` gives every application
    its own conv (B^{ℓ,i}, resp. B_j^{ℓ,i}); ``Bl`` shares one conv B^ℓ.  BN pairs are never shared
    (reference code: one pair per MgIte even with a shared B).

    Coefficients (``coeffs``, one tensor per step i): multi-step → softmax logits of α_j^{ℓ,i}
    (α ≥ 0, Σ_j α_j = 1, the semi-iterative constraint of eq. 3.21), initialised with 0.9 on u^{i−1};
    Chebyshev-semi → ω^{ℓ,i} (eq. 6.9), initialised to 1 (= the plain step).  Both are learned: the
    paper fixes neither, and the classical Chebyshev ω's need a spectral bound of the learned B A.
    """

    def __init__(self, steps: int, c_u: int, c_f: int, b_per_step: bool, smoothing: str):
        super().__init__()
        self.steps = steps
        self.smoothing = smoothing
        self.A = conv3x3(c_u, c_f)
        n_app = steps * (steps + 1) // 2 if smoothing == "multistep" else steps
        n_b = n_app if b_per_step else min(n_app, 1)
        self.B = nn.ModuleList(conv3x3(c_f, c_u) for _ in range(n_b))
        self.bn_r = nn.ModuleList(nn.BatchNorm2d(c_f) for _ in range(n_app))
        self.bn_b = nn.ModuleList(nn.BatchNorm2d(c_u) for _ in range(n_app))
        self.c_u = c_u
        self.coeffs = nn.ParameterList()
        if smoothing == "multistep":
            for i in range(1, steps + 1):
                logits = torch.zeros(i)
                if i > 1:
                    logits[-1] = math.log(9.0 * (i - 1))  # softmax weight 0.9 on u^{i-1}
                self.coeffs.append(nn.Parameter(logits))
        elif smoothing == "chebyshev-semi":
            for _ in range(steps):
                self.coeffs.append(nn.Parameter(torch.ones(1)))

    def residual(self, f: Tensor, u: Tensor | None) -> Tensor:
        return f if u is None else f - self.A(u)

    def correction(self, k: int, r: Tensor) -> Tensor:
        """ReLU(BN(B(ReLU(BN(r))))) with the k-th application's smoother and norms (r = f − A u)."""
        b = self.B[k if len(self.B) > 1 else 0]
        return F.relu(self.bn_b[k](b(F.relu(self.bn_r[k](r)))))

    def step(self, k: int, f: Tensor, u: Tensor | None) -> Tensor:
        """u + B(f − A u), the residual-correction step every variant combines."""
        s = self.correction(k, self.residual(f, u))
        return s if u is None else u + s

    def forward(self, f: Tensor, u: Tensor | None) -> Tensor | None:
        if self.smoothing == "plain":  # eq. 6.7 / seed 002 eq. 3.5
            for i in range(self.steps):
                u = self.step(i, f, u)
            return u
        if self.smoothing == "chebyshev-semi":
            # eq. 6.9: u^i = ω^i (u^{i-1} + B^i(f − A u^{i-1})) + (1 − ω^i) u^{i-2}, with u^{-1} := u^0
            # (so u^1 = u^0 + ω^1 B^1(f − A u^0), the classical start); None stands for a zero state
            prev = u
            for i in range(self.steps):
                w = self.coeffs[i]
                new = w * self.step(i, f, u)
                if prev is not None:
                    new = new + (1 - w) * prev
                prev, u = u, new
            return u
        # multi-step, eq. 6.8: u^i = Σ_{j<i} α_j^i (u^j + B_j^i(f − A u^j)); r^j = f − A u^j computed once
        states: list[Tensor | None] = [u]
        residuals = [self.residual(f, u)]
        for i in range(1, self.steps + 1):
            alpha = torch.softmax(self.coeffs[i - 1], dim=0)
            new: Tensor | None = None
            for j, (uj, rj) in enumerate(zip(states, residuals)):
                s = self.correction(i * (i - 1) // 2 + j, rj)
                term = alpha[j] * (s if uj is None else uj + s)
                new = term if new is None else new + term
            states.append(new)
            if i < self.steps:
                residuals.append(self.residual(f, new))
        return states[-1]


class MgTransfer(nn.Module):
    """ℓ → ℓ+1: u' = ReLU(BN(Π u)) (or 0 for Π0), f' = ReLU(BN(R(f − A u))) + A'(u')."""

    def __init__(self, cu: int, cf: int, cu_next: int, cf_next: int, pi: str, restriction: str):
        super().__init__()
        self.pi_kind = pi
        if pi == "pi0":
            self.Pi = None
            self.bn_pi = None
        else:
            self.Pi = transfer_conv(cu, cu_next, "dense" if pi == "pi1" else "channelwise")
            self.bn_pi = nn.BatchNorm2d(cu_next)
        self.R = transfer_conv(cf, cf_next, restriction)
        self.bn_R = nn.BatchNorm2d(cf_next)

    def forward(self, level: MgLevel, next_level: MgLevel, f: Tensor, u: Tensor | None) -> tuple[Tensor, Tensor | None]:
        f_next = F.relu(self.bn_R(self.R(level.residual(f, u))))  # the level's own A (eq. 6.6)
        if self.Pi is None:
            return f_next, None
        if u is None:
            u = zeros_like_grid(f, level.c_u)
        u_next = F.relu(self.bn_pi(self.Pi(u)))
        return f_next + next_level.A(u_next), u_next


class MultilevelNet(nn.Module):
    """forward and stages of the multilevel nets (MgNet, Poly-MgNet).

    Subclasses hold ``stem``, ``stem_bn``, ``levels`` (``level(f, u)`` smooths), ``transfers``
    (``transfer(level, next_level, f, u)`` → next f, u) and ``head``.
    """

    def _run(self, x: Tensor, record: list | None) -> Tensor:
        """The last level's u; with ``record``, appends (name, map) of f and u per level."""
        f = F.relu(self.stem_bn(self.stem(x)))
        u: Tensor | None = None
        for idx, level in enumerate(self.levels):
            if idx > 0:
                f, u = self.transfers[idx - 1](self.levels[idx - 1], level, f, u)
            u = level(f, u)
            if u is None:  # no smoothing steps and Π0: the features are zero
                u = zeros_like_grid(f, level.c_u)
            if record is not None:
                record.append((f"level{idx + 1}.f", f))
                record.append((f"level{idx + 1}.u", u))
        return u  # type: ignore[return-value]


    def forward(self, x: Tensor) -> Tensor:
        u = self._run(x, None)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(u, 1), 1))

    def stages(self, x: Tensor) -> list[tuple[str, Tensor]]:
        """Feature maps per level: the data f^ℓ and the smoothed features u^ℓ."""
        out: list[tuple[str, Tensor]] = []
        self._run(x, out)
        return out


class MgNet(MultilevelNet):
    def __init__(self, spec: MgNetSpec, opts: MgNetOptions, in_channels: int, num_classes: int):
        super().__init__()
        flat = scale_widths([c for pair in spec.widths for c in pair], opts.width_scale)
        widths = [(flat[2 * i], flat[2 * i + 1]) for i in range(len(spec.widths))]
        self.spec = spec
        self.widths = widths
        self.stem = conv3x3(in_channels, widths[0][1])
        self.stem_bn = nn.BatchNorm2d(widths[0][1])
        self.levels = nn.ModuleList(
            MgLevel(nu, cu, cf, spec.b_per_step, opts.smoothing) for nu, (cu, cf) in zip(spec.smoothings, widths)
        )
        self.transfers = nn.ModuleList(
            MgTransfer(*widths[i], *widths[i + 1], opts.pi, opts.restriction) for i in range(len(widths) - 1)
        )
        self.head = nn.Linear(widths[-1][0], num_classes)

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.levels) - 1)

    def smoothing_levels(self) -> list[SmoothingLevel]:
        return [SmoothingLevel(i + 1, lvl.A, [], [], 2 ** i) for i, lvl in enumerate(self.levels)]


def _build(name: str, opts: MgNetOptions, in_channels: int, num_classes: int, resolution: int) -> nn.Module:
    return MgNet(parse_mgnet_name(name), opts, in_channels, num_classes)


def _divisor(name: str, opts: MgNetOptions) -> int:
    return 2 ** (len(parse_mgnet_name(name).smoothings) - 1)


register_family(
    ModelFamily(
        family="mgnet",
        matches=lambda n: n.strip().lower().startswith("mgnet"),
        options=MgNetOptions,
        build=_build,
        divisor=_divisor,
        examples=("mgnet[2,2,2,2]-[256]-Bl", "mgnet[2,2,2,2]-[64,128,256,512]-Bli"),
        parse=parse_mgnet_name,
    )
)

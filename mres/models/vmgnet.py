"""V-MgNet (seed 001 Alg. 4): MgNet's down sweep, then an up sweep back to the finest level.

Name grammar (case-insensitive)::

    vmgnet[ν1,…,νJ]-[ν'1,…,ν'(J−1)]-[widths]-Bl|Bli

``ν`` are the pre-smoothing counts of MgNet (Alg. 3), ``ν'`` the post-smoothing counts of the levels
J−1 … 1 the up sweep visits (level J is not smoothed again), widths and ``Bl``/``Bli`` as for MgNet.

Structure (the down sweep is :class:`~mres.models.mgnet.MgNet`'s, keeping per level ū^{ℓ,0} — the
u that enters the level after Π, zero on level 1 — ū^ℓ after its smoothing, and f^ℓ)::

    u^J = ū^J
    for ℓ = J−1 … 1:
        u^{ℓ,0} = ū^ℓ + P_ℓ(u^{ℓ+1} − ū^{ℓ+1,0})              (6.15)  P_ℓ: stride-2 transposed conv
        u^{ℓ,i} = u^{ℓ,i−1} + B'_{ℓ,i}(f^ℓ − A^ℓ u^{ℓ,i−1})     (6.16)  i = 1 … ν'_ℓ, A^ℓ the down sweep's
    head: global average pool of u^1 → linear

B' is applied as MgNet's B is (ReLU(BN(B'(ReLU(BN(r)))))), per level (``Bl``) or per step (``Bli``).
P_ℓ's kernel follows the prolongation of ``prolongation_family`` (average-bilinear: 4×4, padding 1;
average-constant: 2×2; fullweighting-linear: 3×3 with output padding 1) and is learned; with
``prolongation_init: stencil`` it starts as that prolongation on the first min(c_ℓ, c_ℓ+1) channels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..grids.operators import get_family
from .mgnet import MgNet, MgNetOptions, MgNetSpec, conv3x3, parse_int_list, parse_widths, zeros_like_grid
from .registry import ModelFamily, register_family

Tensor = torch.Tensor

_VMGNET_RE = re.compile(r"^vmgnet\[(?P<nu>[^\]]*)\]-\[(?P<post>[^\]]*)\]-\[(?P<widths>[^\]]*)\](?:-(?P<b>[A-Za-z]+))?$",
                        re.IGNORECASE)
_GRAMMAR = "vmgnet[ν1,…,νJ]-[ν'1,…,ν'(J−1)]-[widths]-Bl|Bli, e.g. vmgnet[2,2,2,2]-[1,1,1]-[64,128,256,512]-Bl"


@dataclass(frozen=True)
class VMgNetSpec:
    down: MgNetSpec
    post: tuple[int, ...]  # ν'_ℓ for ℓ = 1 … J−1


def parse_vmgnet_name(name: str) -> VMgNetSpec:
    m = _VMGNET_RE.match(name.strip())
    if not m:
        raise ValueError(f"malformed V-MgNet name {name!r}; expected {_GRAMMAR}")
    nu = parse_int_list(m["nu"], "smoothing counts", name)
    if len(nu) < 2:
        raise ValueError(f"model {name!r}: V-MgNet needs at least 2 levels, got [{m['nu']}]")
    post = parse_int_list(m["post"], "post-smoothing counts", name)
    if len(post) != len(nu) - 1:
        raise ValueError(f"model {name!r}: {len(post)} post-smoothing counts for {len(nu)} levels; give one per "
                         f"level the up sweep visits ({len(nu) - 1}: levels 1 … {len(nu) - 1})")
    b = (m["b"] or "Bl").lower()
    if b not in ("bl", "bli"):
        raise ValueError(f"model {name!r}: smoother suffix must be Bl or Bli, got {m['b']!r}")
    return VMgNetSpec(MgNetSpec(nu, parse_widths(m["widths"], len(nu), name), b == "bli"), post)


class VMgNetOptions(MgNetOptions):
    prolongation_family: Literal["average-constant", "average-bilinear", "fullweighting-linear"] = "average-bilinear"
    prolongation_init: Literal["stencil", "default"] = "stencil"


def prolongation_layout(family: str) -> tuple[int, int, int, list[float]]:
    """(kernel, padding, output_padding, 1-D weights) of the stride-2 transposed conv that is the
    family's prolongation: (P y)_{2I+β} = p_β y_I ⇔ weight[t] = p_{t − padding}, output = 2 × input."""
    fam = get_family(family)
    lo, hi = min(fam.p_offsets), max(fam.p_offsets)
    k, pad = hi - lo + 1, -lo
    weights = [0.0] * k
    for b, p in zip(fam.p_offsets, fam.p_weights):
        weights[b - lo] = p
    return k, pad, 2 - k + 2 * pad, weights


class PostSmoother(nn.Module):
    """ν' steps u ← u + ReLU(BN(B'(ReLU(BN(f − A u))))) with the level's A passed in."""

    def __init__(self, steps: int, c_u: int, c_f: int, b_per_step: bool):
        super().__init__()
        self.steps = steps
        self.B = nn.ModuleList(conv3x3(c_f, c_u) for _ in range(steps if b_per_step else min(steps, 1)))
        self.bn_r = nn.ModuleList(nn.BatchNorm2d(c_f) for _ in range(steps))
        self.bn_b = nn.ModuleList(nn.BatchNorm2d(c_u) for _ in range(steps))

    def forward(self, A: nn.Module, f: Tensor, u: Tensor) -> Tensor:
        for i in range(self.steps):
            b = self.B[i if len(self.B) > 1 else 0]
            u = u + F.relu(self.bn_b[i](b(F.relu(self.bn_r[i](f - A(u))))))
        return u


class VMgNet(MgNet):
    def __init__(self, spec: VMgNetSpec, opts: VMgNetOptions, in_channels: int, num_classes: int):
        super().__init__(spec.down, opts, in_channels, num_classes)
        self.vspec = spec
        k, pad, out_pad, stencil = prolongation_layout(opts.prolongation_family)
        w = self.widths  # (c_u, c_f) per level
        self.prolongations = nn.ModuleList(
            nn.ConvTranspose2d(w[i + 1][0], w[i][0], k, stride=2, padding=pad, output_padding=out_pad, bias=False)
            for i in range(len(w) - 1))
        if opts.prolongation_init == "stencil":
            s1 = torch.tensor(stencil)
            with torch.no_grad():
                for p in self.prolongations:
                    p.weight.zero_()
                    for c in range(min(p.weight.shape[0], p.weight.shape[1])):
                        p.weight[c, c] = torch.outer(s1, s1)
        self.post = nn.ModuleList(PostSmoother(nu, *w[i], spec.down.b_per_step) for i, nu in enumerate(spec.post))
        self.head = nn.Linear(w[0][0], num_classes)

    def _run(self, x: Tensor, record: list | None) -> Tensor:
        """u^1 after the up sweep; with ``record``: f and ū per level (down), then u per level (up)."""
        f = F.relu(self.stem_bn(self.stem(x)))
        u: Tensor | None = None
        fs, u0s, us = [], [], []
        for idx, level in enumerate(self.levels):  # the down sweep (Alg. 3), keeping ū^{ℓ,0}, ū^ℓ, f^ℓ
            if idx > 0:
                f, u = self.transfers[idx - 1](self.levels[idx - 1], level, f, u)
            u0s.append(zeros_like_grid(f, level.c_u) if u is None else u)
            u = level(f, u)
            if u is None:
                u = zeros_like_grid(f, level.c_u)
            fs.append(f)
            us.append(u)
            if record is not None:
                record += [(f"level{idx + 1}.f", f), (f"level{idx + 1}.u_down", u)]
        for idx in range(len(self.levels) - 2, -1, -1):  # the up sweep (Alg. 4, lines 2-8)
            u = us[idx] + self.prolongations[idx](u - u0s[idx + 1])
            u = self.post[idx](self.levels[idx].A, fs[idx], u)
            if record is not None:
                record.append((f"level{idx + 1}.u_up", u))
        return u  # type: ignore[return-value]


def _build(name: str, opts: VMgNetOptions, in_channels: int, num_classes: int, resolution: int) -> nn.Module:
    return VMgNet(parse_vmgnet_name(name), opts, in_channels, num_classes)


register_family(
    ModelFamily(
        family="vmgnet",
        matches=lambda n: n.strip().lower().startswith("vmgnet"),
        options=VMgNetOptions,
        build=_build,
        divisor=lambda name, o: 2 ** (len(parse_vmgnet_name(name).down.smoothings) - 1),
        examples=("vmgnet[2,2,2,2]-[1,1,1]-[256]-Bl", "vmgnet[2,2]-[2]-[64,128]-Bli"),
        parse=parse_vmgnet_name,
    )
)

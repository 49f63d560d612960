"""CIFAR ResNets: the papers' baseline, its pre-activation form and the shared-A variants of seed 002.

Name grammar (case-insensitive)::

    [preact-]resnet18 | resnet34                      blocks [2,2,2,2] / [3,4,6,3], widths 64,128,256,512
    [preact-]resnet[ν1,…,νJ]-[c1,…,cJ]                 ν blocks and c channels per stage (one c = every stage)
    … -Al-Bli                                         ResNet-A^ℓ-B^{ℓ,i} (seed 002 eqs 4.6/4.7): the second
                                                      conv A of every block of a stage is one shared tensor
    … -Ali-Bli                                        the unmodified net, spelled out

Examples: ``resnet18`` (11,173,962 weights on CIFAR-10), ``preact-resnet18-Al-Bli``,
``resnet[1,1]-[16,32]``.  CIFAR variant: 3×3 stem conv, no max pool, stride-2 first conv and 1×1
projection shortcut where a stage changes grid or width, global average pool + linear head.
Block with B = first conv, A = second conv::

    ResNet:          r ← ReLU(S r + BN(A ReLU(BN(B r))))
    pre-act ResNet:  r ← S' r + A ReLU(BN(B ReLU(BN r)))          (S, S' identity or 1×1 conv+BN / 1×1 conv)

-Al-Bli shares A within a stage including the transition block's A^{ℓ,0} (only B^{ℓ,0} cannot be
shared, it changes the width): that is what seed 002 Table 3's counts need — resnet18-Al-Bli
8,040,522 (printed 8.0M / 8.1M), resnet34-Al-Bli 13,098,314 (13M); sharing from block 2 on would
leave ResNet-18 at 11.1M.  BN after a shared A stays per block.

Pre-activation details follow the PyTorch CIFAR sample code seed 002 says it used: the stem is a
bare conv, the 1×1 stride-2 projection R reads the pre-activated input σ(BN r), no BN-ReLU before
the pool (Alg. 1 ends with R_ave(r)).  Seed 002's BN-free formulas write f_in = σ∘θ^0 and R *_2 r
(raw r); with BN-ReLU at the start of every block the two readings differ only in what the
shortcut carries.

``width_scale`` multiplies every width (Poly-MgNet Fig. 5 channel scaling), keeping integer ratios.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from .mgnet import conv3x3, parse_int_list, scale_widths
from .registry import ModelFamily, ModelOptions, register_family

Tensor = torch.Tensor

_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
_RE = re.compile(
    r"^(?P<pre>preact-)?resnet(?:(?P<depth>\d+)|\[(?P<nu>[^\]]*)\]-\[(?P<w>[^\]]*)\])"
    r"(?:-(?P<a>a[a-z]*)-(?P<b>b[a-z]*))?$",
    re.IGNORECASE,
)
_GRAMMAR = "[preact-]resnet18|resnet34|resnet[ν1,…,νJ]-[c1,…,cJ], optionally with -Al-Bli (shared A per stage)"


@dataclass(frozen=True)
class ResNetSpec:
    blocks: tuple[int, ...]
    widths: tuple[int, ...]
    preact: bool
    shared_a: bool


def parse_resnet_name(name: str) -> ResNetSpec:
    m = _RE.match(name.strip())
    if not m:
        raise ValueError(f"malformed ResNet name {name!r}; expected {_GRAMMAR}")
    if m["depth"] is not None:
        depth = int(m["depth"])
        if depth not in _DEPTHS:
            raise ValueError(f"model {name!r}: depth must be one of {', '.join(map(str, _DEPTHS))} "
                             "(or give blocks and widths: resnet[2,2]-[64,128])")
        blocks, widths = _DEPTHS[depth], (64, 128, 256, 512)
    else:
        blocks = parse_int_list(m["nu"], "blocks per stage", name, minimum=1)
        widths = parse_int_list(m["w"], "widths", name, minimum=1)
        if len(widths) == 1:
            widths = widths * len(blocks)
        if len(widths) != len(blocks):
            raise ValueError(f"model {name!r}: {len(widths)} widths for {len(blocks)} stages")
    shared_a = False
    if m["a"] is not None:
        a, b = m["a"].lower(), m["b"].lower()
        if a not in ("al", "ali") or b != "bli":
            raise ValueError(f"model {name!r}: the sharing suffix must be -Al-Bli (shared A) or -Ali-Bli (none), "
                             f"got -{m['a']}-{m['b']}")
        shared_a = a == "al"
    return ResNetSpec(tuple(blocks), tuple(widths), m["pre"] is not None, shared_a)


class ResNetOptions(ModelOptions):
    width_scale: float = Field(1.0, gt=0, allow_inf_nan=False)


class ResBlock(nn.Module):
    """One basic block; its second conv A lives in the stage (shared or not), passed in."""

    def __init__(self, c_in: int, c_out: int, stride: int, preact: bool):
        super().__init__()
        self.preact = preact
        self.B = conv3x3(c_in, c_out, stride=stride)
        self.bn1 = nn.BatchNorm2d(c_in if preact else c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            proj = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
            self.shortcut = proj if preact else nn.Sequential(proj, nn.BatchNorm2d(c_out))

    def forward(self, A: nn.Module, x: Tensor) -> Tensor:
        if self.preact:
            out = F.relu(self.bn1(x))
            sc = x if self.shortcut is None else self.shortcut(out)
            out = self.B(out)
            return A(F.relu(self.bn2(out))) + sc
        out = F.relu(self.bn1(self.B(x)))
        out = self.bn2(A(out))
        sc = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + sc)


class ResStage(nn.Module):
    def __init__(self, n_blocks: int, c_in: int, c_out: int, stride: int, preact: bool, shared_a: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, preact) for i in range(n_blocks)
        )
        self.A = nn.ModuleList(conv3x3(c_out, c_out) for _ in range(1 if shared_a else n_blocks))

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = block(self.A[0 if len(self.A) == 1 else i], x)
        return x


class ResNet(nn.Module):
    def __init__(self, spec: ResNetSpec, opts: ResNetOptions, in_channels: int, num_classes: int):
        super().__init__()
        widths = scale_widths(list(spec.widths), opts.width_scale)
        self.spec = spec
        self.widths = widths
        self.stem = conv3x3(in_channels, widths[0])
        self.stem_bn = None if spec.preact else nn.BatchNorm2d(widths[0])
        self.stages_ = nn.ModuleList(
            ResStage(n, widths[max(i - 1, 0)], widths[i], 1 if i == 0 else 2, spec.preact, spec.shared_a)
            for i, n in enumerate(spec.blocks)
        )
        self.head = nn.Linear(widths[-1], num_classes)

    def _stem(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        return x if self.stem_bn is None else F.relu(self.stem_bn(x))

    def forward(self, x: Tensor) -> Tensor:
        x = self._stem(x)
        for stage in self.stages_:
            x = stage(x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def stages(self, x: Tensor) -> list[tuple[str, Tensor]]:
        """Feature maps after the stem and after every stage."""
        x = self._stem(x)
        out = [("stem", x)]
        for i, stage in enumerate(self.stages_):
            x = stage(x)
            out.append((f"stage{i + 1}", x))
        return out


def _build(name: str, opts: ResNetOptions, in_channels: int, num_classes: int, resolution: int) -> nn.Module:
    return ResNet(parse_resnet_name(name), opts, in_channels, num_classes)


register_family(
    ModelFamily(
        family="resnet",
        matches=lambda n: bool(re.match(r"^(preact-)?resnet", n.strip(), re.IGNORECASE)),
        options=ResNetOptions,
        build=_build,
        divisor=lambda name, o: 2 ** (len(parse_resnet_name(name).blocks) - 1),
        examples=("resnet18", "preact-resnet18", "resnet18-Al-Bli"),
        parse=parse_resnet_name,
    )
)

"""Poly-MgNet against seed 000 and the authors' code (vanbetteray/Poly-MgNet), written independently.

* the forward pass of the default rows, re-implemented from the reference code's formulas
  (smoothingstepvariants.py, mgnet_poly*.py) with plain functional ops;
* the ReLU/BN rows of Tables 3 and 4: the best row of each table is the default, every row builds
  with the BN count the row asks for;
* the reference build's weight inventory, tensor group by tensor group, against ours.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mres.models import build_model

Tensor = torch.Tensor
WIDTHS = [4, 8, 8]


def build(name: str, **opts) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, {"widths": WIDTHS, "coeff_init": "xavier", **opts}, 3, 10, 16)


# --------------------------------------------------------------------------- reference forward


def bn(x: Tensor, m: nn.BatchNorm2d) -> Tensor:
    return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


def conv(x: Tensor, w: Tensor, stride: int = 1, groups: int = 1) -> Tensor:
    return F.conv2d(x, w, stride=stride, padding=1, groups=groups)


def randomise_norms(model: nn.Module) -> None:
    """BN away from the identity, so that a BN in the wrong place shows."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.3)


def set_pairs(model: nn.Module, z: complex) -> None:
    """Every pair step gets the roots z, z̄ (b ≠ 0): coefficients 2a/|z|², 1/|z|² (seed 000 Alg. 2 l. 10)."""
    m = abs(z) ** 2
    with torch.no_grad():
        for lvl in model.levels:
            for s in lvl.steps:
                if s.kind == "c":
                    s.coeff.copy_(torch.tensor([2 * z.real / m, 1 / m]))


def reference_forward(model: nn.Module, x: Tensor, row: str, z: complex | None) -> Tensor:
    """The reference code's forward for one configuration, from its formulas; BN in eval mode.

    row: ``q2`` (linear_type outside, residual bn_only), ``g`` (linear_type double, residual regular)
    followed by the pair step of quad_type ``outside`` (g6) or ``relu-outside`` (g8).
    """
    out = F.relu(bn(conv(x, model.stem.weight), model.stem_bn))
    f, u, prev = out, torch.zeros(x.shape[0], WIDTHS[0], *x.shape[2:], dtype=x.dtype), None
    for idx, lvl in enumerate(model.levels):
        A = lvl.A.weight
        if idx > 0:  # mgnet_poly.py forward: u = convI(u); f = convR(f) + A(u), groups = in_channels
            t = model.transfers[idx - 1]
            u = conv(u, t.Pi.weight, 2, WIDTHS[idx - 1])
            f = conv(f, t.R.weight, 2, WIDTHS[idx - 1]) + conv(u, A)
        for s in lvl.steps:
            r = f - conv(u, A)
            if s.kind == "q":  # LinearPolyStep_bnrelu_outside, then σ(bn2(u)) after every step
                u = F.relu(bn(u + s.coeff[0] * bn(r, s.residual_norm.bn), s.output_norm.bn))
            elif s.kind == "g":  # LinearPolyStep, regular='' : u0 + σ(bn2(A(α σ(bn1(r)))))
                r = F.relu(bn(r, s.residual_norm.bn))
                u = u + F.relu(bn(conv(s.coeff[0] * r, A), s.update_norm.bn))
            else:  # QuadraticPolyStep_outside / _relu_outside with a true b
                r = F.relu(bn(r, s.residual_norm.bn))
                a, b = z.real, z.imag
                w = (2 * a) / (a**2 + b**2) * r - 1 / (a**2 + b**2) * conv(r, A)
                u = u + (bn(w, s.update_norm.bn) if row == "g8" else w)
        if row == "g6":
            u = F.relu(bn(u, lvl.output_norm.bn))
        elif row == "g8":
            u = F.relu(u)
        f = F.relu(f - conv(u, A))
    return model.head(torch.flatten(F.adaptive_avg_pool2d(u, 1), 1))


@pytest.mark.parametrize("name,row", [
    ("poly-q2", "q2"), ("poly-g4", "g4"), ("poly-g6", "g6"), ("poly-g8", "g8"), ("poly-gggc", "g8"),
])
def test_default_rows_are_the_reference_blocks(name, row):
    model = build(name).double().eval()
    randomise_norms(model)
    z = complex(0.7, 0.45)
    set_pairs(model, z)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        ours, ref = model(x), reference_forward(model, x, row, z)
    assert ours.abs().max() > 1e-3
    assert torch.allclose(ours, ref, atol=1e-10), (ours - ref).abs().max()


def test_reference_forward_tells_rows_apart():
    """The check above can fail: another placement gives another output."""
    model = build("poly-g6", pair_update="bn").double().eval()
    randomise_norms(model)
    set_pairs(model, complex(0.7, 0.45))
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert not torch.allclose(model(x), reference_forward(model, x, "g6", complex(0.7, 0.45)), atol=1e-4)


# --------------------------------------------------------------------------- Tables 3 and 4

# ticked columns: bn_u σ_u | bn_p σ_p | bn_r σ_r (seed 000 Tables 3, 4); test accuracy
TABLE_ROWS = {
    "poly-q2": [({"bn_u", "relu_u"}, 65.27), ({"bn_p", "relu_p", "bn_r", "relu_r"}, 93.04),
                ({"bn_u", "relu_u", "bn_r", "relu_r"}, 94.38), ({"bn_u", "relu_u", "bn_r"}, 94.89),
                ({"relu_u", "bn_p", "bn_r"}, 94.71)],
    "poly-g4": [({"bn_u", "relu_u"}, 94.65), ({"bn_p", "relu_p", "bn_r", "relu_r"}, 95.28),
                ({"bn_u", "relu_u", "bn_r", "relu_r"}, 95.02), ({"relu_u", "bn_p", "bn_r", "relu_r"}, 95.04),
                ({"relu_u", "bn_p", "bn_r"}, 95.00)],
    # Table 4: the columns are the pair step's; the ĝ steps keep g4's best row
    "poly-g6": [({"bn_p", "relu_p", "bn_r", "relu_r"}, 95.25), ({"bn_u", "relu_u", "bn_r", "relu_r"}, 95.55),
                ({"relu_u", "bn_p", "bn_r", "relu_r"}, 95.23)],
    "poly-g8": [({"relu_u", "bn_p", "bn_r", "relu_r"}, 95.33), ({"bn_u", "relu_u", "bn_r"}, 95.00)],
}


def placement(ticks: set[str], col: str) -> str:
    b, r = f"bn_{col}" in ticks, f"relu_{col}" in ticks
    return {(False, False): "plain", (True, False): "bn", (False, True): "relu", (True, True): "bn-relu"}[(b, r)]


def row_options(name: str, ticks: set[str]) -> dict[str, str]:
    pair = name in ("poly-g6", "poly-g8")
    return {
        "pair_residual" if pair else "residual": placement(ticks, "r"),
        "pair_update" if pair else "update": placement(ticks, "p"),
        "output": placement(ticks, "u"),
    }


@pytest.mark.parametrize("name", list(TABLE_ROWS))
def test_defaults_are_the_best_table_rows(name):
    ticks, _ = max(TABLE_ROWS[name], key=lambda row: row[1])
    placements = build(name).placements
    for key, value in row_options(name, ticks).items():
        assert placements[key] == value, key
    if name != "poly-q2":  # ĝ steps: g4's best row; σu once per level
        assert (placements["residual"], placements["update"], placements["output_at"]) == ("bn-relu", "bn-relu", "level")


@pytest.mark.parametrize("name", list(TABLE_ROWS))
def test_every_table_row_builds_with_its_batch_norms(name):
    for ticks, _ in TABLE_ROWS[name]:
        model = build(name, **row_options(name, ticks))
        per_level = sum(isinstance(m, nn.BatchNorm2d) for m in model.levels[0].modules())
        step_bns = ("bn_r" in ticks) + ("bn_p" in ticks)
        u_bn = "bn_u" in ticks
        expect = {"poly-q2": 2 * (step_bns + u_bn),  # σ(bn(u)) after every step (reference 'outside')
                  "poly-g4": 2 * step_bns + u_bn,
                  "poly-g6": 2 * 2 + step_bns + u_bn,
                  "poly-g8": 2 * 2 + 2 * step_bns + u_bn}[name]
        assert per_level == expect, (ticks, per_level)


# --------------------------------------------------------------------------- weight inventory


def reference_inventory(steps: int) -> dict[str, int]:
    """vanbetteray/Poly-MgNet on CIFAR-10 (configs-poly.json), tensor group by tensor group.

    in_channels [64, 64, 128, 256], out_channels [64, 128, 256, 256]; every block builds convR and
    convI (3×3, stride 2, groups = in_channels) — block 1 too, where forward never calls them —
    2 BatchNorm2d per smoothing step (make_batchnorms) and one coefficient per step (pair steps too).
    """
    cin, cout = [64, 64, 128, 256], [64, 128, 256, 256]
    inv = {"stem": 3 * 64 * 9 + 2 * 64, "head": 256 * 10 + 10, "A": 0, "bn": 0, "coeff": 0,
           "transfer_level1": 0, "transfer": 0}
    for i, (ci, co) in enumerate(zip(cin, cout)):
        inv["A"] += co * co * 9
        inv["bn"] += steps * 2 * 2 * co
        inv["coeff"] += steps
        inv["transfer_level1" if i == 0 else "transfer"] += 2 * co * (ci // ci) * 9
    return inv


def our_inventory(model: nn.Module) -> dict[str, int]:
    inv = {"stem": 0, "head": 0, "A": 0, "bn": 0, "coeff": 0, "transfer": 0}
    for name, p in model.named_parameters():
        key = ("stem" if name.startswith("stem") else "head" if name.startswith("head") else
               "transfer" if name.startswith("transfers") else "coeff" if name.endswith("coeff") else
               "A" if name.endswith("A.weight") else "bn")
        inv[key] += p.numel()
    return inv


@pytest.mark.parametrize("name,steps,ref_total,pairs", [
    ("poly-q2", 2, 1_386_706, 0), ("poly-g4", 2, 1_386_706, 0), ("poly-g6", 3, 1_389_526, 1),
    ("poly-g8", 4, 1_392_346, 2), ("poly-gggc", 4, 1_392_346, 1),
])
def test_weight_difference_to_the_reference_is_the_unused_transfer_and_pair_coefficients(name, steps, ref_total, pairs):
    ref = reference_inventory(steps)
    assert sum(ref.values()) == ref_total
    assert ref["transfer_level1"] == 1_152  # convR + convI of block 1: 2 × 64 × 1 × 3 × 3
    torch.manual_seed(0)
    model = build_model(name, {"coeff_init": "xavier"}, 3, 10, 32)
    ours = our_inventory(model)
    for key in ("stem", "head", "A", "bn", "transfer"):
        assert ours[key] == ref[key], key
    assert ours["coeff"] == ref["coeff"] + 4 * pairs  # a pair step learns a and b, the reference's only a
    assert sum(ours.values()) == ref_total - 1_152 + 4 * pairs
    # one 3×3 stencil per output channel, reading one input channel (groups = c_in)
    for t, c_in in zip(model.transfers, [64, 128, 256]):
        assert t.R.groups == t.Pi.groups == c_in and t.R.stride == t.Pi.stride == (2, 2)

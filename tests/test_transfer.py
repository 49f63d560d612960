"""Whole-model transfer between grids: per-layer rules, the head factor, diagnostics, BN."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mres.grids.operators import prolongate_images, prolongate_stencils, restrict_images, restrict_stencils
from mres.models import build_model
from mres.grids.transfer import STRATEGIES, LayerDiag, function_preservation, recalibrate_bn, transfer_weights


def thesis_cnn(resolution: int, seed: int = 0, **options) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn", {"pool": False, **options}, 1, 10, resolution)


def smooth_images(channels: int, side: int, seed: int = 0) -> torch.Tensor:
    """Low-frequency sinusoids on a cell-centred [0, 1]² grid, (channels, side, side)."""
    gen = torch.Generator().manual_seed(seed)
    t = (torch.arange(side, dtype=torch.float64) + 0.5) / side
    y, x = t[:, None], t[None, :]
    a, b, phase = torch.rand(3, channels, 1, 1, generator=gen, dtype=torch.float64)
    return torch.cos(2 * math.pi * (a * x + b * y) + 6 * phase) + 0.5 * torch.sin(math.pi * (x + 2 * y) * a)


# --------------------------------------------------------------------------------------------
# (1) the flatten head: divide by 4 coarse → fine
# --------------------------------------------------------------------------------------------


def test_head_divide_by_four_preserves_logits_on_smooth_features():
    coarse, fine = thesis_cnn(14), thesis_cnn(28, seed=1)
    head_c = coarse.classifier
    channels = head_c.grid[0]
    with torch.no_grad():  # smooth class weight images, as the thesis' smooth regulariser gives
        head_c.weight.copy_(torch.stack([smooth_images(channels, 14, seed=k) for k in range(10)]).flatten(1))
        head_c.bias.zero_()
    transfer_weights(coarse, fine, "transfer")
    head_f = fine.classifier
    assert head_f.weight.shape == (10, channels * 28 * 28)
    expect = prolongate_images(head_c.weight_images().detach(), "average-bilinear") / 4
    assert torch.allclose(head_f.weight_images(), expect.float())

    g_fine = smooth_images(channels, 28, seed=99).float()[None]  # a smooth last feature grid
    g_coarse = restrict_images(g_fine, "average-bilinear")
    with torch.no_grad():
        logits_c = head_c(g_coarse)
        logits_f = head_f(g_fine)
        times_four = F.linear(torch.flatten(g_fine, 1), head_f.weight * 16)  # the thesis' "×4" = ours × 16
    rel = lambda a: ((a - logits_c).norm() / logits_c.norm()).item()
    assert rel(logits_f) < 0.02
    ratio = (times_four.norm() / logits_c.norm()).item()
    assert ratio == pytest.approx(16, rel=0.05)
    # galerkin moves the head with the dual pair P(PᵀP)⁻¹: ≈ P w / 4 on smooth weights, same logits
    gal = thesis_cnn(28, seed=1)
    transfer_weights(coarse, gal, "galerkin")
    with torch.no_grad():
        assert rel(gal.classifier(g_fine)) < 0.02
    assert ((gal.classifier.weight - head_f.weight).norm() / head_f.weight.norm()).item() < 0.05


def test_head_restrict_multiplies_by_four():
    fine, coarse = thesis_cnn(28), thesis_cnn(14, seed=1)
    transfer_weights(fine, coarse, "transfer", direction="restrict")
    expect = 4 * restrict_images(fine.classifier.weight_images().detach(), "average-bilinear")
    assert torch.allclose(coarse.classifier.weight_images(), expect)
    assert torch.equal(coarse.classifier.bias, fine.classifier.bias)
    assert torch.equal(coarse.conv1.weight, fine.conv1.weight)  # transfer copies stencils


# --------------------------------------------------------------------------------------------
# (2) galerkin prolongate then restrict is the identity on stencils (and on the head iff R P = I)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["average-constant", "average-bilinear", "fullweighting-linear"])
def test_galerkin_round_trip(family):
    coarse, fine, back = thesis_cnn(14), thesis_cnn(28, seed=1), thesis_cnn(14, seed=2)
    transfer_weights(coarse, fine, "galerkin", family=family)
    diags = transfer_weights(fine, back, "galerkin", family=family, direction="restrict")
    for name in ("conv1", "conv2"):
        a, b = getattr(coarse, name).weight, getattr(back, name).weight
        assert ((a - b).abs().max() / a.abs().max()).item() < 1e-6
    assert all(d.galerkin_residual < 1e-6 for d in diags if d.kind == "conv3x3")
    head_err = ((coarse.classifier.weight - back.classifier.weight).abs().max()
                / coarse.classifier.weight.abs().max()).item()
    assert head_err < 1e-6  # the dual pair: Pᵀ · P(PᵀP)⁻¹ = I for every family
    # the thesis pair (P/4 up, 4R down) round-trips only where R P = I
    up, down = thesis_cnn(28, seed=1), thesis_cnn(14, seed=2)
    transfer_weights(coarse, up, "transfer", family=family)
    transfer_weights(up, down, "transfer", family=family, direction="restrict")
    thesis_err = ((coarse.classifier.weight - down.classifier.weight).abs().max()
                  / coarse.classifier.weight.abs().max()).item()
    if family == "average-constant":
        assert thesis_err < 1e-6
    else:
        assert thesis_err > 1e-2  # R P is a blur for the linear/bilinear prolongations


def test_galerkin_diagnostics_and_growth():
    coarse, fine = thesis_cnn(14), thesis_cnn(28, seed=1)
    diags = transfer_weights(coarse, fine, "galerkin")
    by_name = {d.name: d for d in diags}
    assert set(by_name) == {"conv1.weight", "conv2.weight", "classifier.weight", "classifier.bias"}
    for name in ("conv1.weight", "conv2.weight"):
        d = by_name[name]
        assert d.kind == "conv3x3" and d.galerkin_residual < 1e-6
        assert d.growth == pytest.approx(d.norm_after / d.norm_before)
        assert d.growth > 3  # random kernels grow strongly under average-bilinear prolongation
    assert by_name["classifier.bias"].galerkin_residual is None
    # transfer copies stencils: the residual says how far from Galerkin that is
    copied = transfer_weights(coarse, thesis_cnn(28, seed=1), "transfer")
    # iid weights: bilinear P per axis keeps ¾²+¼² = 5/8 of the variance on twice the entries
    # (norm × √(5/4) per axis), then ÷4: growth ≈ 1.25 / 4
    head_t = next(d for d in copied if d.name == "classifier.weight")
    assert head_t.growth == pytest.approx(1.25 / 4, rel=0.1)
    # the dual (galerkin) head inverts PᵀP, which amplifies rough weights: more growth than P/4
    assert by_name["classifier.weight"].growth > 2 * head_t.growth
    assert all(d.growth == pytest.approx(1.0) for d in copied if d.kind == "conv3x3")
    assert all(d.galerkin_residual > 0.1 for d in copied if d.kind == "conv3x3")


def test_fresh_leaves_destination_untouched_and_reg_interpolates():
    coarse, fine = thesis_cnn(14), thesis_cnn(28, seed=1)
    before = {k: v.clone() for k, v in fine.state_dict().items()}
    transfer_weights(coarse, fine, "fresh")
    assert all(torch.equal(before[k], v) for k, v in fine.state_dict().items())
    exact, copied = thesis_cnn(28, seed=1), thesis_cnn(28, seed=1)
    transfer_weights(coarse, exact, "galerkin")
    transfer_weights(coarse, copied, "transfer")
    reg = thesis_cnn(28, seed=1)
    transfer_weights(coarse, reg, "galerkin-reg", lam=1.0)
    w = lambda m: m.conv2.weight
    assert (w(reg) - w(exact)).norm() < (w(copied) - w(exact)).norm()
    assert (w(reg) - w(copied)).norm() < (w(exact) - w(copied)).norm()
    assert torch.allclose(w(reg), prolongate_stencils(coarse.conv2.weight.detach(), "average-bilinear", lam=1.0))


def test_bad_options_and_mismatched_models_raise():
    coarse, fine = thesis_cnn(14), thesis_cnn(28)
    with pytest.raises(ValueError, match="galerkin-reg"):
        transfer_weights(coarse, fine, "multigrid")
    with pytest.raises(ValueError, match="average-bilinear"):
        transfer_weights(coarse, fine, "galerkin", family="bicubic")
    with pytest.raises(ValueError, match="direction"):
        transfer_weights(coarse, fine, "galerkin", direction="sideways")
    with pytest.raises(ValueError, match="respectral"):
        transfer_weights(coarse, fine, "galerkin", coefficient_policy="reinvent")
    wider = build_model("cnn", {"pool": False, "width2": 32}, 1, 10, 28)
    with pytest.raises(ValueError, match="conv2.weight"):
        transfer_weights(coarse, wider, "galerkin")
    with pytest.raises(ValueError, match="head grid"):
        transfer_weights(coarse, build_model("cnn", {"pool": False}, 1, 10, 42), "galerkin")


# --------------------------------------------------------------------------------------------
# (3) stride-2 stencils, 1×1 convs, BN, biases, pooled linear head, coefficients
# --------------------------------------------------------------------------------------------


class Poly(nn.Module):
    """A stand-in polynomial smoother step: a stencil plus a learnable scalar coefficient."""

    def __init__(self, channels: int):
        super().__init__()
        self.A = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.coeff = nn.Parameter(torch.randn(()))

    def forward(self, x):
        return x + self.coeff * self.A(x)


def small_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),  # strided stencil with bias
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 1),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),  # depthwise stencil
        Poly(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    with torch.no_grad():  # non-trivial BN state so that copying is visible
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.normal_()
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].num_batches_tracked.fill_(7)
    return net


def test_small_net_rules():
    src, dst = small_net(0), small_net(1)
    diags = transfer_weights(src, dst, "galerkin")
    kinds = {d.name: d.kind for d in diags}
    assert kinds["0.weight"] == "conv3x3-s2-approx" and kinds["0.bias"] == "bias"  # bilinear: no exact s2 map
    assert kinds["3.weight"] == "conv1x1" and kinds["4.weight"] == "conv3x3"
    assert kinds["1.running_mean"] == "bn" and kinds["5.coeff"] == "coefficient" and kinds["8.weight"] == "linear"
    # stencils (strided, depthwise, inside a custom block): prolongated by the stencil map
    for i in ("0", "4", "5.A"):
        s, d = src.get_submodule(i).weight, dst.get_submodule(i).weight
        assert torch.allclose(d, prolongate_stencils(s.detach(), "average-bilinear"))
        assert torch.allclose(restrict_stencils(d.detach(), "average-bilinear"), s, atol=1e-6)
    assert dst[0].stride == (2, 2)
    # everything pointwise is copied
    for key in ("0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
                "3.weight", "3.bias", "5.coeff", "8.weight", "8.bias"):
        assert torch.equal(src.state_dict()[key], dst.state_dict()[key]), key
    assert all(d.galerkin_residual is None for d in diags if not d.kind.startswith("conv3x3"))


def test_small_net_transfer_copies_everything():
    src, dst = small_net(0), small_net(1)
    transfer_weights(src, dst, "transfer")
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items())


def test_large_kernel_warns_and_lam_trades_residual_for_growth():
    torch.manual_seed(0)
    src = nn.Sequential(nn.Conv2d(2, 2, 5, padding=2))
    diags = []
    for lam in (0.0, 1e-4, 1.0):
        dst = nn.Sequential(nn.Conv2d(2, 2, 5, padding=2))
        with pytest.warns(UserWarning, match="5×5"):
            diags.append(transfer_weights(src, dst, "galerkin-reg", lam=lam)[0])
    assert all(d.kind == "conv5x5" for d in diags)
    # cond(M) ≈ 916 for 5×5: the exact solve is Galerkin-exact but blows the kernel up
    assert diags[0].galerkin_residual < 1e-4 and diags[0].growth > 50
    assert diags[0].growth > diags[1].growth > diags[2].growth
    assert diags[0].galerkin_residual < diags[1].galerkin_residual < diags[2].galerkin_residual


def test_unhandled_mismatch_names_the_parameter():
    class Odd(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.table = nn.Parameter(torch.zeros(n))

    with pytest.raises(ValueError, match="table"):
        transfer_weights(Odd(3), Odd(4), "transfer")
    # the error comes after the stencils were planned: nothing is written to dst on error
    src, dst = small_net(0), small_net(1)
    dst[8] = nn.Linear(8, 11)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match="8.weight"):
        transfer_weights(src, dst, "galerkin")
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())


def test_stride_two_stride1_map_is_not_function_preserving_for_bilinear():
    # average-bilinear has no exact stride-2 map (its coarse operator is wider than 3×3): the
    # stride-1 map stands in, and fine(P y) restricted differs from coarse(y) (see tests/test_stride2.py)
    src = nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False)
    dst = nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False)
    diag = transfer_weights(src, dst, "galerkin", family="average-bilinear")
    assert diag[0].kind == "conv3x3-s2-approx"
    y = torch.randn(1, 1, 8, 8)
    x = prolongate_images(y, "average-bilinear")
    with torch.no_grad():
        fine_out, coarse_out = restrict_images(dst(x), "average-bilinear"), src(y)
    assert ((fine_out - coarse_out).norm() / coarse_out.norm()).item() > 0.05


# --------------------------------------------------------------------------------------------
# (4) function preservation
# --------------------------------------------------------------------------------------------


class PointwiseNet(nn.Module):
    """Only resolution-free layers: 1×1 convs, BN, ReLU, 2×2 average pool, then a flatten head."""

    def __init__(self, resolution: int, seed: int):
        super().__init__()
        from mres.models.cnn import GridLinear

        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(2, 6, 1)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 4, 1)
        self.pool = nn.AvgPool2d(2)
        self.c3 = nn.Conv2d(4, 4, 1)
        self.head = GridLinear(4, resolution // 2, resolution // 2, 5)
        with torch.no_grad():
            self.bn.running_mean.normal_()
            self.bn.running_var.uniform_(0.5, 2)

    def stages(self, x):
        out = []
        x = F.relu(self.bn(self.c1(x)))
        out.append(("c1", x))
        x = self.pool(self.c2(x))
        out.append(("pool", x))
        x = self.c3(x)
        out.append(("c3", x))
        return out

    def forward(self, x):
        return self.head(self.stages(x)[-1][1])


def test_pointwise_model_is_preserved_exactly_under_average_constant():
    coarse, fine = PointwiseNet(8, 0), PointwiseNet(16, 1)
    transfer_weights(coarse, fine, "galerkin", family="average-constant")
    # piecewise-constant input: ReLU commutes with R on it, so every stage matches exactly
    x = prolongate_images(torch.randn(3, 2, 8, 8), "average-constant")
    res = function_preservation(coarse, fine, x, "average-constant")
    assert res["logits"] < 1e-6 and res["agreement"] == 1.0
    assert set(res["stages"]) == {"c1", "pool", "c3"}
    assert max(res["stages"].values()) < 1e-6
    # a generic input breaks only the ReLU commutation, not the linear parts
    res = function_preservation(coarse, fine, torch.randn(3, 2, 16, 16), "average-constant")
    assert res["stages"]["c1"] > 1e-3


def test_dilate_reference_is_exact_for_piecewise_constant_inputs():
    coarse, fine = thesis_cnn(14), thesis_cnn(28, seed=1)
    transfer_weights(coarse, fine, "dilate", family="average-constant")
    assert fine.conv1.dilation == (2, 2) and fine.conv1.padding == (2, 2)
    x = prolongate_images(torch.randn(4, 1, 14, 14), "average-constant")
    res = function_preservation(coarse, fine, x, "average-constant")
    # zero padding at the border is where the dilated fine conv and the coarse conv could differ;
    # a dilation-2 kernel reads exactly one coarse cell further, so the ghost cells agree too
    assert res["logits"] < 1e-5 and max(res["stages"].values()) < 1e-5


def test_function_preservation_restores_modes_and_reports_stages():
    coarse, fine = thesis_cnn(14), thesis_cnn(28, seed=1)
    transfer_weights(coarse, fine, "galerkin")
    coarse.train()
    fine.eval()
    x = smooth_images(1, 28, seed=3).float()[None].repeat(2, 1, 1, 1)
    res = function_preservation(coarse, fine, x, "average-bilinear")
    assert coarse.training and not fine.training
    assert set(res) == {"logits", "agreement", "stages"} and set(res["stages"]) == {"conv1", "conv2"}
    assert all(math.isfinite(v) for v in res["stages"].values())


# --------------------------------------------------------------------------------------------
# (5) BN recalibration
# --------------------------------------------------------------------------------------------


def test_recalibrate_bn_matches_hand_computed_statistics():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.BatchNorm2d(4, momentum=0.3), nn.ReLU())
    model.eval()
    batches = [torch.randn(n, 3, 6, 6) * 2 + 1 for n in (5, 3, 8)]
    recalibrate_bn(model, [(b, torch.zeros(len(b))) for b in batches])  # (inputs, labels) batches
    with torch.no_grad():
        feats = [conv(b) for b in batches]
    # cumulative average over batches: every batch weighs the same; variances are unbiased
    mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.transpose(0, 1).flatten(1).var(dim=1, unbiased=True) for f in feats]).mean(0)
    bn = model[1]
    assert torch.allclose(bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(bn.running_var, var, atol=1e-5)
    assert bn.num_batches_tracked.item() == 3 and bn.momentum == 0.3 and not model.training
    assert conv.weight.grad is None


def test_recalibrate_bn_without_bn_is_a_no_op():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    recalibrate_bn(model, [torch.randn(2, 1, 5, 5)])
    assert model.training and all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_strategies_constant():
    assert STRATEGIES == ("fresh", "transfer", "galerkin", "galerkin-reg")
    assert LayerDiag("a", "b", 1.0, 2.0, 2.0).galerkin_residual is None

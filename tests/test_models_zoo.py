"""MgNet, Poly-MgNet and ResNet families: weight counts, shapes, name grammar, spectral init, CLI."""

import json
import math

import pytest
import torch
import torch.nn as nn

from mres.training.checkpoint import save_checkpoint
from mres.errors import UserError
from mres.models import build_model, check_model, find_family
from mres.models.mgnet import parse_mgnet_name
from mres.models.poly import parse_poly_name
from mres.models.resnet import parse_resnet_name
from mres.grids.spectrum import conv_spectrum, init_coefficients
from mres.zoo import count_weights, param_table


def build(name, opts=None, in_ch=3, classes=10, res=32):
    return build_model(name, dict(opts or {}), in_ch, classes, res)


# --------------------------------------------------------------------------- weight counts


@pytest.mark.parametrize("name,expected", [
    ("mgnet[2,2,2,2]-[256]-Bl", 8_278_794),    # XuTeam/MgNet_Code
    ("mgnet[2,2,2,2]-[256]-Bli", 10_638_090),  # XuTeam/MgNet_Code --wise-B
    ("resnet18", 11_173_962),                  # CIFAR ResNet-18
])
def test_exact_weight_counts(name, expected):
    assert count_weights(build(name)) == expected


# reference build (vanbetteray/Poly-MgNet) and ours: we build no level-1 transfer convs (1,152 unused
# weights in the reference) and a pair step has two coefficients where the reference's has one
@pytest.mark.parametrize("name,reference,ours", [
    ("poly-q2", 1_386_706, 1_386_706 - 1_152),
    ("poly-g4", 1_386_706, 1_386_706 - 1_152),
    ("poly-g6", 1_389_526, 1_389_526 - 1_152 + 4),
    ("poly-g8", 1_392_346, 1_392_346 - 1_152 + 8),
])
def test_poly_weight_counts_within_0_2_percent(name, reference, ours):
    n = count_weights(build(name, {"coeff_init": "xavier"}))
    assert n == ours
    assert abs(n - reference) / reference < 0.002


def test_shared_tensors_are_counted_once():
    m = build("mgnet[2,2]-[8]-Bl")
    ids = {id(p) for p in m.parameters()}
    assert count_weights(m) == sum(p.numel() for p in m.parameters()) and len(ids) == len(list(m.parameters()))
    # one A and one B per level; every state_dict entry is its own tensor (no duplicates for the transfer)
    keys = [k for k in m.state_dict() if k.endswith("A.weight")]
    assert sorted(keys) == ["levels.0.A.weight", "levels.1.A.weight"]
    assert len(build("mgnet[2,2]-[8]-Bli").levels[0].B) == 2 and len(m.levels[0].B) == 1


def test_param_table_and_unknown_dataset():
    rows = {r["model"]: r for r in param_table("cifar10")}
    assert rows["mgnet[2,2,2,2]-[256]-Bl"]["diff_pct"] == 0 and rows["resnet18"]["ours"] == 11_173_962
    for name in ("poly-q2", "poly-g4", "poly-g6", "poly-g8"):
        assert abs(rows[name]["diff_pct"]) < 0.2
    fm = {r["model"]: r for r in param_table("fashion-mnist")}
    assert fm["resnet18"]["ours"] == fm["resnet18"]["reference"] == 11_173_962 - 2 * 9 * 64
    c100 = {r["model"]: r for r in param_table("cifar100")}
    assert c100["mgnet[2,2,2,2]-[256]-Bl"]["ours"] == c100["mgnet[2,2,2,2]-[256]-Bl"]["reference"]
    with pytest.raises(UserError, match="allowed: cifar10, cifar100, fashion-mnist"):
        param_table("imagenet")


def test_width_scale_keeps_ratios():
    m = build("poly-q2", {"width_scale": 1 / math.sqrt(2), "coeff_init": "xavier"})
    assert m.widths == [45, 90, 180, 180]
    assert all(t.R.groups == t.R.in_channels for t in m.transfers)  # still one stencil per input channel
    r = build("resnet18", {"width_scale": 0.5})
    assert r.widths == [32, 64, 128, 256]
    g = build("mgnet[2,2,2,2]-[256]-Bl", {"width_scale": 0.25})
    assert g.widths == [(64, 64)] * 4


# --------------------------------------------------------------------------- forward shapes


TINY = [
    ("mgnet[1,2,1]-[4,8,8]-Bl", {}),
    ("mgnet[2,1,1]-[(4,6),(8,8),8]-Bli", {"pi": "pi2", "smoothing": "multistep"}),
    ("mgnet[2,2,1]-[6]-Bl", {"pi": "pi0", "smoothing": "chebyshev-semi", "restriction": "channelwise"}),
    ("poly-q2", {"widths": [4, 8, 8]}),
    ("poly-g4", {"widths": [4, 8, 8], "pi": "pi1", "restriction": "dense", "coeff_init": "uniform-spectrum"}),
    ("poly-g6", {"widths": [4, 8, 8], "pi": "pi0"}),
    ("poly-g8", {"widths": [4, 8, 8], "coeff_init": "xavier"}),
    ("poly-qqcc", {"widths": [4, 8, 8], "output_at": "level", "update": "bn-relu"}),
    ("resnet[1,1,1]-[4,8,16]", {}),
    ("preact-resnet[2,1,1]-[4,8,8]-Al-Bli", {}),
]


def _two_level(name: str, opts: dict) -> tuple[str, dict]:
    """The same family with two levels (divisor 2), for 28/14 inputs."""
    opts = dict(opts)
    if name.startswith("mgnet"):
        return "mgnet[2,1]-[4,8]-Bli", opts
    if name.startswith("poly"):
        opts["widths"] = [4, 8]
        return name, opts
    return name.split("[")[0] + "[1,1]-[4,8]" + ("-Al-Bli" if name.endswith("Al-Bli") else ""), opts


@pytest.mark.parametrize("name,opts", TINY)
def test_forward_shapes_and_stages(name, opts):
    torch.manual_seed(0)
    model = build(name, opts, in_ch=3, classes=7, res=32)
    for res in (32, 16):
        model.train()
        assert model(torch.randn(2, 3, res, res)).shape == (2, 7)
        model.eval()
        stages = model.stages(torch.randn(1, 3, res, res))
        assert stages and all(isinstance(n, str) and t.shape[0] == 1 for n, t in stages)
        assert stages[-1][1].shape[-1] == res // 4  # three levels/stages: coarsening 4
    fam = find_family(name)
    assert fam.divisor(name, fam.options(**opts)) == 4
    name2, opts2 = _two_level(name, opts)
    m2 = build(name2, opts2, in_ch=1, classes=10, res=28)
    for res in (28, 14):
        assert m2(torch.randn(2, 1, res, res)).shape == (2, 10)
        assert m2.stages(torch.randn(1, 1, res, res))[-1][1].shape[-1] == res // 2
    assert check_model(name2, opts2, [28, 14]) == []


def test_mgnet_stages_are_u_and_f_per_level():
    m = build("mgnet[1,1,1]-[(4,6),8,8]", res=16).eval()
    names = [(n, tuple(t.shape[1:])) for n, t in m.stages(torch.randn(1, 3, 16, 16))]
    assert names == [("level1.f", (6, 16, 16)), ("level1.u", (4, 16, 16)), ("level2.f", (8, 8, 8)),
                     ("level2.u", (8, 8, 8)), ("level3.f", (8, 4, 4)), ("level3.u", (8, 4, 4))]


def test_convs_are_plain_3x3_and_coefficients_are_named_coeff():
    m = build("poly-g6", {"widths": [4, 8]}, res=8)
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert convs and all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None for c in convs)
    coeffs = [n for n, _ in m.named_parameters() if "coeff" in n]
    assert len(coeffs) == 2 * 3  # two levels × (g, g, c)
    assert all(p.numel() in (1, 2) for n, p in m.named_parameters() if "coeff" in n)


def test_chebyshev_and_multistep_start_near_plain_mgnet():
    torch.manual_seed(0)
    plain = build("mgnet[2,3]-[6]-Bli", res=8).eval()
    cheb = build("mgnet[2,3]-[6]-Bli", {"smoothing": "chebyshev-semi"}, res=8).eval()
    cheb.load_state_dict(plain.state_dict(), strict=False)  # ω = 1 is the plain step
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(plain(x), cheb(x), atol=1e-6)
    multi = build("mgnet[2,3]-[6]-Bli", {"smoothing": "multistep"}, res=8)
    alphas = [torch.softmax(p, 0) for p in multi.levels[1].coeffs]
    assert [a.numel() for a in alphas] == [1, 2, 3]
    assert all(abs(a.sum().item() - 1) < 1e-6 and a[-1].item() == pytest.approx(0.9 if a.numel() > 1 else 1.0)
               for a in alphas)


def test_poly_spectral_init_uses_the_spectrum_at_the_build_resolution():
    torch.manual_seed(0)
    m = build("poly-g6", {"widths": [4, 8]}, res=16)
    levels = m.smoothing_levels()
    assert [(lv.level, lv.kinds, lv.coarsening) for lv in levels] == [(1, ["g", "g", "c"], 1), (2, ["g", "g", "c"], 2)]
    from mres.grids.spectrum import spectrum_boundary

    # level 1 on 16×16: periodic; level 2 on 8×8 (C·n² = 512): zero-padded under the default 'auto'
    assert [spectrum_boundary("auto", 16 // lv.coarsening, 4 * lv.level) for lv in levels] == ["periodic", "zeros"]
    for lv in levels:
        n = 16 // lv.coarsening
        eigs = conv_spectrum(lv.A.weight, n, boundary=spectrum_boundary("auto", n, lv.A.weight.shape[0]))
        expect = init_coefficients(lv.kinds, eigs, "spectral")
        for p, e in zip(lv.coeffs, expect):
            assert torch.allclose(p.detach(), e, rtol=1e-4, atol=1e-5)
    assert build("poly-q2", {"widths": [4], "train_coeffs": False}, res=8).levels[0].steps[0].coeff.requires_grad is False


def test_poly_default_placements_follow_the_best_rows():
    q2 = build("poly-q2", {"widths": [4], "coeff_init": "xavier"}).placements
    assert q2 == dict(residual="bn", update="plain", pair_residual="bn-relu", pair_update="plain",
                      output="bn-relu", output_at="step")
    g4 = build("poly-g4", {"widths": [4], "coeff_init": "xavier"}).placements
    assert (g4["residual"], g4["update"], g4["output"]) == ("bn-relu", "bn-relu", "plain")
    g6 = build("poly-g6", {"widths": [4], "coeff_init": "xavier"}).placements
    assert (g6["pair_residual"], g6["pair_update"], g6["output"], g6["output_at"]) == ("bn-relu", "plain", "bn-relu", "level")
    g8 = build("poly-g8", {"widths": [4], "coeff_init": "xavier", "output": "bn"}).placements
    assert (g8["pair_update"], g8["output"]) == ("bn", "bn")  # an option wins over the default


# --------------------------------------------------------------------------- name grammar


def test_name_grammar():
    s = parse_mgnet_name("MgNet[2,2,2,2]-[64,128,256,512]-Bli")
    assert s.smoothings == (2, 2, 2, 2) and s.widths[3] == (512, 512) and s.b_per_step
    assert parse_mgnet_name("mgnet[2,2]-[(64,128)]").widths == ((64, 128), (64, 128))
    assert parse_poly_name("poly-q2").kinds == ("q", "q")
    assert parse_poly_name("poly-q4").kinds == ("q", "q", "c")
    assert parse_poly_name("poly-g4").kinds == ("g", "g")
    assert parse_poly_name("poly-g8").kinds == ("g", "g", "c", "c") == parse_poly_name("poly-ggcc").kinds
    assert parse_poly_name("poly-g8").degree == 8
    r = parse_resnet_name("preact-resnet18-Al-Bli")
    assert r.preact and r.shared_a and r.blocks == (2, 2, 2, 2)


@pytest.mark.parametrize("bad", [
    "mgnet[2,2]-[64,128,256]-Bl",  # widths do not match levels
    "mgnet[2,x]-[64]",
    "mgnet[2,2]-[64]-Bx",
    "mgnet2,2-64",
    "mgnet[2,2]-[(64,)]",
    "poly-q3",
    "poly-g5",
    "poly-x2",
    "poly-",
    "resnet19",
    "resnet[2,2]-[8,8,8]",
    "resnet18-Al-Bl",
])
def test_malformed_names_give_readable_value_errors(bad):
    fam = find_family(bad)
    with pytest.raises(ValueError) as e:
        fam.parse(bad)
    assert bad in str(e.value)
    problems = check_model(bad, {}, [32])
    assert problems and problems[0][0] == "model.name"


def test_options_are_validated():
    assert check_model("poly-g4", {"pi": "pi3"}, [32])[0][0] == "model.pi"
    assert check_model("mgnet[2,2]-[8]", {"smoothing": "fancy"}, [32])[0][0] == "model.smoothing"
    assert check_model("resnet18", {"widths": [8]}, [32]) == [
        ("model.widths", "unknown key (allowed for this model: name, width_scale)")]
    assert check_model("poly-g4", {}, [28])[0][0] == "resolution"  # four levels: multiples of 8


# --------------------------------------------------------------------------- CLI


def test_cli_params_json(mres_cli):
    r = mres_cli("params", "--dataset", "cifar10", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["model"]: row for row in json.loads(r.stdout)}
    assert rows["mgnet[2,2,2,2]-[256]-Bli"]["ours"] == 10_638_090
    from mres.cli.zoo_cmds import params_cmd

    with pytest.raises(UserError, match="allowed"):  # the CLI prints it as one `error:` line, exit 2
        params_cmd(dataset="svhn", as_json=False)


def test_cli_spectrum(mres_cli, tmp_path):
    opts = {"widths": [4, 8]}
    m = build("poly-g6", opts, res=8)
    arch = {"name": "poly-g6", "options": opts, "in_channels": 3, "num_classes": 10}
    save_checkpoint(tmp_path / "p.pt", {"model": m.state_dict(), "resolution": 8, "arch": arch})
    r = mres_cli("spectrum", str(tmp_path / "p.pt"), "--out", str(tmp_path / "fig"), "--grid", "4")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == ["spectrum_level1.pdf", "spectrum_level1.png",
                                                                 "spectrum_level2.pdf", "spectrum_level2.png"]
    cnn = build("cnn", {}, res=8)
    save_checkpoint(tmp_path / "c.pt", {"model": cnn.state_dict(), "resolution": 8,
                                        "arch": {"name": "cnn", "options": {}, "in_channels": 3, "num_classes": 10}})
    from mres.cli.zoo_cmds import spectrum_cmd

    with pytest.raises(UserError, match="no MgNet or Poly-MgNet"):
        spectrum_cmd(ckpt=tmp_path / "c.pt", out=None, grid=None)

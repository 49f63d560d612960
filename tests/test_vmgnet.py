"""V-MgNet (seed 001 Alg. 4): the forward followed with dense operators, its transfer rule, counts, c2f."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mres.grids.operators import (FAMILIES, prolongate_images, prolongation_matrix_1d, restrict_images,
                                  restrict_transposed, restriction_matrix_1d, transposed_stencil_map_1d,
                                  transposed_stencil_map_is_exact)
from mres.models import build_model
from mres.models.vmgnet import parse_vmgnet_name, prolongation_layout
from mres.grids.transfer import transfer_weights
from mres.zoo import count_weights


def _matrix(module: nn.Module, shape: tuple[int, int, int]) -> torch.Tensor:
    """The dense matrix of a linear module on inputs of shape (C, H, W): its columns are the images of unit vectors."""
    n = shape[0] * shape[1] * shape[2]
    with torch.no_grad():
        out = module(torch.eye(n, dtype=torch.float64).view(n, *shape))
    return out.reshape(n, -1).T


def _bn(bn: nn.BatchNorm2d, v: torch.Tensor, c: int) -> torch.Tensor:
    """Eval-mode BN on a flattened (C·H·W) vector: per channel (v − μ)/√(σ² + ε)·γ + β."""
    v = v.view(c, -1)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return ((v - bn.running_mean[:, None]) * scale[:, None] + bn.bias[:, None]).reshape(-1)


def test_forward_follows_algorithm_4_with_dense_operators():
    torch.manual_seed(0)
    model = build_model("vmgnet[2,1,1]-[2,1]-[(3,4),(4,5),(5,5)]-Bli", {}, 2, 7, 8).double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3), m.running_var.uniform_(0.5, 2), m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
            if isinstance(m, nn.ConvTranspose2d):
                m.weight.normal_(0, 0.3)  # not the stencil init: every entry of P matters
    x = torch.randn(2, 8, 8, dtype=torch.float64)
    widths, grids = [(3, 4), (4, 5), (5, 5)], [8, 4, 2]
    lv, tr = model.levels, model.transfers
    A = [_matrix(lv[l].A, (widths[l][0], grids[l], grids[l])) for l in range(3)]
    relu = torch.relu
    # Alg. 3: the down sweep, keeping ū^{ℓ,0}, ū^ℓ, f^ℓ
    f = relu(_bn(model.stem_bn, _matrix(model.stem, (2, 8, 8)) @ x.reshape(-1), 4))
    u = torch.zeros(3 * 64, dtype=torch.float64)
    ubar0, ubar, fs = [], [], []
    for l in range(3):
        cu, cf = widths[l]
        g = grids[l]
        if l > 0:
            pcu, pcf = widths[l - 1]
            pg = grids[l - 1]
            r = f - A[l - 1] @ u
            f_next = relu(_bn(tr[l - 1].bn_R, _matrix(tr[l - 1].R, (pcf, pg, pg)) @ r, cf))
            u = relu(_bn(tr[l - 1].bn_pi, _matrix(tr[l - 1].Pi, (pcu, pg, pg)) @ u, cu))
            f = f_next + A[l] @ u
        ubar0.append(u.clone())
        for i in range(lv[l].steps):  # u ← u + σ(BN(B σ(BN(f − A u))))
            B = _matrix(lv[l].B[i], (cf, g, g))
            u = u + relu(_bn(lv[l].bn_b[i], B @ relu(_bn(lv[l].bn_r[i], f - A[l] @ u, cf)), cu))
        ubar.append(u.clone())
        fs.append(f)
    # Alg. 4: the up sweep
    u = ubar[2]
    for l in (1, 0):
        cu, cf = widths[l]
        g = grids[l]
        P = _matrix(model.prolongations[l], (widths[l + 1][0], grids[l + 1], grids[l + 1]))
        u = ubar[l] + P @ (u - ubar0[l + 1])  # (6.15)
        post = model.post[l]
        for i in range(post.steps):  # (6.16), the level's own A^ℓ
            B = _matrix(post.B[i], (cf, g, g))
            u = u + relu(_bn(post.bn_b[i], B @ relu(_bn(post.bn_r[i], fs[l] - A[l] @ u, cf)), cu))
    logits = model.head.weight @ u.view(3, -1).mean(1) + model.head.bias
    with torch.no_grad():
        torch.testing.assert_close(model(x[None])[0], logits, rtol=1e-10, atol=1e-10)


def test_name_grammar_and_errors():
    spec = parse_vmgnet_name("vmgnet[2,2,2,2]-[1,1,1]-[64,128,256,512]-Bli")
    assert spec.post == (1, 1, 1) and spec.down.b_per_step and spec.down.smoothings == (2, 2, 2, 2)
    with pytest.raises(ValueError, match="2 post-smoothing counts for 4 levels"):
        parse_vmgnet_name("vmgnet[2,2,2,2]-[1,1]-[64]")
    with pytest.raises(ValueError, match="at least 2 levels"):
        parse_vmgnet_name("vmgnet[2]-[]-[64]")


def test_weight_count_is_mgnet_plus_prolongations_and_post_smoothers():
    v = build_model("vmgnet[2,2,2,2]-[1,1,1]-[256]-Bl", {}, 3, 10, 32)
    m = build_model("mgnet[2,2,2,2]-[256]-Bl", {}, 3, 10, 32)
    assert count_weights(m) == 8_278_794
    assert count_weights(v) == 8_278_794 + 3 * 256 * 256 * 16 + 3 * (256 * 256 * 9 + 2 * 2 * 256)


@pytest.mark.parametrize("family", FAMILIES)
def test_stencil_init_is_the_family_prolongation(family):
    model = build_model("vmgnet[1,1]-[1]-[3]-Bl", {"prolongation_family": family}, 1, 10, 8)
    y = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        ours = model.prolongations[0](y)
    # replicate-boundary images at the edge; the interior is the family's P (grids.prolongate_images)
    ref = prolongate_images(y, family)
    torch.testing.assert_close(ours[..., 2:-2, 2:-2], ref[..., 2:-2, 2:-2])


def _dense_transposed(w: torch.Tensor, n_in: int, pad: int, out_pad: int) -> torch.Tensor:
    k = len(w)
    eye = torch.eye(n_in, dtype=torch.float64)[:, None, :]
    out = F.conv_transpose1d(eye, w.view(1, 1, k), stride=2, padding=pad, output_padding=out_pad)
    return out[:, 0, :].T  # (2 n_in, n_in)


@pytest.mark.parametrize("family", FAMILIES)
def test_transposed_map_against_dense_r_t_p(family):
    k, pad, out_pad, _ = prolongation_layout(family)
    w = torch.randn(k, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    n = 16  # fine-model T: 16 → 32; coarse-model T: 8 → 16
    fine = restriction_matrix_1d(2 * n, family, periodic=True) @ _dense_transposed(w, n, pad, out_pad) \
        @ prolongation_matrix_1d(n, family, periodic=True)
    coarse = _dense_transposed(transposed_stencil_map_1d(family, k, pad) @ w, n // 2, pad, out_pad)
    inner = slice(3, -3)  # away from the ends, where the transposed conv has no wrap-around
    err = float((fine[inner] - coarse[inner]).norm() / coarse[inner].norm())
    if transposed_stencil_map_is_exact(family, k, pad):
        assert err < 1e-14
    else:
        assert err > 1e-3  # the truncated map: an approximation, and the rule says so (kind …-approx)


def test_vmgnet_transfer_restricts_p_exactly_for_average_constant():
    torch.manual_seed(1)
    fine = nn.ConvTranspose2d(3, 2, 2, stride=2, bias=False).double()
    coarse = nn.ConvTranspose2d(3, 2, 2, stride=2, bias=False).double()
    diag = transfer_weights(fine, coarse, "galerkin", family="average-constant", direction="restrict")
    assert diag[0].kind == "convT2x2-s2-p0" and diag[0].galerkin_residual < 1e-14
    y = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        err = (restrict_images(fine(prolongate_images(y, "average-constant")), "average-constant") - coarse(y)).abs().max()
    assert err < 1e-12
    torch.testing.assert_close(coarse.weight, restrict_transposed(fine.weight, "average-constant", 0))


def test_coarse_to_fine_runs_on_vmgnet(tmp_path):
    from mres.c2f.job import run_coarse_to_fine
    from mres.recipe import CoarseToFineRecipe, validate_recipe

    rec = validate_recipe({"dataset": {"name": "synthetic", "synthetic": {"n_train": 64, "n_test": 32, "size": 16,
                                                                          "channels": 3}},
                           "model": {"name": "vmgnet[1,1]-[1]-[4,6]-Bl"}, "resolutions": [8, 16],
                           "strategies": ["transfer", "galerkin"], "coarse": {"epochs": 1, "batch_size": 32},
                           "fine": {"epochs": 1, "batch_size": 32}}, CoarseToFineRecipe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the singular transposed-conv map warns
        summary = run_coarse_to_fine(rec, tmp_path / "run", progress=False)
    assert set(summary["strategies"]) == {"transfer", "galerkin"}
    diag = (tmp_path / "run" / "trial0" / "galerkin" / "fine-16" / "diagnostics.json").read_text()
    assert "convT4x4-s2-p1-approx" in diag

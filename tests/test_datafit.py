"""galerkin-data and distill (mres/grids/datafit.py), each against an independent construction: exact Galerkin
(the stencil map), dense restriction matrices with a hand-written im2col and torch.linalg.lstsq."""

import pytest
import torch
import torch.nn as nn

from mres.training.data import load_dataset
from mres.grids.datafit import distill, fit_to_coarse, layer_rows, primal_solve
from mres.errors import UserError
from mres.grids.operators import prolongation_matrix_1d, restriction_matrix_1d
from mres.models import build_model
from mres.recipe import DatasetConfig, TrainConfig
from mres.training.fit import fit
from mres.grids.transfer import function_preservation, transfer_weights


def _one_conv(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular", bias=False)).double()


def _dense_p(n: int, family: str) -> torch.Tensor:
    p1 = prolongation_matrix_1d(n, family, periodic=True)
    return torch.kron(p1, p1)  # (n², (n/2)²), row-major images


def test_on_inputs_in_the_range_of_p_it_is_exact_galerkin():
    family = "average-constant"  # R P = I
    coarse, fine, galerkin = _one_conv(0), _one_conv(1), _one_conv(2)
    transfer_weights(coarse, galerkin, "galerkin", family)
    y = torch.randn(64, 2, 8, 8, dtype=torch.float64)
    x = (y.reshape(-1, 64) @ _dense_p(16, family).T).reshape(64, 2, 16, 16)  # x = P y, periodic
    transfer_weights(coarse, fine, "transfer", family)  # θ_start: the copy (any start: λ → 0)
    fit_to_coarse(coarse, fine, x, family, lam=1e-12)
    assert torch.allclose(fine[0].weight, galerkin[0].weight, atol=1e-6, rtol=0)
    assert not torch.allclose(fine[0].weight, coarse[0].weight, atol=1e-3)  # and not simply the copy


def _explicit_rows(a: torch.Tensor, conv: nn.Conv2d, family: str) -> torch.Tensor:
    """im2col by shifting a zero-padded copy per kernel offset, then the dense 2-D R on each column."""
    n, c, h, w = a.shape
    pad = torch.zeros(n, c, h + 2, w + 2, dtype=a.dtype)
    pad[:, :, 1:-1, 1:-1] = a
    cols = [pad[:, ch, dy:dy + h, dx:dx + w] for ch in range(c) for dy in range(3) for dx in range(3)]
    r1 = restriction_matrix_1d(h, family, periodic=False)
    r2 = torch.kron(r1, r1)
    restricted = [(col.reshape(n, h * w) @ r2.T) for col in cols] + [torch.ones(n, (h // 2) * (w // 2), dtype=a.dtype)]
    return torch.stack(restricted, -1).reshape(-1, c * 9 + 1)


@pytest.mark.parametrize("family", ["average-bilinear", "fullweighting-linear"])
def test_the_solve_equals_lstsq_on_the_explicit_im2col_matrix(family):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=True).double()
    a = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    b = torch.randn(5, 4, 4, 4, dtype=torch.float64)
    x, bt = layer_rows(conv, a, b, family)
    xe = _explicit_rows(a, conv, family)
    assert torch.allclose(x, xe, atol=1e-12)
    theta0 = torch.randn(28, 4, dtype=torch.float64)
    for lam in (0.0, 0.3):
        got = primal_solve((x.T @ x)[None], (x.T @ bt)[None], (bt ** 2).sum()[None], len(x), theta0[None], lam)[0][0]
        s = (lam * len(xe)) ** 0.5  # ridge as extra rows: [X; s I] θ ≈ [B; s θ0]
        aug = torch.cat([xe, s * torch.eye(28, dtype=torch.float64)])
        rhs = torch.cat([bt, s * theta0])
        ref = torch.linalg.lstsq(aug, rhs).solution
        assert torch.allclose(got, ref, atol=1e-9), lam


def _trained_cnn_pair(pool: bool):
    data = load_dataset(DatasetConfig(name="synthetic", synthetic={"n_train": 512, "n_test": 256, "size": 16}))
    opts = {"width1": 4, "width2": 8, "pool": pool}
    torch.manual_seed(0)
    coarse = build_model("cnn", opts, 1, 10, 8)
    fit(coarse, data.at_resolution(8, "average-bilinear"), TrainConfig(epochs=3, batch_size=32), progress=False)
    fine = build_model("cnn", opts, 1, 10, 16)
    return data, coarse, fine


@pytest.mark.parametrize("pool", [False, True])
def test_on_held_out_images_its_logits_are_closer_than_the_copys(pool):
    data, coarse, fine = _trained_cnn_pair(pool)
    transfer_weights(coarse, fine, "transfer", "average-bilinear")
    copy_err = function_preservation(coarse, fine, data.x_test, "average-bilinear")["logits"]
    layers = fit_to_coarse(coarse, fine, data.x_train, "average-bilinear", lam=1e-3)
    fit_err = function_preservation(coarse, fine, data.x_test, "average-bilinear")["logits"]
    assert [r["layer"] for r in layers] == ["conv1", "conv2", "classifier"]
    assert all(r["residual_fit"] <= r["residual_start"] + 1e-9 for r in layers)
    assert fit_err < copy_err, (fit_err, copy_err)


@pytest.mark.parametrize("name,opts", [("mgnet[1,1]-[8]-Bl", {"pi": "pi2"}), ("poly-q2", {"widths": [4, 8]}),
                                       ("poly-g4", {"widths": [4, 8]})])
def test_mgnet_and_poly_mgnet_every_layer_fitted_grouped_included(name, opts):
    data = load_dataset(DatasetConfig(name="synthetic", synthetic={"n_train": 64, "n_test": 64, "size": 16}))
    torch.manual_seed(0)
    coarse, fine = build_model(name, opts, 1, 10, 8), build_model(name, opts, 1, 10, 16)
    transfer_weights(coarse, fine, "transfer", "average-bilinear")
    before = function_preservation(coarse, fine, data.x_test, "average-bilinear")["logits"]
    layers = fit_to_coarse(coarse, fine, data.x_train, "average-bilinear")
    after = function_preservation(coarse, fine, data.x_test, "average-bilinear")["logits"]
    convs = {n for n, m in fine.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert {r["layer"] for r in layers} == convs  # grouped Π and R included, none skipped
    assert any(r["groups"] > 1 for r in layers) and any(r["calls"] > 1 for r in layers)
    assert after < 0.6 * before, (after, before)


def _held_out_kl(teacher, student, x, t=2.0):
    import torch.nn.functional as F
    from mres.grids.operators import restrict_images

    with torch.no_grad():
        teacher.eval(), student.eval()
        target = F.log_softmax(teacher(restrict_images(x, "average-bilinear")) / t, -1)
        return float(F.kl_div(F.log_softmax(student(x) / t, -1), target, log_target=True, reduction="batchmean"))


def test_distill_brings_the_students_predictions_to_the_teachers_on_held_out_images():
    data, coarse, fine = _trained_cnn_pair(False)
    transfer_weights(coarse, fine, "transfer", "average-bilinear")
    before = _held_out_kl(coarse, fine, data.x_test)
    losses = distill(coarse, fine, data.x_train, "average-bilinear", steps=60, batch_size=64, lr=0.005)
    after = _held_out_kl(coarse, fine, data.x_test)
    assert len(losses) == 60 and sum(losses[-10:]) < sum(losses[:10])
    assert after < 0.7 * before, (after, before)

"""Polynomial coefficients across grids (DESIGN §4.2): keep, rescale, respectral."""

from __future__ import annotations

import pytest
import torch

from mres.training.checkpoint import save_checkpoint
from mres.models import build_model
from mres.grids.spectrum import (conv_spectrum, polynomial_roots, spectral_roots, spectrum_boundary, step_coefficients,
                                 step_roots)
from mres.grids.transfer import (COEFFICIENT_POLICIES, PLANNED_COEFFICIENT_POLICIES, move_coefficients, rescale_step,
                                 spectral_box, transfer_weights)

TINY = {"widths": [4, 4, 4, 4], "coeff_init": "xavier"}


def poly(name: str = "poly-g4", res: int = 16, seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, {**TINY, **options}, 3, 10, res)


def coeffs(model) -> list[torch.Tensor]:
    return [c.detach().clone() for lv in model.smoothing_levels() for c in lv.coeffs]


def test_policies_are_all_built():
    assert COEFFICIENT_POLICIES == ("keep", "rescale", "respectral") and PLANNED_COEFFICIENT_POLICIES == ()
    with pytest.raises(ValueError, match="respectral"):
        transfer_weights(poly(), poly(res=32), "galerkin", coefficient_policy="lfa")


@pytest.mark.parametrize("strategy", ["transfer", "galerkin", "galerkin-reg"])
def test_keep_copies_and_labels_the_diagnostics(strategy):
    src, dst = poly(seed=0), poly(res=32, seed=1)
    diags = transfer_weights(src, dst, strategy, lam=0.1, coefficient_policy="keep")
    for a, b in zip(coeffs(src), coeffs(dst)):
        assert torch.equal(a, b)
    kinds = {d.name: d.kind for d in diags}
    assert kinds["levels.0.steps.0.coeff"] == "coefficient-keep"
    assert sum(k.startswith("coefficient") for k in kinds.values()) == 8  # 4 levels × 2 g-steps, one diag each


def test_fresh_leaves_the_coefficients_untouched():
    src, dst = poly(seed=0), poly(res=32, seed=1)
    before = coeffs(dst)
    diags = transfer_weights(src, dst, "fresh", coefficient_policy="respectral")
    assert all(torch.equal(a, b) for a, b in zip(before, coeffs(dst)))
    assert {d.kind for d in diags if "coeff" in d.name} == {"coefficient"}


def test_respectral_is_alg3_on_the_moved_A():
    src, dst = poly(seed=0), poly(res=32, seed=1)
    diags = transfer_weights(src, dst, "galerkin", coefficient_policy="respectral")
    assert {d.kind for d in diags if "coeff" in d.name} == {"coefficient-respectral"}
    # independent: g steps take α = 1/ρ², ρ = max |Re Λ| of the moved A on the level's grid (seed 000 eq. 20)
    for lv in dst.smoothing_levels():  # each level's spectrum as the model takes it (zero-padded on small grids)
        n = 32 // lv.coarsening
        lam = conv_spectrum(lv.A.weight, n, boundary=spectrum_boundary(dst.spectrum_boundary, n, lv.A.weight.shape[0]))
        rho = lam.real.abs().max().item()
        for c in lv.coeffs:
            assert c.item() == pytest.approx(1 / rho**2, rel=1e-4)
    # and equal to re-initialising the destination spectrally
    again = poly(res=32, seed=2)
    again.load_state_dict(dst.state_dict())
    again.init_coefficients("spectral", 32)
    for a, b in zip(coeffs(again), coeffs(dst)):
        assert torch.allclose(a, b, rtol=1e-6)


def test_respectral_with_pair_steps_matches_the_root_choice():
    src, dst = poly("poly-g6", widths=[4, 4]), poly("poly-g6", res=32, seed=1, widths=[4, 4])
    transfer_weights(src, dst, "galerkin-reg", lam=0.1, coefficient_policy="respectral")
    for lv in dst.smoothing_levels():
        n = 32 // lv.coarsening
        lam = conv_spectrum(lv.A.weight, n, dtype=torch.complex64,
                            boundary=spectrum_boundary(dst.spectrum_boundary, n, lv.A.weight.shape[0]))
        expect = [step_coefficients(k, r) for k, r in zip(lv.kinds, spectral_roots(lv.kinds, lam))]
        for c, e in zip(lv.coeffs, expect):
            assert torch.allclose(c.detach(), e, rtol=1e-5)


def test_rescale_maps_box_corners_to_box_corners():
    src_box, dst_box = (-1.0, 3.0, -2.0, 2.0), (0.5, 10.0, -5.0, 5.0)

    def root_after(kind, root):
        new = rescale_step(kind, step_coefficients(kind, torch.tensor([root])), src_box, dst_box)
        return complex(step_roots(kind, new)[0])

    assert root_after("q", 3.0) == pytest.approx(10.0)  # max Re → max Re
    assert root_after("q", -1.0) == pytest.approx(0.5)  # min Re → min Re
    assert root_after("q", 1.0) == pytest.approx(0.5 + 2 * 9.5 / 4)  # affine in between
    assert root_after("c", complex(-1, 2)) == pytest.approx(complex(0.5, 5))  # corner (min Re, max Im)
    assert root_after("c", complex(3, 1)) == pytest.approx(complex(10, 2.5))
    # g: roots ±ζ on the symmetric box [−ρ, ρ], ρ = max |Re|: 3 → 10
    assert root_after("g", 3.0) == pytest.approx(10.0)
    # two real roots of a c step: both mapped (the corners)
    c1, c2 = 1 / 3.0 + 1 / -1.0, 1 / (3.0 * -1.0)
    new = rescale_step("c", torch.tensor([c1, c2]), src_box, dst_box)
    assert sorted(step_roots("c", new).real.tolist()) == pytest.approx([0.5, 10.0])
    # a zero coefficient (root at ∞) stays zero
    assert rescale_step("q", torch.tensor([0.0]), src_box, dst_box).item() == 0.0


def test_rescale_follows_an_A_scaled_by_two():
    """A_dst = 2 A_src on the same grid: the spectrum doubles, so every root doubles (all step kinds)."""
    src, dst = poly("poly-qgc", seed=0), poly("poly-qgc", seed=1)
    with torch.no_grad():
        dst.load_state_dict(src.state_dict())
        for lv in dst.smoothing_levels():
            lv.A.weight.mul_(2)
            for c in lv.coeffs:
                c.zero_()
    move_coefficients(src, dst, "rescale", 16, 16)
    for s, d in zip(src.smoothing_levels(), dst.smoothing_levels()):
        before = polynomial_roots(s.kinds, list(s.coeffs))
        after = polynomial_roots(d.kinds, list(d.coeffs))
        assert torch.allclose(after, 2 * before, rtol=1e-4, atol=1e-6), (s.level, before, after)


def test_rescale_moves_a_root_at_the_spectral_edge_to_the_new_edge_under_galerkin():
    src, dst = poly("poly-q2", seed=0), poly("poly-q2", res=32, seed=1)
    s1 = src.smoothing_levels()[0]
    lam_src = conv_spectrum(s1.A.weight, 16, dtype=torch.complex64)
    with torch.no_grad():  # the first root at max Re Λ_src, the second at min Re Λ_src
        s1.coeffs[0].fill_(1 / lam_src.real.max().item())
        s1.coeffs[1].fill_(1 / lam_src.real.min().item())
    transfer_weights(src, dst, "galerkin", coefficient_policy="rescale")
    d1 = dst.smoothing_levels()[0]
    lam_dst = conv_spectrum(d1.A.weight, 32, dtype=torch.complex64)
    assert lam_dst.real.max() > 2 * lam_src.real.max()  # galerkin really moved the spectrum
    assert 1 / d1.coeffs[0].item() == pytest.approx(lam_dst.real.max().item(), rel=1e-4)
    assert 1 / d1.coeffs[1].item() == pytest.approx(lam_dst.real.min().item(), rel=1e-4)


def test_rescale_equals_keep_when_A_and_grid_do_not_change():
    src = poly("poly-g6", seed=0)
    same = poly("poly-g6", seed=1)  # same resolution: 'transfer' copies A, the boxes agree
    diags = transfer_weights(src, same, "transfer", coefficient_policy="rescale")
    assert {d.kind for d in diags if "coeff" in d.name} == {"coefficient-rescale"}
    for a, b in zip(coeffs(src), coeffs(same)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    # 16 → 32 with the same A: the finest level's spectrum (16 vs 32 points per axis) barely grows
    fine = poly("poly-g6", res=32, seed=1)
    transfer_weights(src, fine, "transfer", coefficient_policy="rescale")
    lv_s, lv_f = src.smoothing_levels()[0], fine.smoothing_levels()[0]
    for a, b in zip(lv_s.coeffs, lv_f.coeffs):
        assert torch.allclose(a, b, rtol=0.1, atol=1e-6)


def test_restrict_direction_and_models_without_coefficients():
    fine, coarse = poly(res=32, seed=0), poly(res=16, seed=1)
    transfer_weights(fine, coarse, "galerkin", direction="restrict", coefficient_policy="respectral")
    lv = coarse.smoothing_levels()[0]
    rho = conv_spectrum(lv.A.weight, 16).real.abs().max().item()
    assert lv.coeffs[0].item() == pytest.approx(1 / rho**2, rel=1e-4)
    # MgNet (levels but no coefficients) and the thesis CNN (no levels): every policy is keep
    for name, opts, res in [("mgnet[1,1]-[4]-Bl", {}, 16), ("cnn", {"pool": False}, 14)]:
        torch.manual_seed(0)
        a = build_model(name, opts, 1, 10, res)
        b = build_model(name, opts, 1, 10, 2 * res)
        for pol in COEFFICIENT_POLICIES:
            transfer_weights(a, b, "galerkin", coefficient_policy=pol)
    # without resolutions the spectra's grids are unknown
    src, dst = poly(), poly(res=32)
    del src.resolution, dst.resolution
    with pytest.raises(ValueError, match="resolution"):
        transfer_weights(src, dst, "galerkin", coefficient_policy="rescale")


def test_cli_transfer_with_rescale(mres_cli, tmp_path):
    src = poly(res=16)
    arch = {"name": "poly-g4", "options": TINY, "in_channels": 3, "num_classes": 10}
    ckpt = save_checkpoint(tmp_path / "c.pt", {"model": src.state_dict(), "arch": arch, "resolution": 16})
    out = tmp_path / "f.pt"
    r = mres_cli("transfer", str(ckpt), "--to", "fine", "--strategy", "galerkin", "--coefficient-policy", "rescale",
                 "--out", str(out), "--samples", "0", env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr + r.stdout
    assert "coefficient-rescale" in r.stdout
    expect = poly(res=32, seed=5)
    transfer_weights(src, expect, "galerkin", coefficient_policy="rescale")
    moved = torch.load(out, weights_only=True)["model"]
    for name, value in expect.state_dict().items():
        if name.endswith("coeff"):
            assert torch.allclose(moved[name], value), name
    bad = mres_cli("transfer", str(ckpt), "--to", "fine", "--coefficient-policy", "lfa", "--out", str(out))
    assert bad.returncode == 2 and "keep, rescale, respectral" in (bad.stderr + bad.stdout)

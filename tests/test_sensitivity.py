"""Coefficient sensitivity: the BN after a step's update makes its coefficient scale-free (seed 000 placements)."""

from __future__ import annotations

import pytest
import torch

from mres.models import build_model
from mres.analysis.sensitivity import coefficient_sensitivity, scale_free_reason


def _rows(name: str, **opts):
    torch.manual_seed(0)
    model = build_model(name, {"widths": [6, 8], "spectrum_boundary": "periodic", **opts}, 3, 10, 16)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = coefficient_sensitivity(model, x, y)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # parameters and BN stats kept
    return model, rows


def test_default_g4_steps_are_scale_free_and_measured_so():
    model, rows = _rows("poly-g4")
    assert [(r["level"], r["kind"]) for r in rows] == [(1, "g"), (1, "g"), (2, "g"), (2, "g")]
    for r in rows:  # default g4 row: update bn-relu → flagged, and the measurement agrees
        assert r["scale_free"] and "sign" in r["scale_free"]
        assert r["logit_change"] < 1e-4 and r["grad_norm"] < 1e-4


def test_without_the_bn_the_same_steps_act():
    _, rows = _rows("poly-g4", update="relu")  # seed 000 Table 1 style: no BN after p(A) r
    assert all(r["scale_free"] is None for r in rows)
    assert min(r["logit_change"] for r in rows) > 1e-3 and min(r["grad_norm"] for r in rows) > 1e-4


def test_pair_steps_under_g8_keep_only_the_ratio_and_under_g6_the_imaginary_part_acts():
    _, g8 = _rows("poly-g8")  # pair_update: bn
    _, g6 = _rows("poly-g6")  # pair_update: plain
    pairs8 = [r for r in g8 if r["kind"] == "c"]
    pairs6 = [r for r in g6 if r["kind"] == "c"]
    assert pairs8 and all("2·Re z" in r["scale_free"] for r in pairs8)
    assert all(r["logit_change"] < 1e-4 and r["imag_change"] < 1e-4 for r in pairs8)
    assert all(r["scale_free"] is None and r["logit_change"] > 1e-3 and r["imag_change"] > 1e-4 for r in pairs6)


def test_reason_names_the_placement():
    model = build_model("poly-q2", {"widths": [4], "update": "bn"}, 3, 10, 8)
    assert "update: bn" in scale_free_reason(model.levels[0].steps[0])
    plain = build_model("poly-q2", {"widths": [4]}, 3, 10, 8)  # q2's best row: update plain
    assert scale_free_reason(plain.levels[0].steps[0]) is None


def test_coarse_to_fine_report_of_poly_mgnet_has_the_sensitivity_section(tmp_path):
    from mres.c2f.job import run_coarse_to_fine
    from mres.recipe import CoarseToFineRecipe, validate_recipe

    rec = validate_recipe({"dataset": {"name": "synthetic", "synthetic": {"n_train": 96, "n_test": 32, "size": 16,
                                                                          "channels": 3}},
                           "model": {"name": "poly-g4", "widths": [4, 6]}, "resolutions": [8, 16],
                           "strategies": ["transfer"], "coarse": {"epochs": 1, "batch_size": 32},
                           "fine": {"epochs": 1, "batch_size": 32}}, CoarseToFineRecipe)
    run_coarse_to_fine(rec, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "trial0" / "coarse-8" / "sensitivity.json").exists()
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Coefficient sensitivity (Poly-MgNet, trial 0, end of each phase)" in report
    assert "**transfer/fine-16**" in report and "yes: the BN after its update" in report


def test_transfer_diagnostics_record_where_the_spectrum_and_roots_land(tmp_path):
    import json

    from mres.c2f.job import run_coarse_to_fine
    from mres.recipe import CoarseToFineRecipe, validate_recipe
    from mres.grids.spectrum import conv_spectrum, polynomial_roots

    rec = validate_recipe({"dataset": {"name": "synthetic", "synthetic": {"n_train": 64, "n_test": 32, "size": 16,
                                                                          "channels": 3}},
                           "model": {"name": "poly-q2", "widths": [4, 6], "spectrum_boundary": "periodic"},
                           "resolutions": [8, 16], "strategies": ["galerkin"], "coefficient_policies": ["respectral"],
                           "coarse": {"epochs": 1, "batch_size": 32}, "fine": {"epochs": 1, "batch_size": 32}},
                          CoarseToFineRecipe)
    run_coarse_to_fine(rec, tmp_path / "run", progress=False)
    phase = tmp_path / "run" / "trial0" / "galerkin-respectral" / "fine-16"
    spectra = json.loads((phase / "diagnostics.json").read_text())["spectra"]
    assert [s["level"] for s in spectra] == [1, 2] and [s["dst"]["grid"] for s in spectra] == [16, 8]
    # the recorded destination box is that of the transferred start model's A (independent recomputation)
    from mres.training.checkpoint import load_checkpoint, model_from_checkpoint

    start = model_from_checkpoint(load_checkpoint(phase / "checkpoints" / "start.pt"))
    lv = start.smoothing_levels()[0]
    eigs = conv_spectrum(lv.A.weight, 16)
    assert spectra[0]["dst"]["box"][1] == pytest.approx(eigs.real.max().item(), rel=1e-4)
    roots = polynomial_roots(lv.kinds, list(lv.coeffs))
    assert spectra[0]["dst"]["roots"][0][0] == pytest.approx(roots[0].real.item(), rel=1e-5)

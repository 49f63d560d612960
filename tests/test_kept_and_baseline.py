"""The job's honest reference and what each transfer kept (summary.json, report)."""

import json

import pytest
import torch.nn as nn

from mres.c2f.job import run_coarse_to_fine
from conftest import Gain
from mres.errors import UserError
from mres.models.registry import ModelFamily, ModelOptions, register_family
from mres.recipe import CoarseToFineRecipe, validate_recipe

# weight decay 0.9 at lr 1 shrinks every weight tenfold per step: the model falls to the class prior
COLLAPSE = {"epochs": 2, "batch_size": 32, "optimizer": {"lr": 1.0, "momentum": 0.0, "weight_decay": 0.9},
            "schedule": "constant"}


def recipe(**kw):
    raw = {"dataset": {"name": "synthetic", "synthetic": {"n_train": 256, "n_test": 64, "size": 16}},
           "model": {"name": "cnn", "width1": 4, "width2": 8}, "resolutions": [8, 16],
           "coarse": {"epochs": 3, "batch_size": 32}, "fine": {"epochs": 1, "batch_size": 32},
           "trials": 1, "eval_train": False}
    raw.update(kw)
    return validate_recipe(raw, CoarseToFineRecipe)


def test_a_collapsed_fine_only_is_never_the_reference(tmp_path):
    s = run_coarse_to_fine(recipe(fine_only=COLLAPSE, strategies=["fresh", "fine-only", "transfer"]), tmp_path,
                           progress=False)
    assert s["strategies"]["fine-only"]["collapsed"] == [True]
    assert s["baseline"] == "fresh" and s["time_to_accuracy"]["baseline"] == "fresh"
    assert s["time_to_accuracy"]["levels"][0] == pytest.approx(s["strategies"]["fresh"]["acc_final"][0])
    assert set(s["statistics"]["transfer"]["vs"]) == {"fresh"}
    assert "`fine-only` collapsed" in s["baseline_note"] and "the reference is `fresh`" in s["baseline_note"]
    assert "the reference is `fresh`" in (tmp_path / "report.md").read_text()


def test_without_a_baseline_that_trained_there_are_no_speedups(tmp_path):
    s = run_coarse_to_fine(recipe(fine_only=COLLAPSE, strategies=["fine-only", "transfer"]), tmp_path,
                           progress=False)
    assert s["baseline"] is None and s["time_to_accuracy"] == {}
    assert "no baseline trained" in s["baseline_note"]
    md = (tmp_path / "report.md").read_text()
    assert "no baseline trained" in md and "speedup at" not in md


def test_kept_is_the_accuracy_after_the_transfer_minus_the_coarse_models(tmp_path):
    s = run_coarse_to_fine(recipe(strategies=["fresh", "transfer", "galerkin-data", "distill"],
                                  galerkin_data={"calibration": 128}, distill={"steps": 5}), tmp_path,
                           progress=False)
    coarse = json.loads((tmp_path / "trial0" / "coarse-8" / "result.json").read_text())
    c_acc = coarse["metrics"][-1]["test_acc"]
    for label in ("transfer", "galerkin-data", "distill"):
        v = s["strategies"][label]
        assert v["coarse_acc"] == [c_acc]
        assert v["kept"][0] == pytest.approx(v["acc_at_transfer"][0] - c_acc)
    assert s["strategies"]["fresh"]["kept"] == [None]
    diag = json.loads((tmp_path / "trial0" / "galerkin-data" / "fine-16" / "diagnostics.json").read_text())
    assert [r["layer"] for r in diag["data_fit"]] == ["conv1", "conv2", "classifier"]
    d = s["strategies"]["distill"]  # its steps count as training seconds
    phase = json.loads((tmp_path / "trial0" / "distill" / "fine-16" / "result.json").read_text())
    steps = json.loads((tmp_path / "trial0" / "distill" / "fine-16" / "diagnostics.json").read_text())["distill"]
    assert steps["steps"] == 5 and steps["seconds"] > 0
    assert d["train_seconds"][0] == pytest.approx(coarse["train_seconds"] + d["transfer_seconds"][0]
                                                  + phase["train_seconds"] + steps["seconds"])
    assert "What the transfer kept" in (tmp_path / "report.md").read_text()


def _gain_cnn(name, opts, in_channels, num_classes, resolution):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), Gain(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))


def test_galerkin_data_names_a_layer_it_cannot_fit_before_any_training(tmp_path):
    register_family(ModelFamily("gain-cnn", lambda n: n == "gain-cnn", ModelOptions, _gain_cnn, lambda n, o: 1))
    with pytest.raises(UserError, match=r"galerkin-data at 16×16: galerkin-data cannot fit 1 \(Gain: parameters gain\)"):
        run_coarse_to_fine(recipe(model={"name": "gain-cnn"}, strategies=["transfer", "galerkin-data"]),
                           tmp_path, progress=False)
    assert not list(tmp_path.glob("trial0/coarse-8/result.json"))


@pytest.mark.parametrize("model", [{"name": "poly-g4", "widths": [4]}, {"name": "mgnet[2,1]-[4]", "pi": "pi2"}])
def test_galerkin_data_runs_on_multigrid_models_and_records_lambda_per_layer(tmp_path, model):
    s = run_coarse_to_fine(recipe(model=model, strategies=["transfer", "galerkin-data"],
                                  galerkin_data={"calibration": 64}), tmp_path, progress=False)
    diag = json.loads((tmp_path / "trial0" / "galerkin-data" / "fine-16" / "diagnostics.json").read_text())
    assert {r["lam_by"] for r in diag["data_fit"]} == {"gcv"} and all(r["lam"] > 0 for r in diag["data_fit"])
    assert any(r["calls"] > 1 for r in diag["data_fit"])
    assert s["strategies"]["galerkin-data"]["acc_at_transfer"][0] is not None

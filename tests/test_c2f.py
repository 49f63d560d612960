"""The coarse-to-fine job end to end on small synthetic data (real training, real transfer)."""

import json

import numpy as np
import pytest
import torch

from mres.c2f.job import run_coarse_to_fine
from mres.recipe import CoarseToFineRecipe, validate_recipe


def tiny_recipe(**kw):
    raw = {"dataset": {"name": "synthetic", "synthetic": {"n_train": 256, "n_test": 64, "size": 16}},
           "model": {"name": "cnn", "width1": 4, "width2": 8},
           "resolutions": [8, 16], "coarse": {"epochs": 3, "batch_size": 32}, "fine": {"epochs": 2, "batch_size": 32},
           "trials": 2, "lams": [0.1, 10.0]}
    raw.update(kw)
    return validate_recipe(raw, CoarseToFineRecipe)


def test_two_grid_run_writes_summary_and_report(tmp_path):
    summary = run_coarse_to_fine(tiny_recipe(), tmp_path, progress=False)
    labels = list(summary["strategies"])
    assert labels == ["fresh", "fine-only", "transfer", "galerkin", "galerkin-reg(lam=0.1)", "galerkin-reg(lam=10)"]
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for s in on_disk["strategies"].values():
        for key in ("acc_at_transfer", "acc_after_first_epoch", "acc_final", "seconds"):
            assert len(s[key]) == 2
        assert all(0.0 <= a <= 1.0 for a in s["acc_at_transfer"])
    # the coarse model is shared: transfer starts far above chance, fresh starts near it
    st = on_disk["strategies"]
    assert min(st["transfer"]["acc_at_transfer"]) > max(st["fresh"]["acc_at_transfer"])
    md = (tmp_path / "report.md").read_text()
    for label in labels:
        assert label in md
    assert "Galerkin residual" in md and "convergence.png" in md
    assert (tmp_path / "figures" / "convergence.png").stat().st_size > 10_000
    assert (tmp_path / "report.html").read_text().startswith("<!doctype html>")
    # diagnostics: galerkin is exact (residual ~0), transfer is not
    diag = json.loads((tmp_path / "trial0" / "galerkin" / "fine-16" / "diagnostics.json").read_text())
    conv = [d for d in diag["layers"] if d["kind"].startswith("conv")]
    assert conv and max(d["galerkin_residual"] for d in conv) < 1e-6
    diag_t = json.loads((tmp_path / "trial0" / "transfer" / "fine-16" / "diagnostics.json").read_text())
    assert max(d["galerkin_residual"] for d in diag_t["layers"] if d["kind"].startswith("conv")) > 1e-2


def test_cascade_runs_three_grids_and_resumes(tmp_path):
    rec = tiny_recipe(resolutions=[4, 8, 16], trials=1, strategies=["fresh", "galerkin-reg"], lams=[0.1],
                      dataset={"name": "synthetic", "synthetic": {"n_train": 128, "n_test": 32, "size": 16}})
    summary = run_coarse_to_fine(rec, tmp_path, progress=False)
    vdir = tmp_path / "trial0" / "galerkin-reg-lam0.1"
    assert (vdir / "fine-8" / "checkpoints" / "last.pt").exists()
    assert (vdir / "fine-16" / "checkpoints" / "last.pt").exists()
    assert not (tmp_path / "trial0" / "fresh" / "fine-8").exists()  # fresh trains at the finest grid only
    assert torch.load(vdir / "fine-16" / "checkpoints" / "last.pt", weights_only=True)["resolution"] == 16
    # a second run resumes: every phase is finished, so nothing is retrained and results agree
    stamp = (vdir / "fine-16" / "checkpoints" / "last.pt").stat().st_mtime_ns
    again = run_coarse_to_fine(rec, tmp_path, progress=False)
    assert (vdir / "fine-16" / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp
    assert again["strategies"]["galerkin-reg(lam=0.1)"]["acc_final"] == summary["strategies"]["galerkin-reg(lam=0.1)"]["acc_final"]


def test_diverging_strategy_is_marked_not_fatal(tmp_path):
    rec = tiny_recipe(trials=1, strategies=["transfer"], fine={"epochs": 2, "optimizer": {"lr": 1e6}})
    summary = run_coarse_to_fine(rec, tmp_path, progress=False)
    assert summary["strategies"]["transfer"]["diverged"] == [True]
    assert "1/1" in (tmp_path / "report.md").read_text()


def test_cli_coarse_to_fine_with_overrides(mres_cli, small_npz, tmp_path):
    r = mres_cli("coarse-to-fine", "--set", "trials=1", "--set", "dataset.name=npz",
                 "--set", f"dataset.path={small_npz}", "--set", "resolutions=[8,16]",
                 "--set", "coarse.epochs=1", "--set", "fine.epochs=1", "--set", "strategies=[transfer,galerkin]",
                 "--set", "model.width1=4", "--set", "model.width2=4", "--out", str(tmp_path / "run"), "--quiet",
                 "--set", "analysis.landscape.grid=3x3", "--set", "analysis.landscape.samples=16",
                 "--set", "analysis.features.channels=[0]")
    assert r.returncode == 0, r.stderr
    assert "start" in r.stdout and "epoch 1" in r.stdout and (tmp_path / "run" / "report.md").exists()
    md = (tmp_path / "run" / "report.md").read_text()
    assert "Loss landscapes" in md and "Propagated features" in md
    # coarse minimum + start and end of both strategies, one colour scale
    with np.load(tmp_path / "run" / "landscape" / "landscape.npz") as z:
        assert z["loss"].shape == (5, 3, 3)
    r2 = mres_cli("report", str(tmp_path / "run"))
    assert r2.returncode == 0 and "galerkin" in r2.stdout
    bad = mres_cli("coarse-to-fine", "--set", "strategies=[transfer,magic]", "--set", "resolutions=[7,28]")
    assert bad.returncode == 2 and "strategies.1" in bad.stderr and "resolutions" in bad.stderr


def test_cli_transfer_roundtrip_restores_stencils(mres_cli, tmp_path):
    run = tmp_path / "run"
    r = mres_cli("train", "--set", "dataset.name=synthetic", "--set", "resolution=14", "--set", "train.epochs=1",
                 "--set", "dataset.synthetic.n_train=200", "--set", "dataset.synthetic.n_test=50",
                 "--set", "model.width1=4", "--set", "model.width2=8", "--out", str(run), "--quiet")
    assert r.returncode == 0, r.stderr
    ck = run / "checkpoints" / "last.pt"
    up = mres_cli("transfer", str(ck), "--to", "fine", "--strategy", "galerkin", "--out", str(tmp_path / "fine.pt"))
    assert up.returncode == 0, up.stderr
    assert "function preservation" in up.stdout
    down = mres_cli("transfer", str(tmp_path / "fine.pt"), "--to", "coarse", "--strategy", "galerkin",
                    "--out", str(tmp_path / "back.pt"))
    assert down.returncode == 0, down.stderr
    a = torch.load(ck, weights_only=True)["model"]
    fine = torch.load(tmp_path / "fine.pt", weights_only=True)
    b = torch.load(tmp_path / "back.pt", weights_only=True)
    assert fine["resolution"] == 28 and b["resolution"] == 14
    for name in ("conv1.weight", "conv2.weight"):
        assert (a[name] - b["model"][name]).abs().max() < 1e-5
    bad = mres_cli("transfer", str(ck), "--to", "sideways", "--out", str(tmp_path / "x.pt"))
    assert bad.returncode == 2 and "fine, coarse" in bad.stderr
    for flag, value, allowed in (("--strategy", "magic", "galerkin-reg"), ("--family", "bicubic", "average-bilinear"),
                                 ("--lam", "-1", ">= 0"), ("--coefficient-policy", "bogus", "respectral")):
        bad = mres_cli("transfer", str(ck), "--to", "fine", flag, value, "--out", str(tmp_path / "x.pt"))
        assert bad.returncode == 2 and allowed in bad.stderr and flag in bad.stderr and "Traceback" not in bad.stderr, flag


def test_every_variant_is_restricted_to_the_coarser_grids_and_evaluated_there(tmp_path):
    from mres.training.checkpoint import load_checkpoint
    from mres.training.data import load_dataset
    from mres.grids.operators import restrict_dual_images, restrict_stencils
    from mres.models import build_model
    from mres.training.fit import evaluate

    rec = tiny_recipe(trials=1, strategies=["fresh", "galerkin"], model={"name": "cnn", "width1": 4, "width2": 8,
                                                                         "pool": False})
    run_coarse_to_fine(rec, tmp_path, progress=False)
    rows = json.loads((tmp_path / "trial0" / "galerkin" / "restricted.json").read_text())
    assert {(r["rule"], r["resolution"]) for r in rows} == {("galerkin", 8), ("transfer", 8)}
    # independently: the fine checkpoint's tensors restricted by hand (M θ for the stencils, Pᵀ for the head)
    fine = load_checkpoint(tmp_path / "trial0" / "galerkin" / "fine-16" / "checkpoints" / "last.pt")["model"]
    data = load_dataset(rec.dataset)
    coarse_data = data.subset(rec.fine_subset, None, seed=rec.seed + 7).at_resolution(8, rec.family)
    model = build_model("cnn", rec.model.options(), data.in_channels, data.num_classes, 8)
    state = {}
    for k, v in fine.items():
        if v.dim() == 4 and v.shape[-1] == 3:
            state[k] = restrict_stencils(v, rec.family)
        elif k.endswith("weight") and v.dim() == 2:
            c, h, w = model.classifier.grid
            state[k] = restrict_dual_images(v.reshape(v.shape[0], c, 2 * h, 2 * w), rec.family).reshape(v.shape[0], -1)
        else:
            state[k] = v
    model.load_state_dict(state)
    _, acc = evaluate(model, coarse_data.x_test, coarse_data.y_test)
    assert next(r for r in rows if r["rule"] == "galerkin")["test_acc"] == pytest.approx(acc, abs=1e-9)
    md = (tmp_path / "report.md").read_text()
    assert "Accuracy at each grid after restriction" in md and "8×8 galerkin" in md


def test_the_mgopt_variant_starts_as_transfer_and_takes_coarse_corrections(tmp_path):
    rec = tiny_recipe(trials=1, strategies=["transfer", "mgopt"], resolutions=[4, 8, 16],
                      multilevel={"every": 2, "tau_batch": 64, "coarse_steps": 2, "coarse_lr": 0.05})
    summary = run_coarse_to_fine(rec, tmp_path, progress=False)
    st = summary["strategies"]
    start = lambda v: torch.load(tmp_path / "trial0" / v / "fine-8" / "checkpoints" / "start.pt", weights_only=True)["model"]  # noqa: E731
    a, b = start("transfer"), start("mgopt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same start: transfer's
    for res in (8, 16):  # a two-grid cycle at 8 (down to 4), a V-cycle 16 → 8 → 4 at 16
        log = json.loads((tmp_path / "trial0" / "mgopt" / f"fine-{res}" / "mgopt.json").read_text())
        steps = 2 * 8  # 2 fine epochs of 256 examples in batches of 32
        assert len(log["alphas"]) == steps // 2 and all(0.0 <= x <= 1.0 for x in log["alphas"])
        assert any(x > 0 for x in log["alphas"])  # some corrections were taken
    assert st["mgopt"]["acc_final"] != st["transfer"]["acc_final"] or st["mgopt"]["seconds"] != st["transfer"]["seconds"]
    assert "mgopt" in (tmp_path / "report.md").read_text()


def test_the_joint_variant_trains_the_finest_weights_on_every_grid(tmp_path):
    base = dict(trials=1, resolutions=[4, 8, 16], strategies=["fine-only", "joint"], fine_only={"epochs": 2})
    # with every coarse weight c_l = 0 the joint loss is the fine loss: the run equals fine-only
    off = run_coarse_to_fine(tiny_recipe(**base, joint={"weights": [1.0, 0.0, 0.0]}), tmp_path / "off", progress=False)
    a, b = off["strategies"]["fine-only"], off["strategies"]["joint"]
    assert b["acc_final"] == pytest.approx(a["acc_final"], abs=1e-6)
    assert b["acc_after_first_epoch"] == pytest.approx(a["acc_after_first_epoch"], abs=1e-6)
    on = run_coarse_to_fine(tiny_recipe(**base), tmp_path / "on", progress=False)
    m = lambda d, v: json.loads((tmp_path / d / "trial0" / v / "fine-16" / "result.json").read_text())["metrics"]  # noqa: E731
    assert m("on", "joint")[0]["train_loss"] != pytest.approx(m("on", "fine-only")[0]["train_loss"], rel=1e-6)
    assert (tmp_path / "on" / "trial0" / "joint" / "restricted.json").exists()
    with pytest.raises(Exception, match="joint.weights needs one value per grid"):
        tiny_recipe(**base, joint={"weights": [1.0, 0.5]})


def test_the_convergence_figure_skips_the_nulls_of_a_diverged_epoch(tmp_path):
    from mres.c2f.report import _convergence_figure

    rows = {"coarse-8": [{"train_loss": 2.0, "test_acc": 0.3}, {"train_loss": 1.5, "test_acc": 0.4}],
            "galerkin/fine-16": [{"train_loss": 1.2, "test_acc": 0.5}, {"train_loss": None, "test_acc": None}]}
    for t in (0, 1):
        for sub, metrics in rows.items():
            d = tmp_path / f"trial{t}" / sub
            d.mkdir(parents=True)
            (d / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in metrics) + "\n")
    summary = {"resolutions": [8, 16], "trials": 2, "strategies": {"galerkin": {"acc_at_transfer": [0.45, None]}}}
    assert _convergence_figure(tmp_path, summary, tmp_path / "c.png")  # drawn, no TypeError on the nulls
    assert (tmp_path / "c.png").stat().st_size > 10_000

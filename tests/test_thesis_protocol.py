"""The thesis protocol (seed 003 §3.2.1, §4.1–4.4): its schedule, regularisation, init, staged retraining."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mres.c2f.job as c2f_module
from mres.c2f.job import run_coarse_to_fine
from mres.training.checkpoint import load_checkpoint
from mres.training.data import load_dataset
from mres.errors import UserError
from mres.models import build_model
from mres.recipe import CoarseToFineRecipe, DatasetConfig, load_recipe, validate_recipe
from mres.training.fit import fit, trainable
from torch.optim.optimizer import register_optimizer_step_pre_hook

ROOT = Path(__file__).resolve().parents[1]
THESIS_CNN = {"pool": True, "width1": 4, "width2": 8, "classifier_init": "dct-uniform",
              "smooth_classifier": 0.03125, "tikhonov": 0.125}


def _synthetic(n_train: int = 96, size: int = 16):
    cfg = DatasetConfig(name="synthetic", synthetic={"n_train": n_train, "n_test": 32, "size": size})
    return load_dataset(cfg, torch.device("cpu"))


def test_thesis_schedule_lr_per_epoch_is_0p003_over_sqrt_half_e():
    rec = load_recipe(ROOT / "recipes" / "thesis_table41.yaml", [], CoarseToFineRecipe)
    cfg = rec.fine.model_copy(update={"epochs": 4})
    data = _synthetic()
    model = build_model("cnn", THESIS_CNN, 1, 10, 16)
    seen: list[float] = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    try:
        rows = fit(model, data, cfg, progress=False)
    finally:
        handle.remove()
    spe = math.ceil(96 / 32)
    assert len(seen) == 4 * spe
    for e in range(1, 5):  # every step of epoch e (1-based), and the lr the epoch's row records
        want = 0.003 / math.sqrt(0.5 * e)
        assert seen[(e - 1) * spe:e * spe] == pytest.approx([want] * spe, rel=1e-12)
        assert rows[e - 1]["lr"] == pytest.approx(want, rel=1e-12)


def test_regularisation_is_the_thesis_terms_added_once_to_the_batch_mean_loss():
    # R(θ, w) = ½·2⁻³‖θ‖² (conv weights) + ½α‖∇_h w‖² (class images, α×4 on the coarse grid), numpy-built
    model = build_model("cnn", THESIS_CNN, 1, 10, 16)
    model.reference_resolution = 32  # this is the coarse grid of a 16 → 32 run: α × 4
    conv = sum(float((m.weight.detach().double() ** 2).sum()) for m in (model.conv1, model.conv2))
    w = model.classifier.weight_images().detach().double().numpy()
    grad_sq = float((np.diff(w, axis=-1) ** 2).sum() + (np.diff(w, axis=-2) ** 2).sum())
    want = 0.5 * 0.125 * conv + 0.5 * (4 * 0.03125) * grad_sq
    assert float(model.regularization().detach()) == pytest.approx(want, rel=1e-5)
    # one plain-SGD step of fit on one batch of 8: θ ← θ − lr·(∇ mean CE + ∇R) — R is not scaled by the batch
    data = _synthetic(n_train=8)
    model = build_model("cnn", THESIS_CNN, 1, 10, 16)
    ref = build_model("cnn", THESIS_CNN, 1, 10, 16)
    ref.load_state_dict(model.state_dict())
    cfg = validate_recipe({"coarse": {"epochs": 1, "batch_size": 8, "channels_last": False, "schedule": "constant",
                                      "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0}}},
                          CoarseToFineRecipe).coarse
    fit(model, data, cfg, progress=False)
    x, y = data.x_train, data.y_train
    mean_ce = F.cross_entropy(ref(x), y)
    grads = torch.autograd.grad(mean_ce + ref.regularization(), list(ref.parameters()))
    for (name, p), p0, g in zip(model.named_parameters(), ref.parameters(), grads):
        torch.testing.assert_close(p.detach(), (p0 - 0.5 * g).detach(), rtol=1e-4, atol=1e-6, msg=name)


def test_dct_uniform_init_is_smooth_at_the_draws_scale():
    torch.manual_seed(0)
    model = build_model("cnn", {"pool": False, "classifier_init": "dct-uniform"}, 1, 10, 28)
    w = model.classifier.weight_images().detach()
    raw = torch.empty_like(w).uniform_(-0.2, 0.2)
    rough = lambda t: float(((t[..., 1:] - t[..., :-1]) ** 2).mean() / (t ** 2).mean())  # noqa: E731
    assert rough(w) < 0.2 * rough(raw)  # smooth: neighbours agree far more than in raw U(-0.2, 0.2) draws
    assert 0.005 < float(w.std()) < 0.2 and float(w.abs().max()) <= 0.2  # the draws' scale, not 1/√fan-in
    normal = build_model("cnn", {"pool": False, "classifier_init": "dct-smooth"}, 1, 10, 28).classifier.weight.detach()
    assert float(normal.std()) == pytest.approx(1 / math.sqrt(64 * 28 * 28), rel=0.05)


def _staged(**kw):
    raw = {"dataset": {"name": "synthetic", "synthetic": {"n_train": 128, "n_test": 32, "size": 16}},
           "model": {"name": "cnn", **THESIS_CNN}, "resolutions": [8, 16], "strategies": ["fresh", "galerkin"],
           "coarse": {"epochs": 1, "batch_size": 32, "deterministic": True},
           "fine": {"batch_size": 32, "deterministic": True,
                    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.01},
                    "stages": [{"params": "classifier", "epochs": 1},
                               {"params": "all", "epochs": 2}]},
           "trials": 1, "bn_recalibrate": False}
    raw.update(kw)
    return validate_recipe(raw, CoarseToFineRecipe)


@pytest.mark.parametrize("optimizer", ["sgd", "cg-steihaug"])
def test_frozen_parameters_are_bit_identical_after_a_classifier_only_stage(tmp_path, optimizer):
    rec = _staged()
    if optimizer == "cg-steihaug":
        rec = _staged(fine={**rec.fine.model_dump(exclude={"stages", "epochs"}, exclude_unset=True),
                            "stages": [{"params": "classifier", "epochs": 1,
                                        "optimizer": {"name": "cg-steihaug", "max_cg_iters": 3}},
                                       {"params": "all", "epochs": 1}]})
    run_coarse_to_fine(rec, tmp_path / "run", progress=False)
    for variant in ("fresh", "galerkin"):
        phase = tmp_path / "run" / "trial0" / variant / "fine-16"
        start = load_checkpoint(phase / "checkpoints" / "start.pt")["model"]
        stage1 = load_checkpoint(phase / "stage1-classifier" / "checkpoints" / "last.pt")
        end = load_checkpoint(phase / "checkpoints" / "last.pt")["model"]
        assert stage1["stage"] == {"index": 1, "of": 2, "params": "classifier"}
        for k in ("conv1.weight", "conv2.weight"):  # frozen: no update, no weight decay, no Tikhonov pull
            assert torch.equal(stage1["model"][k], start[k]), (variant, k)
            assert not torch.equal(end[k], start[k]), (variant, k)  # ... and trained in the next stage
        assert not torch.equal(stage1["model"]["classifier.weight"], start["classifier.weight"])
    import json

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    stages = summary["strategies"]["galerkin"]["stages"][0]
    assert [s["params"] for s in stages] == ["classifier", "all"]
    assert stages[1]["start"] == stages[0]["end"]  # stage 2 starts where stage 1 ended
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Staged retraining (thesis Table 4.3 layout)" in report and "S1 Initial train" in report


def test_staged_phase_resumes_inside_a_stage_as_if_never_stopped(tmp_path, monkeypatch):
    rec = _staged(strategies=["galerkin"])
    run_coarse_to_fine(rec, tmp_path / "whole", progress=False)
    real_fit = c2f_module.fit

    def stopping_fit(*args, **kw):  # Ctrl-C after the first epoch of stage 2
        if "stage 2/2" in kw.get("label", ""):
            def stop(row):
                raise KeyboardInterrupt
            kw["on_epoch"] = stop
        return real_fit(*args, **kw)

    monkeypatch.setattr(c2f_module, "fit", stopping_fit)
    with pytest.raises(Exception, match="interrupted"):
        run_coarse_to_fine(rec, tmp_path / "cut", progress=False)
    phase = tmp_path / "cut" / "trial0" / "galerkin" / "fine-16"
    mid = load_checkpoint(phase / "stage2-all" / "checkpoints" / "last.pt")
    assert mid["epoch"] == 1 and mid["stage"]["index"] == 2 and not (phase / "result.json").exists()
    monkeypatch.setattr(c2f_module, "fit", real_fit)
    run_coarse_to_fine(rec, tmp_path / "cut", progress=False)
    a = load_checkpoint(tmp_path / "whole" / "trial0" / "galerkin" / "fine-16" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(phase / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_trainable_restores_requires_grad_and_knows_the_head():
    model = build_model("cnn", THESIS_CNN, 1, 10, 16)
    with trainable(model, "features"):
        assert not model.classifier.weight.requires_grad and model.conv1.weight.requires_grad
    with trainable(model, "classifier"):
        assert model.classifier.weight.requires_grad and not model.conv2.weight.requires_grad
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("raw, key, words", [
    ({"coarse": {"optimizer": {"name": "cg-steihaug", "lr": 0.1}}}, "coarse.optimizer", "lr do not apply"),
    ({"fine": {"optimizer": {"name": "sgd", "radius": 2.0}}}, "fine.optimizer", "radius apply to cg-steihaug"),
    ({"fine": {"optimizer": {"name": "cg-steihaug"}, "schedule": "cosine"}}, "fine", "does not apply to optimizer"),
    ({"fine": {"epochs": 3, "stages": [{"epochs": 2}]}}, "fine", "sum of the stages"),
    ({"fine": {"stages": [{"params": "head", "epochs": 2}]}}, "fine.stages.0.params", "classifier"),
    ({"schedule_scope": "run", "fine": {"stages": [{"epochs": 2}]}}, "fine.stages", "schedule_scope: run"),
    ({"fine_only": {"stages": [{"epochs": 1}]}}, "fine_only.stages", "one stage"),
])
def test_bad_optimizer_and_stage_keys_are_named(raw, key, words):
    with pytest.raises(UserError) as exc:
        validate_recipe(raw, CoarseToFineRecipe)
    msg = str(exc.value)
    assert key in msg and words in msg, msg


def test_mres_train_refuses_stages():
    from mres.recipe import TrainRecipe

    with pytest.raises(UserError, match=r"train: stages run in coarse-to-fine phases"):
        validate_recipe({"train": {"stages": [{"epochs": 1}]}}, TrainRecipe)


@pytest.mark.parametrize("table", ["41", "42", "43", "44"])
def test_thesis_recipes_hold_the_protocol(table):
    rec = load_recipe(ROOT / "recipes" / f"thesis_table{table}.yaml", [], CoarseToFineRecipe)
    opts = rec.model.options()
    assert (rec.coarse_subset, rec.fine_subset, rec.coarse.epochs) == (40000, 10000, 20)
    assert opts["tikhonov"] == 2 ** -3 and opts["smooth_classifier"] == 2 ** -5
    assert opts["pool"] is (table != "41") and opts["classifier_init"] == "dct-uniform"
    assert rec.strategies == ["fresh", "transfer", "galerkin"]
    assert rec.coarse.batch_size == rec.fine.batch_size == 32 and rec.coarse.schedule.name == "inverse-sqrt"
    stages = [(s.params, c.optimizer.name, c.epochs) for s, c in rec.fine.stage_configs()]
    assert stages == {"41": [], "42": [],
                      "43": [("classifier", "cg-steihaug", 5), ("all", "sgd", 10)],
                      "44": [("classifier", "cg-steihaug", 5), ("all", "cg-steihaug", 10)]}[table]
    assert rec.fine.epochs == (10 if table in ("41", "42") else 15)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format (big-endian magic 0x08 0x0N, then the dims, then uint8 data) — as MNIST ships it."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_thesis_recipe_takes_mnist_from_a_data_root(tmp_path):
    # torchvision's MNIST layout, made here (no download): DIR/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (40, 28, 28)), "t10k": rng.integers(0, 256, (12, 28, 28))}
    labels = {"train": np.arange(40) % 10, "t10k": np.arange(12) % 10}
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", images[split])
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels[split])
    rec = load_recipe(ROOT / "recipes" / "thesis_table42.yaml",
                      ["dataset.name=mnist", f"dataset.data_root={tmp_path}"], CoarseToFineRecipe)
    data = load_dataset(rec.dataset, torch.device("cpu"))
    assert tuple(data.x_train.shape) == (40, 1, 28, 28) and tuple(data.x_test.shape) == (12, 1, 28, 28)
    assert data.y_train.tolist() == labels["train"].tolist()
    # the images are the files' pixels (up to the per-channel normalisation)
    x = data.x_train[:, 0] * data.std[0] + data.mean[0]
    np.testing.assert_allclose(x.numpy(), images["train"] / 255.0, atol=1e-5)

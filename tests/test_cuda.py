"""Checks that need a CUDA device (``pytest -m cuda``; skipped where there is none). Run by
analysis/device_check.sh on an accelerator machine (issue: scale out, item 5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mres.analysis import landscape as ls
from mres.training.data import load_dataset
from mres.models import build_model
from mres.recipe import DatasetConfig, TrainConfig
from mres.training.fit import fit

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _data(device: str):
    return load_dataset(DatasetConfig(name="synthetic", synthetic={"n_train": 256, "n_test": 64, "size": 16}), device)


def _fit(device: str, name: str = "cnn", **kw):
    data = _data(device)
    torch.manual_seed(0)
    model = build_model(name, {}, data.in_channels, data.num_classes, data.resolution)
    cfg = TrainConfig(epochs=2, batch_size=32, deterministic=True, channels_last=False, amp=False,
                      optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9}, **kw)
    return fit(model.to(device), data, cfg, seed=0, progress=False)


@pytest.mark.parametrize("name", ["cnn", "mgnet[1,1]-[8]-Bl"])
def test_a_training_run_on_cuda_equals_the_cpu_run(name):
    cpu, gpu = _fit("cpu", name), _fit("cuda", name)
    for a, b in zip(cpu, gpu):  # fp32 without TF32 differences beyond summation order
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-3)


def test_bf16_autocast_and_channels_last_train():
    data = _data("cuda")
    torch.manual_seed(0)
    model = build_model("cnn", {}, data.in_channels, data.num_classes, data.resolution).cuda()
    rows = fit(model, data, TrainConfig(epochs=3, batch_size=32, amp=True, channels_last=True,
                                        optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9}), progress=False)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_landscape_vmap_equals_the_loop_on_cuda():
    torch.manual_seed(0)
    model = build_model("cnn", {"pool": False}, 1, 10, 28).cuda().eval()
    x, y = torch.randn(256, 1, 28, 28, device="cuda"), torch.randint(0, 10, (256,), device="cuda")
    dirs = ls.DirectionSet.generate([model], 2, seed=0).normalized_for(model)
    base = ls._moving_state(model, include_buffers=False)
    coords = torch.rand(16, 2) * 2 - 1
    loop = ls.SurfaceEvaluator(model, base, dirs, x, y, method="loop", batch_size=256).evaluate(coords)[0]
    vmap = ls.SurfaceEvaluator(model, base, dirs, x, y, method="vmap", chunk=8, batch_size=256).evaluate(coords)[0]
    assert torch.allclose(torch.as_tensor(loop), torch.as_tensor(vmap), rtol=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("model,sync_bn", [("cnn", False), ("mgnet[1,1]-[8]-Bl", True)])
def test_two_gpus_under_nccl_equal_one_process_with_the_global_batch(tmp_path, model, sync_bn):
    # with sync_bn the BN statistics are the global batch's, so a BN model matches one process too
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
dataset: {{name: synthetic, synthetic: {{n_train: 250, n_test: 64, size: 16}}}}
model: {{name: "{model}"}}
resolution: 16
device: cuda
train: {{epochs: 2, batch_size: 30, deterministic: true, channels_last: false, amp: false, sync_bn: {str(sync_bn).lower()},
        optimizer: {{name: sgd, lr: 0.05, momentum: 0.9}}}}
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "mres", "train", "--recipe", str(recipe), "--out", str(tmp_path / "one"),
                          "--quiet"], cwd=ROOT, env={**env, "CUDA_VISIBLE_DEVICES": "0"}, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2", "-m",
                          "mres", "train", "--recipe", str(recipe), "--out", str(tmp_path / "two"), "--quiet"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr
    rows = [[json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("one", "two")]
    for a, b in zip(*rows):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-4)

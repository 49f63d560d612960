"""The loop's speed knobs change nothing but speed: torch.compile, SyncBatchNorm's undo (issue: scale out)."""

from __future__ import annotations

import pytest
import torch

from mres.training.data import load_dataset
from mres.models import build_model
from mres.recipe import DatasetConfig, TrainConfig
from mres.training.fit import fit, plain_batchnorm


def _data():
    return load_dataset(DatasetConfig(name="synthetic", synthetic={"n_train": 100, "n_test": 40, "size": 8}))


def _model(data):
    torch.manual_seed(0)
    return build_model("mgnet[1,1]-[4]-Bl", {}, data.in_channels, data.num_classes, data.resolution)


def test_plain_batchnorm_undoes_convert_sync_batchnorm_with_the_same_tensors():
    data = _data()
    model = _model(data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {n: p for n, p in model.named_parameters()}
    torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    plain_batchnorm(model)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 0
    assert all(p is params[n] for n, p in model.named_parameters())  # the optimizer's tensors, not copies
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.slow  # inductor compiles C++ on the CPU: about a minute
def test_compiled_training_equals_eager():
    data = _data()
    cfg = dict(epochs=2, batch_size=32, deterministic=True, channels_last=False,
               optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9})
    eager = fit(_model(data), data, TrainConfig(**cfg), progress=False)
    compiled = fit(_model(data), data, TrainConfig(**cfg, compile=True), progress=False)
    for a, b in zip(eager, compiled):  # 100 = 3 batches + an uneven 4: both shapes warmed, no update by it
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=1e-6)


def test_configure_runtime_flushes_subnormals_unless_told_not_to():
    import torch

    from mres.training.fit import configure_runtime

    tiny = lambda: torch.tensor([1e-39]) * 1.0  # noqa: E731  (below float32's smallest normal, 1.2e-38)
    threads = torch.get_num_threads()
    try:
        configure_runtime(1, flush_denormal=False)
        assert float(tiny()) > 0
        configure_runtime(1)
        if not torch.set_flush_denormal(True):
            pytest.skip("this CPU cannot flush subnormals")
        assert float(tiny()) == 0.0
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)

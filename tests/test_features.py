"""Propagated features: one row per checkpoint, input + stage×channel columns per input."""

from __future__ import annotations

import pytest
import torch

from mres.training.checkpoint import save_checkpoint
from mres.errors import UserError
from mres.analysis.features import propagate_features, save_figure
from mres.models import build_model

RES = 8


def cnn(seed: int, pool: bool = False, res: int = RES):
    torch.manual_seed(seed)
    return build_model("cnn", {"pool": pool, "width1": 4, "width2": 6}, 1, 3, res).eval()


def geometry(fig):
    """(checkpoint rows, columns): the grid's last row holds the colour bars, one per feature column."""
    rows, cols = fig.axes[0].get_subplotspec().get_gridspec().get_geometry()
    bars = [ax for ax in fig.axes if ax.get_subplotspec().rowspan.start == rows - 1 and ax.get_visible()]
    assert bars and all(ax.get_xlabel() == "" and len(ax.get_xticks()) >= 2 for ax in bars)
    return rows - 1, cols


def test_one_row_per_checkpoint_and_columns_per_input_stage_channel(tmp_path):
    x = torch.randn(2, 1, RES, RES)
    models = [("new init", cnn(0)), ("transfer", cnn(1)), ("multigrid", cnn(2))]
    fig = propagate_features(models, x, channels=[0, 3])
    # per input: the image, then 2 stages (conv1, conv2) × 2 channels
    assert geometry(fig) == (3, 2 * (1 + 2 * 2))
    assert fig.axes[0].get_ylabel() == "new init" and fig.axes[10].get_ylabel() == "transfer"
    assert len(fig.axes[0].images) == 1 and "input" in fig.axes[0].get_title()
    paths = save_figure(fig, tmp_path)
    assert sorted(p.name for p in paths) == ["features.pdf", "features.png"]


def test_models_with_different_stages_and_resolutions():
    # a pooling CNN has one stage more; a coarse model gets its own (coarse) inputs
    fig = propagate_features([("fine", cnn(0)), ("pooled", cnn(1, pool=True)), ("coarse", cnn(2, res=4))],
                             [torch.randn(1, 1, RES, RES)] * 2 + [torch.randn(1, 1, 4, 4)], channels=[1])
    assert geometry(fig) == (3, 1 + 3)


def test_channel_beyond_a_stage_is_a_user_error():
    with pytest.raises(UserError, match=r"channel 5 .*'conv1'.*4 channels"):
        propagate_features([("m", cnn(0))], torch.randn(1, 1, RES, RES), channels=[0, 5])


def test_cli_features(tmp_path, run_cli):
    for name, seed in (("a", 0), ("b", 1)):
        save_checkpoint(tmp_path / f"{name}.pt", {
            "model": cnn(seed).state_dict(), "resolution": RES, "epoch": 0, "metrics": [],
            "arch": {"name": "cnn", "options": {"pool": False, "width1": 4, "width2": 6}, "in_channels": 1,
                     "num_classes": 3},
            "recipe": {"dataset": {"name": "synthetic", "synthetic": {"size": RES, "classes": 3, "n_train": 20,
                                                                      "n_test": 10}}}})
    code, out, err = run_cli(tmp_path, "features", "a.pt", "b.pt", "--samples", "0,2",
                             "--channels", "1", "--out", "figs", "--device", "cpu")
    assert code == 0, err + out
    assert (tmp_path / "figs" / "features.png").exists() and (tmp_path / "figs" / "features.pdf").exists()
    code, out, err = run_cli(tmp_path, "features", "a.pt", "--channels", "9", "--out", "figs")
    assert code == 2 and "channel 9" in err, err

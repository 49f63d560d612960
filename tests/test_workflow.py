"""The researcher's workflow (issue #22): your own model in every command, errors before training,
portable runs, ``--set`` on commands that load data."""

import json
import shutil
import textwrap

import numpy as np
import pytest
import torch

from mres.models import registry

TINYNET = textwrap.dedent('''
    """A user's model: one conv and a flatten head on the grid (GridLinear), with stages() for features."""
    import torch
    import torch.nn as nn
    from pydantic import Field

    from mres.models import ModelFamily, ModelOptions, register_family
    from mres.models.cnn import GridLinear


    class TinyOptions(ModelOptions):
        width: int = Field(4, ge=1)


    class TinyNet(nn.Module):
        def __init__(self, in_channels, num_classes, resolution, width, plain_head=False):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
            n = width * resolution * resolution
            self.head = (nn.Sequential(nn.Flatten(), nn.Linear(n, num_classes)) if plain_head
                         else GridLinear(width, resolution, resolution, num_classes))

        def stages(self, x):
            return [("conv", torch.relu(self.conv(x)))]

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)))


    register_family(ModelFamily(family="tinynet", matches=lambda n: n == "tinynet", options=TinyOptions,
                                build=lambda name, o, c, k, r: TinyNet(c, k, r, o.width),
                                divisor=lambda name, o: 1, examples=("tinynet",)))
    register_family(ModelFamily(family="flatnet", matches=lambda n: n == "flatnet", options=TinyOptions,
                                build=lambda name, o, c, k, r: TinyNet(c, k, r, o.width, plain_head=True),
                                divisor=lambda name, o: 1, examples=("flatnet",)))
''')


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "mymodels.py"
    path.write_text(TINYNET)
    return path


@pytest.fixture
def clean_registry():
    """Families and recorded plugins of an in-process test do not leak into the next test."""
    from mres.models import plugins

    before, imported = registry.families(), list(plugins._imported)  # built-ins loaded first
    yield
    registry._FAMILIES[:] = before
    plugins._imported[:] = imported


def _c2f_args(npz, out, model="tinynet", resolutions="[8,16]", *extra):
    return ["coarse-to-fine", "--quiet", "--out", str(out), "--set", "trials=1", "--set", "dataset.name=npz",
            "--set", f"dataset.path={npz}", "--set", f"resolutions={resolutions}", "--set", f"model.name={model}",
            "--set", "coarse.epochs=1", "--set", "fine.epochs=1", "--set", "strategies=[transfer,galerkin]", *extra]


def test_plugin_model_in_every_command(mres_cli, plugin, small_npz, tmp_path):
    """`mres --import F` trains a user's model coarse-to-fine (with the recipe's analysis), and a fresh
    process evaluates and draws a landscape of its checkpoint; without --import the error names the file."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(small_npz, work / "digits16.npz")
    r = mres_cli("--import", str(plugin), *_c2f_args("digits16.npz", tmp_path / "run"),  # a relative data path
                 "--set", "analysis.landscape.grid=3x3", "--set", "analysis.landscape.samples=16",
                 "--set", "analysis.features.channels=[0]", cwd=work)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["plugins"] == [str(plugin)]
    assert set(summary["strategies"]) == {"transfer", "galerkin"}
    assert "Loss landscapes" in (run / "report.md").read_text()  # the analysis block ran
    ckpt = run / "trial0" / "transfer" / "fine-16" / "checkpoints" / "last.pt"
    stored = torch.load(ckpt, weights_only=True)
    assert stored["recipe"]["dataset"]["path"] == str(work / "digits16.npz")  # absolute: portable

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ev = mres_cli("--import", str(plugin), "evaluate", str(ckpt), cwd=elsewhere)
    assert ev.returncode == 0, ev.stderr
    assert "accuracy" in ev.stdout and "at 16×16" in ev.stdout
    ls = mres_cli("--import", str(plugin), "landscape", str(ckpt), "--dim", "1", "--grid", "3", "--samples", "16",
                  "--out", "L", cwd=elsewhere)
    assert ls.returncode == 0, ls.stderr
    with np.load(elsewhere / "L" / "landscape.npz") as z:
        assert np.isfinite(z["loss"]).all() and z["loss"].shape[-1] == 3
    ft = mres_cli("--import", str(plugin), "features", str(ckpt), "--inputs", "0", "--channels", "0,1",
                  "--out", "F", cwd=elsewhere)
    assert ft.returncode == 0, ft.stderr
    assert list((elsewhere / "F").glob("*.png")), ft.stdout

    bare = mres_cli("evaluate", str(ckpt), cwd=elsewhere)
    assert bare.returncode == 2
    assert "unknown model 'tinynet'" in bare.stderr and f"--import {plugin}" in bare.stderr


def test_plain_linear_head_fails_before_training_naming_gridlinear(run_cli, plugin, small_npz, tmp_path,
                                                                   clean_registry):
    code, out, err = run_cli(tmp_path, "--import", str(plugin), *_c2f_args(small_npz, tmp_path / "run", "flatnet"))
    assert code == 2, err
    assert "mres.models.cnn.GridLinear" in err and "before training" in err
    assert not list((tmp_path / "run").glob("trial*/**/metrics.csv"))  # no epoch ran


def test_features_need_stages_checked_up_front(run_cli, small_npz, tmp_path, clean_registry):
    import torch.nn as nn

    from mres.models import ModelFamily, ModelOptions, register_family
    from mres.models.cnn import GridLinear

    class NoStages(nn.Module):
        def __init__(self, c, k, r):
            super().__init__()
            self.conv, self.head = nn.Conv2d(c, 2, 3, padding=1), GridLinear(2, r, r, k)

        def forward(self, x):
            return self.head(self.conv(x))

    register_family(ModelFamily("nostages", lambda n: n == "nostages", ModelOptions,
                                lambda name, o, c, k, r: NoStages(c, k, r), lambda name, o: 1))
    code, _, err = run_cli(tmp_path, *_c2f_args(small_npz, tmp_path / "run", "nostages"),
                           "--set", "analysis.features.channels=[0]")
    assert code == 2 and "analysis.features" in err and "stages(x)" in err, err
    assert not list((tmp_path / "run").glob("trial*/**/metrics.csv"))


def test_unreachable_resolution_exits_2_before_any_epoch(run_cli, small_npz, tmp_path):
    code, out, err = run_cli(tmp_path, *_c2f_args(small_npz, tmp_path / "run", "cnn", "[16,32]"))
    assert code == 2, err
    assert "32 is not reachable" in err and "16×16" in err and "allowed: 16, 8, 4, 2" in err
    assert not list((tmp_path / "run").glob("trial*"))  # nothing trained


def test_classes_vs_head_checked_up_front(run_cli, small_npz, tmp_path, clean_registry):
    """A builder that ignores num_classes (a head of 10 on 2-class data) is refused before training."""
    import torch.nn as nn

    from mres.models import ModelFamily, ModelOptions, register_family
    from mres.models.cnn import GridLinear

    register_family(ModelFamily("tenway", lambda n: n == "tenway", ModelOptions,
                                lambda name, o, c, k, r: nn.Sequential(nn.Conv2d(c, 2, 3, padding=1),
                                                                       GridLinear(2, r, r, 10)),
                                lambda name, o: 1))
    code, _, err = run_cli(tmp_path, *_c2f_args(small_npz, tmp_path / "run", "tenway"))
    assert code == 2 and "shape (2, 10)" in err and "2 classes" in err, err


def test_set_corrects_a_moved_dataset_for_evaluate(run_cli, small_npz, tmp_path):
    rec = tmp_path / "r.yaml"
    rec.write_text(f"dataset: {{name: npz, path: {small_npz}}}\nmodel: {{name: cnn, width1: 4, width2: 4}}\n"
                   "resolution: 16\ntrain: {epochs: 1, batch_size: 64}\n")
    code, _, err = run_cli(tmp_path, "train", "--recipe", str(rec), "--out", str(tmp_path / "t"), "--quiet")
    assert code == 0, err
    moved = tmp_path / "moved.npz"
    small_npz.rename(moved)
    ckpt = str(tmp_path / "t" / "checkpoints" / "last.pt")
    code, _, err = run_cli(tmp_path, "evaluate", ckpt)
    assert code == 2 and "does not exist" in err
    code, out, err = run_cli(tmp_path, "evaluate", ckpt, "--set", f"dataset.path={moved}")
    assert code == 0 and "accuracy" in out, err
    code, _, err = run_cli(tmp_path, "evaluate", ckpt, "--set", "model.width1=8")
    assert code == 2 and "--set model.width1=8" in err and "dataset.path" in err
    code, _, err = run_cli(tmp_path, "evaluate", ckpt, "--set", "dataset.nmae=npz")
    assert code == 2 and "dataset.nmae" in err and "unknown key" in err


def test_unreachable_resolution_for_train_is_a_clear_error(run_cli, small_npz, tmp_path):
    code, _, err = run_cli(tmp_path, "train", "--quiet", "--set", "dataset.name=npz", "--set",
                           f"dataset.path={small_npz}", "--set", "resolution=32", "--out", str(tmp_path / "t"))
    assert code == 2 and "32 is not reachable" in err and "16×16" in err, err


def test_between_always_evaluates_both_checkpoints(run_cli, small_npz, tmp_path):
    """`landscape --between A B --grid 11 --range -0.5:1.5` has no grid point at 0 or 1; both end points are
    added, and their losses are `mres evaluate`'s losses of A and B (the whole 64-image test split)."""
    import re

    ckpts = []
    for seed in (0, 1):
        rec = tmp_path / f"r{seed}.yaml"
        rec.write_text(f"dataset: {{name: npz, path: {small_npz}}}\nmodel: {{name: cnn, width1: 4, width2: 4}}\n"
                       f"resolution: 16\ntrain: {{epochs: 1, batch_size: 64}}\nseed: {seed}\n")
        code, _, err = run_cli(tmp_path, "train", "--recipe", str(rec), "--out", str(tmp_path / f"t{seed}"), "--quiet")
        assert code == 0, err
        ckpts.append(str(tmp_path / f"t{seed}" / "checkpoints" / "last.pt"))
    losses = []
    for ckpt in ckpts:
        code, out, err = run_cli(tmp_path, "evaluate", ckpt)
        assert code == 0, err
        losses.append(float(re.search(r"test loss ([0-9.]+)", out).group(1)))
    assert abs(losses[0] - losses[1]) > 1e-3  # two different models, so the check below can tell them apart
    code, out, err = run_cli(tmp_path, "landscape", "--between", *ckpts, "--grid", "11", "--range", "-0.5:1.5",
                             "--samples", "64", "--split", "test", "--quiet", "--out", str(tmp_path / "L"))
    assert code == 0, err
    with np.load(tmp_path / "L" / "landscape.npz") as z:
        x, loss = z["x"], z["loss"][0]
    assert len(x) == 13 and x.min() == -0.5 and x.max() == 1.5
    for t, want in zip((0.0, 1.0), losses):
        (i,) = np.flatnonzero(x == t)
        assert abs(loss[i] - want) < 6e-5, (t, loss[i], want)  # evaluate prints 4 decimals


def test_data_problems_are_listed_together_before_any_epoch(run_cli, small_npz, tmp_path):
    """An unreachable grid and subsets larger than the data: one exit 2 naming every key, no phase trained."""
    code, out, err = run_cli(tmp_path, "coarse-to-fine", "--quiet", "--out", str(tmp_path / "run"),
                             "--set", "dataset.name=npz", "--set", f"dataset.path={small_npz}",
                             "--set", "model.name=cnn", "--set", "resolutions=[8,16]",
                             "--set", "coarse_subset=1000", "--set", "fine_subset=300")
    assert code == 2, err
    assert "coarse_subset: 1000 examples asked" in err and "fine_subset: 300 examples asked" in err, err
    assert "has 256" in err
    assert not list((tmp_path / "run").rglob("*.pt"))  # nothing trained

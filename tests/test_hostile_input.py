"""Bounded work and nothing silently ignored (issue 29, items 8-10): YAML alias bombs and deep nesting are
refused in milliseconds, long values are cut in error lines, a checkpoint's stored recipe never downloads
or creates folders, and values that used to be ignored are errors naming the key."""

import pytest
import torch

from mres.errors import UserError
from mres.recipe import CoarseToFineRecipe, load_recipe

TINY = ["--set", "dataset.name=synthetic", "--set", "dataset.synthetic.n_train=128", "--set",
        "dataset.synthetic.n_test=32", "--set", "dataset.synthetic.size=8", "--set", "resolution=8",
        "--set", "model.width1=4", "--set", "model.width2=4", "--set", "train.epochs=1", "--quiet"]


def bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_is_refused_at_once(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb(10))
    with pytest.raises(UserError, match=r"expands to more than 100,000 nodes through its aliases"):
        load_recipe(path, kind=CoarseToFineRecipe)


def test_deeply_nested_yaml_is_a_clear_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 50000 + "]" * 50000 + "\n")
    with pytest.raises(UserError, match="nested too deeply"):
        load_recipe(path)


def test_a_long_value_is_cut_in_the_error_line(run_cli, tmp_path):
    """A value echoed back in an error (here 20,000 numbers where one is wanted) is cut to a readable line."""
    huge = str(list(range(20000)))
    code, _, err = run_cli(tmp_path, "train", "--set", "dataset.name=synthetic", "--set", f"seed={huge}",
                           "--out", str(tmp_path / "r"))
    assert code == 2 and "seed" in err and "characters cut" in err and len(err) < 3000, len(err)


def test_a_stored_recipe_never_downloads_nor_creates_folders(run_cli, tmp_path):
    run = tmp_path / "R"
    code, _, err = run_cli(tmp_path, "train", *TINY, "--out", str(run))
    assert code == 0, err
    ckpt = run / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    target = tmp_path / "some" / "where"
    state["recipe"]["dataset"] = {"name": "mnist", "download": True, "data_root": str(target)}
    torch.save(state, ckpt)
    code, _, err = run_cli(tmp_path, "evaluate", str(ckpt))
    assert code == 2 and "mnist not found" in err, err
    assert not (tmp_path / "some").exists()


@pytest.mark.parametrize("args, key", [
    (["coarse-to-fine", "--set", "dataset.name=synthetic", "--set", "lams=[]"], "lams"),
    (["coarse-to-fine", "--set", "dataset.name=synthetic", "--set", "strategies=[]"], "strategies"),
    (["train", "--set", "dataset.name=synthetic", "--set", "train.epochs=true"], "epochs"),
])
def test_values_once_ignored_are_errors(run_cli, tmp_path, args, key):
    code, _, err = run_cli(tmp_path, *args, "--out", str(tmp_path / "r"))
    assert code == 2 and key in err, err
    assert not (tmp_path / "r").exists()


def test_flags_once_ignored_are_errors(run_cli, tmp_path):
    run = tmp_path / "R"
    code, _, err = run_cli(tmp_path, "train", *TINY, "--out", str(run))
    assert code == 0, err
    ckpt = str(run / "checkpoints" / "last.pt")
    code, _, err = run_cli(tmp_path, "transfer", ckpt, "--to", "fine", "--samples", "-5", "--out",
                           str(tmp_path / "f.pt"))
    assert code == 2 and "--samples" in err, err
    code, _, err = run_cli(tmp_path, "evaluate", ckpt, "--resolution", "0")
    assert code == 2 and "--resolution 0" in err, err


@pytest.mark.parametrize("key", ["train.optimizer.lr=.inf", "seed=100000000000000000000000",
                                 "train.optimizer.betas=[2,3]"])
def test_values_that_pass_then_fail_are_refused_up_front(run_cli, tmp_path, key):
    code, _, err = run_cli(tmp_path, "train", "--set", "dataset.name=synthetic", "--set", "train.optimizer.name=adam"
                           if "betas" in key else "seed=0", "--set", key, "--out", str(tmp_path / "r"))
    assert code == 2 and key.split("=")[0].split(".")[-1] in err, err


def test_lams_nan_is_refused_before_the_coarse_phase(run_cli, tmp_path):
    code, _, err = run_cli(tmp_path, "coarse-to-fine", "--set", "dataset.name=synthetic", "--set", "lams=[.nan]",
                           "--out", str(tmp_path / "r"))
    assert code == 2 and "lams" in err and not (tmp_path / "r").exists(), err


def test_huge_sizes_are_refused_before_allocating(run_cli, tmp_path):
    run = tmp_path / "R"
    code, _, err = run_cli(tmp_path, "train", *TINY, "--out", str(run))
    assert code == 0, err
    ckpt = str(run / "checkpoints" / "last.pt")
    code, _, err = run_cli(tmp_path, "landscape", ckpt, "--grid", "100000", "--out", str(tmp_path / "L"))
    assert code == 2 and "at most 1,000,000" in err, err
    from mres.cli.zoo_cmds import _square_grid  # what `mres spectrum --grid` parses with

    with pytest.raises(UserError, match="at most 1024"):
        _square_grid("100000")
    code, _, err = run_cli(tmp_path, "train", *TINY, "--set", "model.width1=1000000000", "--out", str(tmp_path / "W"))
    assert code == 2 and "weights" in err and "GiB" in err, err


def test_threads_beyond_the_cores_are_capped_with_a_note(run_cli, tmp_path):
    code, _, err = run_cli(tmp_path, "train", *TINY, "--set", "threads=100000", "--out", str(tmp_path / "r"))
    assert code == 0 and "threads 100000 >" in err, err


def test_files_that_are_not_what_they_should_be(run_cli, tmp_path):
    import os

    bad = tmp_path / "notzip.npz"
    bad.write_bytes(b"this is not a zip file at all")
    code, _, err = run_cli(tmp_path, "train", "--set", "dataset.name=npz", "--set", f"dataset.path={bad}",
                           "--out", str(tmp_path / "r"))
    assert code == 2 and "not a readable .npz" in err, err
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    code, _, err = run_cli(tmp_path, "train", "--recipe", str(fifo), "--out", str(tmp_path / "r"))
    assert code == 2 and "not a regular file" in err, err
    run = tmp_path / "C"
    code, _, err = run_cli(tmp_path, "coarse-to-fine", "--quiet", "--set", "dataset.name=synthetic", "--set",
                           "dataset.synthetic.n_train=128", "--set", "dataset.synthetic.size=16", "--set",
                           "resolutions=[8,16]", "--set", "strategies=[transfer]", "--set", "coarse.epochs=1",
                           "--set", "fine.epochs=1", "--set", "model.width1=4", "--set", "model.width2=4",
                           "--out", str(run))
    assert code == 0, err
    (run / "summary.json").write_text("{broken")
    code, _, err = run_cli(tmp_path, "report", str(run))
    assert code == 2 and "summary.json is not valid JSON" in err, err


@pytest.mark.parametrize("value, allowed", [
    ("galerkin_data.lam=-1", "'gcv'"), ("galerkin_data.lam=often", "gcv"), ("galerkin_data.bn=magic", "per-layer"),
    ("galerkin_data.sweeps=0", "sweeps"), ("galerkin_data.head_calibration=0", "head_calibration"),
    ("flush_denormal=maybe", "flush_denormal"),
])
def test_galerkin_data_and_flush_keys_name_what_is_allowed(run_cli, tmp_path, value, allowed):
    code, _, err = run_cli(tmp_path, "coarse-to-fine", "--set", "dataset.name=synthetic", "--set", value,
                           "--out", str(tmp_path / "r"))
    assert code == 2 and allowed in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()

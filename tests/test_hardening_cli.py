"""Issue 9 (hardening): CLI error handling, markup, inputs that used to fail obscurely or silently."""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT
from mres.training.checkpoint import save_checkpoint
from mres.errors import Interrupted, RunFailure, UserError
from mres.models import build_model, check_model

RES = 8
TINY = ["--set", "dataset.name=synthetic", "--set", f"dataset.synthetic.size={RES}", "--set", f"resolution={RES}",
        "--set", "dataset.synthetic.n_train=40", "--set", "dataset.synthetic.n_test=20",
        "--set", "model.width1=2", "--set", "model.width2=2", "-q"]


def _cnn_ckpt(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    opts = {"pool": False, "width1": 4, "width2": 6}
    model = build_model("cnn", opts, in_channels=1, num_classes=3, resolution=RES)
    return save_checkpoint(path, {
        "model": model.state_dict(), "resolution": RES, "epoch": 0, "metrics": [],
        "arch": {"name": "cnn", "options": opts, "in_channels": 1, "num_classes": 3},
        "recipe": {"dataset": {"name": "synthetic", "synthetic": {"size": RES, "classes": 3, "n_train": 40,
                                                                  "n_test": 20}}}})


# ------------------------------------------------------------------ error handling in main


def test_ctrl_c_exits_130_with_one_line(tmp_path, run_cli, monkeypatch):
    import mres.cli.train_cmds as tc

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(tc, "recipe_and_run_dir", interrupt)
    code, out, err = run_cli(tmp_path, "train", "--set", "train.epochs=1")
    assert code == 130, (code, err)
    assert err.strip() == "interrupted"

    def interrupted(*a, **k):
        raise Interrupted("interrupted: the last good checkpoint is runs/[a]/checkpoints/last.pt (epoch 2); "
                          "resume with mres train --resume runs/[a]\nsecond line")

    monkeypatch.setattr(tc, "recipe_and_run_dir", interrupted)
    code, out, err = run_cli(tmp_path, "train", "--set", "train.epochs=1")
    assert code == 130
    assert err.strip() == ("interrupted: the last good checkpoint is runs/[a]/checkpoints/last.pt (epoch 2); "
                           "resume with mres train --resume runs/[a]")


def test_run_failure_and_empty_messages_exit_1(tmp_path, run_cli, monkeypatch):
    import mres.cli.train_cmds as tc

    def fail(*a, **k):
        raise RunFailure("cannot write runs/[x]/metrics.csv: read-only file system")

    monkeypatch.setattr(tc, "recipe_and_run_dir", fail)
    code, out, err = run_cli(tmp_path, "train", "--set", "train.epochs=1")
    assert code == 1 and err.strip() == "error: cannot write runs/[x]/metrics.csv: read-only file system"

    def empty(*a, **k):
        raise RuntimeError("")

    monkeypatch.setattr(tc, "recipe_and_run_dir", empty)
    code, out, err = run_cli(tmp_path, "train", "--set", "train.epochs=1")
    assert code == 1 and "failed: RuntimeError" in err and "IndexError" not in err


def test_disk_full_names_the_folder(tmp_path, run_cli, monkeypatch):
    """A full disk while writing the first checkpoint: `error: no space left on DIR`, exit 1."""
    import mres.training.checkpoint as ck

    real_write = os.write

    def full(fd, data):
        if fd > 2:  # files only; pytest's captured stdout/stderr are not fd writes anyway
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(ck.os, "write", full)
    code, out, err = run_cli(tmp_path, "train", *TINY, "--set", "train.epochs=1", "--out", "run")
    monkeypatch.undo()
    assert code == 1, (code, out, err)
    assert "error: no space left on run" in err, err
    assert "unexpected pos" not in err and "Traceback" not in err


def test_debug_works_before_and_after_the_command(tmp_path, monkeypatch):
    from mres.cli import main

    monkeypatch.chdir(tmp_path)
    for argv in (["mres", "train", "--debug", "--set", "noequals"], ["mres", "--debug", "train", "--set", "noequals"]):
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(UserError, match="key.path=value"):  # the traceback, not an `error:` line
            main()


# ------------------------------------------------------------------ item 7: rich markup


def test_brackets_in_paths_and_names_are_printed_verbatim(tmp_path, run_cli):
    code, out, err = run_cli(tmp_path, "evaluate", "runs/[best].pt")
    assert code == 2 and "runs/[best].pt does not exist" in err, err
    code, out, err = run_cli(tmp_path, "train", "--set", "model.name=mgnet[2,2]", "--set", "dataset.name=synthetic")
    assert code == 2
    assert "mgnet[ν1,…,νJ]-[c]-Bl" in err and "mgnet[ν1,…,νJ]-[c1,…,cJ]-Bli" in err, err
    # success output too: the run directory and the evaluated checkpoint keep their brackets
    code, out, err = run_cli(tmp_path, "train", *TINY, "--set", "train.epochs=1", "--out", "runs/[a]")
    assert code == 0, err
    assert "run directory: runs/[a]" in out and "runs/[a]/checkpoints/last.pt" in out, out
    code, out, err = run_cli(tmp_path, "evaluate", "runs/[a]/checkpoints/last.pt")
    assert code == 0 and "runs/[a]/checkpoints/last.pt: test loss" in out, out


# ------------------------------------------------------------------ item 3: dataset.path is what is read


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    magic = 0x0803 if array.ndim == 3 else 0x0801
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def _idx_folder(folder: Path, fill: int, gz: bool, n_train: int = 6, n_test: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(fill)
    parts = {"train": n_train, "t10k": n_test}
    for part, n in parts.items():
        x = np.full((n, 28, 28), fill, np.uint8)
        x[:, 0, 0] = np.arange(n)
        _write_idx(folder / f"{part}-images-idx3-ubyte", x, gz)
        _write_idx(folder / f"{part}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8), gz)
    return folder


def test_fashion_reads_dataset_path_not_an_old_cache(tmp_path, monkeypatch):
    from mres.training.data import load_dataset
    from mres.recipe import DatasetConfig

    cache = tmp_path / "cache"
    monkeypatch.setenv("MRES_CACHE", str(cache))
    # what an earlier run of the old code left in the cache: other data
    _idx_folder(cache / "fashion-mnist" / "FashionMNIST" / "raw", fill=200, gz=False, n_train=10, n_test=10)
    for gz in (True, False):
        src = _idx_folder(tmp_path / f"mine-{gz}", fill=7, gz=gz)
        d = load_dataset(DatasetConfig(name="fashion-mnist", path=str(src), normalize=False))
        assert d.x_train.shape == (6, 1, 28, 28) and d.x_test.shape == (4, 1, 28, 28)
        assert torch.allclose(d.x_train[:, 0, 5, 5], torch.full((6,), 7 / 255))
        assert d.x_train[:, 0, 0, 0].mul(255).round().tolist() == list(range(6))
    # a missing, an incomplete and a damaged folder are errors naming dataset.path
    with pytest.raises(UserError, match=r"dataset.path .*nope: does not exist"):
        load_dataset(DatasetConfig(name="fashion-mnist", path=str(tmp_path / "nope")))
    part = _idx_folder(tmp_path / "part", fill=1, gz=True)
    (part / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match=r"dataset.path .*part: missing t10k-labels-idx1-ubyte"):
        load_dataset(DatasetConfig(name="fashion-mnist", path=str(part)))
    bad = _idx_folder(tmp_path / "bad", fill=1, gz=False)
    img = bad / "train-images-idx3-ubyte"
    img.write_bytes(img.read_bytes()[:-10])
    with pytest.raises(UserError, match=r"dataset.path .*bad: train-images-idx3-ubyte: .*truncated"):
        load_dataset(DatasetConfig(name="fashion-mnist", path=str(bad)))


# ------------------------------------------------------------------ item 5: landscape --between / --grid


def test_between_defaults_to_a_1d_grid_and_needs_two_checkpoints(tmp_path, run_cli):
    from mres.analysis.landscape import LandscapeResult

    _cnn_ckpt(tmp_path / "a.pt", 0)
    _cnn_ckpt(tmp_path / "b.pt", 1)
    code, out, err = run_cli(tmp_path, "landscape", "--between", "a.pt", "b.pt", "--range", "0:1", "--samples", "8",
                             "--out", "ab", "-q", "--device", "cpu")
    assert code == 0, err + out
    assert LandscapeResult.load(tmp_path / "ab" / "landscape.npz").loss.shape == (1, 31)
    code, out, err = run_cli(tmp_path, "landscape", "a.pt", "--dim", "1", "--samples", "8", "--out", "d1", "-q",
                             "--device", "cpu")
    assert code == 0, err + out
    assert LandscapeResult.load(tmp_path / "d1" / "landscape.npz").loss.shape == (1, 31)
    for args in (("--between", "a.pt"), ("--between", "a.pt", "--grid", "5")):
        code, out, err = run_cli(tmp_path, "landscape", *args, "--out", "bad")
        assert code == 2 and "error: --between takes two checkpoints" in err and "got 1: a.pt" in err, err
    code, out, err = run_cli(tmp_path, "landscape", "--between", "a.pt", "a.pt", "--out", "same", "--device", "cpu")
    assert code == 2 and "identical weights" in err, err


# ------------------------------------------------------------------ items 10, 12, 15: recipes and run flags


def test_binary_empty_and_missing_recipes(tmp_path, run_cli):
    (tmp_path / "some.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "latin1.yaml").write_bytes("seed: 1  # caf\xe9\n".encode("latin-1"))
    (tmp_path / "empty.yaml").write_text("# nothing here yet\n\n   \n")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    code, out, err = run_cli(tmp_path, "train", "-r", "some.bin")
    assert code == 2 and "recipe file some.bin is a binary file" in err, err
    code, out, err = run_cli(tmp_path, "train", "-r", "latin1.yaml")
    assert code == 2 and "latin1.yaml is not UTF-8 text (byte 0xe9" in err, err
    for cmd in ("train", "coarse-to-fine"):
        code, out, err = run_cli(tmp_path, cmd, "-r", "empty.yaml")
        assert code == 2 and "recipe empty.yaml is empty" in err, err
        code, out, err = run_cli(tmp_path, cmd)
        assert code == 2 and "nothing to run" in err and "--recipe" in err and "mres recipes" in err, err
    assert not (tmp_path / "runs").exists()
    code, out, err = run_cli(tmp_path, "evaluate", "empty.pt")
    assert code == 2 and "the file is empty" in err, err
    code, out, err = run_cli(tmp_path, "evaluate", "random.pt")
    assert code == 2 and "cannot load checkpoint random.pt" in err, err
    assert "weights_only" not in err + out and "Traceback" not in err


def test_set_without_recipe_says_what_runs(tmp_path, run_cli):
    code, out, err = run_cli(tmp_path, "train", *TINY, "--set", "train.epochs=0", "--out", "r")
    assert code == 0, err
    assert "no --recipe: defaults + --set" in out and "cnn on synthetic at 8×8, 0 epochs" in out, out


def test_resume_refuses_a_second_recipe_but_takes_set(tmp_path, run_cli):
    code, out, err = run_cli(tmp_path, "train", *TINY, "--set", "train.epochs=1", "--out", "run")
    assert code == 0, err
    (tmp_path / "other.yaml").write_text("seed: 3\n")
    code, out, err = run_cli(tmp_path, "train", "--resume", "run", "-r", "other.yaml")
    assert code == 2 and "--resume run and --recipe other.yaml do not combine" in err, err
    code, out, err = run_cli(tmp_path, "train", "--resume", "run", "--set", "train.epochs=2", "-q")
    assert code == 0, err
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]


# ------------------------------------------------------------------ item 11: model options up front


def test_model_options_are_recipe_errors_with_value_and_allowed(tmp_path, run_cli):
    code, out, err = run_cli(tmp_path, "train", *TINY, "--set", "model.width1=-1", "--out", "run")
    assert code == 2 and "model.width1: Input should be greater than or equal to 1 (got -1)" in err, err
    assert not (tmp_path / "run").exists()
    code, out, err = run_cli(tmp_path, "train", *TINY, "--set", "model.widht2=3", "--set", "model.width1=abc",
                             "--set", "model.classifier_init=smooth")
    assert code == 2
    assert "model.widht2: unknown key (allowed for this model: name, pool, width1, width2" in err, err
    assert "model.width1: " in err and "(got 'abc')" in err
    assert "model.classifier_init: must be one of 'normal', 'dct-smooth' or 'dct-uniform' (got 'smooth')" in err, err
    # every family: widths / channels ≥ 1, width_scale > 0 and finite
    cases = [("cnn", {"width2": 0}, "model.width2"), ("cnn", {"smooth_classifier": -1.0}, "model.smooth_classifier"),
             ("mgnet[2,2]-[8]-Bl", {"width_scale": 0}, "model.width_scale"),
             ("mgnet[2,2]-[8]-Bl", {"width_scale": float("inf")}, "model.width_scale"),
             ("poly-g4", {"widths": [8, 0]}, "model.widths.1"), ("poly-g4", {"width_scale": -1}, "model.width_scale"),
             ("resnet18", {"width_scale": 0}, "model.width_scale")]
    for name, opts, key in cases:
        problems = dict(check_model(name, opts, [32]))
        assert key in problems and "(got " in problems[key], (name, opts, problems)
    assert "must be positive" in dict(check_model("mgnet[2,2]-[0]-Bl", {}, [32]))["model.name"]


# ------------------------------------------------------------------ item 16: help texts and flags


def test_help_shows_flags_without_a_type(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    for cmd in (["train"], ["coarse-to-fine"], ["landscape"], []):
        code, out, err = run_cli(tmp_path, *cmd, "--help")
        assert code == 0
        assert "<bool>" not in out, out
    code, out, err = run_cli(tmp_path, "train", "--help")
    assert re.search(r"--quiet\s+-q\s+No progress output", out), out
    code, out, err = run_cli(tmp_path, "transfer", "--help")
    for value in ("average-constant", "average-bilinear", "fullweighting-linear", "galerkin-reg", "dilate",
                  "coarse"):
        assert value in out, value


def test_transfer_lam_defaults_to_the_recipe_value(tmp_path, run_cli):
    _cnn_ckpt(tmp_path / "a.pt", 0)
    code, out, err = run_cli(tmp_path, "transfer", "a.pt", "--to", "fine", "--strategy", "galerkin-reg",
                             "--out", "reg.pt", "--samples", "0")
    assert code == 0, err
    assert torch.load(tmp_path / "reg.pt", weights_only=True)["transferred_from"]["lam"] == pytest.approx(0.1)
    code, out, err = run_cli(tmp_path, "transfer", "a.pt", "--to", "fine", "--strategy", "transfer", "--lam", "0.5",
                             "--out", "t.pt")
    assert code == 2 and "--lam 0.5 does not apply to --strategy transfer" in err, err
    assert not (tmp_path / "t.pt").exists()


def test_features_inputs_and_the_old_samples_name(tmp_path, run_cli):
    _cnn_ckpt(tmp_path / "a.pt", 0)
    code, out, err = run_cli(tmp_path, "features", "a.pt", "--inputs", "0,2", "--out", "f1", "--device", "cpu")
    assert code == 0, err + out
    assert (tmp_path / "f1" / "features.png").exists()
    code, out, err = run_cli(tmp_path, "features", "a.pt", "--samples", "0,2", "--out", "f2", "--device", "cpu")
    assert code == 0 and "now --inputs" in out, err + out
    code, out, err = run_cli(tmp_path, "features", "a.pt", "--inputs", "0", "--samples", "1", "--out", "f3")
    assert code == 2 and "give only --inputs" in err, err
    code, out, err = run_cli(tmp_path, "features", "a.pt", "--inputs", "99", "--out", "f4", "--device", "cpu")
    assert code == 2 and "--inputs: index 99" in err, err


def test_spectrum_grid_takes_the_landscape_syntax(tmp_path, run_cli):
    opts = {"widths": [4, 8]}
    m = build_model("poly-g4", opts, in_channels=3, num_classes=10, resolution=8)
    arch = {"name": "poly-g4", "options": opts, "in_channels": 3, "num_classes": 10}
    save_checkpoint(tmp_path / "p.pt", {"model": m.state_dict(), "resolution": 8, "arch": arch})
    for grid in ("4", "4x4"):
        code, out, err = run_cli(tmp_path, "spectrum", "p.pt", "--grid", grid, "--out", f"s{grid}")
        assert code == 0, err
        assert (tmp_path / f"s{grid}" / "spectrum_level1.png").exists()
        assert "on a 4×4 grid (auto boundary)" in out and "zeros" in out  # 4×4 and 2×2 levels: zero-padded
    code, out, err = run_cli(tmp_path, "spectrum", "p.pt", "--grid", "4", "--boundary", "periodic", "--out", "sp")
    assert code == 0 and "(periodic boundary)" in out and "zeros" not in out, err
    code, out, err = run_cli(tmp_path, "spectrum", "p.pt", "--boundary", "circular")
    assert code == 2 and "--boundary 'circular': allowed: auto, periodic, zeros" in err, err
    code, out, err = run_cli(tmp_path, "spectrum", "p.pt", "--grid", "4x8", "--out", "s")
    assert code == 2 and "--grid '4x8': the spectrum is of a square grid" in err, err


# ------------------------------------------------------------------ item 17: the 3-D surface figure


def test_surface_tick_labels_do_not_overlap(tmp_path, monkeypatch):
    """Where each 3-D tick label lands on the canvas (recorded while it is drawn: mplot3d places
    tick labels only during the draw), no two neighbours on one axis may overlap."""
    from matplotlib.text import Text

    from mres.analysis import landscape as ls

    x = np.linspace(-1, 1, 11)
    X, Y = np.meshgrid(x, x, indexing="ij")
    loss = np.stack([0.3 + 2 * (X ** 2 + 0.5 * Y ** 2) + 0.1 * k for k in range(3)])
    result = ls.LandscapeResult(x, x, loss, np.clip(1 - loss / 3, 0, 1), ["a", "b", "c"], {"mode": "2d"})
    overlaps: list[str] = []
    checked = []
    real_save, real_draw = ls._save, Text.draw

    def checking_save(fig, out_dir, stem):
        if stem == "landscape_surface":
            drawn = []

            def recording_draw(self, renderer):
                drawn.append((id(self), self.get_text(), self.get_window_extent(renderer)))
                return real_draw(self, renderer)

            monkeypatch.setattr(Text, "draw", recording_draw)
            fig.canvas.draw()
            monkeypatch.setattr(Text, "draw", real_draw)
            axes3d = [ax for ax in fig.axes if ax.name == "3d"]
            assert len(axes3d) == 3
            for ax in axes3d:
                for name, axis in (("x", ax.xaxis), ("y", ax.yaxis), ("z", ax.zaxis)):
                    mine = {id(t) for t in axis.get_ticklabels()}
                    boxes = [(text, box) for i, text, box in drawn if i in mine and text]
                    assert len(boxes) >= 2, (name, boxes)
                    checked.append(name)
                    overlaps.extend(f"{ax.get_title()}.{name}: {boxes[i][0]} / {boxes[i + 1][0]}"
                                    for i in range(len(boxes) - 1) if boxes[i][1].overlaps(boxes[i + 1][1]))
        return real_save(fig, out_dir, stem)

    monkeypatch.setattr(ls, "_save", checking_save)
    ls.plot_landscape(result, tmp_path, log=False)
    assert (tmp_path / "landscape_surface.png").exists() and len(checked) == 9
    assert not overlaps, overlaps


# ------------------------------------------------------------------ item 1: dependency drift


def _requirements() -> dict[str, str]:
    """name → lower bound of every requirement in pyproject.toml (``dependencies``, ``dev`` and
    ``tensorboard``, the extras scripts/setup.sh installs)."""
    text = (ROOT / "pyproject.toml").read_text()
    blocks = re.findall(r"^(?:dependencies|dev|tensorboard)\s*=\s*\[(.*?)\]", text, re.S | re.M)
    reqs = [r for b in blocks for r in re.findall(r'"([^"]+)"', b)]
    assert len(blocks) == 3 and reqs
    out = {}
    for r in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", r.strip())
        assert m, f"pyproject.toml: {r!r} has no tested lower bound (name>=version)"
        out[m[1].lower()] = m[2]
    return out


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = (s.strip() for s in line.split("=="))
            pins[name.lower()] = version
    return pins


def test_constraints_pin_every_dependency_above_its_lower_bound():
    def version(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in text.split("."))

    lower, pins = _requirements(), _pins()
    assert set(lower) == set(pins), (sorted(lower), sorted(pins))
    for name, low in lower.items():
        assert version(pins[name]) >= version(low), (name, pins[name], low)
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "-c constraints.txt" in setup and "MRES_UNPINNED" in setup


def test_installed_versions_are_the_pinned_ones():
    """The suite ran in the environment it was pinned for (skipped after `MRES_UNPINNED=1 setup.sh`)."""
    from importlib.metadata import version

    marker = ROOT / ".venv" / ".mres-installed"
    if os.environ.get("MRES_UNPINNED") == "1" or (marker.exists() and marker.read_text().strip() == "unpinned"):
        pytest.skip("unpinned environment (MRES_UNPINNED=1)")
    drift = {name: (version(name).split("+")[0], want) for name, want in _pins().items()
             if version(name).split("+")[0] != want}
    assert not drift, f"installed (version, pinned): {drift}; run bash scripts/setup.sh"

"""No run is ever lost or falsified (issue 29): a run directory belongs to one run, a damaged checkpoint is
refused, a resume never rewrites a run's history."""
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "dataset.name=synthetic", "--set", "dataset.synthetic.n_train=256", "--set",
        "dataset.synthetic.n_test=64", "--set", "dataset.synthetic.size=8", "--set", "resolution=8",
        "--set", "model.width1=4", "--set", "model.width2=4", "--quiet"]
C2F = ["--set", "dataset.name=synthetic", "--set", "dataset.synthetic.n_train=256", "--set",
       "dataset.synthetic.n_test=64", "--set", "dataset.synthetic.size=16", "--set", "resolutions=[8,16]",
       "--set", "model.name=cnn", "--set", "model.width1=4", "--set", "model.width2=4",
       "--set", "strategies=[transfer,galerkin]", "--set", "coarse.epochs=1", "--set", "fine.epochs=1",
       "--set", "trials=1", "--quiet"]


def rows(run: Path) -> int:
    return len((run / "metrics.jsonl").read_text().splitlines())


def test_out_onto_a_finished_run_is_refused(run_cli, tmp_path):
    run = tmp_path / "R"
    code, _, err = run_cli(tmp_path, "train", *TINY, "--set", "train.epochs=3", "--out", str(run))
    assert code == 0, err
    recipe = (run / "recipe.yaml").read_bytes()
    code, _, err = run_cli(tmp_path, "train", *TINY, "--set", "train.epochs=1", "--out", str(run))
    assert code == 2, err
    assert str(run) in err and "--resume" in err and "--overwrite" in err, err
    assert rows(run) == 3 and (run / "recipe.yaml").read_bytes() == recipe
    code, _, err = run_cli(tmp_path, "train", *TINY, "--set", "train.epochs=1", "--out", str(run), "--overwrite")
    assert code == 0, err
    assert rows(run) == 1


def test_train_into_a_coarse_to_fine_run_is_refused(run_cli, tmp_path):
    run = tmp_path / "C"
    code, _, err = run_cli(tmp_path, "coarse-to-fine", *C2F, "--out", str(run))
    assert code == 0, err
    recipe = (run / "recipe.yaml").read_bytes()
    code, _, err = run_cli(tmp_path, "train", *TINY, "--set", "train.epochs=1", "--out", str(run))
    assert code == 2 and "already holds a run" in err, err
    assert (run / "recipe.yaml").read_bytes() == recipe


def test_a_refused_coarse_to_fine_leaves_the_run_as_it_was(run_cli, tmp_path):
    """The same job with another key onto a finished run: refused, recipe.yaml untouched, --resume still works."""
    run = tmp_path / "C"
    code, _, err = run_cli(tmp_path, "coarse-to-fine", *C2F, "--out", str(run))
    assert code == 0, err
    recipe = (run / "recipe.yaml").read_bytes()
    summary = (run / "summary.json").read_bytes()
    code, _, err = run_cli(tmp_path, "coarse-to-fine", *C2F, "--set", "coarse.epochs=2", "--out", str(run))
    assert code == 2, err
    assert (run / "recipe.yaml").read_bytes() == recipe and (run / "summary.json").read_bytes() == summary
    code, _, err = run_cli(tmp_path, "coarse-to-fine", "--resume", str(run), "--quiet")
    assert code == 0, err


def test_resume_refuses_keys_that_rewrite_history(run_cli, tmp_path):
    """lr or seed on --resume would change nothing already trained yet be recorded as if it had."""
    run = tmp_path / "R"
    code, _, err = run_cli(tmp_path, "train", *TINY, "--set", "train.epochs=2", "--out", str(run))
    assert code == 0, err
    recipe = (run / "recipe.yaml").read_bytes()
    for key in ("train.optimizer.lr=0.5", "seed=5", "dataset.synthetic.noise=0.9"):
        code, _, err = run_cli(tmp_path, "train", "--resume", str(run), "--set", key, "--quiet")
        assert code == 2, (key, err)
        assert key.split("=")[0] in err, err
        assert (run / "recipe.yaml").read_bytes() == recipe
    code, _, err = run_cli(tmp_path, "train", "--resume", str(run), "--set", "train.epochs=3", "--quiet")
    assert code == 0, err
    assert rows(run) == 3
    amended = (run / "recipe.yaml").read_text()
    assert "epochs: 3" in amended and "amendments" in amended  # recorded as a dated amendment


def test_transfer_refuses_to_overwrite_its_input(run_cli, tmp_path):
    run = tmp_path / "R"
    code, _, err = run_cli(tmp_path, "train", *TINY, "--set", "train.epochs=1", "--out", str(run))
    assert code == 0, err
    ckpt = run / "checkpoints" / "last.pt"
    before = ckpt.read_bytes()
    code, _, err = run_cli(tmp_path, "transfer", str(ckpt), "--to", "fine", "--out", str(ckpt))
    assert code == 2 and "its input" in err, err
    assert ckpt.read_bytes() == before


def damage(path: Path) -> None:
    """Overwrite 64 bytes inside the largest member of a checkpoint's zip (what a bad disk does)."""
    with zipfile.ZipFile(path) as z:
        big = max(z.infolist(), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(big.header_offset + 30 + len(big.filename) + len(big.extra) + 16)
        f.write(b"\xa5" * 64)


def test_a_damaged_checkpoint_is_refused_and_resume_falls_back(run_cli, tmp_path):
    run = tmp_path / "R"
    code, _, err = run_cli(tmp_path, "train", *TINY, "--set", "train.epochs=3", "--out", str(run))
    assert code == 0, err
    ckpt = run / "checkpoints" / "last.pt"
    damage(ckpt)
    code, _, err = run_cli(tmp_path, "evaluate", str(ckpt))
    assert code == 2 and "damaged" in err and str(ckpt) in err, err
    code, out, err = run_cli(tmp_path, "train", "--resume", str(run), "--quiet")
    assert code == 0, err
    assert "previous" in (out + err) and "epoch 2" in (out + err)  # said, with the epoch it falls back to
    assert rows(run) == 3 and json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 3


def test_two_trains_on_one_out_exactly_one_runs(tmp_path):
    run = tmp_path / "R"
    cmd = [sys.executable, "-m", "mres", "train", *TINY, "--set", "train.epochs=12",
           "--set", "dataset.synthetic.n_train=2048", "--out", str(run)]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes == [0, 2], results
    loser = next(e for c, e in results if c == 2)
    assert "in use by" in loser and "pid" in loser, loser
    assert rows(run) == 12 and not (run / ".lock").exists()

"""The real `mres` command in a subprocess: exit codes, messages, end-to-end runs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from conftest import ROOT


def test_help_lists_the_commands(mres_cli):
    r = mres_cli("--help")
    assert r.returncode == 0
    for cmd in ("train", "evaluate", "datasets", "recipes"):
        assert cmd in r.stdout


def test_bad_recipe_names_all_three_keys(mres_cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: {name: synthetic}\nmodel: {name: cnn, pool: true}\nresolution: 27\n"
                   "train: {epocs: 2, batch_size: lots}\n")
    r = mres_cli("train", "--recipe", str(bad), "--out", str(tmp_path / "run"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    err = r.stderr
    assert "error:" in err
    assert "train.epocs: unknown key" in err
    assert "train.batch_size" in err and "lots" in err
    assert "resolution" in err and "27" in err
    assert not (tmp_path / "run").exists()  # failed before any work


def test_npz_trains_end_to_end(mres_cli, small_npz, tmp_path):
    out = tmp_path / "run"
    r = mres_cli("train", "--set", "dataset.name=npz", "--set", f"dataset.path={small_npz}",
                 "--set", "resolution=16", "--set", "train.epochs=3", "--set", "model.width1=8",
                 "--set", "model.width2=8", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and rows[-1]["test_acc"] > 0.9  # two trivially separable classes
    assert (out / "metrics.csv").exists() and (out / "recipe.yaml").exists()
    assert "test accuracy" in r.stdout
    ck = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ck["resolution"] == 16 and ck["recipe"]["dataset"]["name"] == "npz"
    e = mres_cli("evaluate", str(out / "checkpoints" / "last.pt"))
    assert e.returncode == 0 and "accuracy" in e.stdout


def test_synthetic_trains_at_a_coarser_resolution(mres_cli, tmp_path):
    out = tmp_path / "run"
    r = mres_cli("train", "--set", "dataset.name=synthetic", "--set", "resolution=14", "--set", "train.epochs=1",
                 "--set", "dataset.synthetic.n_train=200", "--set", "dataset.synthetic.n_test=50", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["resolution"] == 14


def test_missing_fashion_mnist_message(mres_cli, tmp_path):
    r = mres_cli("train", "--set", f"dataset.path={tmp_path / 'none'}", "--set", "train.epochs=1",
                 "--out", str(tmp_path / "run"), env={"MRES_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "dataset-fashion-mnist" in r.stderr


def test_missing_recipe_and_bad_flag(mres_cli, tmp_path):
    r = mres_cli("train", "--recipe", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = mres_cli("train", "--set", "noequals")
    assert r.returncode == 2 and "key.path=value" in r.stderr
    r = mres_cli("evaluate", str(tmp_path / "missing.pt"))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_sigkill_mid_epoch_then_resume_matches(tmp_path):
    """Kill -9 a run in its second epoch; `--resume` must end with the uninterrupted metrics."""
    common = ["--set", "dataset.name=synthetic", "--set", "resolution=28", "--set", "train.epochs=4",
              "--set", "dataset.synthetic.n_train=3000", "--set", "dataset.synthetic.n_test=200",
              "--set", "train.deterministic=true", "--set", "model.width1=8", "--set", "model.width2=16",
              "--set", "train.batch_size=64", "--quiet"]
    env = dict(os.environ, MRES_CACHE=str(tmp_path / "cache"))
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, "-m", "mres", "train", *common, "--out", str(ref)], check=True, env=env,
                   capture_output=True, cwd=ROOT)
    run = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-m", "mres", "train", *common, "--out", str(run)], env=env, cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = run / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while not ck.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert ck.exists(), "first checkpoint never appeared"
    p.send_signal(signal.SIGKILL)  # during epoch 2 (each epoch takes a while)
    p.wait()
    state = torch.load(ck, weights_only=True)
    assert state["epoch"] < 4, "run finished before it could be killed"
    r = subprocess.run([sys.executable, "-m", "mres", "train", "--resume", str(run), "--quiet"], env=env,
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr

    def load(d: Path):
        return [{k: v for k, v in json.loads(l).items() if "seconds" not in k}
                for l in (d / "metrics.jsonl").read_text().splitlines()]

    assert load(run) == load(ref)


def test_usage_errors_exit_2_without_traceback(mres_cli):
    r = mres_cli("train", "--bogus")
    assert r.returncode == 2 and "No such option" in r.stderr and "Traceback" not in r.stderr
    r = mres_cli("frobnicate")
    assert r.returncode == 2 and "No such command" in r.stderr

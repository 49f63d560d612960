"""Fault injection (issue 9): real subprocesses get SIGINT / SIGKILL, a full disk, NaN data; their
outputs, checkpoints and resumes are checked."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, run_mres

SYNTH = ["--set", "dataset.name=synthetic", "--set", "dataset.synthetic.size=16", "--set", "resolution=16",
         "--set", "dataset.synthetic.n_train=1500", "--set", "dataset.synthetic.n_test=100",
         "--set", "model.width1=4", "--set", "model.width2=8"]
C2F = ["--set", "dataset.name=synthetic", "--set", "dataset.synthetic.size=16", "--set", "resolutions=[8,16]",
       "--set", "dataset.synthetic.n_train=1500", "--set", "dataset.synthetic.n_test=100",
       "--set", "model.width1=4", "--set", "model.width2=8", "--set", "strategies=[transfer]",
       "--set", "eval_train=false"]


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "MRES_CACHE": str(ROOT / ".cache" / "test-cache")}
    # a suite started in the background (`cmd &` without job control) inherits SIGINT ignored, and Python
    # then never raises KeyboardInterrupt: give the child the default disposition, as a terminal would
    return subprocess.Popen([sys.executable, "-m", "mres", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(cond, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}): {proc.stderr.read()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.02)


def epochs_in(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_sigint_during_train_exits_130_names_the_checkpoint_and_resumes(tmp_path):
    run = tmp_path / "run"
    proc = start("train", *SYNTH, "--set", "train.epochs=40", "--out", str(run), "--quiet")
    ck = run / "checkpoints" / "last.pt"
    wait_for(lambda: ck.exists(), proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    line = [l for l in err.splitlines() if "interrupted" in l]
    assert line and str(ck) in err and f"mres train --resume {run}" in " ".join(err.split())
    assert "Traceback" not in err
    state = torch.load(ck, weights_only=True)  # intact
    assert 1 <= state["epoch"] < 40
    done = run_mres("train", "--resume", str(run), "--set", "train.epochs=" + str(state["epoch"] + 1), "--quiet")
    assert done.returncode == 0, done.stderr
    assert torch.load(ck, weights_only=True)["epoch"] == state["epoch"] + 1


def test_sigint_during_coarse_to_fine_exits_130_and_resumes(tmp_path):
    run = tmp_path / "run"
    proc = start("coarse-to-fine", *C2F, "--set", "coarse.epochs=40", "--set", "fine.epochs=1", "--out", str(run),
                 "--quiet")
    ck = run / "trial0" / "coarse-8" / "checkpoints" / "last.pt"
    wait_for(lambda: ck.exists(), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    flat = " ".join(err.split())
    assert "interrupted" in flat and f"mres coarse-to-fine --resume {run}" in flat and str(ck) in flat
    epoch = torch.load(ck, weights_only=True)["epoch"]
    assert epoch >= 1 and not (run / "summary.json").exists()
    done = run_mres("coarse-to-fine", "--resume", str(run), "--set", f"coarse.epochs={epoch + 1}", "--quiet")
    assert done.returncode == 0, done.stderr
    summary = json.loads((run / "summary.json").read_text())
    coarse = json.loads((run / "trial0" / "coarse-8" / "result.json").read_text())
    assert len(coarse["metrics"]) == epoch + 1 and summary["strategies"]["transfer"]["acc_final"][0] is not None


def test_sigkill_then_resume_keeps_the_seconds_of_earlier_epochs(tmp_path):
    run = tmp_path / "run"
    proc = start("coarse-to-fine", *C2F, "--set", "coarse.epochs=1", "--set", "fine.epochs=30", "--out", str(run),
                 "--quiet")
    pdir = run / "trial0" / "transfer" / "fine-16"
    wait_for(lambda: epochs_in(pdir / "metrics.jsonl") >= 2 and (pdir / "checkpoints" / "last.pt").exists(), proc)
    proc.kill()
    proc.communicate()
    state = torch.load(pdir / "checkpoints" / "last.pt", weights_only=True)
    before = state["metrics"]
    assert len(before) >= 1
    assert state["seconds_so_far"] >= sum(r["seconds"] for r in before) > 0
    done = run_mres("coarse-to-fine", "--resume", str(run), "--set", f"fine.epochs={len(before) + 1}", "--quiet")
    assert done.returncode == 0, done.stderr
    result = json.loads((pdir / "result.json").read_text())
    assert result["metrics"][:len(before)] == json.loads(json.dumps(before))  # the killed run's epochs are kept
    assert result["seconds"] == pytest.approx(sum(r["seconds"] for r in result["metrics"]))
    assert result["seconds"] > sum(r["seconds"] for r in before)  # ... and counted, with the resumed epoch
    summary = json.loads((run / "summary.json").read_text())
    assert summary["strategies"]["transfer"]["fine_seconds"][0] == pytest.approx(result["seconds"])


def test_sigkill_during_a_checkpoint_write_leaves_a_temp_that_resume_removes(tmp_path):
    run = tmp_path / "run"
    r = run_mres("train", *SYNTH, "--set", "train.epochs=1", "--out", str(run), "--quiet")
    assert r.returncode == 0, r.stderr
    ck = run / "checkpoints" / "last.pt"
    good = torch.load(ck, weights_only=True)
    # a writer that keeps re-saving a large checkpoint over last.pt, killed in the middle of a write
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, torch\n"
        "from mres.training.checkpoint import load_checkpoint, save_checkpoint\n"
        "c = load_checkpoint(sys.argv[1]); c['padding'] = torch.zeros(60_000_000)\n"
        "while True: save_checkpoint(sys.argv[1], c)\n"), str(ck)], cwd=ROOT)
    temps = lambda: list(ck.parent.glob(".last.pt.*.tmp"))  # noqa: E731
    wait_for(lambda: bool(temps()), writer)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    left = temps()
    if not left:
        pytest.skip("the writer finished its write before the kill landed")
    loaded = torch.load(ck, weights_only=True)  # the last complete checkpoint is intact
    assert loaded["epoch"] == good["epoch"]
    done = run_mres("train", "--resume", str(run), "--set", "train.epochs=2", "--quiet")
    assert done.returncode == 0, done.stderr
    assert not temps()
    assert torch.load(ck, weights_only=True)["epoch"] == 2


# NaN pixels are refused when the data is loaded (test_dataset_labels), so a non-finite loss comes from the
# model here: a user's model (a real --import plugin) whose logits are NaN for any image brighter than 100.
SENSOR = """
import torch, torch.nn as nn
from mres.models import ModelFamily, ModelOptions, register_family
from mres.models.cnn import GridLinear

class Sensor(nn.Module):
    def __init__(self, c, k, r):
        super().__init__()
        self.conv1 = nn.Conv2d(c, 4, 3, padding=1, bias=False)
        self.head = GridLinear(4, r, r, k)

    def forward(self, x):
        y = self.head(torch.relu(self.conv1(x)))
        bright = x.flatten(1).amax(1, keepdim=True) > 100
        return torch.where(bright, torch.full_like(y, float("nan")), y)

register_family(ModelFamily(family="sensor", matches=lambda n: n == "sensor", options=ModelOptions,
                            build=lambda name, o, c, k, r: Sensor(c, k, r), divisor=lambda name, o: 1))
"""


def nan_npz(path: Path, nan_test: bool) -> Path:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    x = rng.normal(0, 1, (300, 8, 8)).astype(np.float32) + y[:, None, None] * 2.0
    x_test = x[:60].copy()
    if nan_test:
        x_test[3, 2, 2] = 1000.0  # one bright pixel: the sensor model's logits for that image are NaN
    np.savez(path, x_train=x, y_train=y, x_test=x_test, y_test=y[:60])
    return path


def sensor(tmp_path: Path) -> list[str]:
    plugin = tmp_path / "sensor.py"
    plugin.write_text(SENSOR)
    return ["--import", str(plugin)]


def test_nan_test_loss_is_divergence_null_in_json_and_no_checkpoint(tmp_path):
    data = nan_npz(tmp_path / "nan.npz", nan_test=True)
    run = tmp_path / "run"
    r = run_mres(*sensor(tmp_path), "train", "--set", "dataset.name=npz", "--set", f"dataset.path={data}",
                 "--set", "resolution=8", "--set", "dataset.normalize=false", "--set", "model.name=sensor",
                 "--set", "train.epochs=2", "--out", str(run), "--quiet")
    assert r.returncode == 1 and "non-finite test_loss" in r.stderr and "Traceback" not in r.stderr, r.stderr
    text = (run / "metrics.jsonl").read_text()
    row = json.loads(text.splitlines()[0], parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))
    assert row["test_loss"] is None and row["nonfinite"] == ["test_loss"]
    assert "NaN" not in text and "Infinity" not in text
    assert not (run / "checkpoints" / "last.pt").exists()  # nothing non-finite is kept as "good"


def test_diverged_coarse_phase_still_trains_the_baselines_and_analyses_what_exists(tmp_path):
    run = tmp_path / "run"
    args = [*C2F, "--set", "strategies=[fresh,fine-only,transfer]", "--set", "coarse.epochs=1",
            "--set", "fine.epochs=1", "--set", "coarse.optimizer.lr=1e6", "--set", "fine_only.optimizer.lr=0.05",
            "--set", "analysis.landscape.grid=3x3", "--set", "analysis.landscape.samples=16", "--quiet"]
    r = run_mres("coarse-to-fine", *args, "--out", str(run))
    assert r.returncode == 0, r.stderr
    s = json.loads((run / "summary.json").read_text())["strategies"]
    assert s["fresh"]["acc_final"][0] is not None and s["fine-only"]["acc_final"][0] is not None
    assert s["transfer"]["skipped"][0].startswith("coarse phase diverged") and s["transfer"]["acc_final"] == [None]
    md = (run / "report.md").read_text()
    assert "transfer was skipped in 1/1 trial(s): coarse phase diverged" in md
    assert "Loss landscapes" in md  # of the checkpoints that exist: fresh and fine-only start and end
    again = run_mres("coarse-to-fine", "--resume", str(run), "--quiet")
    assert again.returncode == 0, again.stderr


def test_resume_with_another_model_is_one_clear_error_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    r = run_mres("train", *SYNTH, "--set", "train.epochs=1", "--out", str(run), "--quiet")
    assert r.returncode == 0, r.stderr
    snapshot = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    for change in ("model.width1=5", "resolution=8"):
        bad = run_mres("train", "--resume", str(run), "--set", change, "--quiet")
        assert bad.returncode == 2, bad.stderr
        err = bad.stderr.strip()
        assert err.startswith("error: cannot resume from") and len(err) < 600 and "Traceback" not in err
        assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()} == snapshot


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare and a user mount namespace for a small tmpfs")
def test_disk_full_says_no_space_left_and_keeps_the_last_checkpoint(tmp_path):
    size_probe = tmp_path / "probe"
    r = run_mres("train", *SYNTH, "--set", "train.epochs=1", "--out", str(size_probe), "--quiet")
    assert r.returncode == 0, r.stderr
    ck_size = (size_probe / "checkpoints" / "last.pt").stat().st_size
    mnt = tmp_path / "small"
    mnt.mkdir()
    # room for one checkpoint and the metrics, not for the temp file of the second
    size_kb = int(ck_size * 1.5 / 1024) + 64
    env = {**os.environ, "MRES_CACHE": str(ROOT / ".cache" / "test-cache")}
    script = (f"mount -t tmpfs -o size={size_kb}k tmpfs {mnt} && "
              f"{sys.executable} -m mres train {' '.join(SYNTH)} --set train.epochs=3 --out {mnt}/run --quiet; "
              f"rc=$?; ls {mnt}/run/checkpoints; {sys.executable} -c \"import torch; "
              f"print('epoch', torch.load('{mnt}/run/checkpoints/last.pt', weights_only=True)['epoch'])\"; exit $rc")
    p = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 1, p.stderr
    assert "error: no space left on" in p.stderr and str(mnt / "run" / "checkpoints") in p.stderr
    assert "unexpected pos" not in p.stderr and "Traceback" not in p.stderr
    assert "epoch 1" in p.stdout and ".tmp" not in p.stdout


def test_evaluate_refuses_a_model_whose_loss_is_not_finite(tmp_path):
    data = nan_npz(tmp_path / "clean.npz", nan_test=False)
    run = tmp_path / "run"
    plug = sensor(tmp_path)
    args = ["--set", "dataset.name=npz", "--set", f"dataset.path={data}", "--set", "resolution=8",
            "--set", "dataset.normalize=false", "--set", "model.name=sensor"]
    r = run_mres(*plug, "train", *args, "--set", "train.epochs=1", "--out", str(run), "--quiet")
    assert r.returncode == 0, r.stderr
    ok = run_mres(*plug, "evaluate", str(run))
    assert ok.returncode == 0 and "accuracy" in ok.stdout
    nan_npz(data, nan_test=True)  # the same file, now with a bright pixel in the test images
    bad = run_mres(*plug, "evaluate", str(run))
    assert bad.returncode == 1 and "loss is nan" in bad.stderr and "Traceback" not in bad.stderr
    ck = run / "checkpoints" / "last.pt"
    state = torch.load(ck, weights_only=True)
    state["model"]["conv1.weight"][0, 0, 0, 0] = float("inf")
    torch.save(state, ck)
    bad = run_mres(*plug, "evaluate", str(run), "--split", "train")
    assert bad.returncode == 1 and "non-finite weights in conv1.weight" in bad.stderr

"""Ctrl-C and SIGTERM always stop cleanly (issue 29, item 5): signals at random moments of a `mres train` —
during its imports, data loading, epochs, checkpoint writes — give exit 130 (143 for SIGTERM) and one
line, never a segfault, a traceback or a run that trains on to the end."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["train", "--set", "dataset.name=synthetic", "--set", "dataset.synthetic.n_train=4000",
        "--set", "dataset.synthetic.size=16", "--set", "resolution=16", "--set", "train.epochs=40",
        "--set", "model.width1=8", "--set", "model.width2=8", "--set", "threads=1", "--quiet"]


def _start(out: Path) -> subprocess.Popen:
    # the child gets the default SIGINT disposition even when the suite runs in the background
    return subprocess.Popen([sys.executable, "-m", "mres", *ARGS, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _signal_runs(tmp_path: Path, n: int, sig: int, seed: int) -> list[tuple[float, int, str]]:
    rng = random.Random(seed)
    seen = []
    for k in range(n):
        when = rng.uniform(0.0, 3.0)
        p = _start(tmp_path / f"r{k}")
        time.sleep(when)
        if p.poll() is None:
            p.send_signal(sig)
        try:
            _, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            raise AssertionError(f"signal at {when:.2f} s: the run did not stop")
        seen.append((when, p.returncode, err))
    return seen


def _check(seen, want_code: int) -> None:
    for when, code, err in seen:
        assert code == want_code, f"signal at {when:.2f} s: exit {code}, stderr:\n{err[-2000:]}"
        assert "Traceback" not in err and "Exception ignored" not in err and "SystemError" not in err, err
        lines = [l for l in err.splitlines() if l.strip()]
        assert len(lines) <= 2 and lines and lines[-1].startswith("interrupted"), err


def test_sigint_at_random_moments_stops_cleanly(tmp_path):
    _check(_signal_runs(tmp_path, 6, signal.SIGINT, seed=1), 130)


def test_sigterm_stops_with_143_and_the_checkpoint_line(tmp_path):
    p = _start(tmp_path / "r")
    deadline = time.time() + 60
    while not (tmp_path / "r" / "checkpoints" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert "last good checkpoint" in err and "--resume" in err, err


@pytest.mark.slow
def test_thirty_sigints_in_the_first_three_seconds(tmp_path):
    _check(_signal_runs(tmp_path, 30, signal.SIGINT, seed=2), 130)

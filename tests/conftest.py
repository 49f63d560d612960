import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


class Gain(torch.nn.Module):
    """x ↦ g·x with a learned scalar g: a parameter that is no conv, linear or BN weight."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.gain * x
torch.set_num_threads(min(2, os.cpu_count() or 1))


def run_mres(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    """Run the real CLI in a subprocess; returns CompletedProcess (text)."""
    import subprocess

    e = dict(os.environ)
    e.update(env or {})
    e.setdefault("MRES_CACHE", str(ROOT / ".cache" / "test-cache"))
    return subprocess.run([sys.executable, "-m", "mres", *args], cwd=cwd or ROOT, env=e, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def float64():
    """Default dtype float64 for one test, restored afterwards (other modules run in float32)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """The real CLI entry point in this process (a subprocess would re-import torch each time):
    ``run_cli(cwd, *args)`` → (exit code, stdout, stderr)."""

    def run(cwd: Path, *args: str) -> tuple[int, str, str]:
        from mres.cli import main

        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["mres", *args])
        with pytest.raises(SystemExit) as exc:
            main()
        captured = capsys.readouterr()
        return exc.value.code, captured.out, captured.err

    return run


@pytest.fixture
def mres_cli():
    return run_mres


@pytest.fixture
def small_npz(tmp_path: Path) -> Path:
    """A tiny, learnable npz dataset (uint8 N×H×W, two classes: bright top half vs bottom half)."""
    rng = np.random.default_rng(0)

    def make(n):
        y = rng.integers(0, 2, n)
        x = rng.integers(0, 60, (n, 16, 16)).astype(np.uint8)
        for i, c in enumerate(y):
            if c == 0:
                x[i, :8] += 150
            else:
                x[i, 8:] += 150
        return x, y

    xtr, ytr = make(256)
    xte, yte = make(64)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return path

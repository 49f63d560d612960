"""Data-parallel training with torchrun (gloo, 2 CPU processes) against one process (issue: scale out)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mres.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to this python")

RECIPE = """
dataset: {name: synthetic, synthetic: {n_train: N_TRAIN, n_test: 64, size: 16}}
model: {name: cnn, width1: 4, width2: 8}
resolution: 16
threads: 1
train: {epochs: EPOCHS, batch_size: 30, deterministic: true, channels_last: false,
        optimizer: {name: sgd, lr: 0.05, momentum: 0.9}, schedule: SCHEDULE}
"""


def _recipe(tmp_path: Path, epochs: int = 2, n_train: int = 250, schedule: str = "cosine") -> Path:
    p = tmp_path / f"r{epochs}_{n_train}_{schedule}.yaml"
    p.write_text(RECIPE.replace("N_TRAIN", str(n_train)).replace("EPOCHS", str(epochs)).replace("SCHEDULE", schedule))
    return p


def _env(**extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    env.setdefault("MRES_CACHE", str(ROOT / ".cache" / "test-cache"))
    return env


def _single(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mres", *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600, **kw)


def _ddp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "mres", *args], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=600)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _close(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        for k in ("train_loss", "test_loss", "train_acc", "test_acc", "lr"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-6), (k, ra, rb)


def test_two_processes_equal_one_with_the_same_global_batch_and_only_rank0_writes(tmp_path):
    recipe = _recipe(tmp_path)
    one = _single("train", "--recipe", str(recipe), "--out", str(tmp_path / "one"), "--quiet")
    assert one.returncode == 0, one.stderr
    two = _ddp("train", "--recipe", str(recipe), "--out", str(tmp_path / "two"), "--quiet")
    assert two.returncode == 0, two.stderr
    _close(_metrics(tmp_path / "one"), _metrics(tmp_path / "two"))  # 250 = 8 full batches + an uneven 10
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*"))  # noqa: E731
    assert files(tmp_path / "two") == files(tmp_path / "one")  # rank 1 wrote nothing of its own
    assert two.stdout.count("\n") == one.stdout.count("\n")  # one summary, from rank 0


def test_resume_under_ddp_continues_exactly(tmp_path):
    # a constant lr: one epoch then --resume to two plans the same steps as two epochs at once
    whole = _ddp("train", "--recipe", str(_recipe(tmp_path, epochs=2, schedule="constant")), "--out",
                 str(tmp_path / "whole"), "--quiet")
    assert whole.returncode == 0, whole.stderr
    first = _ddp("train", "--recipe", str(_recipe(tmp_path, epochs=1, schedule="constant")), "--out",
                 str(tmp_path / "cut"), "--quiet")
    assert first.returncode == 0, first.stderr
    more = _ddp("train", "--resume", str(tmp_path / "cut"), "--set", "train.epochs=2", "--quiet")
    assert more.returncode == 0, more.stderr
    _close(_metrics(tmp_path / "whole"), _metrics(tmp_path / "cut"))


def test_a_rank_killed_mid_epoch_ends_the_job_nonzero_and_the_checkpoint_loads(tmp_path):
    tag = f"mres-ddp-kill-{os.getpid()}"
    out = tmp_path / "k"
    proc = subprocess.Popen([str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "mres", "train", "--recipe",
                             str(_recipe(tmp_path, epochs=50, n_train=3000)), "--out", str(out), "--quiet"],
                            cwd=ROOT, env=_env(MRES_TEST_TAG=tag), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 300
        while not (out / "checkpoints" / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert (out / "checkpoints" / "last.pt").exists(), proc.communicate()[1]
        time.sleep(1.0)  # into the next epoch
        victims = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _is_rank(p, tag, 1)]
        assert victims, "rank 1 not found"
        os.kill(victims[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "rank" in err.lower() and ("exitcode" in err.lower() or "signal" in err.lower()), err[-2000:]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] >= 1


def _is_rank(proc_dir: Path, tag: str, rank: int) -> bool:
    try:
        env = (proc_dir / "environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"MRES_TEST_TAG={tag}".encode() in env and f"RANK={rank}".encode() in env


C2F_RECIPE = """
dataset: {name: synthetic, synthetic: {n_train: 128, n_test: 64, size: 16}}
model: {name: cnn, width1: 4, width2: 8}
resolutions: [8, 16]
strategies: STRATEGIES
threads: 1
coarse: {epochs: 1, batch_size: 32, deterministic: true, channels_last: false}
fine: {epochs: FINE_EPOCHS, batch_size: 32, deterministic: true, channels_last: false}
"""


def _c2f_recipe(tmp_path: Path, strategies: str, fine_epochs: int) -> Path:
    p = tmp_path / "c2f.yaml"
    p.write_text(C2F_RECIPE.replace("STRATEGIES", strategies).replace("FINE_EPOCHS", str(fine_epochs)))
    return p


def test_coarse_to_fine_under_ddp_writes_the_same_files_and_numbers(tmp_path):
    recipe = _c2f_recipe(tmp_path, "[fresh, transfer]", 1)
    one = _single("coarse-to-fine", "--recipe", str(recipe), "--out", str(tmp_path / "one"), "--quiet")
    assert one.returncode == 0, one.stderr
    two = _ddp("coarse-to-fine", "--recipe", str(recipe), "--out", str(tmp_path / "two"), "--quiet")
    assert two.returncode == 0, two.stderr
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*"))  # noqa: E731
    assert files(tmp_path / "two") == files(tmp_path / "one")
    a, b = (json.loads((tmp_path / d / "summary.json").read_text())["strategies"] for d in ("one", "two"))
    for label in a:
        assert a[label]["acc_final"] == pytest.approx(b[label]["acc_final"], abs=1e-6)
        assert a[label]["acc_at_transfer"] == pytest.approx(b[label]["acc_at_transfer"], abs=1e-6)


def test_parallel_variants_deals_the_variants_to_the_ranks_and_matches_one_process(tmp_path):
    recipe = _c2f_recipe(tmp_path, "[fresh, transfer, galerkin]", 2)
    one = _single("coarse-to-fine", "--recipe", str(recipe), "--out", str(tmp_path / "one"), "--quiet")
    assert one.returncode == 0, one.stderr
    two = _ddp("coarse-to-fine", "--recipe", str(recipe), "--out", str(tmp_path / "two"), "--quiet",
               "--set", "parallel=variants")
    assert two.returncode == 0, two.stderr
    assert "3 variant runs over 2 ranks" in two.stdout + two.stderr
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*"))  # noqa: E731
    assert files(tmp_path / "two") == files(tmp_path / "one")  # the same layout: report, figures, phases
    trained = {json.loads(p.read_text())["trained_by"]["rank"] for p in (tmp_path / "two").glob("trial0/*/fine-16/result.json")}
    assert trained == {0, 1}  # both ranks trained variants, each alone
    assert all(json.loads(p.read_text())["trained_by"]["ranks"] == 1 for p in (tmp_path / "two").rglob("result.json"))
    a, b = (json.loads((tmp_path / d / "summary.json").read_text())["strategies"] for d in ("one", "two"))
    assert set(a) == set(b)
    for label in a:  # a variant trained alone on a rank is the one-process run
        assert a[label]["acc_final"] == pytest.approx(b[label]["acc_final"], abs=1e-6)
        assert a[label]["acc_at_transfer"] == pytest.approx(b[label]["acc_at_transfer"], abs=1e-6)
    heads = lambda d: [line for line in (tmp_path / d / "report.md").read_text().splitlines() if line.startswith("#")]  # noqa: E731
    assert heads("two") == heads("one")


def test_bn_recalibration_after_a_transfer_gives_one_process_statistics_and_sync_bn_needs_cuda(tmp_path):
    # a coarse lr of 1e-12 keeps the initial weights (per-shard BN would otherwise make the coarse phases
    # differ): both runs transfer the same weights, so only the recalibration is compared
    recipe = tmp_path / "bn.yaml"
    recipe.write_text("""
dataset: {name: synthetic, synthetic: {n_train: 200, n_test: 40, size: 16}}
model: {name: "mgnet[1,1]-[4]-Bl"}
resolutions: [8, 16]
strategies: [galerkin]
threads: 1
coarse: {epochs: 1, batch_size: 32, deterministic: true, channels_last: false,
         optimizer: {name: sgd, lr: 1.0e-12, momentum: 0.0, weight_decay: 0.0}}
fine: {epochs: 1, batch_size: 32, deterministic: true, channels_last: false}
""")
    one = _single("coarse-to-fine", "--recipe", str(recipe), "--out", str(tmp_path / "one"), "--quiet")
    assert one.returncode == 0, one.stderr
    two = _ddp("coarse-to-fine", "--recipe", str(recipe), "--out", str(tmp_path / "two"), "--quiet")
    assert two.returncode == 0, two.stderr
    a, b = (load_checkpoint(tmp_path / d / "trial0" / "galerkin" / "fine-16" / "checkpoints" / "start.pt")["model"]
            for d in ("one", "two"))
    stats = [k for k in a if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in stats)
    assert any(float(a[k].abs().max()) > 0 for k in stats if k.endswith("running_mean"))  # recalibrated, not reset
    refused = _ddp("coarse-to-fine", "--recipe", str(recipe), "--out", str(tmp_path / "sync"), "--quiet",
                   "--set", "fine.sync_bn=true")
    assert refused.returncode != 0
    assert "rank 0: error: train.sync_bn needs CUDA devices" in refused.stderr
    mgopt = _ddp("coarse-to-fine", "--recipe", str(_c2f_recipe(tmp_path, "[mgopt]", 1)), "--out", str(tmp_path / "mg"),
                 "--quiet")  # its coarse levels are not sharded: refused data-parallel, with the way out
    flat = " ".join(mgopt.stderr.split())  # (torchrun adds its own launcher traceback after the rank's error)
    assert mgopt.returncode != 0 and "rank 0: error: the mgopt and joint variants do not run data-parallel" in flat
    assert "use parallel: variants" in flat

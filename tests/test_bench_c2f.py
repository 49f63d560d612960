"""analysis/bench_c2f.py end to end on tiny synthetic data: fronts, headline, trials and resume (no timings asserted)."""

import json
import subprocess
import sys

from conftest import ROOT


def bench(*args):
    return subprocess.run([sys.executable, str(ROOT / "analysis" / "bench_c2f.py"), "--dataset", "synthetic",
                           "--quick", "--n-train", "128", "--n-test", "32", "--fine", "16", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_bench_prints_both_fronts_the_headline_and_paired_trials(tmp_path):
    out = tmp_path / "b"
    r = bench("--out", str(out), "--trials", "2", "--points", "fo-e1,fo-e2,phase-c4-f1,run-c4-f1")
    assert r.returncode == 0, r.stderr
    for text in ("fine-only front:", "coarse-to-fine front:", "headline:", "paired by trial", "finest-grid share",
                 "right after the transfer to the finest grid"):
        assert text in r.stdout, text
    assert (out / "fronts_4points_2trials.png").stat().st_size > 10_000
    points = json.loads((out / "points_4points_2trials.json").read_text())
    assert {p["name"] for p in points} == {"fo-e1", "fo-e2", "phase-c4-f1", "run-c4-f1"}
    assert all(len(p["acc_trials"]) == 2 for p in points)
    # a rerun reuses every finished point (nothing retrained: the checkpoints keep their times)
    ck = out / "points" / "fo-e2" / "trial0" / "fine-only" / "fine-16" / "checkpoints" / "last.pt"
    stamp = ck.stat().st_mtime_ns
    again = bench("--out", str(out), "--trials", "2", "--points", "fo-e1,fo-e2,phase-c4-f1,run-c4-f1")
    assert again.returncode == 0 and ck.stat().st_mtime_ns == stamp


def test_bench_rejects_unknown_points_and_a_missing_npz_path():
    bad = bench("--points", "nonsense")
    assert bad.returncode != 0 and "unknown nonsense" in bad.stderr
    r = subprocess.run([sys.executable, str(ROOT / "analysis" / "bench_c2f.py"), "--dataset", "npz"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--path" in r.stderr


def test_bench_puts_mgopt_points_against_the_one_shot_front(tmp_path):
    r = bench("--out", str(tmp_path / "b"), "--points", "fo-e1,run-c8-f1,mgopt-c8-f1-e50")
    assert r.returncode == 0, r.stderr
    assert "mgopt-c8-f1-e50" in r.stdout and "MG/OPT and joint points against the one-shot" in r.stdout
    points = json.loads((tmp_path / "b" / "points_3points_1trials.json").read_text())
    mg = next(p for p in points if p["name"] == "mgopt-c8-f1-e50")
    assert mg["front"] == "mgopt" and mg["strategy"] == "mgopt" and mg["seconds"] > 0


def test_flush_compare_runs_the_point_twice_and_prints_equal_accuracies(tmp_path):
    r = bench("--flush-compare", "run-c4-f1", "--strategies", "transfer,galerkin-data", "--out", str(tmp_path / "f"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "f" / "points" / "run-c4-f1-flush-off").is_dir()
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith(("transfer ", "galerkin-data "))]
    assert [row[0] for row in rows[-2:]] == ["transfer", "galerkin-data"]
    for row in rows[-2:]:
        assert row[3].endswith("×") and row[4] == row[5], row  # kept/flushed ratio; accuracies unchanged
    bad = bench("--flush-compare", "nonsense")
    assert bad.returncode != 0 and "unknown point nonsense" in bad.stderr

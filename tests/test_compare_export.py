"""Results beyond one run directory (issue 32): `mres compare` over two runs of different recipes, CSV and
LaTeX export of every report table, and the recipe-diff column computed from the recipes."""
import csv
import io
import json
import re
import shutil
import subprocess

import pytest

from mres.c2f.export import latex_escape, plain, to_latex

C2F = ["--quiet", "--set", "dataset.name=synthetic", "--set", "dataset.synthetic.n_train=192", "--set",
       "dataset.synthetic.n_test=64", "--set", "dataset.synthetic.size=16", "--set", "resolutions=[8,16]",
       "--set", "model.name=cnn", "--set", "model.width1=4", "--set", "model.width2=4",
       "--set", "strategies=[fine-only,transfer,galerkin-reg]", "--set", "coarse.epochs=1", "--set", "fine.epochs=2",
       "--set", "trials=2"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from mres.cli import main  # noqa: F401 (imports the commands)
    import sys

    from conftest import run_mres

    root = tmp_path_factory.mktemp("cmp")
    a, b = root / "lam0.1", root / "lam0.01"
    for run, lam in ((a, "0.1"), (b, "0.01")):
        r = run_mres("coarse-to-fine", *C2F, "--set", f"lams=[{lam}]", "--out", str(run))
        assert r.returncode == 0, r.stderr
    return root, a, b


def test_compare_two_runs_csv_latex_and_the_diff_column(two_runs, run_cli):
    root, a, b = two_runs
    code, out, err = run_cli(root, "compare", str(a), str(b), "--csv", str(root / "c.csv"), "--latex",
                             str(root / "c.tex"), "--out", str(root / "cmp"))
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO((root / "c.csv").read_text())))
    assert len(rows) == 6  # 2 runs × 3 strategies (galerkin-reg carries its λ in the label)
    assert {(r["run"], r["strategy"]) for r in rows} == {
        ("lam0.1", "fine-only"), ("lam0.1", "transfer"), ("lam0.1", "galerkin-reg(lam=0.1)"),
        ("lam0.01", "fine-only"), ("lam0.01", "transfer"), ("lam0.01", "galerkin-reg(lam=0.01)")}
    assert all(r["differs"] in ("lams=[0.1]", "lams=[0.01]") for r in rows)
    assert all(r["trials"] == "2" for r in rows)
    second = [r for r in rows if r["run"] == "lam0.01" and r["strategy"] == "transfer"][0]
    assert "paired" in second["vs first run"]  # same seed and trials: trial k of both shares its coarse model
    tex = (root / "c.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 1
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", tex).group(1)
    header = tex.split(r"\toprule")[1].split(r"\midrule")[0]
    assert len(spec) == header.count("&") + 1 == 10
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == 6 and all(line.count(" & ") == len(spec) - 1 for line in body)
    assert r"galerkin-reg(lam=0.1)" in tex and r"$\pm$" in tex
    assert (root / "cmp" / "compare.png").exists() and (root / "cmp" / "compare.pdf").exists()
    if shutil.which("pdflatex"):
        from mres.c2f.export import latex_document

        (root / "doc.tex").write_text(latex_document([tex]))
        r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "doc.tex"], cwd=root, capture_output=True)
        assert r.returncode == 0, r.stdout[-2000:]


def test_unpaired_runs_use_welch(two_runs, run_cli, tmp_path):
    root, a, _ = two_runs
    c = tmp_path / "seed7"
    from conftest import run_mres

    r = run_mres("coarse-to-fine", *C2F, "--set", "seed=7", "--out", str(c))
    assert r.returncode == 0, r.stderr
    code, out, err = run_cli(tmp_path, "compare", str(a), str(c), "--csv", str(tmp_path / "c.csv"))
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO((tmp_path / "c.csv").read_text())))
    later = [r for r in rows if r["run"] == "seed7" and r["strategy"] == "transfer"][0]
    assert "unpaired (Welch)" in later["vs first run"] and later["differs"] == "seed=7"


def test_compare_refuses_what_is_not_a_run(run_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(tmp_path, "compare", str(tmp_path / "empty"))
    assert code == 2 and "not a finished coarse-to-fine run" in err, err


def test_report_exports_every_table(two_runs, run_cli):
    root, a, _ = two_runs
    code, _, err = run_cli(root, "report", str(a), "--csv", str(root / "csv"), "--latex", str(root / "tex"))
    assert code == 0, err
    md_tables = (a / "report.md").read_text().count("\n|---")
    csvs, texs = sorted((root / "csv").glob("*.csv")), sorted((root / "tex").glob("*.tex"))
    assert len(csvs) == len(texs) == md_tables >= 4
    for f in csvs:
        table = list(csv.reader(io.StringIO(f.read_text())))
        assert len({len(r) for r in table}) == 1  # every row as wide as the header


def test_latex_escapes_names_and_symbols():
    assert latex_escape("fine_only 70.8 ± 3.6 & 14×14") == r"fine\_only 70.8 $\pm$ 3.6 \& 14$\times$14"
    assert plain("**galerkin** `x` *y*") == "galerkin x y"
    tex = to_latex(["a", "b_c"], [["x%", "1 ± 2"]])
    assert r"\toprule" in tex and r"b\_c" in tex and r"x\%" in tex and r"1 $\pm$ 2" in tex


def test_tensorboard_log_is_read_back_by_tensorboards_own_reader(run_cli, tmp_path):
    pytest.importorskip("tensorboard", reason="the optional extra mres[tensorboard] (.ci/run installs it)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "R"
    code, _, err = run_cli(tmp_path, "train", "--quiet", "--set", "dataset.name=synthetic", "--set",
                           "dataset.synthetic.n_train=128", "--set", "dataset.synthetic.size=8", "--set",
                           "resolution=8", "--set", "model.width1=4", "--set", "model.width2=4", "--set",
                           "train.epochs=3", "--set", "train.log=[csv,tensorboard]", "--out", str(run))
    assert code == 0, err
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "test/accuracy", "optim/lr"} <= set(tags), tags
    steps = [e.step for e in acc.Scalars("test/accuracy")]
    assert steps == [1, 2, 3]
    metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [round(e.value, 6) for e in acc.Scalars("test/accuracy")] == [round(m["test_acc"], 6) for m in metrics]
    assert (run / "metrics.csv").exists()


def test_coarse_to_fine_phases_log_under_their_own_paths(run_cli, tmp_path):
    pytest.importorskip("tensorboard", reason="the optional extra mres[tensorboard] (.ci/run installs it)")
    run = tmp_path / "C"
    code, _, err = run_cli(tmp_path, "coarse-to-fine", *C2F, "--set", "trials=1", "--set", "strategies=[transfer]",
                           "--set", "fine.log=[tensorboard]", "--out", str(run))
    assert code == 0, err
    fine = run / "trial0" / "transfer" / "fine-16"
    assert list((fine / "tensorboard").glob("events.out.tfevents.*"))
    assert not (fine / "metrics.csv").exists() and (fine / "metrics.jsonl").exists()  # csv left out: not written
    assert not (run / "trial0" / "coarse-8" / "tensorboard").exists()  # coarse.log stayed [csv]


def test_tensorboard_without_the_package_is_refused_before_training(monkeypatch):
    import importlib.util

    from pydantic import ValidationError

    from mres.recipe import TrainConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ValidationError, match=r"pip install 'mres\[tensorboard\]'"):
        TrainConfig(log=["csv", "tensorboard"])

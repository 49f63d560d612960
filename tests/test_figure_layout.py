"""Every figure kind mres writes, rendered on tiny data, passes the layout check: no drawn text leaves the
figure or overlaps another (matplotlib's own window extents, mres.analysis.figures.layout_problems), and a
PDF lies beside every PNG. The checker itself is checked on figures built to fail."""

import importlib.util
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from conftest import ROOT  # noqa: E402
from mres.analysis.figures import layout_problems  # noqa: E402


@pytest.fixture
def checked(monkeypatch):
    """Every PNG written while the test runs: its name, its layout problems and its axes' titles."""
    seen: list[tuple[Path, list[str], list[str]]] = []
    original = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        if str(fname).endswith(".png"):
            seen.append((Path(fname), layout_problems(self), [ax.get_title() for ax in self.axes]))
        return original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return seen


def _assert_clean(seen, kinds):
    names = {p.name for p, _, _ in seen}
    assert kinds <= names, f"not rendered: {sorted(kinds - names)}"
    bad = [f"{p.name}: {msg}" for p, problems, _ in seen for msg in problems]
    assert not bad, "\n".join(bad)
    missing_pdf = [p.name for p, _, _ in seen if not p.with_suffix(".pdf").exists()]
    assert not missing_pdf, f"no PDF beside {missing_pdf}"


# ----------------------------------------------------------------------------- the checker
def test_the_checker_finds_a_clipped_label_and_overlapping_texts():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.set_ylabel("a y label far too long to fit inside a figure this small " * 2)
    ax.text(0.5, 0.5, "one text", transform=ax.transAxes)
    ax.text(0.52, 0.5, "another text", transform=ax.transAxes)
    problems = layout_problems(fig)
    plt.close(fig)
    assert any("leaves the" in p and "a y label" in p for p in problems), problems
    assert any("'one text' overlaps Text 'another text'" in p for p in problems), problems


def test_the_checker_passes_a_clean_figure_and_skips_undrawn_tick_labels():
    fig, ax = plt.subplots(figsize=(4, 3), constrained_layout=True)
    ax.plot([0, 1], [0, 1])
    ax.set_xlim(0.2, 0.8)  # ticks outside the view exist but are not drawn
    ax.set_xlabel("x"), ax.set_ylabel("y"), ax.set_title("clean")
    problems = layout_problems(fig)
    plt.close(fig)
    assert problems == []


def test_the_checker_catches_the_3d_z_label_the_next_panel_cut_off():
    """The landscape surface before 01ba1ed: a z label per 3-D panel, panels side by side."""
    import numpy as np

    fig = plt.figure(figsize=(9, 3), constrained_layout=True)
    x, y = np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5))
    for i in range(3):
        ax = fig.add_subplot(1, 3, i + 1, projection="3d")
        ax.plot_surface(x, y, x ** 2 + y ** 2)
        ax.set_zlabel("training loss (cross-entropy)")
        ax.set_title(f"panel {i}")
    problems = layout_problems(fig)
    plt.close(fig)
    assert any("'training loss (cross-entropy)' reaches" in p and "'panel 1'" in p for p in problems), problems


# ----------------------------------------------------------------------------- every figure kind
C2F = {"dataset": {"name": "synthetic", "synthetic": {"n_train": 128, "n_test": 64, "size": 16}},
       "model": {"name": "cnn", "width1": 4, "width2": 4}, "resolutions": [8, 16],
       "coarse": {"epochs": 2, "batch_size": 32}, "fine": {"epochs": 2, "batch_size": 32}, "trials": 2,
       "strategies": ["fresh", "fine-only", "transfer", "galerkin", "galerkin-reg", "galerkin-data"],
       "galerkin_data": {"calibration": 64}, "eval_train": False}


def _job(root: Path, **kw):
    from mres.c2f.job import run_coarse_to_fine
    from mres.recipe import CoarseToFineRecipe, validate_recipe

    return run_coarse_to_fine(validate_recipe({**C2F, **kw}, CoarseToFineRecipe), root, progress=False)


def test_report_landscape_features_and_compare_figures(tmp_path, checked):
    from mres.analysis.runner import LandscapeRequest, run_landscape
    from mres.c2f.compare import compare_figure, load_runs, reference_accuracy

    a = tmp_path / "a"
    _job(a, analysis={"landscape": {"grid": "5x5", "samples": 32}, "features": {"channels": [0], "samples": [0, 1]}})
    b = tmp_path / "b"
    _job(b, trials=1, strategies=["fresh", "transfer"], analysis={"landscape": {"grid": "5", "samples": 32}})
    runs = load_runs([a, b])
    compare_figure(runs, tmp_path / "cmp", reference_accuracy(runs))
    ck = a / "trial0" / "transfer" / "fine-16" / "checkpoints"
    run_landscape(LandscapeRequest([ck / "start.pt", ck / "last.pt"], tmp_path / "between", "between", (5,),
                                   (-0.5, 1.5), samples=32, progress=False))
    _assert_clean(checked, {"accuracy_seconds.png", "convergence.png", "norm_growth.png", "landscape_contour.png",
                            "landscape_filled.png", "landscape_acc_filled.png", "landscape_surface.png",
                            "landscape_1d.png", "features.png", "compare.png"})
    assert (tmp_path / "between" / "landscape_1d.png") in {p for p, _, _ in checked}
    titles = {p.name: t for p, _, t in checked}
    assert "galerkin-reg(lam=0.1) start" in titles["landscape_filled.png"]  # the strategy's label, not its folder
    assert any(t.startswith("input #0: class ") for t in titles["features.png"])  # synthetic data: no names


def test_class_names_where_the_dataset_has_them():
    from mres.training.data import class_names

    assert class_names("fashion-mnist", 10)[9] == "ankle boot" and class_names("cifar10", 10)[0] == "airplane"
    assert class_names("npz", 3) == ["class 0", "class 1", "class 2"]


def test_spectrum_figure(tmp_path, checked):
    from mres.analysis.spectrum_plot import plot_spectrum
    from mres.grids.spectrum import choose_roots

    torch.manual_seed(0)
    lam = torch.complex(torch.rand(200) * 4, torch.randn(200) * 0.5)
    plot_spectrum(lam, choose_roots(lam, 6), tmp_path / "spectrum_level1.png", title="level 1: A at 16×16")
    _assert_clean(checked, {"spectrum_level1.png"})


def test_bench_fronts_figure(tmp_path, checked, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_c2f", ROOT / "analysis" / "bench_c2f.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_c2f", bench)  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    rows = []
    for name, front, s, acc in (("fo-e1", "fine-only", 10, 0.80), ("fo-e2", "fine-only", 20, 0.85),
                                ("fo-e4", "fine-only", 40, 0.88), ("run-c4-f1", "c2f", 12, 0.84),
                                ("run-c8-f1", "c2f", 18, 0.87), ("keep-run-c8-f1", "c2f", 19, 0.875),
                                ("mgopt-c8-f1-e50", "mgopt", 25, 0.86)):
        p = bench.Point(name, front, {}, name)
        r = {"strategy": "transfer", "seconds": s, "acc": acc, "seconds_trials": [s], "acc_trials": [acc],
             "collapsed": [False], "finest_seconds": [s / 2], "sessions": ["x"],
             "start": {"seconds": s * 0.6, "acc": acc - 0.03} if front == "c2f" else None}
        rows.append((p, r))
    fo = bench.tta.pareto_front([(r["seconds"], r["acc"]) for p, r in rows if p.front == "fine-only"])
    c2f = bench.tta.pareto_front([(r["seconds"], r["acc"]) for p, r in rows if p.front == "c2f"])
    h = bench.tta.headline(c2f, fo)

    class Args:
        dataset, n_train, fine, trials = "synthetic", 128, 16, 1

    bench.plot(rows, fo, c2f, h, tmp_path / "fronts.png", Args)
    _assert_clean(checked, {"fronts.png"})

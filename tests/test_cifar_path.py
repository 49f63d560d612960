"""The CIFAR-10 path end to end: a CIFAR-format folder → `mres coarse-to-fine` with the bundled Poly-MgNet recipe."""

from __future__ import annotations

import json
from pathlib import Path

from mres.training.data import read_cifar_folder, write_sample_cifar
from mres.recipe import CoarseToFineRecipe, load_recipe

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "poly_g4_cifar.yaml"


def tiny_cifar(root: Path) -> Path:
    return write_sample_cifar(root, 200, 50)


def test_tiny_cifar_folder_reads_back(tmp_path):
    folder = tiny_cifar(tmp_path)
    xtr, ytr, xte, yte = read_cifar_folder(folder, "cifar10")
    assert tuple(xtr.shape) == (200, 3, 32, 32) and tuple(xte.shape) == (50, 3, 32, 32)
    assert xtr.dtype.is_floating_point and sorted(set(ytr.tolist())) == list(range(10))


def test_poly_g4_cifar_recipe_runs_coarse_to_fine(mres_cli, tmp_path):
    tiny_cifar(tmp_path)  # 200 / 50 images; ten variants of a 4-channel model: ~10 s on 2 free cores
    run = tmp_path / "run"
    overrides = [f"dataset.data_root={tmp_path}", "coarse.epochs=1", "fine.epochs=1", "model.widths=[4,4,4,4]",
                 "trials=1", "threads=2"]
    args = ["coarse-to-fine", "--recipe", str(RECIPE), "--out", str(run), "--quiet"]
    for o in overrides:
        args += ["--set", o]
    r = mres_cli(*args, timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    summary = json.loads((run / "summary.json").read_text())
    recipe = load_recipe(RECIPE, [], CoarseToFineRecipe)
    got = {(s["strategy"], s["policy"]) for s in summary["strategies"].values()}
    expect = {("fresh", "keep")} | {(s, p) for s in recipe.strategies if s != "fresh"
                                    for p in recipe.coefficient_policies}
    assert got == expect and len(expect) == 10  # 3 strategies × 3 policies + fresh
    assert summary["resolutions"] == [16, 32]
    for label, s in summary["strategies"].items():
        assert len(s["acc_final"]) == 1 and not any(s["diverged"]), label
    assert (run / "report.md").exists()
    # the coefficient diagnostics name the policy
    diag = json.loads((run / "trial0" / "galerkin-rescale" / "fine-32" / "diagnostics.json").read_text())
    assert {d["kind"] for d in diag["layers"] if d["name"].endswith("coeff")} == {"coefficient-rescale"}


def test_datasets_sample_cifar_command(mres_cli, tmp_path):
    r = mres_cli("datasets", "--sample-cifar", str(tmp_path / "c"), "--train", "30", "--test", "20")
    assert r.returncode == 0, r.stderr
    xtr, _, xte, _ = read_cifar_folder(tmp_path / "c" / "cifar-10-batches-py", "cifar10")
    assert len(xtr) == 30 and len(xte) == 20
    bad = mres_cli("datasets", "--sample-cifar", str(tmp_path / "d"), "--train", "0")
    assert bad.returncode == 2 and "--train" in bad.stderr
    again = mres_cli("datasets", "--sample-cifar", str(tmp_path / "c"))  # never overwrites a CIFAR folder
    assert again.returncode == 2 and "not empty" in again.stderr
    lone = mres_cli("datasets", "--train", "30")
    assert lone.returncode == 2 and "--sample-cifar" in lone.stderr

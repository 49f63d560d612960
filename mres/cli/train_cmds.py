"""`mres train`, `mres evaluate`, `mres datasets`, `mres recipes`."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..errors import RunFailure, UserError
from ..training.terminal import fit_table, fmt_seconds, wrap_line
from . import app, console

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"

# options shared by the run commands (train, coarse-to-fine)
SetOpt = typer.Option(None, "--set", help="Override a recipe key: key.path=value (repeatable).")
DataSetOpt = typer.Option(None, "--set", help="Correct the run's dataset block: dataset.key=value, e.g. "
                                              "dataset.path=/new/place/data.npz (repeatable).")
RecipeOpt = typer.Option(None, "--recipe", "-r", help="YAML recipe (a path or a bundled name).")
OutOpt = typer.Option(None, "--out", "-o", help="Run directory (default runs/<recipe>-<time>).")
ResumeOpt = typer.Option(None, "--resume", help="Continue the run in this directory.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress output.")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace the run already in --out (its files only; "
                                                       "without this flag such an --out is refused).")


def default_run_dir(recipe_path: Optional[Path], kind: str) -> Path:
    stem = recipe_path.stem if recipe_path else kind
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def resolve_recipe_path(recipe: Optional[Path]) -> Optional[Path]:
    """A recipe path as given, or the name of a bundled recipe (with or without .yaml)."""
    if recipe is None or recipe.exists():
        return recipe
    for cand in (RECIPES_DIR / recipe.name, RECIPES_DIR / f"{recipe.name}.yaml"):
        if cand.exists():
            return cand
    raise UserError(f"recipe file {recipe} does not exist (bundled recipes: `mres recipes`)")


def recipe_and_run_dir(recipe: Optional[Path], out: Optional[Path], overrides: Optional[List[str]],
                       resume: Optional[Path], kind: type, default_name: str, overwrite: bool = False):
    """The validated recipe and run directory of a job: a new run, or ``--resume RUN_DIR``.

    A run needs ``--recipe``, ``--resume`` or at least one ``--set`` (a bare ``mres train`` would
    silently start the full default job); ``--resume`` takes the run's own recipe.yaml, so it
    cannot be combined with ``--recipe`` (``--set`` still applies).  A new run's ``--out`` must not hold a
    run already (``--overwrite`` replaces it) nor be in use; every check passes before anything is written.
    """
    from ..recipe import load_recipe
    from ..training.distributed import world
    from ..training.rundir import claim_new_run

    if resume is not None and overwrite:
        raise UserError(f"--resume {resume} and --overwrite do not combine: a resumed run keeps its files")
    if resume is not None:
        if recipe is not None:
            raise UserError(f"--resume {resume} and --recipe {recipe} do not combine: a resumed run continues with "
                            f"its own {resume / 'recipe.yaml'}; drop --recipe (--set key=value still applies), "
                            "or start a new run with --recipe and no --resume")
        if not (resume / "recipe.yaml").exists():
            raise UserError(f"--resume {resume}: no recipe.yaml there (not an mres run directory)")
        return load_recipe(resume / "recipe.yaml", overrides or [], kind), resume
    if recipe is None and not overrides:
        raise UserError(f"nothing to run: give --recipe FILE or the name of a bundled recipe (`mres recipes` lists "
                        f"them), --resume RUN_DIR, or --set key=value to run on the defaults "
                        f"(e.g. mres {default_name} --recipe {_example_recipe(default_name)})")
    path = resolve_recipe_path(recipe)
    rec = load_recipe(path, overrides or [], kind)
    if path is None:
        # two lines, each wrapped to the terminal: what runs, then the overrides it runs with
        console.print(wrap_line(f"no --recipe: defaults + --set {' '.join(overrides or [])}", console.width, 4) + "\n"
                      + wrap_line(f"→ {describe(rec)}", console.width, 2), markup=False, highlight=False, soft_wrap=True)
    run_dir = out or default_run_dir(path, default_name)
    if world().main:
        claim_new_run(run_dir, overwrite)
    return rec, run_dir


def _example_recipe(command: str) -> str:
    return "c2f_cnn_fashion" if command == "coarse-to-fine" else "cnn_fashion"


def describe(rec) -> str:
    """One line saying what a recipe will run (printed when no --recipe was given)."""
    data = f"{rec.model.name} on {rec.dataset.name}"
    if hasattr(rec, "resolutions"):
        return f"{data}, grids {' → '.join(map(str, rec.resolutions))}, strategies {', '.join(rec.strategies)}"
    n = rec.train.epochs
    return f"{data} at {rec.resolution}×{rec.resolution}, {n} epoch{'' if n == 1 else 's'}"


@app.command("train")
def train_cmd(
    recipe: Optional[Path] = RecipeOpt,
    out: Optional[Path] = OutOpt,
    set_: Optional[List[str]] = SetOpt,
    resume: Optional[Path] = ResumeOpt,
    quiet: bool = QuietOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Train one model at one resolution."""
    from ..recipe import TrainRecipe
    from ..training.fit import train_job

    rec, run_dir = recipe_and_run_dir(recipe, out, set_, resume, TrainRecipe, "train", overwrite)
    console.print(f"run directory: [bold]{escape(str(run_dir))}[/]")
    result = train_job(rec, run_dir, resume=resume is not None, progress=not quiet)
    m = result["metrics"]
    if not m:
        console.print("no epochs run (train.epochs = 0)")
        return
    table = Table(title=escape(f"{rec.model.name} on {rec.dataset.name} at {rec.resolution}×{rec.resolution}"))
    for col in ("epoch", "train loss", "train acc", "test loss", "test acc", "seconds"):
        table.add_column(col, justify="right")
    for r in m:
        table.add_row(str(r["epoch"]), f"{r['train_loss']:.4f}", f"{r['train_acc']:.2%}", f"{r['test_loss']:.4f}",
                      f"{r['test_acc']:.2%}", fmt_seconds(r["seconds"], unit=False))
    console.print(fit_table(table, console, names=()))
    console.print(f"test accuracy: [bold]{m[-1]['test_acc']:.2%}[/]  (wall time {fmt_seconds(result['seconds'])}; "
                  f"checkpoint {escape(str(result['checkpoint']))})")


@app.command("evaluate")
def evaluate_cmd(
    ckpt: Path = typer.Argument(..., help="Checkpoint file (or run directory)."),
    split: str = typer.Option("test", help="train or test"),
    resolution: Optional[int] = typer.Option(None, help="Evaluate at this resolution (default: the checkpoint's)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    set_: Optional[List[str]] = DataSetOpt,
) -> None:
    """Evaluate a checkpoint on its dataset."""
    from ..training.checkpoint import load_checkpoint, model_from_checkpoint
    from ..training.data import load_dataset
    from ..recipe import DatasetConfig, override_dataset
    from ..training.fit import evaluate, select_device

    if split not in ("train", "test"):
        raise UserError(f"--split {split!r}: allowed train, test")
    c = load_checkpoint(ckpt)
    if resolution is not None and resolution < 1:
        raise UserError(f"--resolution {resolution}: a resolution is a positive number of pixels")
    res = c["resolution"] if resolution is None else resolution
    if res != c["resolution"]:
        raise UserError(f"--resolution {res}: the checkpoint is at {c['resolution']}; "
                        f"move it first with `mres transfer {ckpt} --to fine|coarse`")
    dev = select_device(device)
    dataset = override_dataset((c.get("recipe") or {}).get("dataset"), set_, str(ckpt))
    data = load_dataset(DatasetConfig.model_validate(dataset), dev).at_resolution(res)
    model = model_from_checkpoint(c).to(dev)
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    import torch

    bad = [n for n, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise RunFailure(f"{ckpt}: non-finite weights in {', '.join(bad[:4])}{' …' if len(bad) > 4 else ''} "
                         "(a diverged run); not a usable model")
    loss, acc = evaluate(model, x, y)
    if not math.isfinite(loss):
        raise RunFailure(f"{ckpt}: the {split} loss is {loss} on {len(y)} images at {res}×{res} (accuracy {acc:.2%}); "
                         "the data or the model produce non-finite outputs")
    console.print(f"{escape(str(ckpt))}: {split} loss {loss:.4f}, accuracy [bold]{acc:.2%}[/] on {len(y)} images "
                  f"at {res}×{res}", soft_wrap=True)  # one line: a result to grep, with a path to copy


@app.command("datasets")
def datasets_cmd(
    sample_cifar: Optional[Path] = typer.Option(None, "--sample-cifar",
                                                help="Write a small synthetic CIFAR-10-format folder under this root "
                                                     "(use it as dataset.data_root) and exit."),
    n_train: Optional[int] = typer.Option(None, "--train", help="Training images of --sample-cifar (default 200)."),
    n_test: Optional[int] = typer.Option(None, "--test", help="Test images of --sample-cifar (default 50)."),
) -> None:
    """What datasets are available here and how to get the rest."""
    from ..training.data import CIFAR_FOLDERS, dataset_status, write_sample_cifar

    if sample_cifar is None:
        if n_train is not None or n_test is not None:
            raise UserError("--train / --test size the --sample-cifar folder; give --sample-cifar DIR too")
    else:
        n_train = 200 if n_train is None else n_train
        n_test = 50 if n_test is None else n_test
        for flag, n in (("--train", n_train), ("--test", n_test)):
            if n < 10:
                raise UserError(f"{flag} {n}: at least 10 images (one per class)")
        folder = sample_cifar / CIFAR_FOLDERS["cifar10"]
        if folder.exists() and any(folder.iterdir()):
            raise UserError(f"--sample-cifar {sample_cifar}: {folder} exists and is not empty "
                            "(it may hold the real CIFAR-10); choose another folder")
        try:
            write_sample_cifar(sample_cifar, n_train, n_test)
        except OSError as exc:
            raise UserError(f"--sample-cifar {sample_cifar}: {exc.strerror or exc}") from None
        console.print(f"wrote {n_train} + {n_test} synthetic CIFAR-10 images to {folder}; "
                      f"use --set dataset.data_root={sample_cifar}", markup=False, highlight=False)
        return

    table = Table(title="datasets")
    for col in ("name", "available", "where", "how to get it"):
        table.add_column(col)
    for r in dataset_status():
        table.add_row(Text(str(r["name"])), escape(str(r["available"])), Text(str(r["where"])), escape(str(r["how"])))
    console.print(fit_table(table, console, names=(0, 2)))


@app.command("recipes")
def recipes_cmd() -> None:
    """The bundled recipes."""

    table = Table(title=escape(f"bundled recipes ({RECIPES_DIR})"))
    table.add_column("recipe")
    table.add_column("what")
    for p in sorted(RECIPES_DIR.glob("*.yaml")):
        first = p.read_text().splitlines()[0] if p.read_text() else ""
        table.add_row(Text(p.name), escape(first.lstrip("# ").strip()))
    console.print(fit_table(table, console))

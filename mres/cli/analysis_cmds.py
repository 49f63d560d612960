"""`mres landscape` (loss landscapes, Li et al. 2018) and `mres features` (propagated features)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any, List, Optional, Tuple

import typer

from ..errors import UserError
from . import app, console

GRID_FORM = "NxM (e.g. 41x31) or N for a square grid, each at least 2"
RANGE_FORM = "LO:HI with LO < HI (e.g. -1:1 or -0.5:1.5)"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


# ------------------------------------------------------------------------------ flag parsing

def parse_grid(text: str, dim: int) -> tuple[int, ...]:
    """'41x31' → (41, 31); '41' → (41, 41) for 2-D or (41,) for 1-D."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+)\s*)?", text or "")
    if not m:
        raise UserError(f"--grid {text!r}: expected {GRID_FORM}")
    nx, ny = int(m.group(1)), int(m.group(2)) if m.group(2) else None
    if dim == 1 and ny is not None:
        raise UserError(f"--grid {text!r}: a 1-D slice takes one number N (points along the line), at least 2")
    sizes = (nx,) if dim == 1 else (nx, ny if ny is not None else nx)
    if min(sizes) < 2:
        raise UserError(f"--grid {text!r}: expected {GRID_FORM}")
    return sizes


def parse_range(text: str, flag: str = "--range") -> tuple[float, float]:
    m = re.fullmatch(rf"\s*({_NUMBER})\s*:\s*({_NUMBER})\s*", text or "")
    if not m or float(m.group(1)) >= float(m.group(2)):
        raise UserError(f"{flag} {text!r}: expected {RANGE_FORM}")
    return float(m.group(1)), float(m.group(2))


def parse_int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values):
        raise UserError(f"{flag} {text!r}: expected comma-separated non-negative integers, e.g. 0,3")
    return values


# ------------------------------------------------------------------------------ checkpoints

def checkpoint_labels(paths: List[Path]) -> list[str]:
    """Short distinct names: path components shared at the end by all (checkpoints/last.pt) drop."""
    parts = [list(p.with_suffix("").parts) if p.suffix == ".pt" else list(p.parts) for p in paths]
    if len(parts) > 1:
        while all(len(q) > 1 for q in parts) and len({q[-1] for q in parts}) == 1:
            parts = [q[:-1] for q in parts]
    labels = [q[-1] if q else str(p) for q, p in zip(parts, paths)]
    if len(set(labels)) < len(labels):  # fall back to the longest tail that tells them apart
        for k in range(2, max(len(q) for q in parts) + 1):
            labels = ["/".join(q[-k:]) for q in parts]
            if len(set(labels)) == len(labels):
                break
    return labels


def _load_all(paths: List[Path], labels: List[str], device: Any) -> list[tuple[str, dict, Any]]:
    from ..checkpoint import load_checkpoint, model_from_checkpoint

    loaded = []
    for path, label in zip(paths, labels):
        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt).to(device).eval()
        loaded.append((label, ckpt, model))
    archs = {json.dumps(ck["arch"], sort_keys=True) for _, ck, _ in loaded}
    if len(archs) > 1:
        detail = "; ".join(f"{label}: {ck['arch']['name']} {ck['arch'].get('options', {})}" for label, ck, _ in loaded)
        raise UserError(f"the checkpoints have different architectures ({detail}); one architecture per call")
    return loaded


def _split_labels(labels: Optional[str], n: int, paths: List[Path]) -> list[str]:
    if labels is None:
        return checkpoint_labels(paths)
    out = [s.strip() for s in labels.split(",")]
    if len(out) != n:
        raise UserError(f"--labels: {len(out)} labels for {n} checkpoints")
    return out


def _eval_data(loaded: list[tuple[str, dict, Any]], split: str, n: int | None, device: Any,
               data_seed: int) -> list[tuple[Any, Any]]:
    """Each checkpoint's evaluation subset at its own resolution (loaded once per dataset × resolution)."""
    from ..data import load_eval_subset

    if split not in ("train", "test"):
        raise UserError(f"--split {split!r}: expected train or test")
    cache: dict[tuple[str, int], tuple[Any, Any]] = {}
    out = []
    for label, ckpt, _ in loaded:
        dataset = (ckpt.get("recipe") or {}).get("dataset")
        if not isinstance(dataset, dict):
            raise UserError(f"{label}: the checkpoint's recipe has no dataset block; cannot load its data")
        key = (json.dumps(dataset, sort_keys=True), int(ckpt["resolution"]))
        if key not in cache:
            cache[key] = load_eval_subset(dataset, split, n, int(ckpt["resolution"]), device, seed=data_seed)
        out.append(cache[key])
    return out


def _state_digest(model: Any) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _select_device(name: str) -> Any:
    import torch

    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"--device {name!r}: expected auto, cpu or cuda")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    return torch.device(name)


# ------------------------------------------------------------------------------ landscape

@app.command("landscape")
def landscape_cmd(
    ckpts: Optional[List[Path]] = typer.Argument(None, help="Checkpoints (or run directories) of one architecture."),
    out: Path = typer.Option(Path("landscape"), "--out", "-o", help="Output directory (a rerun there resumes)."),
    grid: str = typer.Option("31x31", "--grid", help="Grid points: NxM (2-D) or N (1-D)."),
    range_: Optional[str] = typer.Option(None, "--range",
                                         help="LO:HI along direction 1 (default -1:1; -0.5:1.5 with --between)."),
    yrange: Optional[str] = typer.Option(None, "--yrange", help="LO:HI along direction 2 (default: --range)."),
    dim: Optional[int] = typer.Option(None, "--dim", help="1 or 2 random directions (default 2)."),
    between: Optional[Tuple[Path, Path]] = typer.Option(None, "--between",
                                                        help="Interpolate from checkpoint A to B: --between A.pt B.pt"),
    samples: int = typer.Option(1000, "--samples", help="Size of the fixed evaluation subset."),
    split: str = typer.Option("train", "--split", help="train or test"),
    chunk: int = typer.Option(8, "--chunk", help="Grid points per batched (vmap) forward."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Samples per forward (default: by device and chunk)."),
    method: str = typer.Option("auto", "--method", help="auto (vmap, loop if it cannot), vmap or loop."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    seed: int = typer.Option(0, "--seed", help="Seed of the random directions."),
    data_seed: int = typer.Option(0, "--data-seed", help="Seed choosing the evaluation subset."),
    directions: Optional[Path] = typer.Option(None, "--directions", help="Reuse the directions of an earlier run."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated panel titles."),
    vmax: Optional[float] = typer.Option(None, "--vmax", help="Upper end of the colour scale (default: max loss)."),
    log: bool = typer.Option(False, "--log", help="Colour scale on log10(loss)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Loss landscape: 2-D / 1-D slices along filter-normalised random directions, or A→B interpolation."""
    import torch

    from .. import landscape as ls

    # --- flags -------------------------------------------------------------------------
    if between is not None and (between[0] is None or between[1] is None):
        between = None
    if between is not None and ckpts:
        raise UserError("give either checkpoints or --between A B, not both")
    if between is None and not ckpts:
        raise UserError("no checkpoints given (mres landscape CKPT [CKPT ...] or --between A B)")
    mode = "between" if between is not None else None
    if dim is None:
        dim = 1 if mode else 2
    if dim not in (1, 2):
        raise UserError(f"--dim {dim}: expected 1 or 2")
    if mode and dim != 1:
        raise UserError("--between is a 1-D interpolation; --dim 2 does not apply")
    if mode and directions is not None:
        raise UserError("--directions does not apply to --between (the direction is B − A)")
    mode = mode or f"{dim}d"
    if method not in ("auto", "vmap", "loop"):
        raise UserError(f"--method {method!r}: expected auto, vmap or loop")
    if chunk < 1:
        raise UserError(f"--chunk {chunk}: expected a positive integer")
    if samples < 1:
        raise UserError(f"--samples {samples}: expected a positive integer")
    if batch is not None and batch < 1:
        raise UserError(f"--batch {batch}: expected a positive integer")
    sizes = parse_grid(grid, dim)
    xr = parse_range(range_ if range_ is not None else ("-0.5:1.5" if mode == "between" else "-1:1"))
    yr = parse_range(yrange, "--yrange") if yrange is not None else xr
    if dim == 1 and yrange is not None:
        raise UserError("--yrange needs a 2-D slice (--dim 2)")
    xs = ls.parse_axis(*xr, sizes[0])
    ys = ls.parse_axis(*yr, sizes[1]) if dim == 2 else None
    dev = _select_device(device)

    # --- checkpoints, data, directions ----------------------------------------------------
    paths = list(between) if mode == "between" else list(ckpts or [])
    names = _split_labels(labels, len(paths), paths)
    loaded = _load_all(paths, names, dev)
    data = _eval_data(loaded, split, samples, dev, data_seed)
    models = [(label, model) for label, _, model in loaded]
    out.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "format": ls.LANDSCAPE_FORMAT, "mode": mode, "checkpoints": [str(p) for p in paths], "labels": names,
        "arch": loaded[0][1]["arch"], "resolutions": [int(ck["resolution"]) for _, ck, _ in loaded],
        "grid": list(sizes), "range": list(xr), "yrange": list(yr) if dim == 2 else None,
        "samples": samples, "split": split, "data_seed": data_seed,
        "loss": "mean cross-entropy on the subset, eval mode, no regularisation term",
    }
    if mode == "between":
        if loaded[0][1]["resolution"] != loaded[1][1]["resolution"]:
            raise UserError("--between: the two checkpoints have different resolutions "
                            f"({loaded[0][1]['resolution']} and {loaded[1][1]['resolution']})")
        row_label = f"{names[0]} → {names[1]}"
        jobs = [ls.interpolation_job(row_label, models[0][1], models[1][1], *data[0])]
        settings["labels"] = [row_label]
        settings["interpolation"] = ("θ(t) = (1−t)θ_A + tθ_B over parameters and floating buffers "
                                     "(BN running stats); running_var clamped at 0")
        dir_digest = ""
    else:
        dir_set = ls.DirectionSet.load(directions) if directions else ls.DirectionSet.generate(
            [m for _, m in models], dim, seed)
        jobs = ls.random_slice_jobs(models, data, dir_set)
        dir_set.save(out / "directions.pt", [(j.label, j.directions) for j in jobs])
        dir_digest = dir_set.digest()
        settings.update(seed=dir_set.seed, directions=str(directions) if directions else "generated",
                        directions_digest=dir_digest,
                        normalisation="filter-wise (dim-0 slices) to each checkpoint's own weights; "
                                      "zero on ≤1-D tensors (biases, BN) and on buffers")
    resume_key = json.dumps({k: settings[k] for k in ("mode", "grid", "range", "yrange", "samples", "split",
                                                      "data_seed")}
                            | {"dirs": dir_digest, "models": [_state_digest(m) for _, m in models]}, sort_keys=True)
    settings.update(device=str(dev), chunk=chunk, batch=batch, method=method, torch=torch.__version__,
                    created=time.strftime("%Y-%m-%d %H:%M:%S"))

    # --- evaluate (resumable) ---------------------------------------------------------------
    final, partial = out / "landscape.npz", out / "landscape.partial.npz"
    result = None
    if final.exists() and not partial.exists():
        try:
            old = ls.LandscapeResult.load(final)
            if old.settings.get("resume_key") == resume_key:
                result = old
                result.labels = list(settings["labels"])  # titles may change without recomputing
                console.print(f"{final} already holds these settings: re-plotting only")
        except Exception:
            result = None
    if result is None:
        n_points = len(jobs) * len(xs) * (len(ys) if ys is not None else 1)
        console.print(f"{mode} landscape of {len(jobs)} row(s) × {n_points // len(jobs)} points on {dev}, "
                      f"{len(data[0][1])} {split} samples → [bold]{out}[/]")
        t0 = time.perf_counter()
        result = _run_with_progress(jobs, xs, ys, n_points, quiet, method=method, chunk=chunk, batch_size=batch,
                                    partial_path=partial, resume_key=resume_key, settings=settings, ls=ls)
        result.settings["resume_key"] = resume_key
        result.settings["seconds"] = round(time.perf_counter() - t0, 2)
        result.save(final)
        partial.unlink(missing_ok=True)
    figures = ls.plot_landscape(result, out, vmax=vmax, log=log)
    if mode == "between":  # the plain losses of both end points, the curve's range once
        _print_summary(result, [(names[0], models[0][1], *data[0], 0), (names[1], models[1][1], *data[0], 0)], ls)
    else:
        _print_summary(result, [(job.label, job.model, job.x, job.y, k) for k, job in enumerate(jobs)], ls)
    console.print(f"data: {final}")
    console.print("figures: " + ", ".join(str(p) for p in figures if p.suffix == ".png"))


def _run_with_progress(jobs: list, xs: Any, ys: Any, total: int, quiet: bool, *, ls: Any, **kw: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    def warn(msg: str) -> None:
        console.print(f"[yellow]warning:[/] {msg}")

    if quiet:
        return ls.compute_landscape(jobs, xs, ys, warn=warn, **kw)
    columns = (TextColumn("grid points"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("landscape", total=total)
        return ls.compute_landscape(jobs, xs, ys, progress=lambda n: bar.advance(task, n), warn=warn, **kw)


def _print_summary(result: Any, rows: list[tuple[str, Any, Any, Any, int]], ls: Any) -> None:
    """Per checkpoint: its plain loss / accuracy and the range of its surface row."""
    import numpy as np
    from rich.table import Table

    table = Table(title="loss landscape")
    for col in ("checkpoint", "plain loss", "plain acc", "min loss on grid", "max loss on grid"):
        table.add_column(col, justify="right")
    for label, model, x, y, k in rows:
        loss, acc = ls.evaluate_model(model, x, y)
        finite = result.loss[k][np.isfinite(result.loss[k])]
        table.add_row(label, f"{loss:.4f}", f"{acc:.2%}", f"{finite.min():.4f}" if finite.size else "-",
                      f"{finite.max():.4g}" if finite.size else "-")
    console.print(table)


# ------------------------------------------------------------------------------ features

@app.command("features")
def features_cmd(
    ckpts: List[Path] = typer.Argument(..., help="Checkpoints (or run directories), one figure row each."),
    samples: str = typer.Option("0,1", "--samples", help="Indices of the inputs in the evaluation subset."),
    channels: str = typer.Option("0", "--channels", help="Channels to show at every stage, e.g. 0,3."),
    out: Path = typer.Option(Path("features"), "--out", "-o", help="Output directory."),
    split: str = typer.Option("test", "--split", help="train or test"),
    data_seed: int = typer.Option(0, "--data-seed", help="Seed choosing the evaluation subset."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated row titles."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
) -> None:
    """Propagated features (thesis Figs. 4.4/4.6): feature maps after every stage, one row per checkpoint."""
    from ..features import propagate_features, save_figure

    sample_idx = parse_int_list(samples, "--samples")
    chans = parse_int_list(channels, "--channels")
    dev = _select_device(device)
    names = _split_labels(labels, len(ckpts), list(ckpts))
    from ..checkpoint import load_checkpoint, model_from_checkpoint

    loaded = []
    for path, label in zip(ckpts, names):
        ckpt = load_checkpoint(path)
        loaded.append((label, ckpt, model_from_checkpoint(ckpt).to(dev).eval()))
    data = _eval_data(loaded, split, max(sample_idx) + 1, dev, data_seed)
    n_have = min(len(y) for _, y in data)
    if max(sample_idx) >= n_have:
        raise UserError(f"--samples: index {max(sample_idx)} is beyond the {split} split ({n_have} images)")
    inputs = [x[sample_idx] for x, _ in data]
    y0 = data[0][1]
    fig = propagate_features([(label, model) for label, _, model in loaded], inputs, chans,
                             sample_labels=[f"#{i} (y={int(y0[i])})" for i in sample_idx])
    paths = save_figure(fig, out, "features")
    console.print("figures: " + ", ".join(str(p) for p in paths))

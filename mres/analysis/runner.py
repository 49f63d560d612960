"""Running the analysis tools on saved checkpoints: loss landscapes and propagated features.

The math lives in ``landscape.py`` and ``features.py``; this module loads checkpoints (one
architecture per call), picks each one's fixed evaluation subset at its own resolution, runs a
resumable landscape or a features figure, and picks the checkpoints of a coarse-to-fine run
(coarse minimum, each strategy's start and end) for its ``analysis:`` block. The CLI and the
coarse-to-fine job both call it; it never reaches back into them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from . import landscape as ls
from ..training.checkpoint import load_checkpoint, model_from_checkpoint
from ..recipe import override_dataset
from ..training.data import load_eval_subset
from ..errors import UserError

console = Console()

GRID_FORM = "NxM (e.g. 41x31) or N for N×N, each at least 2"
RANGE_FORM = "LO:HI with LO < HI (e.g. -1:1 or -0.5:1.5)"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


# ------------------------------------------------------------------------------ specs

MAX_GRID_POINTS = 1_000_000


def parse_grid(text: str, dim: int, name: str = "--grid", max_points: int | None = MAX_GRID_POINTS) -> tuple[int, ...]:
    """'41x31' → (41, 31); '41' → (41, 41) for 2-D or (41,) for 1-D."""
    form = GRID_FORM if dim == 2 else "N (points along the line), at least 2"
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+)\s*)?", str(text or ""))
    if not m:
        raise UserError(f"{name} {text!r}: expected {form}")
    nx, ny = int(m.group(1)), int(m.group(2)) if m.group(2) else None
    if dim == 1 and ny is not None:
        raise UserError(f"{name} {text!r}: a 1-D slice takes one number N (points along the line), at least 2")
    sizes = (nx,) if dim == 1 else (nx, ny if ny is not None else nx)
    if min(sizes) < 2:
        raise UserError(f"{name} {text!r}: expected {form}")
    if max_points is not None and math.prod(sizes) > max_points:
        raise UserError(f"{name} {text!r}: {math.prod(sizes):,} points; at most {max_points:,} (each point is "
                        "a forward pass over the evaluation images; 101x101 is already fine)")
    return sizes


def parse_range(text: str, name: str = "--range") -> tuple[float, float]:
    m = re.fullmatch(rf"\s*({_NUMBER})\s*:\s*({_NUMBER})\s*", text or "")
    if not m or float(m.group(1)) >= float(m.group(2)):
        raise UserError(f"{name} {text!r}: expected {RANGE_FORM}")
    return float(m.group(1)), float(m.group(2))


def select_device(name: str, flag: str = "--device") -> torch.device:
    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"{flag} {name!r}: expected auto, cpu or cuda")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{flag} {name}: no CUDA device is available here; use {flag} cpu")
    return torch.device(name)


# ------------------------------------------------------------------------------ checkpoints and data

def checkpoint_labels(paths: Sequence[Path]) -> list[str]:
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


@dataclass
class Loaded:
    label: str
    ckpt: dict
    model: nn.Module

    @property
    def resolution(self) -> int:
        return int(self.ckpt["resolution"])


def load_models(paths: Sequence[Path], labels: Sequence[str], device: torch.device,
                same_arch: bool = True, overrides: Sequence[str] = ()) -> list[Loaded]:
    """Each checkpoint's model in eval mode on ``device``; one architecture per call when ``same_arch``.
    ``overrides`` (``--set dataset.key=value``) correct the stored dataset block, e.g. a moved file."""
    loaded = []
    for path, label in zip(paths, labels):
        ckpt = load_checkpoint(path)
        ckpt.setdefault("recipe", {})["dataset"] = override_dataset(
            (ckpt.get("recipe") or {}).get("dataset"), list(overrides), str(path))
        loaded.append(Loaded(label, ckpt, model_from_checkpoint(ckpt).to(device).eval()))
    archs = {json.dumps(item.ckpt["arch"], sort_keys=True) for item in loaded}
    if same_arch and len(archs) > 1:
        detail = "; ".join(f"{m.label}: {m.ckpt['arch']['name']} {m.ckpt['arch'].get('options', {})}" for m in loaded)
        raise UserError(f"the checkpoints have different architectures ({detail}); one architecture per call")
    return loaded


def eval_subsets(loaded: Sequence[Loaded], split: str, n: int | None, device: torch.device,
                 data_seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each checkpoint's evaluation subset at its own resolution (loaded once per dataset × resolution)."""
    if split not in ("train", "test"):
        raise UserError(f"split {split!r}: expected train or test")
    cache: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
    out = []
    for item in loaded:
        dataset = (item.ckpt.get("recipe") or {}).get("dataset")
        if not isinstance(dataset, dict):
            raise UserError(f"{item.label}: the checkpoint's recipe has no dataset block; cannot load its data")
        key = (json.dumps(dataset, sort_keys=True), item.resolution)
        if key not in cache:
            cache[key] = load_eval_subset(dataset, split, n, item.resolution, device, seed=data_seed)
        out.append(cache[key])
    return out


def _state_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------ landscape

@dataclass
class LandscapeRequest:
    """One `mres landscape` call, flags already checked."""

    paths: list[Path]
    out: Path
    mode: str  # "1d", "2d" or "between"
    sizes: tuple[int, ...]
    xrange: tuple[float, float]
    yrange: tuple[float, float] | None = None
    samples: int = 1000
    split: str = "train"
    chunk: int = 8
    batch: int | None = None
    method: str = "auto"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    data_seed: int = 0
    directions: Path | None = None
    labels: list[str] | None = None
    vmax: float | None = None
    log: bool | None = None  # None: log10 colour scale when the losses span > 100×
    progress: bool = True
    overrides: list[str] = field(default_factory=list)  # --set dataset.key=value

    def __post_init__(self) -> None:  # for callers other than the CLI, which checks its flags itself
        dims = {"1d": 1, "2d": 2, "between": 1}
        if self.mode not in dims:
            raise UserError(f"landscape mode {self.mode!r}: expected one of {', '.join(dims)}")
        if len(self.sizes) != dims[self.mode] or min(self.sizes) < 2:
            raise UserError(f"landscape grid {self.sizes}: a {self.mode} landscape takes {dims[self.mode]} size(s) ≥ 2")
        if self.mode == "2d" and self.yrange is None:
            self.yrange = self.xrange
        if not self.paths:
            raise UserError("no checkpoints to draw a landscape of")
        if self.mode == "between" and len(self.paths) != 2:
            raise UserError(f"an interpolation takes two checkpoints, not {len(self.paths)}")


def run_landscape(req: LandscapeRequest) -> tuple[ls.LandscapeResult, list[Path]]:
    """Evaluate (or resume, or re-plot) a landscape into ``req.out``; print its summary table."""
    xs = ls.parse_axis(*req.xrange, req.sizes[0])
    if req.mode == "between":
        xs = ls.with_endpoints(xs)  # t = 0 is A and t = 1 is B: always evaluated, marked on the plot
    ys = ls.parse_axis(*req.yrange, req.sizes[1]) if req.mode == "2d" else None
    names = list(req.labels) if req.labels is not None else checkpoint_labels(req.paths)
    if len(names) != len(req.paths):
        raise UserError(f"labels: {len(names)} labels for {len(req.paths)} checkpoints")
    loaded = load_models(req.paths, names, req.device, overrides=req.overrides)
    data = eval_subsets(loaded, req.split, req.samples, req.device, req.data_seed)
    models = [(m.label, m.model) for m in loaded]
    req.out.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "format": ls.LANDSCAPE_FORMAT, "mode": req.mode, "checkpoints": [str(p) for p in req.paths], "labels": names,
        "arch": loaded[0].ckpt["arch"], "resolutions": [m.resolution for m in loaded],
        "grid": list(req.sizes), "range": list(req.xrange), "yrange": list(req.yrange) if ys is not None else None,
        "samples": req.samples, "split": req.split, "data_seed": req.data_seed,
        "loss": "mean cross-entropy on the subset, eval mode, no regularisation term",
    }
    if req.mode == "between":
        if loaded[0].resolution != loaded[1].resolution:
            raise UserError("--between: the two checkpoints have different resolutions "
                            f"({loaded[0].resolution} and {loaded[1].resolution})")
        row_label = f"{names[0]} → {names[1]}"
        jobs = [ls.interpolation_job(row_label, models[0][1], models[1][1], *data[0])]
        settings["labels"] = [row_label]
        settings["checkpoint_labels"] = list(names)
        settings["interpolation"] = ("θ(t) = (1−t)θ_A + tθ_B over parameters and floating buffers "
                                     "(BN running stats); running_var clamped at 0")
        dir_digest = ""
    else:
        dim = 2 if req.mode == "2d" else 1
        dir_set = (ls.DirectionSet.load(req.directions) if req.directions
                   else ls.DirectionSet.generate([m for _, m in models], dim, req.seed))
        if len(dir_set.raw) != dim:
            raise UserError(f"--directions {req.directions}: holds {len(dir_set.raw)} direction(s), "
                            f"a {dim}-D slice needs {dim}")
        jobs = ls.random_slice_jobs(models, data, dir_set)
        dir_set.save(req.out / "directions.pt", [(j.label, j.directions) for j in jobs])
        dir_digest = dir_set.digest()
        settings.update(seed=dir_set.seed, directions=str(req.directions) if req.directions else "generated",
                        directions_digest=dir_digest,
                        normalisation="filter-wise (dim-0 slices) to each checkpoint's own weights; "
                                      "zero on ≤1-D tensors (biases, BN) and on buffers")
    # A rerun resumes only when everything that shapes the numbers is the same.
    resume_key = json.dumps({k: settings[k] for k in ("mode", "grid", "range", "yrange", "samples", "split",
                                                      "data_seed")}
                            | {"dirs": dir_digest, "models": [_state_digest(m) for _, m in models],
                               "x": [float(v) for v in xs]}, sort_keys=True)
    settings.update(device=str(req.device), chunk=req.chunk, batch=req.batch, method=req.method,
                    torch=torch.__version__, created=time.strftime("%Y-%m-%d %H:%M:%S"))

    final, partial = req.out / "landscape.npz", req.out / "landscape.partial.npz"
    result = None
    if final.exists() and not partial.exists():
        try:
            old = ls.LandscapeResult.load(final)
        except Exception:  # unreadable or an older format: recompute
            old = None
        if old is not None and old.settings.get("resume_key") == resume_key:
            result = old
            result.labels = list(settings["labels"])  # titles may change without recomputing
            console.print(f"{escape(str(final))} already holds these settings: re-plotting only")
    if result is None:
        n_points = len(jobs) * len(xs) * (len(ys) if ys is not None else 1)
        console.print(f"{req.mode} landscape of {len(jobs)} row(s) × {n_points // len(jobs)} points on {req.device}, "
                      f"{len(data[0][1])} {req.split} samples → [bold]{escape(str(req.out))}[/]")
        t0 = time.perf_counter()
        result = _compute_with_progress(jobs, xs, ys, n_points, req.progress, method=req.method, chunk=req.chunk,
                                        batch_size=req.batch, partial_path=partial, resume_key=resume_key,
                                        settings=settings)
        result.settings["resume_key"] = resume_key
        result.settings["seconds"] = round(time.perf_counter() - t0, 2)
        result.save(final)
        partial.unlink(missing_ok=True)
    for old in [*req.out.glob("landscape_*.png"), *req.out.glob("landscape_*.pdf")]:
        old.unlink()  # a 1-D rerun in a 2-D run's folder must not leave 2-D figures behind
    figures = ls.plot_landscape(result, req.out, vmax=req.vmax, log=req.log)
    if req.mode == "between":  # the plain losses of both end points, the curve's range once
        rows = [(names[0], models[0][1], *data[0], 0), (names[1], models[1][1], *data[0], 0)]
    else:
        rows = [(job.label, job.model, job.x, job.y, k) for k, job in enumerate(jobs)]
    _print_summary(result, rows)
    return result, figures


def _compute_with_progress(jobs: list, xs: np.ndarray, ys: np.ndarray | None, total: int, progress: bool,
                           **kw: Any) -> ls.LandscapeResult:
    def warn(msg: str) -> None:
        console.print(f"[yellow]warning:[/] {escape(msg)}")

    if not progress:
        return ls.compute_landscape(jobs, xs, ys, warn=warn, **kw)
    columns = (TextColumn("grid points"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("landscape", total=total)
        return ls.compute_landscape(jobs, xs, ys, progress=lambda n: bar.advance(task, n), warn=warn, **kw)


def _print_summary(result: ls.LandscapeResult, rows: list[tuple[str, nn.Module, Any, Any, int]]) -> None:
    """Per checkpoint: its plain loss / accuracy and the range of its surface row."""
    table = Table(title="loss landscape")
    for col in ("checkpoint", "plain loss", "plain acc", "min loss on grid", "max loss on grid"):
        table.add_column(col, justify="right")
    for label, model, x, y, k in rows:
        loss, acc = ls.evaluate_model(model, x, y)
        finite = result.loss[k][np.isfinite(result.loss[k])]
        table.add_row(Text(label), f"{loss:.4f}", f"{acc:.2%}", f"{finite.min():.4f}" if finite.size else "-",
                      f"{finite.max():.4g}" if finite.size else "-")
    from ..training.terminal import fit_table

    console.print(fit_table(table, console))


# ------------------------------------------------------------------------------ features

def run_features(paths: Sequence[Path], out: Path, samples: Sequence[int], channels: Sequence[int], *,
                 split: str = "test", data_seed: int = 0, labels: Sequence[str] | None = None,
                 device: torch.device | None = None, samples_key: str = "--samples",
                 overrides: Sequence[str] = ()) -> list[Path]:
    """Feature maps of chosen inputs after every stage, one figure row per checkpoint.

    ``samples_key`` names the flag or recipe key of ``samples`` in error messages.
    """
    from .features import propagate_features, save_figure

    if not paths:
        raise UserError("no checkpoints to draw features of")
    if not samples or not channels or min(samples) < 0 or min(channels) < 0:
        raise UserError(f"{samples_key} {list(samples)} / channels {list(channels)}: "
                        "expected at least one non-negative index each")
    device = device or torch.device("cpu")
    names = list(labels) if labels is not None else checkpoint_labels(paths)
    if len(names) != len(paths):
        raise UserError(f"labels: {len(names)} labels for {len(paths)} checkpoints")
    loaded = load_models(paths, names, device, same_arch=False, overrides=overrides)  # rows may differ
    data = eval_subsets(loaded, split, max(samples) + 1, device, data_seed)
    n_have = min(len(y) for _, y in data)
    if max(samples) >= n_have:
        raise UserError(f"{samples_key}: index {max(samples)} is beyond the {split} split ({n_have} images)")
    idx = list(samples)
    y0 = data[0][1]
    from ..training.data import class_names

    dataset = (loaded[0].ckpt.get("recipe") or {}).get("dataset") or {}
    names_of = class_names(str(dataset.get("name", "")), int(y0.max()) + 1)
    fig = propagate_features([(m.label, m.model) for m in loaded], [x[idx] for x, _ in data], list(channels),
                             sample_labels=[f"#{i}: {names_of[int(y0[i])]}" for i in idx])
    return save_figure(fig, out, "features")


# ------------------------------------------------------------------------------ coarse-to-fine runs

def coarse_to_fine_checkpoints(rec: Any, run_dir: Path) -> list[tuple[str, Path]]:
    """(label, checkpoint): the coarse minimum, then each variant's start and end on the finest grid.

    The variants are those of this run's summary (not whatever folders an earlier run left).
    """
    import json

    from ..strategies import Variant

    t = run_dir / f"trial{rec.analysis.trial}"
    res = rec.resolutions
    out = [(f"coarse {res[0]} min", t / f"coarse-{res[0]}" / "checkpoints" / "last.pt")]
    summary = json.loads((run_dir / "summary.json").read_text())
    for label, v in summary["strategies"].items():  # titled by the strategy's label, found by its folder
        ck = t / Variant(v["strategy"], v["lam"], v["policy"]).slug / f"fine-{res[-1]}" / "checkpoints"
        out += [(f"{label} start", ck / "start.pt"), (f"{label} end", ck / "last.pt")]
    missing = [label for label, p in out if not p.exists()]
    if missing:  # a skipped or diverged variant has none: analyse what exists, and say so
        console.print(f"analysis: no checkpoint for {escape(', '.join(missing))} (skipped or diverged); "
                      "analysing the others")
    return [(label, p) for label, p in out if p.exists()]


def analyse_coarse_to_fine(rec: Any, run_dir: Path, progress: bool = True) -> None:
    """Landscape panels and feature pictures of a finished run (recipe `analysis:`)."""
    pairs = coarse_to_fine_checkpoints(rec, run_dir)
    if not pairs:
        raise UserError(f"analysis: no checkpoints under {run_dir / f'trial{rec.analysis.trial}'}")
    labels = [label for label, _ in pairs]
    paths = [p for _, p in pairs]
    device = select_device(rec.device, "device")
    spec = rec.analysis.landscape
    if spec is not None:
        dim = 2 if "x" in spec.grid else 1
        console.print(f"landscape of {len(paths)} checkpoints ({spec.grid} grid, {spec.samples} samples)")
        xr = parse_range(spec.range, "analysis.landscape.range")
        run_landscape(LandscapeRequest(
            paths=paths, out=run_dir / "landscape", mode=f"{dim}d",
            sizes=parse_grid(spec.grid, dim, "analysis.landscape.grid"), xrange=xr,
            yrange=xr if dim == 2 else None, samples=spec.samples, split=spec.split, device=device,
            seed=spec.seed, labels=labels, log=spec.log, progress=progress))
    fs = rec.analysis.features
    if fs is not None:
        run_features(paths, run_dir / "features", fs.samples, fs.channels, split=fs.split, labels=labels,
                     device=device, samples_key="analysis.features.samples")

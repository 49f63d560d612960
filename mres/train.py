"""Plain, boring, correct training: one model, one resolution, data on the device.

``fit`` runs epochs of the loop below, evaluates, writes metrics and an atomic checkpoint after
every epoch, and resumes from such a checkpoint with identical results (deterministic mode).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .checkpoint import save_checkpoint
from .data import TensorData, iterate_batches, num_batches
from .errors import DivergedError
from .recipe import AugmentConfig, OptimizerConfig, ScheduleConfig, TrainConfig, TrainRecipe

console = Console(stderr=True)


# ----------------------------------------------------------------------------- setup
def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from .errors import UserError

        raise UserError("device 'cuda' requested but no CUDA device is available; use device: cpu or auto")
    return torch.device(name)


def configure_runtime(threads: int | None = None, deterministic: bool = False) -> None:
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def seed_everything(seed: int) -> torch.Generator:
    """Seed the global RNGs and return the generator that orders and augments batches."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_factor(cfg: ScheduleConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (schedules are per step)."""
    total = max(1, steps_per_epoch * epochs)
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    t = min(1.0, step / total)
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "step":
        return cfg.gamma ** sum(t >= m for m in cfg.milestones)
    if cfg.name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if cfg.name == "linear-to-zero":
        return 1.0 - t
    if cfg.name == "one-cycle":  # linear up for 30 %, cosine down to ~0 (as torch's OneCycleLR)
        if t < 0.3:
            return 0.04 + 0.96 * t / 0.3
        return 0.5 * (1 + math.cos(math.pi * (t - 0.3) / 0.7)) + 1e-4
    if cfg.name == "inverse-sqrt":  # the thesis' α_e = α / sqrt(0.5 e), e = 1-based epoch
        return 1.0 / math.sqrt(0.5 * (step // steps_per_epoch + 1))
    raise ValueError(cfg.name)


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
             channels_last: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        out = model(xb).float()
        loss_sum += F.cross_entropy(out, yb, reduction="sum").double()
        correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    n = max(1, len(y))
    return float(loss_sum) / n, float(correct) / n


# ----------------------------------------------------------------------------- the loop
def fit(
    model: nn.Module,
    data: TensorData,
    cfg: TrainConfig,
    *,
    seed: int = 0,
    augment: AugmentConfig | None = None,
    ckpt_path: Path | None = None,
    metrics_path: Path | None = None,
    extra: dict[str, Any] | None = None,
    resume: dict[str, Any] | None = None,
    label: str = "train",
    eval_train: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train ``model`` on ``data`` for ``cfg.epochs`` epochs; return the per-epoch metrics.

    ``extra`` goes into every checkpoint (recipe, arch, resolution, ...); ``resume`` is a
    checkpoint dict written by this function, from which training continues exactly.
    """
    device = data.x_train.device
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    gen = seed_everything(seed)
    opt = build_optimizer(model, cfg.optimizer)
    spe = num_batches(len(data.y_train), cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg.schedule, s, spe, cfg.epochs))
    aug = augment or AugmentConfig()
    # crop padding is given at the dataset's native resolution; scale it to this grid
    pad = int(round(aug.crop_padding * data.resolution / (data.native_resolution or data.resolution)))
    metrics: list[dict[str, Any]] = []
    start_epoch = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        _set_rng(resume["rng"], gen)
        start_epoch, metrics = int(resume["epoch"]), list(resume["metrics"])
    use_amp = cfg.amp and device.type == "cuda"
    regularization = getattr(model, "regularization", None)

    bar = _Progress(enabled=progress, label=label, epochs=cfg.epochs, steps=spe, start=start_epoch)
    with bar:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            model.train()
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            correct = torch.zeros((), device=device, dtype=torch.int64)
            seen = 0
            for step, (xb, yb) in enumerate(iterate_batches(data.x_train, data.y_train, cfg.batch_size, gen,
                                                            crop_padding=pad, flip=aug.flip)):
                if cfg.channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    out = model(xb)
                    loss = F.cross_entropy(out.float(), yb, label_smoothing=cfg.label_smoothing)
                reg = regularization() if regularization is not None else None
                total = loss if reg is None else loss + reg
                if not torch.isfinite(total):
                    raise DivergedError(f"{label}: non-finite loss ({total.item()}) at epoch {epoch + 1}, "
                                        f"step {step + 1}; the last good checkpoint is kept", epoch + 1, step + 1)
                opt.zero_grad(set_to_none=True)
                total.backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()
                loss_sum += loss.detach().double() * len(yb)
                correct += (out.detach().argmax(1) == yb).sum()
                seen += len(yb)
                bar.step()
            train_seconds = time.perf_counter() - t0
            test_loss, test_acc = evaluate(model, data.x_test, data.y_test, cfg.eval_batch_size, cfg.channels_last)
            row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "train_loss": float(loss_sum) / seen,
                   "train_acc": float(correct) / seen, "test_loss": test_loss, "test_acc": test_acc}
            if eval_train:
                row["train_eval_loss"], row["train_eval_acc"] = evaluate(
                    model, data.x_train, data.y_train, cfg.eval_batch_size, cfg.channels_last)
            row["seconds"] = time.perf_counter() - t0
            row["train_seconds"] = train_seconds
            metrics.append(row)
            if metrics_path is not None:
                write_metrics(metrics_path, metrics)
            if ckpt_path is not None and ((epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs):
                save_checkpoint(ckpt_path, {
                    **(extra or {}), "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "epoch": epoch + 1, "rng": _get_rng(gen),
                    "metrics": metrics})
            bar.epoch_done(row)
            if on_epoch is not None:
                on_epoch(row)
    return metrics


def _get_rng(gen: torch.Generator) -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"torch": torch.get_rng_state(), "batches": gen.get_state(),
            "python": list(internal), "python_version": version, "python_gauss": gauss,
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng(state: dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["batches"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- outputs
def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    """metrics.jsonl and metrics.csv side by side, rewritten atomically each epoch."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    jsonl = "".join(json.dumps(r) + "\n" for r in rows)
    _atomic_write(path.with_suffix(".jsonl"), jsonl)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    _atomic_write(path.with_suffix(".csv"), buf.getvalue())


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class _Progress:
    """A rich bar (epochs and batches) on a terminal; plain per-epoch lines otherwise."""

    def __init__(self, enabled: bool, label: str, epochs: int, steps: int, start: int = 0):
        self.enabled, self.label, self.epochs, self.steps = enabled, label, epochs, steps
        self.fancy = enabled and console.is_terminal
        self.epoch = start
        self.p: Progress | None = None

    def __enter__(self) -> "_Progress":
        if self.fancy:
            self.p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                              console=console, transient=False)
            self.p.start()
            self.t_ep = self.p.add_task(f"{self.label} epochs", total=self.epochs, completed=self.epoch, info="")
            self.t_b = self.p.add_task("batches", total=self.steps, info="")
        return self

    def step(self) -> None:
        if self.p is not None:
            self.p.advance(self.t_b)

    def epoch_done(self, row: dict[str, Any]) -> None:
        self.epoch += 1
        msg = (f"loss {row['train_loss']:.4f} train {row['train_acc']:.2%} "
               f"test {row['test_acc']:.2%} ({row['seconds']:.1f}s)")
        if self.p is not None:
            self.p.update(self.t_ep, advance=1, info=msg)
            self.p.reset(self.t_b)
        elif self.enabled:
            print(f"[{self.label}] epoch {self.epoch}/{self.epochs}: {msg}", file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self.p is not None:
            self.p.stop()


# ----------------------------------------------------------------------------- the `mres train` job
def train_job(recipe: TrainRecipe, run_dir: Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Recipe → data + model → fit; the run dir gets recipe.yaml, metrics.*, checkpoints/last.pt."""
    from .checkpoint import load_checkpoint
    from .data import load_dataset
    from .models import build_model
    from .recipe import dump_yaml, to_plain

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(dump_yaml(recipe))
    configure_runtime(recipe.threads, recipe.train.deterministic)
    device = select_device(recipe.device)
    data = load_dataset(recipe.dataset, device).at_resolution(recipe.resolution)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model.name, recipe.model.options(), data.in_channels, data.num_classes,
                        recipe.resolution)
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
    extra = {"recipe": to_plain(recipe), "resolution": recipe.resolution,
             "arch": {"name": recipe.model.name, "options": recipe.model.options(),
                      "in_channels": data.in_channels, "num_classes": data.num_classes},
             "normalization": {"mean": list(data.mean), "std": list(data.std)}}
    t0 = time.perf_counter()
    metrics = fit(model, data, recipe.train, seed=recipe.seed, augment=recipe.dataset.augment, ckpt_path=ckpt_path,
                  metrics_path=run_dir / "metrics.jsonl", extra=extra, resume=state, label="train",
                  progress=progress)
    return {"metrics": metrics, "seconds": time.perf_counter() - t0, "run_dir": str(run_dir),
            "checkpoint": str(ckpt_path)}

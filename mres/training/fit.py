"""Plain, boring, correct training: one model, one resolution, data on the device.

``fit`` runs epochs of the loop below, evaluates, writes metrics and an atomic checkpoint after
every epoch, and resumes from such a checkpoint with identical results (deterministic mode).
"""

from __future__ import annotations

import csv as csv_module
import io
import json
import math
import os
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .checkpoint import atomic_write, remove_stale_temps, save_checkpoint
from .data import TensorData, iterate_batches, num_batches
from .distributed import all_reduce_max, all_reduce_sum, barrier, group, shard, world
from ..errors import DivergedError, Interrupted, UserError
from .hooks import FitHook, set_momentum  # noqa: F401  (set_momentum: public here as before)
from .optim import CGSteihaug
from ..models.plugins import imported_plugins
from .steps import make_step
from .terminal import fmt_seconds, wrap_line
from ..recipe import AugmentConfig, OptimizerConfig, ScheduleConfig, TrainConfig, TrainRecipe

console = Console(stderr=True)


# ----------------------------------------------------------------------------- setup
def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and torch.cuda.is_available() and group().distributed:
        return torch.device("cuda", group().local_rank)  # torchrun: one device per rank
    if name == "cuda" and not torch.cuda.is_available():
        from ..errors import UserError

        raise UserError("device 'cuda' requested but no CUDA device is available; use device: cpu or auto")
    return torch.device(name)


def configure_runtime(threads: int | None = None, deterministic: bool = False, flush_denormal: bool = True) -> None:
    cores = os.cpu_count() or 1
    if threads is not None and threads > cores:  # thousands of threads crash torch's pool, they do not help
        print(f"note: threads {threads} > the {cores} cores here; using {cores}", file=sys.stderr)
        threads = cores
    torch.set_num_threads(threads or cores)
    # subnormal floats (weights and activations a kept transfer pushes towards 0) take a slow microcode
    # path on x86 CPUs: up to 2× per fine epoch after galerkin-data/distill; flushing them changes no result
    torch.set_flush_denormal(flush_denormal)
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
    params = [p for p in model.parameters() if p.requires_grad]  # frozen parameters: no update, no decay
    if cfg.name == "cg-steihaug":
        return CGSteihaug(params, radius=cfg.radius, max_radius=cfg.max_radius, eta=cfg.eta,
                          max_cg_iters=cfg.max_cg_iters)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def schedule_factor(cfg: ScheduleConfig, step: int, total: int, warmup: int, epoch: int) -> float:
    """Multiplier of the base lr at step ``step`` of a plan of ``total`` steps (``epoch``: 0-based epoch)."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, step / max(1, total))
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
        return 1.0 / math.sqrt(0.5 * (epoch + 1))
    raise ValueError(cfg.name)


def lr_factor(cfg: ScheduleConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the base lr at optimizer step ``step`` of one phase planned on its own."""
    return LRPlan.for_phase(cfg, steps_per_epoch, epochs).factor(step)


@dataclass(frozen=True)
class LRPlan:
    """Where one phase's optimizer steps sit in a learning-rate schedule (DESIGN §9).

    Step ``s`` of the phase is step ``offset + s`` of a plan of ``total`` steps shaped by
    ``schedule``, with ``warmup`` steps of linear warm-up at the start of the plan and
    ``restart_warmup`` steps at the start of this phase (a warm-up after a transfer, multiplied
    onto the plan). A phase planned on its own is ``offset = 0, total = its steps``; under
    ``schedule_scope: run`` every phase of a variant shares one plan over all their steps.
    """

    schedule: ScheduleConfig
    total: int
    steps_per_epoch: int
    offset: int = 0
    epoch_offset: int = 0
    warmup: int = 0
    restart_warmup: int = 0

    @classmethod
    def for_phase(cls, cfg: ScheduleConfig, steps_per_epoch: int, epochs: int) -> "LRPlan":
        return cls(cfg, max(1, steps_per_epoch * epochs), max(1, steps_per_epoch),
                   warmup=int(cfg.warmup_epochs * steps_per_epoch))

    def factor(self, step: int) -> float:
        f = schedule_factor(self.schedule, self.offset + step, self.total, self.warmup,
                            self.epoch_offset + step // self.steps_per_epoch)
        if step < self.restart_warmup:
            f *= (step + 1) / self.restart_warmup
        return f


def classifier_module(model: nn.Module) -> nn.Module:
    """The model's classifier: its ``classifier`` or ``head`` attribute, else its last linear layer."""
    for name in ("classifier", "head"):
        m = getattr(model, name, None)
        if isinstance(m, nn.Module):
            return m
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"{type(model).__name__} has no linear classifier: stages with params 'classifier' or "
                        "'features' need one")
    return linears[-1]


@contextmanager
def trainable(model: nn.Module, which: str) -> Iterator[None]:
    """Train only ``which`` (all | classifier | features) inside the block; restore requires_grad after."""
    before = {p: p.requires_grad for p in model.parameters()}
    if which != "all":
        head = {id(p) for p in classifier_module(model).parameters()}
        for p in model.parameters():
            p.requires_grad_(before[p] and ((id(p) in head) == (which == "classifier")))
    try:
        yield
    finally:
        for p, flag in before.items():
            p.requires_grad_(flag)


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
             channels_last: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in eval mode (under torchrun: each rank its shard, summed)."""
    was_training = model.training
    model.eval()
    n = max(1, len(y))
    x, y = x[shard(len(y))], y[shard(len(y))]
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
    all_reduce_sum(loss_sum), all_reduce_sum(correct)
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
    lr_plan: LRPlan | None = None,
    hooks: Sequence[FitHook] = (),
) -> list[dict[str, Any]]:
    """Train ``model`` on ``data`` for ``cfg.epochs`` epochs; return the per-epoch metrics.

    ``extra`` goes into every checkpoint (recipe, arch, resolution, ...); ``resume`` is a
    checkpoint dict written by this function, from which training continues exactly.
    ``lr_plan`` places this phase in a longer schedule (default: the phase's own); ``hooks``
    (:mod:`mres.training.hooks`) attach at the start, to every step's objective, after every optimizer step
    and after every epoch (momentum carry, MG/OPT corrections, the joint multiscale term).
    A non-finite loss, test loss or weight raises :class:`DivergedError`; the last good
    checkpoint is kept and the epoch's metrics row marks the non-finite values (``null``).
    """
    device = data.x_train.device
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    gen = seed_everything(seed)
    opt = build_optimizer(model, cfg.optimizer)
    ranks = world()
    net = _parallel(model, opt, cfg, hooks, device) if ranks.distributed else model  # what the step calls
    if cfg.compile:
        net = torch.compile(net, dynamic=False)
    spe = num_batches(len(data.y_train), cfg.batch_size)
    plan = lr_plan or LRPlan.for_phase(cfg.schedule, spe, cfg.epochs)
    stepper = make_step(opt, plan.factor, cfg.grad_clip)
    aug = augment or AugmentConfig()
    # crop padding is given at the dataset's native resolution; scale it to this grid
    pad = int(round(aug.crop_padding * data.resolution / (data.native_resolution or data.resolution)))
    metrics: list[dict[str, Any]] = []
    start_epoch, prior_seconds = 0, 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        stepper.load_state_dict(resume["scheduler"])
        _set_rng(resume["rng"], gen)
        start_epoch, metrics = int(resume["epoch"]), list(resume["metrics"])
        prior_seconds = float(resume.get("seconds_so_far", 0.0))
    else:
        for h in hooks:
            h.on_start(model, opt)
    if ckpt_path is not None and ranks.main:
        remove_stale_temps(ckpt_path)
    use_amp = cfg.amp and device.type == "cuda"
    check = cfg.check_every or (50 if device.type == "cuda" else 1)
    regularization = getattr(model, "regularization", None)
    if cfg.compile:  # compile before the clock starts: the full batch's shard and the last, uneven one
        _warm_compiled(net, model, data, cfg.batch_size, cfg.channels_last, use_amp)
    t_start = time.perf_counter()

    bar = _Progress(enabled=progress and ranks.main, label=label, epochs=cfg.epochs, steps=spe, start=start_epoch)
    try:
        with bar:
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                model.train()
                _frozen_norms_eval(model)
                stepper.start_epoch()
                loss_sum = torch.zeros((), device=device, dtype=torch.float64)
                correct = torch.zeros((), device=device, dtype=torch.int64)
                seen = 0
                first_bad = torch.full((), -1, dtype=torch.int64, device=device)
                for step, (xb, yb) in enumerate(iterate_batches(data.x_train, data.y_train, cfg.batch_size, gen,
                                                                crop_padding=pad, flip=aug.flip)):
                    n_global = len(yb)
                    xb, yb = xb[shard(n_global)], yb[shard(n_global)]  # this rank's rows of the global batch
                    scale = len(yb) * ranks.size / n_global  # 1 in one process: DDP's mean is the global mean
                    if cfg.channels_last:
                        xb = xb.contiguous(memory_format=torch.channels_last)
                    k = epoch * spe + step  # the phase's optimizer step

                    def objective(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                        loss = F.cross_entropy(out.float(), yb, label_smoothing=cfg.label_smoothing)
                        reg = regularization() if regularization is not None else None
                        for h in hooks:
                            term = h.extra_loss(model, xb, yb, k)
                            if term is not None:
                                reg = term + (0 if reg is None else reg)
                        return loss, (loss if reg is None else loss + reg)

                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                        out = net(xb)
                        loss, total = objective(out)
                    # the first non-finite step, kept on the device; the host reads it every `check` steps
                    first_bad = torch.where((first_bad < 0) & ~torch.isfinite(total.detach()), step, first_bad)
                    if (step + 1) % check == 0:
                        _stop_if_diverged(first_bad, label, epoch, ckpt_path, metrics)
                    stepper(model, total, scale, lambda: objective(model(xb))[1])
                    for h in hooks:
                        h.after_step(model, k)
                    loss_sum += loss.detach().double() * len(yb)
                    correct += (out.detach().argmax(1) == yb).sum()
                    seen += len(yb)
                    bar.step()
                _stop_if_diverged(first_bad, label, epoch, ckpt_path, metrics)  # the epoch's last read of the flag
                seen_t = all_reduce_sum(torch.tensor(seen, device=device, dtype=torch.float64))
                all_reduce_sum(loss_sum), all_reduce_sum(correct)
                seen = int(seen_t)
                if device.type == "cuda":  # queued kernels belong to this epoch's training time
                    torch.cuda.synchronize(device)
                train_seconds = time.perf_counter() - t0
                test_loss, test_acc = evaluate(model, data.x_test, data.y_test, cfg.eval_batch_size, cfg.channels_last)
                row = {"epoch": epoch + 1, "lr": stepper.lr,  # the epoch's last step's
                       "train_loss": float(loss_sum) / seen, "train_acc": float(correct) / seen,
                       "test_loss": test_loss, "test_acc": test_acc, **stepper.epoch_stats(step + 1)}
                if eval_train:
                    row["train_eval_loss"], row["train_eval_acc"] = evaluate(
                        model, data.x_train, data.y_train, cfg.eval_batch_size, cfg.channels_last)
                row["seconds"] = time.perf_counter() - t0
                row["train_seconds"] = train_seconds
                metrics.append(row)
                bad = _nonfinite(model, row)
                if metrics_path is not None and ranks.main:
                    write_metrics(metrics_path, metrics, csv="csv" in cfg.log)
                if bad:  # e.g. the last step of the epoch blew the weights up: keep the last good checkpoint
                    raise DivergedError(f"{label}: non-finite {', '.join(bad)} after epoch {epoch + 1}; {_kept(ckpt_path)}",
                                        epoch + 1, seen // cfg.batch_size, metrics)
                if ckpt_path is not None and ((epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs):
                    save_checkpoint_main(ckpt_path, {
                        **(extra or {}), "model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": stepper.state_dict(), "epoch": epoch + 1, "rng": _get_rng(gen),
                        "metrics": metrics, "seconds_so_far": prior_seconds + time.perf_counter() - t_start},
                        keep_previous=True)  # the fallback when the newest turns out damaged
                bar.epoch_done(row)
                for h in hooks:
                    h.after_epoch(model, row)
                if on_epoch is not None:
                    on_epoch(row)
    finally:
        plain_batchnorm(model)
        for h in hooks:
            h.on_end(model)
    return metrics


def _parallel(model: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, hooks: Sequence[FitHook],
              device: torch.device) -> nn.Module:
    """Under torchrun: the model wrapped in DistributedDataParallel (averaging gradients over ranks),
    after refusing what cannot run data-parallel."""
    if isinstance(opt, CGSteihaug):
        raise UserError("optimizer cg-steihaug does not run data-parallel (its CG solve and ratio test would need "
                        "every Hessian-vector product all-reduced): run it in one process")
    for h in hooks:
        if not h.data_parallel:
            raise UserError(h.refusal or f"{type(h).__name__} does not run data-parallel: run it in one process")
    if cfg.sync_bn:
        if device.type != "cuda":
            raise UserError("train.sync_bn needs CUDA devices (torch's SyncBatchNorm synchronises GPU tensors "
                            "only); on CPUs set sync_bn: false: each rank then normalises by its shard")
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place, the same parameters and buffers
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def plain_batchnorm(model: nn.Module) -> None:
    """Undo ``convert_sync_batchnorm`` in place (the same parameters and buffers), so checkpoints, transfer
    rules and evaluation see the model's own BatchNorm2d layers."""
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.SyncBatchNorm):
                bn = torch.nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                          child.track_running_stats, device=child.running_mean.device
                                          if child.running_mean is not None else None)
                if child.affine:
                    bn.weight, bn.bias = child.weight, child.bias
                if child.track_running_stats:
                    bn.running_mean, bn.running_var = child.running_mean, child.running_var
                    bn.num_batches_tracked = child.num_batches_tracked
                bn.train(child.training)
                setattr(parent, name, bn)


def _warm_compiled(net: nn.Module, model: nn.Module, data: TensorData, batch_size: int, channels_last: bool,
                   use_amp: bool) -> None:
    """Run the compiled forward and backward once per batch shape of an epoch; no update, and the BN
    statistics the warm-up touched are put back."""
    n = len(data.y_train)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    device = data.x_train.device
    for rows in dict.fromkeys([min(batch_size, n), n % batch_size or min(batch_size, n)]):
        xb = data.x_train[:rows][shard(rows)]
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            net(xb).float().sum().backward()
    model.zero_grad(set_to_none=True)
    model.load_state_dict(saved)


def save_checkpoint_main(path: Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    """Rank 0 writes; every rank waits until it has (so a later read on any rank finds the file)."""
    if world().main:
        save_checkpoint(path, state, keep_previous=keep_previous)
    barrier()


def _stop_if_diverged(first_bad: torch.Tensor, label: str, epoch: int, ckpt_path: Path | None,
                      metrics: list) -> None:
    """Read the device flag (one host sync; under torchrun its max over the ranks, so every rank stops at
    the same step) and raise DivergedError naming the epoch and the step of the first non-finite loss
    (of the rank that saw one last, under torchrun)."""
    step = int(all_reduce_max(first_bad.clone()))
    if step >= 0:
        raise DivergedError(f"{label}: non-finite loss at epoch {epoch + 1}, step {step + 1}; {_kept(ckpt_path)}",
                            epoch + 1, step + 1, metrics)


def _frozen_norms_eval(model: nn.Module) -> None:
    """Normalisation layers whose parameters are all frozen keep their running statistics too."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            ps = list(m.parameters(recurse=False))
            if ps and not any(p.requires_grad for p in ps):
                m.eval()


def _kept(ckpt_path: Path | None) -> str:
    if ckpt_path is not None and Path(ckpt_path).exists():
        return f"the last good checkpoint {ckpt_path} is kept"
    return "no checkpoint was written (nothing good to keep)"


def _nonfinite(model: nn.Module, row: dict[str, Any]) -> list[str]:
    """Names of the non-finite metrics of ``row`` (and "weights" if any parameter is)."""
    bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
    if any(not torch.isfinite(p).all() for p in model.parameters()):
        bad.append("weights")
    return bad


def momentum_buffers(model: nn.Module, optimizer_state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """SGD momentum buffers of a saved optimizer state, by parameter name (order of build_optimizer)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    out = {}
    for idx, st in optimizer_state.get("state", {}).items():
        buf = st.get("momentum_buffer")
        if buf is not None and int(idx) < len(names):
            out[names[int(idx)]] = buf
    return out


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
def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (JSON has no NaN or Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def metrics_row_json(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row for JSON: non-finite values become ``null``, listed under ``nonfinite``."""
    bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
    out = json_safe(row)
    if bad:
        out["nonfinite"] = bad
    return out


def write_metrics(path: Path, rows: list[dict[str, Any]], csv: bool = True) -> None:
    """metrics.jsonl and (``csv``) metrics.csv side by side, rewritten atomically each epoch (NaN → null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [metrics_row_json(r) for r in rows]
    jsonl = "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows)
    _atomic_write(path.with_suffix(".jsonl"), jsonl)
    if not csv:
        return
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv_module.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    _atomic_write(path.with_suffix(".csv"), buf.getvalue())


def _atomic_write(path: Path, text: str) -> None:
    atomic_write(path, text.encode())


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
               f"test {row['test_acc']:.2%} ({fmt_seconds(row['seconds'])})")
        if self.p is not None:
            self.p.update(self.t_ep, advance=1, info=msg)
            self.p.reset(self.t_b)
        elif self.enabled:
            print(wrap_line(f"[{self.label}] epoch {self.epoch}/{self.epochs}: {msg}", console.width, 4),
                  file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self.p is not None:
            self.p.stop()


# ----------------------------------------------------------------------------- the `mres train` job
# keys a resumed `mres train` may change: more epochs, where the data lives, how it runs — not what it learned
RESUME_MAY_CHANGE = ("train.epochs", "train.eval_batch_size", "train.checkpoint_every", "train.check_every",
                     "train.log", "threads", "flush_denormal", "device", "dataset.path", "dataset.data_root")


def train_job(recipe: TrainRecipe, run_dir: Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Recipe → data + model → fit; the run dir gets recipe.yaml, metrics.*, checkpoints/last.pt.

    The run holds ``run_dir``'s lock (:class:`~mres.training.rundir.RunLock`) for its life.  On ``resume``
    the checkpoint is checked against the recipe, and the recipe against the run's own (only
    ``RESUME_MAY_CHANGE`` keys may differ; they are recorded as an amendment), before anything is written.
    Ctrl-C raises :class:`Interrupted`, naming the last good checkpoint and the resume command.
    """
    from .rundir import RunLock

    if not world().main:
        return _train_job(recipe, Path(run_dir), resume, progress)
    with RunLock(run_dir):
        return _train_job(recipe, Path(run_dir), resume, progress)


def _train_job(recipe: TrainRecipe, run_dir: Path, resume: bool, progress: bool) -> dict[str, Any]:
    from .checkpoint import load_for_resume
    from .data import load_dataset
    from .loggers import logger_hooks
    from .rundir import record_recipe
    from ..models import build_model
    from ..recipe import to_plain

    configure_runtime(recipe.threads, recipe.train.deterministic, recipe.flush_denormal)
    device = select_device(recipe.device)
    from ..recipe import resolution_problems
    from functools import partial

    from ..models.registry import parameter_count
    from .preflight import forward_problems, memory_problems, raise_problems

    data = load_dataset(recipe.dataset, device)
    raise_problems([("resolution", m) for _, m in resolution_problems([recipe.resolution], data.resolution,
                                                                       recipe.dataset.name)], recipe.model.name)
    data = data.at_resolution(recipe.resolution)

    def build(resolution: int) -> nn.Module:
        torch.manual_seed(recipe.seed)
        return build_model(recipe.model.name, recipe.model.options(), data.in_channels, data.num_classes,
                           resolution).to(device)

    count = partial(parameter_count, recipe.model.name, recipe.model.options(), data.in_channels, data.num_classes)
    raise_problems(memory_problems(count, [recipe.resolution], recipe.model.name)
                   or forward_problems(build, [recipe.resolution], data.in_channels, data.num_classes,
                                       recipe.model.name), recipe.model.name)
    model = build(recipe.resolution)
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    arch = {"name": recipe.model.name, "options": recipe.model.options(), "in_channels": data.in_channels,
            "num_classes": data.num_classes}
    state = load_for_resume(ckpt_path) if resume else None
    if state is not None:
        check_resumable(state, model, arch, recipe.resolution, ckpt_path)
    if world().main:
        run_dir.mkdir(parents=True, exist_ok=True)
        record_recipe(run_dir, to_plain(recipe), resume,
                      lambda key: any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE))
    barrier()
    extra = {"recipe": to_plain(recipe), "resolution": recipe.resolution, "arch": arch,
             "normalization": {"mean": list(data.mean), "std": list(data.std)}, "plugins": imported_plugins()}
    t0 = time.perf_counter()
    try:
        metrics = fit(model, data, recipe.train, seed=recipe.seed, augment=recipe.dataset.augment,
                      ckpt_path=ckpt_path, metrics_path=run_dir / "metrics.jsonl", extra=extra, resume=state,
                      label="train", progress=progress, hooks=logger_hooks(recipe.train.log, run_dir, "train"))
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(ckpt_path, f"mres train --resume {run_dir}")) from None
    return {"metrics": metrics, "seconds": time.perf_counter() - t0, "run_dir": str(run_dir),
            "checkpoint": str(ckpt_path)}


def check_resumable(state: dict[str, Any], model: nn.Module, arch: dict[str, Any], resolution: int,
                    ckpt_path: Path) -> None:
    """Refuse to resume from a checkpoint of another model, resolution or dataset shape."""
    problems = []
    if state.get("resolution") != resolution:
        problems.append(f"resolution {state.get('resolution')} (the recipe asks for {resolution})")
    old = state.get("arch") or {}
    for key in ("name", "options", "in_channels", "num_classes"):
        if old.get(key) != arch[key]:
            problems.append(f"model {key} {old.get(key)!r} (the recipe asks for {arch[key]!r})")
    if not problems:  # same recipe, yet the tensors differ (e.g. a checkpoint copied from elsewhere)
        own, saved = model.state_dict(), state.get("model", {})
        missing = [k for k in own if k not in saved]
        unexpected = [k for k in saved if k not in own]
        shapes = [k for k in own if k in saved and tuple(own[k].shape) != tuple(saved[k].shape)]
        if missing or unexpected or shapes:
            problems.append(f"weights that do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]}, "
                            f"other shapes {shapes[:3]})")
    if problems:
        raise UserError(f"cannot resume from {ckpt_path}: it holds " + "; ".join(problems)
                        + ". Resume with the run's own recipe (drop the --set that changed it), or start a new run "
                          "with --out")


def interrupted_message(ckpt_path: Path, resume_cmd: str) -> str:
    """One line: where the last good checkpoint is and how to resume."""
    if ckpt_path.exists():
        try:
            epoch = load_checkpoint_epoch(ckpt_path)
            where = f"the last good checkpoint is {ckpt_path} (epoch {epoch})"
        except Exception:  # noqa: BLE001 - the message must not fail
            where = f"the last good checkpoint is {ckpt_path}"
    else:
        where = "no checkpoint was written yet"
    return f"interrupted: {where}; resume with: {resume_cmd}"


def load_checkpoint_epoch(path: Path) -> int:
    from .checkpoint import load_checkpoint

    return int(load_checkpoint(path)["epoch"])

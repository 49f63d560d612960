"""The phases of a coarse-to-fine variant and their learning-rate plans (DESIGN §3.4, §9).

A variant trains one phase per grid, coarse to fine. :func:`plan_phases` resolves each phase's
train block (epochs per grid; with ``coarse_batch_scaling`` the batch and lr of every coarser grid
× (finest / grid)²); :func:`lr_plans` places each phase in its lr schedule — its own
(``schedule_scope: phase``) or one plan over every phase (``run``). :func:`pixel_work` counts the
training passes of all phases in finest-grid images (an image at grid r costs (r/finest)²), from
which the ``fine-only`` baseline's budget-matched epochs follow. :func:`phase_config` is what a
phase records it was trained with; :func:`check_phase` refuses to reuse or resume a phase under
other settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape

from ..training.data import num_batches
from ..errors import UserError
from ..recipe import CoarseToFineRecipe, TrainConfig
from ..training.fit import LRPlan, console


@dataclass(frozen=True)
class Phase:
    """One grid of the cascade: its resolution, its resolved train block and its training examples."""

    resolution: int
    cfg: TrainConfig
    n_train: int

    @property
    def steps_per_epoch(self) -> int:
        return num_batches(self.n_train, self.cfg.batch_size)

    @property
    def steps(self) -> int:
        return self.steps_per_epoch * self.cfg.epochs


def plan_phases(recipe: CoarseToFineRecipe, n_available: int) -> list[Phase]:
    """The phases of a coarse-to-fine variant: epochs per grid, and with ``coarse_batch_scaling`` the
    batch and lr of every coarser grid × (finest / grid)² (batch × pixels constant, lr linear in batch)."""
    finest = recipe.resolutions[-1]
    out = []
    for g, (res, epochs) in enumerate(zip(recipe.resolutions, recipe.grid_epochs())):
        block = recipe.coarse if g == 0 else recipe.fine
        subset = recipe.coarse_subset if g == 0 else recipe.fine_subset
        update: dict[str, Any] = {"epochs": epochs}
        n = min(subset or n_available, n_available)
        if recipe.coarse_batch_scaling and res < finest:
            batch = min(block.batch_size * (finest // res) ** 2, n)  # a batch cannot exceed the examples
            update["batch_size"] = batch
            update["optimizer"] = block.optimizer.model_copy(update={"lr": block.optimizer.lr * batch / block.batch_size})
        out.append(Phase(res, block.model_copy(update=update), n))
    return out


def lr_plans(phases: list[Phase], scope: str) -> list[LRPlan]:
    """Each phase's place in the lr schedule: its own (``phase``) or one plan over all (``run``)."""
    if scope == "phase":
        return [LRPlan.for_phase(p.cfg.schedule, p.steps_per_epoch, p.cfg.epochs) for p in phases]
    shape = phases[0].cfg.schedule
    total = sum(p.steps for p in phases)
    warmup = int(shape.warmup_epochs * phases[0].steps_per_epoch)
    plans, offset, epochs = [], 0, 0
    for i, p in enumerate(phases):
        restart = 0 if i == 0 else int(p.cfg.schedule.warmup_epochs * p.steps_per_epoch)
        plans.append(LRPlan(shape, max(1, total), p.steps_per_epoch, offset, epochs, warmup, restart))
        offset, epochs = offset + p.steps, epochs + p.cfg.epochs
    return plans


def pixel_work(phases: list[Phase]) -> float:
    """Training passes of every phase in finest-grid images (an image at grid r costs (r/finest)²)."""
    finest = phases[-1].resolution
    return sum(p.cfg.epochs * p.n_train * (p.resolution / finest) ** 2 for p in phases)


def budget_matched_epochs(phases: list[Phase], n_train: int) -> int:
    """The whole number of epochs at the finest grid on ``n_train`` examples closest to the pixel work
    of every phase (halves round up; at least 1)."""
    return max(1, math.floor(pixel_work(phases) / max(1, n_train) + 0.5))


NOT_TRAINING = {"log"}  # train-block keys that change what is written, not what is trained


def phase_config(cfg: TrainConfig, plan: LRPlan | None) -> dict[str, Any]:
    """What a phase was trained with: its train block and its place in the lr plan (plain JSON)."""
    out: dict[str, Any] = {"train": cfg.model_dump(mode="json", exclude=NOT_TRAINING)}
    if plan is not None:
        out["lr_plan"] = {"total": plan.total, "offset": plan.offset, "warmup": plan.warmup,
                          "restart_warmup": plan.restart_warmup, "schedule": plan.schedule.model_dump(mode="json")}
    return out


def check_phase(phase_dir: Path, saved: dict[str, Any] | None, now: dict[str, Any], finished: bool) -> None:
    """A finished phase is reused only if trained as the recipe asks now; an unfinished one may only
    change its epochs (its lr plan may then change: a warning, as for ``mres train --resume``)."""
    if saved is None:  # written before phases recorded their settings
        return
    # a setting added to mres after the phase was trained counts as its default (what it was trained with)
    defaults = TrainConfig().model_dump(mode="json", exclude=NOT_TRAINING)
    saved = {**saved, "train": {**{k: v for k, v in defaults.items() if k not in saved.get("train", {})},
                                **saved.get("train", {})}}
    if finished and saved != now:
        diff = _config_diff(saved, now)
        raise UserError(f"{phase_dir} was trained with {diff}; a finished phase is reused only as it was "
                        "trained. Resume with the run's own settings, or start a new run with --out")
    if not finished:
        a = {**saved, "train": {k: v for k, v in saved["train"].items() if k != "epochs"}}
        b = {**now, "train": {k: v for k, v in now["train"].items() if k != "epochs"}}
        a.pop("lr_plan", None), b.pop("lr_plan", None)
        if a != b:
            raise UserError(f"{phase_dir} was started with {_config_diff(saved, now)}; only its epochs may change "
                            "on --resume. Resume with the run's own settings, or start a new run with --out")
        if saved.get("lr_plan") != now.get("lr_plan"):
            console.print(f"[yellow]note:[/] {escape(str(phase_dir))} continues under a changed lr plan "
                          f"({escape(_config_diff(saved, now))})")


def _config_diff(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        parts = [_config_diff(a.get(k), b.get(k), f"{path}.{k}" if path else k) for k in dict.fromkeys([*a, *b])]
        return "; ".join(p for p in parts if p)
    return "" if a == b else f"{path} {a!r} (the recipe now: {b!r})"

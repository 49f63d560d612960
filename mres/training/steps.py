"""One optimizer step of :func:`mres.train.fit`, whichever optimizer takes it.

- :class:`ScheduledStep` — a torch optimizer (SGD, Adam, AdamW) whose lr follows the phase's
  :class:`~mres.training.fit.LRPlan` (one ``LambdaLR`` step per optimizer step), with optional gradient
  clipping; its metrics row reports the lr of the epoch's last step.
- :class:`TrustRegionStep` — :class:`~mres.training.optim.CGSteihaug`: its radius sets the step, no lr
  schedule; the step re-evaluates the objective on the same batch for its ratio test; its row
  reports the radius and the share of accepted steps.

Both take ``(model, total, scale, closure)``: the step's objective ``total`` (already computed),
the factor that makes DDP's mean the global mean, and a closure that recomputes the objective.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

from .optim import CGSteihaug


class ScheduledStep:
    def __init__(self, opt: torch.optim.Optimizer, factor: Callable[[int], float], grad_clip: float | None):
        self.opt, self.grad_clip, self.lr = opt, grad_clip, None
        self.sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def __call__(self, model: nn.Module, total: torch.Tensor, scale: float, closure: Callable[[], torch.Tensor]) -> None:
        self.lr = self.opt.param_groups[0]["lr"]
        self.opt.zero_grad(set_to_none=True)
        (total if scale == 1.0 else total * scale).backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
        self.opt.step()
        self.sched.step()

    def start_epoch(self) -> None:
        pass

    def epoch_stats(self, steps: int) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return self.sched.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sched.load_state_dict(state)


class TrustRegionStep:
    lr = None  # the radius sets the step

    def __init__(self, opt: CGSteihaug):
        self.opt, self.accepted = opt, 0

    def __call__(self, model: nn.Module, total: torch.Tensor, scale: float, closure: Callable[[], torch.Tensor]) -> None:
        self.opt.step(closure, loss=total)  # its ratio test on this batch too
        self.accepted += int(self.opt.last["accepted"])

    def start_epoch(self) -> None:
        self.accepted = 0

    def epoch_stats(self, steps: int) -> dict[str, Any]:
        return {"radius": self.opt.param_groups[0]["radius"], "accepted_steps": self.accepted / max(1, steps)}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def make_step(opt: torch.optim.Optimizer, factor: Callable[[int], float],
              grad_clip: float | None) -> ScheduledStep | TrustRegionStep:
    return TrustRegionStep(opt) if isinstance(opt, CGSteihaug) else ScheduledStep(opt, factor, grad_clip)

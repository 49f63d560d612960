"""What a training run can be given besides its data and its train block: fit hooks.

A hook attaches to five moments of :func:`mres.train.fit` and does nothing at the others:

- ``on_start(model, opt)``: once the optimizer is built, before the first step — not on resume (the
  checkpoint then holds what the hook set, e.g. momentum buffers);
- ``extra_loss(model, xb, yb, step)``: a term added to every step's objective (None: nothing); the
  terms of several hooks are added in their order, before the model's own regularisation;
- ``after_step(model, step)``: after every optimizer step (its time counts as training);
- ``after_epoch(model, row)``: after the epoch's metrics row and checkpoint;
- ``on_end(model)``: when fit returns or raises (close what the hook opened).

After fit, ``record()`` and ``files()`` give what the hook logged, for the phase's result and as
JSON files beside it.

``step`` counts optimizer steps of the phase from 0 across epochs (a resumed run continues the
count). A hook that cannot run data-parallel sets ``data_parallel = False`` and says why in
``refusal``; fit then refuses to run it under torchrun. (Composer's events, cut to mres's four.)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .optim import CGSteihaug


class FitHook:
    """The no-op base: override the moments you need."""

    data_parallel: bool = True
    refusal: str = ""

    def on_start(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        pass

    def extra_loss(self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, step: int) -> torch.Tensor | None:
        return None

    def after_step(self, model: nn.Module, step: int) -> None:
        pass

    def after_epoch(self, model: nn.Module, row: dict[str, Any]) -> None:
        pass

    def on_end(self, model: nn.Module) -> None:
        pass

    def record(self) -> dict[str, Any]:
        """What the hook did, for the phase's result (after fit)."""
        return {}

    def files(self) -> dict[str, Any]:
        """JSON files to write next to the phase's result (name → object)."""
        return {}


class CarryMomentum(FitHook):
    """``carry_optimizer``: SGD starts with the momentum buffers (parameter name → tensor) the source
    phase ended with, moved to this grid by the weights' transfer rule (a trust region has none)."""

    def __init__(self, buffers: dict[str, torch.Tensor]):
        self.buffers = buffers

    def on_start(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        if self.buffers and not isinstance(opt, CGSteihaug):
            set_momentum(model, opt, self.buffers)


def set_momentum(model: nn.Module, opt: torch.optim.Optimizer, buffers: dict[str, torch.Tensor]) -> None:
    """Start SGD's momentum buffers at ``buffers`` (by parameter name; frozen parameters keep none)."""
    for name, p in model.named_parameters():
        if name in buffers and p.requires_grad:
            opt.state[p]["momentum_buffer"] = buffers[name].detach().to(p.device, p.dtype).clone()

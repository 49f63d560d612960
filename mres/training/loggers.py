"""Loggers as fit hooks: every numeric value of an epoch's metrics row, written where a viewer finds it.

``csv`` is ``metrics.csv`` beside ``metrics.jsonl`` (written by :func:`~mres.training.fit.write_metrics`);
``tensorboard`` is :class:`TensorBoardLog`, an event file under ``<phase>/tensorboard/`` so that
``tensorboard --logdir runs/`` lists every run, trial, strategy and phase by its path
(``c2f/trial0/galerkin/fine-28/tensorboard``).  Scalars are tagged ``train/…``, ``test/…`` and
``optim/…`` with the epoch as step.  The TensorBoard package is an optional extra
(``pip install 'mres[tensorboard]'``); recipes asking for it without the package are refused before any
work (``mres.recipe``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch.nn as nn

from .hooks import FitHook

GROUPS = {"train_loss": "train/loss", "train_acc": "train/accuracy", "train_eval_acc": "train/accuracy_eval",
          "test_loss": "test/loss", "test_acc": "test/accuracy", "lr": "optim/lr", "seconds": "time/seconds",
          "train_seconds": "time/train_seconds"}


class TensorBoardLog(FitHook):
    """Each epoch's numeric metrics as TensorBoard scalars (``epoch`` is the step); ``label`` names the
    phase in a text summary (strategy and trial for a coarse-to-fine phase)."""

    def __init__(self, log_dir: Path, label: str = ""):
        self.log_dir = Path(log_dir)
        self.label = label
        self._writer: Any = None

    def _open(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))
            if self.label:
                self._writer.add_text("phase", self.label, 0)
        return self._writer

    def after_epoch(self, model: nn.Module, row: dict[str, Any]) -> None:
        w = self._open()
        step = int(row.get("epoch", 0))
        for key, value in row.items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                w.add_scalar(GROUPS.get(key, f"other/{key}"), value, step)
        w.flush()

    def on_end(self, model: nn.Module) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def logger_hooks(log: list[str], phase_dir: Path, label: str = "") -> list[FitHook]:
    """The hooks a train block's ``log`` asks for (``csv`` needs none: fit writes metrics.csv)."""
    return [TensorBoardLog(Path(phase_dir) / "tensorboard", label)] if "tensorboard" in log else []

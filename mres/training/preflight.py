"""What a coarse-to-fine run needs from its data and its model, checked before any epoch.

The recipe validator sees only the recipe; these checks see the loaded data and the built models:
every grid must be reachable from the images by halving (``mres.recipe.resolution_problems``, which the
validator also runs where the image size is known before loading), the model must take the data's channels
at every grid and give one logit per class, every tensor must have a grid rule (a dry-run transfer
of freshly built models, so a flatten + ``nn.Linear`` head fails here, with the fix named), and
feature pictures need ``stages(x)``.  Each check returns ``(key, message)`` problems; ``preflight``
raises one UserError listing all of them.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn as nn

from ..errors import UserError


def available_memory() -> int | None:
    """Bytes the kernel says are available (MemAvailable), None where /proc/meminfo is absent."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def memory_problems(count: Callable[[int], int | None], resolutions: list[int], name: str,
                    available: int | None = None) -> list[tuple[str, str]]:
    """A model whose weights (with their gradients and optimizer state, 4 copies in float32) would not fit
    in memory is refused before it is built: a width of 10^9 otherwise ends in a crash, not a message."""
    available = available_memory() if available is None else available
    if available is None:
        return []
    for r in resolutions:
        n = count(r)
        if n is not None and 16 * n > available:
            return [("model", f"{name} at {r}×{r} has {n:,} weights: {16 * n / 2**30:,.1f} GiB with gradients and "
                              f"optimizer state, more than the {available / 2**30:,.1f} GiB available; choose smaller "
                              "widths")]
    return []


def forward_problems(build: Callable[[int], nn.Module], resolutions: list[int], in_channels: int,
                     num_classes: int, name: str) -> list[tuple[str, str]]:
    """The model built at every grid takes a batch of the data's shape and gives ``num_classes`` logits."""
    problems = []
    for r in resolutions:
        model = build(r).eval()
        x = torch.zeros(2, in_channels, r, r, device=next(model.parameters()).device)
        try:
            with torch.no_grad():
                out = model(x)
        except Exception as exc:  # the model's own error, named with the shape that caused it
            problems.append(("model", f"{name} cannot take the data at {r}×{r} (a batch of shape "
                                      f"{tuple(x.shape)}): {type(exc).__name__}: {exc}"))
            continue
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            problems.append(("model", f"{name} at {r}×{r} gives outputs of shape {shape}; the data has "
                                      f"{num_classes} classes, so it must give (batch, {num_classes}) logits "
                                      "(its builder receives num_classes)"))
    return problems


def transfer_problems(coarse: nn.Module, fine: nn.Module, strategies: list[str], family: str) -> list[tuple[str, str]]:
    """Dry-run each transfer rule on freshly built models (nothing trained is touched)."""
    from ..grids.transfer import transfer_weights

    problems = []
    for strategy in strategies:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                transfer_weights(coarse, fine, strategy, family, 0.1 if strategy == "galerkin-reg" else 0.0)
            except (ValueError, NotImplementedError) as exc:
                problems.append(("strategies", f"{strategy} cannot move this model: {exc}"))
    return problems


def features_problems(model: nn.Module, wanted: bool) -> list[tuple[str, str]]:
    if wanted and not callable(getattr(model, "stages", None)):
        return [("analysis.features", f"{type(model).__name__} has no stages(x) method (returning a list of "
                                      "(name, N×C×H×W tensor)); add one, or remove analysis.features")]
    return []


def subset_problems(subsets: dict[str, int | None], n_train: int, dataset: str) -> list[tuple[str, str]]:
    """A subset larger than the training set would silently be the whole set: say so instead."""
    return [(key, f"{n} examples asked, but the {dataset} training set has {n_train}; allowed: 1 to {n_train}, "
                  "or null for all") for key, n in subsets.items() if n is not None and n > n_train]


def raise_problems(problems: list[tuple[str, str]], source: str) -> None:
    if problems:
        lines = "\n".join(f"  - {k}: {m}" for k, m in problems)
        n = len(problems)
        raise UserError(f"{source}: {n} problem{'s' if n > 1 else ''} found before training:\n{lines}")

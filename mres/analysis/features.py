"""Propagated features (thesis Figs. 4.4 / 4.6): inputs pushed through several checkpoints.

One row per checkpoint.  For every chosen input there is a group of columns: the input image,
then, for every stage of ``model.stages(x)`` and every chosen channel, that channel's feature
map.  Any model with ``stages(x) -> list[(name, tensor)]`` works (the CNN gives conv1 [pool]
conv2; MgNet gives u and f per level).  Stage outputs that are not N×C×H×W maps are skipped.
Each map has its own colour scale (the maps of different stages differ by orders of magnitude).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import UserError


@torch.no_grad()
def stage_maps(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The 4-D stage outputs of ``model`` (eval mode) for the batch ``x``, on the CPU."""
    if not hasattr(model, "stages"):
        raise UserError(f"{type(model).__name__} has no stages(x); cannot show its features")
    was_training = model.training
    model.eval()
    try:
        out = [(name, t.detach().float().cpu()) for name, t in model.stages(x) if t.dim() == 4]
    finally:
        model.train(was_training)
    return out


def _input_image(x: torch.Tensor) -> tuple[np.ndarray, str | None]:
    """C×H×W → an image for imshow: grey for one channel, RGB (min–max scaled) for three."""
    x = x.detach().float().cpu()
    if x.shape[0] == 3:
        lo, hi = x.min(), x.max()
        return ((x - lo) / (hi - lo + 1e-12)).permute(1, 2, 0).numpy(), None
    return x[0].numpy(), "gray"


def propagate_features(models: Sequence[tuple[str, nn.Module]], x: torch.Tensor | Sequence[torch.Tensor],
                       channels: Sequence[int], *, sample_labels: Sequence[str] | None = None,
                       cmap: str = "viridis") -> Any:
    """A matplotlib figure: rows = checkpoints, columns = per input [input, stage×channel ...].

    ``x`` is one N×C×H×W batch for all models, or one batch per model (models of one
    architecture trained at different resolutions need their inputs at their own resolution).
    A channel beyond a stage's width raises :class:`UserError` naming model, stage and width. Every
    feature column has one colour scale for all rows (the checkpoints compare), with its colour bar below.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not models:
        raise UserError("no models to propagate through")
    if not channels:
        raise UserError("no channels chosen")
    inputs = list(x) if not isinstance(x, torch.Tensor) else [x] * len(models)
    if len(inputs) != len(models):
        raise UserError(f"{len(inputs)} input batches for {len(models)} models")
    n_samples = inputs[0].shape[0]

    rows = []
    for (label, model), xb in zip(models, inputs):
        device = next((p.device for p in model.parameters()), xb.device)
        stages = stage_maps(model, xb.to(device))
        if not stages:
            raise UserError(f"{label}: stages(x) gave no N×C×H×W feature maps")
        for name, t in stages:
            bad = [c for c in channels if c < 0 or c >= t.shape[1]]
            if bad:
                raise UserError(f"channel {bad[0]} does not exist in stage {name!r} of {label}: "
                                f"it has {t.shape[1]} channels (0..{t.shape[1] - 1})")
        rows.append((label, xb, stages))

    # stage titles on the first row only when every row has the same stages
    same_layout = len({tuple(name for name, _ in stages) for _, _, stages in rows}) == 1
    per_sample = 1 + max(len(stages) for _, _, stages in rows) * len(channels)
    n_cols = n_samples * per_sample
    # a last, thin row holds the colour bars: ordinary axes, which the layout places reliably
    fig, grid = plt.subplots(len(rows) + 1, n_cols, figsize=(1.5 * n_cols, 1.6 * len(rows) + 0.8), squeeze=False,
                             constrained_layout=True, gridspec_kw={"height_ratios": [1.0] * len(rows) + [0.07]})
    axes, bars = grid[:-1], grid[-1]
    maps: dict[tuple[int, int], np.ndarray] = {}
    for r, (label, xb, stages) in enumerate(rows):
        for s in range(n_samples):
            c0 = s * per_sample
            img, img_cmap = _input_image(xb[s])
            axes[r, c0].imshow(img, cmap=img_cmap)
            if r == 0:
                name = sample_labels[s] if sample_labels else f"#{s}"
                axes[r, c0].set_title(f"input {name}", fontsize=8)
            col = c0 + 1
            for stage_name, t in stages:
                for ch in channels:
                    maps[r, col] = t[s, ch].numpy()
                    if r == 0 or not same_layout:
                        axes[r, col].set_title(f"{stage_name} c{ch}", fontsize=7)
                    col += 1
        axes[r, 0].set_ylabel(label, fontsize=8)
    from matplotlib.ticker import MaxNLocator

    for col in sorted({c for _, c in maps}):
        cells = [(r, m) for (r, c), m in maps.items() if c == col]
        lo = min(float(m.min()) for _, m in cells)
        hi = max(max(float(m.max()) for _, m in cells), lo + 1e-12)
        for r, m in cells:
            im = axes[r, col].imshow(m, cmap=cmap, vmin=lo, vmax=hi)
        bar = fig.colorbar(im, cax=bars[col], orientation="horizontal", format="%.2g")
        bar.locator = MaxNLocator(nbins=2)
        bar.update_ticks()
        bar.ax.tick_params(labelsize=6)
    for col in sorted(set(range(n_cols)) - {c for _, c in maps}):
        bars[col].set_visible(False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.images:
            ax.set_frame_on(False)
    return fig


def save_figure(fig: Any, out_dir: str | Path, stem: str = "features") -> list[Path]:
    """Write ``stem``.png and ``stem``.pdf into ``out_dir``; closes the figure."""
    from .figures import save_figure as save

    return save(fig, Path(out_dir) / f"{stem}.png", dpi=150)

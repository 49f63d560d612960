"""The picture of a level's spectrum and its smoothing polynomial (the math: :mod:`mres.grids.spectrum`)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..grids.spectrum import residual_polynomial
from .figures import save_figure


def plot_spectrum(eigs: torch.Tensor, roots: torch.Tensor | None, path: str | Path, title: str | None = None) -> Path:
    """Spectrum in the complex plane coloured by |q(λ)|, with the polynomial's roots marked (seed 000 Fig. 3).

    The background shows log10 |q| on a box around the spectrum; without roots only the eigenvalues
    are drawn. Writes ``path`` (PNG) and the PDF beside it; returns ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    lam = torch.as_tensor(eigs).to(torch.complex128).reshape(-1)
    rts = torch.zeros(0, dtype=torch.complex128) if roots is None else torch.as_tensor(roots).to(torch.complex128)
    finite = rts[torch.isfinite(rts.real) & torch.isfinite(rts.imag)]
    pts = torch.cat([lam, finite])
    re_lo, re_hi = pts.real.min().item(), pts.real.max().item()
    im_lo, im_hi = pts.imag.min().item(), pts.imag.max().item()
    pad = 0.08 * max(re_hi - re_lo, im_hi - im_lo, 1e-9)
    box = (re_lo - pad, re_hi + pad, im_lo - pad, im_hi + pad)

    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    x = lam.real.numpy()
    y = lam.imag.numpy()
    if rts.numel():
        # one colour scale: the background is log10 |q| (with its colour bar); eigenvalues are plain
        # dark dots on top, so nothing else competes with the bar
        gx, gy = np.meshgrid(np.linspace(box[0], box[1], 240), np.linspace(box[2], box[3], 240))
        grid = torch.from_numpy(gx + 1j * gy)
        qg = residual_polynomial(rts, grid).abs().numpy()
        cs = ax.contourf(gx, gy, np.log10(qg + 1e-16), levels=30, cmap="viridis", alpha=0.85)
        fig.colorbar(cs, ax=ax, label="log10 |q(λ)|")
        q_eig = residual_polynomial(rts, lam).abs().numpy()
        ax.scatter(x, y, s=4, c="black", alpha=0.45, edgecolors="none",
                   label=f"eigenvalues of A (max |q| on them = {q_eig.max():.3g})")
        ax.scatter(finite.real.numpy(), finite.imag.numpy(), marker="x", s=90, c="red", linewidths=2.2,
                   label=f"roots of q ({finite.numel()} finite)")
        # repeated roots (e.g. two ĝ steps with the same α) sit on one cross: label the multiplicity
        tol = 1e-3 * max(box[1] - box[0], box[3] - box[2])
        pts_r = finite.tolist()
        done: list[complex] = []
        for z in pts_r:
            if any(abs(z - d) <= tol for d in done):
                continue
            done.append(z)
            k = sum(abs(z - w) <= tol for w in pts_r)
            if k > 1:
                ax.annotate(f"×{k}", (z.real, z.imag), textcoords="offset points", xytext=(7, 7), color="red",
                            fontsize=9, fontweight="bold",
                            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
    else:
        ax.scatter(x, y, s=6, c="tab:blue", edgecolors="none", label="eigenvalues of A")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlim(box[0], box[1])
    ax.set_ylim(box[2], box[3])
    ax.set_xlabel("Re λ")
    ax.set_ylabel("Im λ")
    ax.set_title(title or "spectrum of A")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    return path

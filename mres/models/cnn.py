"""The thesis CNN (seed 003 §3.2): conv3×3 → ReLU → [2×2 avg pool] → conv3×3 → ReLU → flatten → linear.

Bias-free convs; the flatten size follows the input resolution.  The classifier is a
:class:`GridLinear`, which knows the (C, H, W) grid its weights live on, so that the transfer
code can prolongate each class's weight images between grids.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from .registry import ModelFamily, ModelOptions, register_family


class GridLinear(nn.Linear):
    """flatten + linear whose input is a (channels, height, width) feature grid.

    ``weight`` has shape (classes, C·H·W); ``weight.view(classes, C, H, W)`` are the class
    weight images that move between grids.
    """

    def __init__(self, channels: int, height: int, width: int, out_features: int, bias: bool = True):
        super().__init__(channels * height * width, out_features, bias=bias)
        self.grid = (channels, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.flatten(x, 1))

    def weight_images(self) -> torch.Tensor:
        return self.weight.view(self.out_features, *self.grid)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, out_features={self.out_features}"


class CNNOptions(ModelOptions):
    pool: bool = False
    width1: int = Field(32, ge=1)  # channels of conv1
    width2: int = Field(64, ge=1)  # channels of conv2
    # thesis §3.2.1: dct-uniform = U(-0.2, 0.2) draws damped in DCT space, at that scale;
    # dct-smooth = the same images rescaled to a normal init's variance (1/fan-in)
    classifier_init: Literal["normal", "dct-smooth", "dct-uniform"] = "normal"
    tikhonov: float = Field(0.0, ge=0, allow_inf_nan=False)  # thesis R(θ) = ½α‖θ‖² on the conv weights (0 = off)
    smooth_classifier: float = Field(0.0, ge=0, allow_inf_nan=False)  # weight α of the finite-difference penalty on class images (0 = off)


class ThesisCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, resolution: int, opts: CNNOptions):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, opts.width1, 3, padding=1, bias=False)
        self.pool = nn.AvgPool2d(2) if opts.pool else nn.Identity()
        self.conv2 = nn.Conv2d(opts.width1, opts.width2, 3, padding=1, bias=False)
        side = resolution // 2 if opts.pool else resolution
        self.classifier = GridLinear(opts.width2, side, side, num_classes)
        self.smooth_classifier, self.tikhonov = opts.smooth_classifier, opts.tikhonov
        if opts.classifier_init != "normal":
            with torch.no_grad():
                w = dct_smooth_init(self.classifier.weight_images(), rescale=opts.classifier_init == "dct-smooth")
                self.classifier.weight.copy_(w.flatten(1))

    def stages(self, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """Feature maps after every stage (used by features pictures and diagnostics)."""
        out = []
        x = F.relu(self.conv1(x))
        out.append(("conv1", x))
        x = self.pool(x)
        if not isinstance(self.pool, nn.Identity):
            out.append(("pool", x))
        x = F.relu(self.conv2(x))
        out.append(("conv2", x))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = self.pool(x)
        x = F.relu(self.conv2(x))
        return self.classifier(x)

    def regularization(self) -> torch.Tensor | None:
        """The thesis's R(θ, w) = ½·tikhonov·‖θ‖² + ½α‖∇_h w‖², added once to the batch-mean loss.

        θ: the conv weights (bias-free); w: each class's weight image, ∇_h its finite differences.
        α is given for the finest (reference) grid and scaled ×4 per coarsening, the Riemann-sum
        area ratio (seed 003 §3.2.1): α_grid = α · (reference / resolution)².
        """
        terms = []
        if self.tikhonov > 0:
            terms.append(0.5 * self.tikhonov * (self.conv1.weight.pow(2).sum() + self.conv2.weight.pow(2).sum()))
        if self.smooth_classifier > 0:
            w = self.classifier.weight_images()
            dx = w[..., :, 1:] - w[..., :, :-1]
            dy = w[..., 1:, :] - w[..., :-1, :]
            alpha = self.smooth_classifier * self.classifier_area_scale
            terms.append(0.5 * alpha * (dx.pow(2).sum() + dy.pow(2).sum()))
        return sum(terms) if terms else None  # type: ignore[return-value]

    @property
    def classifier_area_scale(self) -> float:
        # ×4 on each coarser grid, relative to the model's reference (finest) resolution
        ref = getattr(self, "reference_resolution", None) or self.resolution
        return float((ref / self.resolution) ** 2)


def dct_smooth_init(w: torch.Tensor, bound: float = 0.2, keep: float = 0.25, rescale: bool = True) -> torch.Tensor:
    """Smooth random class-weight images (thesis Fig. 3.1): U(-bound, bound) draws, damped in DCT space.

    High DCT frequencies are attenuated with a Gaussian roll-off so each image is smooth. ``rescale``:
    give the result a plain normal init's variance (1/fan-in) instead of the damped draws' own.
    """
    from scipy.fft import dctn, idctn

    *lead, h, wd = w.shape
    draws = torch.empty_like(w).uniform_(-bound, bound).detach().cpu().numpy()
    coeff = dctn(draws, axes=(-2, -1), norm="ortho")
    ky = torch.arange(h, dtype=torch.float64)[:, None] / h
    kx = torch.arange(wd, dtype=torch.float64)[None, :] / wd
    damp = torch.exp(-((ky**2 + kx**2) / (2 * keep**2))).numpy()
    smooth = idctn(coeff * damp, axes=(-2, -1), norm="ortho")
    if not rescale:
        return torch.as_tensor(smooth, dtype=w.dtype)
    # keep the variance of a plain normal init of a linear layer of this fan-in
    fan_in = math.prod(w.shape[1:])
    t = torch.as_tensor(smooth, dtype=w.dtype)
    return t / (t.std() + 1e-12) / math.sqrt(fan_in)


def _build(name: str, opts: CNNOptions, in_channels: int, num_classes: int, resolution: int) -> nn.Module:
    return ThesisCNN(in_channels, num_classes, resolution, opts)


register_family(
    ModelFamily(
        family="cnn",
        matches=lambda n: n == "cnn",
        options=CNNOptions,
        build=_build,
        divisor=lambda name, o: 2 if o.pool else 1,
        examples=("cnn",),
    )
)

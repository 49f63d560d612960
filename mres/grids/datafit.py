"""Make the fine model agree with the coarse one on data, after a start transfer (DESIGN §3).

Conventions: the coarse model sees ``R x``, the fine model ``x`` (fine training images); ``R`` is the
operator family's image restriction, applied per channel; a layer's *output* is its pre-activation
(conv or linear, before any BN or nonlinearity); a *call* is one application of a layer in the forward
pass (a shared conv — MgNet's A and B, Poly-MgNet's A inside its polynomial — has several).

``galerkin-data`` — the Galerkin condition asked of the data. Exact Galerkin makes
``R K_h P = K_2h``: the fine layer agrees with the coarse one on images in the range of ``P``. Real
fine activations are not there, so ask instead, layer by layer in forward order, that restriction
commute with the layer on them: ``R (K_h a_h) ≈ b_2h`` at every call, with ``a_h`` the fine layer's
input at that call (propagated through the fine layers fitted so far) and ``b_2h`` the coarse layer's
own output at the same call on ``R x``. Given its inputs, a call's output is linear in the kernel, and
``R`` is linear, so

    R (K_h a_h)[n, o, q] = Σ_j θ[o, j] X[(n, q), j],   X = R applied to the im2col patches of a_h

and each layer (each group of a grouped conv) is a ridge least-squares problem with one design matrix
for all its output channels, the rows of every call stacked:

    min_θ (1/M) ‖X θᵀ − B‖² + λ ‖θ − θ_start‖²   ⇒   (XᵀX/M + λI) θᵀ = XᵀB/M + λ θ_startᵀ

solved in closed form (no gradient descent) from one eigendecomposition: of ``XᵀX`` (primal, sums over
chunks of the calibration set) when there are fewer unknowns than rows, else of ``XXᵀ`` (dual,
Woodbury: ``θᵀ = θ_startᵀ + Xᵀ (XXᵀ + λ M I)⁻¹ (B − X θ_startᵀ)``) — whichever Gram matrix is smaller.
Rows are float64 before any product (a float32 ``XᵀX`` cast afterwards carries a 1e-3 relative error
into the weights). ``λ`` is the recipe's, or per layer the minimiser of generalised cross-validation
``GCV(λ) = Σ ‖(I − H_λ) r‖² / (1 − tr H_λ / M)²`` (Golub, Heath & Wahba 1979; ``r = B − X θ_start``),
which the eigendecomposition gives for every λ at once.

On inputs ``x = P y`` it asks ``R K_h P y ≈ K_2h R P y``: where ``R P = I`` (``average-constant``) that
is exact Galerkin (tested); for the other families it fits ``K_2h R P``. A linear head has the same form
without ``R`` (``logits_h(x) ≈ logits_2h(R x)``). The copy's ÷4 rule is this fit's answer when the fine
features restrict exactly to the coarse ones (``W_h = W_2h R``); the fit corrects for features that do not.

A shared conv's later calls take inputs that depend on its own weights (MgNet's ``u ← u + B(f − A u)``;
Poly-MgNet's ``A`` inside ``Σ c_k A^k``), so one solve fits its calls with the inputs the start weights
gave; ``sweeps`` > 1 repeats the whole forward-order pass with the inputs the last pass left (a
fixed-point iteration; each solve is still exact for its inputs; a model without a shared layer gets one
pass, as a second would repeat the same solves). Poly-MgNet's coefficients ``c_k`` are
not refitted: the start rule carries them (its coefficient policy). BN layers are not fitted; the
``bn`` rule says what their running statistics become: ``per-layer`` recalibrates every BN on the fine
calibration images right after each layer is fitted (so the next layer is fitted on the inputs it
will see), ``after`` leaves them to the job's recalibration after the fit, ``keep`` keeps the coarse
model's statistics (BN in eval mode is a per-channel affine map, which commutes with ``R``).

``plan_fit`` reads the layers off one forward pass before any training: a layer with parameters the
fit cannot set (not a conv, linear or BN layer, nor a parameter its module declares carried in
``fit_carries``) is named in an error, and so is a problem whose Gram matrix does not fit in memory.

``distill`` — the gradient-descent answer to the same question: ``steps`` SGD steps on fine
training images, KL(teacher ‖ student) with temperature ``T`` (× T², Hinton et al.), teacher the
coarse model on ``R x``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

from ..errors import UserError
from .operators import restrict_images
from .transfer import recalibrate_bn

FITTED = (nn.Conv2d, nn.Linear)
BN_RULES = ("per-layer", "after", "keep")
BnRule = Literal["per-layer", "after", "keep"]
GCV_GRID = np.linspace(-9.0, 3.0, 49)  # log10(μ / mean eigenvalue) searched before the bounded refinement


# ----------------------------------------------------------------------------- one layer's rows
def restricted_patches(a: torch.Tensor, conv: nn.Conv2d, out_shape: tuple[int, int], family: str) -> torch.Tensor:
    """The design rows of ``conv`` on input ``a``: im2col patches (with the conv's padding mode), each
    patch column restricted until its map has the coarse output's shape, plus a column for the
    bias (``R 1``). Returns (N·Hc·Wc, C·kh·kw + 1)."""
    if isinstance(conv.padding, str):
        raise UserError(f"galerkin-data: conv with padding={conv.padding!r} is not supported (give integers)")
    ph, pw = conv.padding
    mode = {"zeros": "constant"}.get(conv.padding_mode, conv.padding_mode)
    a = F.pad(a, (pw, pw, ph, ph), mode=mode) if (ph or pw) else a
    cols = F.unfold(a, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)  # (N, C·k, L)
    n, d, _ = cols.shape
    ho = (a.shape[-2] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1
    wo = (a.shape[-1] - conv.dilation[1] * (conv.kernel_size[1] - 1) - 1) // conv.stride[1] + 1
    maps = torch.cat([cols.view(n, d, ho, wo), a.new_ones(n, 1, ho, wo)], 1)
    maps = restrict_to_shape(maps, out_shape, family)
    return maps.permute(0, 2, 3, 1).reshape(-1, d + 1)


def restrict_to_shape(z: torch.Tensor, shape: tuple[int, ...], family: str) -> torch.Tensor:
    """Apply ``R`` until the last two dims equal ``shape``'s (none: they already do)."""
    while tuple(z.shape[-2:]) != tuple(shape[-2:]):
        if z.shape[-1] <= shape[-1] or z.shape[-1] % 2:
            raise UserError(f"galerkin-data: a fine map of {tuple(z.shape[-2:])} cannot be restricted to the "
                            f"coarse layer's {tuple(shape[-2:])}")
        z = restrict_images(z, family)
    return z


def layer_rows(module: nn.Module, a: torch.Tensor, b: torch.Tensor, family: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(X, B): the design rows of the fine ``module`` on its input ``a`` and the targets from the coarse
    layer's output ``b`` (bias column last; a bias-free layer's is there too, its weight kept at 0)."""
    if isinstance(module, nn.Conv2d):
        x = restricted_patches(a, module, tuple(b.shape[-2:]), family)
        return x, b.permute(0, 2, 3, 1).reshape(-1, b.shape[1])
    a = torch.flatten(a, 1)
    return torch.cat([a, a.new_ones(len(a), 1)], 1), b.reshape(len(b), -1)


def grouped_rows(x: torch.Tensor, b: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split rows (M, D + 1) and targets (M, O) of a conv with ``groups`` into (g, M, D/g + 1) and
    (g, M, O/g): group k's outputs see only its inputs' columns (the bias column goes to every group)."""
    m, d = x.shape[0], x.shape[1] - 1
    xg = torch.cat([x[:, :-1].reshape(m, groups, d // groups), x[:, -1:, None].expand(m, groups, 1)], -1)
    return xg.transpose(0, 1), b.reshape(m, groups, -1).transpose(0, 1)


def layer_theta(module: nn.Module) -> torch.Tensor:
    """The layer's weights as the (g, D/g + 1, O/g) unknowns of its grouped rows (bias last, 0 when it has none)."""
    g = getattr(module, "groups", 1)
    o = module.weight.shape[0]
    w = module.weight.detach().reshape(g, o // g, -1)
    bias = module.bias.detach() if module.bias is not None else w.new_zeros(o)
    return torch.cat([w, bias.reshape(g, o // g, 1)], -1).transpose(1, 2)


def set_theta(module: nn.Module, theta: torch.Tensor) -> None:
    with torch.no_grad():
        module.weight.copy_(theta[:, :-1].transpose(1, 2).reshape(module.weight.shape))
        if module.bias is not None:
            module.bias.copy_(theta[:, -1].reshape(-1))


# ----------------------------------------------------------------------------- the ridge solves
@dataclass(frozen=True)
class Spectrum:
    """A ridge problem in the eigenbasis of its Gram matrix, batched over groups: ``s`` (g, K) eigenvalues,
    ``w2`` (g, K) squared projections of the start residual summed over outputs, ``rr`` (g,) the start
    residual ‖B − X θ_start‖², ``rows`` M, and whether it is the primal (``XᵀX``) or dual (``XXᵀ``) form."""

    s: torch.Tensor
    w2: torch.Tensor
    rr: torch.Tensor
    rows: int
    dual: bool

    def nonnull(self) -> torch.Tensor:  # eigenvalues above rounding: the others belong to the null space
        return self.s > self.s.amax(-1, keepdim=True).clamp_min(1e-300) * self.s.shape[-1] * 1e-15

    def rss(self, mu: float) -> torch.Tensor:
        """‖(I − H_μ) r‖² per group, μ = λ M."""
        s, w2, keep = self.s.clamp_min(0), self.w2, self.nonnull()
        if self.dual:  # w = Uᵀ r: the residual is μ/(s + μ) of each component
            return ((mu / (s + mu)) ** 2 * w2).sum(-1) if mu > 0 else (w2 * ~keep).sum(-1)
        # primal, z = Vᵀ Xᵀ r: ‖r‖² − Σ z²/s is the part of r no θ reaches; the rest shrinks by μ/(s + μ)
        inv = torch.where(keep, 1 / s.clamp_min(1e-300), torch.zeros_like(s))
        unreachable = (self.rr - (w2 * inv).sum(-1)).clamp_min(0)
        return unreachable + (w2 * inv * (mu / (s + mu)) ** 2 * keep).sum(-1)

    def dof(self, mu: float) -> torch.Tensor:
        s = self.s.clamp_min(0)
        return (s / (s + mu)).sum(-1) if mu > 0 else self.nonnull().sum(-1).to(s.dtype)

    def gcv(self, mu: float) -> float:
        return float((self.rss(mu) / (1 - self.dof(mu) / self.rows).clamp_min(1e-12) ** 2).sum())

    def best_mu(self) -> float:
        """The μ = λ M minimising GCV: a log grid relative to the mean eigenvalue, then a bounded search."""
        scale = float(self.s.clamp_min(0).mean()) or 1.0
        scores = [self.gcv(scale * 10 ** t) for t in GCV_GRID]
        t0 = GCV_GRID[int(np.argmin(scores))]
        step = GCV_GRID[1] - GCV_GRID[0]
        res = minimize_scalar(lambda t: self.gcv(scale * 10 ** t), bounds=(t0 - step, t0 + step), method="bounded",
                              options={"xatol": 1e-3})
        t = res.x if res.fun <= min(scores) else t0
        return scale * 10 ** float(t)


def _inverse(s: torch.Tensor, mu: float, keep: torch.Tensor) -> torch.Tensor:
    if mu > 0:
        return 1 / (s.clamp_min(0) + mu)
    return torch.where(keep, 1 / s.clamp_min(1e-300), torch.zeros_like(s))  # λ = 0: the least-norm solution


def primal_solve(gram: torch.Tensor, cross: torch.Tensor, bb: torch.Tensor, rows: int, theta0: torch.Tensor,
                 lam: float | None) -> tuple[torch.Tensor, float, Spectrum]:
    """``(G/M + λI) θ = C/M + λ θ0`` per group from ``G = XᵀX`` (g, D, D), ``C = XᵀB`` (g, D, O) and
    ``bb = ‖B‖²`` (g,), float64; ``lam`` None: chosen by GCV. Returns (θ, λ, spectrum)."""
    s, v = torch.linalg.eigh(gram)
    cr = cross - gram @ theta0  # Xᵀ r, r = B − X θ0
    z = v.transpose(1, 2) @ cr
    rr = bb - 2 * (theta0 * cross).sum((1, 2)) + (theta0 * (gram @ theta0)).sum((1, 2))
    spec = Spectrum(s, (z ** 2).sum(-1), rr.clamp_min(0), rows, dual=False)
    mu = spec.best_mu() if lam is None else lam * rows
    theta = theta0 + v @ (_inverse(s, mu, spec.nonnull())[..., None] * z)
    return theta, mu / rows, spec


def dual_solve(x: torch.Tensor, b: torch.Tensor, theta0: torch.Tensor, lam: float | None) -> tuple[torch.Tensor, float, Spectrum]:
    """The same problem from the rows (g, M, D) when there are more unknowns than rows:
    ``θ = θ0 + Xᵀ (XXᵀ + λ M I)⁻¹ (B − X θ0)``, float64."""
    r = b - x @ theta0
    s, u = torch.linalg.eigh(x @ x.transpose(1, 2))
    w = u.transpose(1, 2) @ r
    spec = Spectrum(s, (w ** 2).sum(-1), (r ** 2).sum((1, 2)), x.shape[1], dual=True)
    mu = spec.best_mu() if lam is None else lam * x.shape[1]
    alpha = u @ (_inverse(s, mu, spec.nonnull())[..., None] * w)
    return theta0 + x.transpose(1, 2) @ alpha, mu / x.shape[1], spec


# ----------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class LayerPlan:
    """One fitted layer: its calls per image, the rows and unknowns of each group's problem, the form
    solved (the smaller Gram matrix) and the bytes it needs."""

    name: str
    groups: int
    unknowns: int  # per group, bias included
    outputs: int  # per group
    calls: int
    rows: int
    images: int

    @property
    def dual(self) -> bool:
        return self.unknowns > self.rows

    @property
    def bytes(self) -> int:
        k = min(self.unknowns, self.rows)  # the Gram matrix, its eigenvectors and eigh's workspace
        stored = self.rows * self.unknowns if self.dual else self.unknowns * self.outputs
        return 8 * self.groups * (3 * k * k + stored)

    def describe(self) -> str:
        form = "dual, XXᵀ" if self.dual else "primal, XᵀX"
        per = f"{self.groups} groups of " if self.groups > 1 else ""
        return (f"{per}{self.rows:,} rows × {self.unknowns:,} unknowns ({form} {min(self.unknowns, self.rows):,}² in "
                f"float64): {self.bytes / 2**30:,.2f} GiB")


def unsupported_layers(model: nn.Module) -> list[str]:
    """Modules with parameters the fit cannot set: not conv/linear/BN, nor declared carried (``fit_carries``)."""
    out = []
    for name, m in model.named_modules():
        own = [n for n, _ in m.named_parameters(recurse=False)]
        if not own or isinstance(m, nn.modules.batchnorm._BatchNorm):
            continue
        if isinstance(m, nn.Conv2d):
            if isinstance(m.padding, str):
                out.append(f"{name} (Conv2d with padding={m.padding!r}; give integers)")
            continue
        if isinstance(m, nn.Linear):
            continue
        rest = [n for n in own if n not in getattr(m, "fit_carries", ())]
        if rest:
            out.append(f"{name or '(the model)'} ({type(m).__name__}: parameters {', '.join(rest)})")
    return out


@torch.no_grad()
def plan_fit(fine: nn.Module, x_probe: torch.Tensor, calibration: int, head_calibration: int | None = None,
             available: int | None = None) -> list[LayerPlan]:
    """The fitted layers of ``fine`` in the order of their first call on ``x_probe`` (fine images), each
    with its problem's size for ``calibration`` images (linear layers: ``head_calibration``). Raises a
    UserError naming every layer the fit cannot handle, and any problem over ``available`` bytes."""
    problems = unsupported_layers(fine)
    calls: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {}
    mods = [(n, m) for n, m in fine.named_modules() if isinstance(m, FITTED)]
    hooks = [m.register_forward_hook(lambda mod, args, out, n=n: calls.setdefault(n, []).append(
        (tuple(args[0].shape), tuple(out.shape)))) for n, m in mods]
    was = fine.training
    fine.eval()
    try:
        fine(x_probe)
    finally:
        fine.train(was)
        for h in hooks:
            h.remove()
    n_probe = len(x_probe)
    plans = []
    for name in calls:
        m = dict(mods)[name]
        if isinstance(m, nn.Linear) and any(math.prod(i[1:]) != m.in_features for i, _ in calls[name]):
            problems.append(f"{name} (Linear on inputs of shape {calls[name][0][0]}; only a linear map of each whole example (flattened) is fitted)")
            continue
        g = getattr(m, "groups", 1)
        if isinstance(m, nn.Conv2d):
            per_image = sum(math.ceil(o[-2] / 2) * math.ceil(o[-1] / 2) for _, o in calls[name])
            images = calibration
        else:
            per_image = sum(math.prod(o[:-1]) // n_probe for _, o in calls[name])
            images = head_calibration or calibration
        unknowns = m.weight[0].numel() + 1
        plans.append(LayerPlan(name, g, unknowns, m.weight.shape[0] // g, len(calls[name]), per_image * images, images))
    if problems:
        raise UserError("galerkin-data cannot fit " + "; ".join(problems) + ". It fits Conv2d (any groups, integer "
                        "padding) and Linear layers on whole (flattened) examples, recalibrates or keeps BN, and carries "
                        "parameters a module lists in fit_carries; use transfer, galerkin or distill for this model")
    if available is not None:
        big = [p for p in plans if p.bytes > available]
        if big:
            raise UserError("galerkin-data: " + "; ".join(f"layer {p.name}: {p.describe()}" for p in big) +
                            f" — more than the {available / 2**30:,.1f} GiB available; lower galerkin_data.calibration"
                            " (or head_calibration)")
    return plans


# ----------------------------------------------------------------------------- the model
def _calls(model: nn.Module, names: list[str], x: torch.Tensor, what: str) -> dict[str, list[torch.Tensor]]:
    """Forward ``x`` and collect, per named module, its input (``what="in"``) or output at every call."""
    mods = dict(model.named_modules())
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = []
    for n in names:
        if what == "in":
            handles.append(mods[n].register_forward_pre_hook(lambda m, args, n=n: seen[n].append(args[0].detach())))
        else:
            handles.append(mods[n].register_forward_hook(lambda m, args, out, n=n: seen[n].append(out.detach())))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _chunks(x: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for i in range(0, len(x), size):
        yield x[i:i + size]


def _layer_problem(coarse: nn.Module, fine: nn.Module, plan: LayerPlan, x: torch.Tensor, xc_all: torch.Tensor,
                   family: str, chunk: int) -> dict[str, Any]:
    """The rows of one layer over the calibration images ``x`` (the coarse model sees ``xc_all = R x``),
    float64: the Gram sums (primal) or the rows (dual)."""
    layer = dict(fine.named_modules())[plan.name]
    cdev, fdev = next(coarse.parameters()).device, next(fine.parameters()).device
    acc: dict[str, Any] = {"rows": 0, "xs": [], "bs": []}
    for xf, xc in zip(_chunks(x, chunk), _chunks(xc_all, chunk)):
        a_calls = _calls(fine, [plan.name], xf.to(fdev), "in")[plan.name]
        b_calls = _calls(coarse, [plan.name], xc.to(cdev), "out")[plan.name]
        if len(a_calls) != len(b_calls):
            raise UserError(f"galerkin-data: layer {plan.name} runs {len(a_calls)}× in the fine model and "
                            f"{len(b_calls)}× in the coarse one; the models must share their structure")
        for a, b in zip(a_calls, b_calls):
            xr, br = layer_rows(layer, a.double(), b.to(a.device).double(), family)  # float64 before any product
            xg, bg = grouped_rows(xr, br, plan.groups)
            acc["rows"] += xg.shape[1]
            if plan.dual:
                acc["xs"].append(xg), acc["bs"].append(bg)
                continue
            parts = {"gram": xg.transpose(1, 2) @ xg, "cross": xg.transpose(1, 2) @ bg, "bb": (bg ** 2).sum((1, 2))}
            for k, v in parts.items():
                acc[k] = v if k not in acc else acc[k] + v
    return acc


@torch.no_grad()
def fit_to_coarse(coarse: nn.Module, fine: nn.Module, x: torch.Tensor, family: str, lam: float | None = None,
                  chunk: int = 128, sweeps: int = 1, bn: BnRule = "per-layer",
                  x_head: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """``galerkin-data``: fit every conv and linear layer of ``fine`` (already holding its start weights)
    so that ``R (layer_h a_h) ≈ layer_2h(R x)`` at every call on the calibration images ``x`` (linear
    layers: ``x_head`` when given), layer by layer in forward order, ``sweeps`` times; ``lam`` None: λ
    per layer by GCV; ``bn``: see the module docstring. Both models run in eval mode; modes are restored.
    Returns per layer and sweep its name, groups, rows, form, λ and the relative residual of the start and
    of the fit on its calibration rows."""
    if bn not in BN_RULES:
        raise UserError(f"galerkin_data.bn: {bn!r} is not a rule; allowed: {', '.join(BN_RULES)}")
    modes = (coarse.training, fine.training)
    coarse.eval(), fine.eval()
    dev = next(fine.parameters()).device
    report = []
    try:
        plans = plan_fit(fine, x[:1].to(dev), len(x), None if x_head is None else len(x_head))
        fmods = dict(fine.named_modules())
        restricted = {id(t): restrict_to_shape(t, (t.shape[-2] // 2, t.shape[-1] // 2), family)
                      for t in (x, x_head) if t is not None}  # R x, once per fit
        if all(p.calls == 1 for p in plans):  # no layer sees its own output: a second pass repeats the same solves
            sweeps = 1
        for sweep in range(1, sweeps + 1):
            for plan in plans:
                layer = fmods[plan.name]
                xs = x_head if (x_head is not None and isinstance(layer, nn.Linear)) else x
                acc = _layer_problem(coarse, fine, plan, xs, restricted[id(xs)], family, chunk)
                theta0 = layer_theta(layer).double()
                keep = slice(None) if layer.bias is not None else slice(0, -1)  # a bias-free layer's stays 0
                if plan.dual:
                    xall, ball = torch.cat(acc["xs"], 1), torch.cat(acc["bs"], 1)
                    theta, lam_used, spec = dual_solve(xall[..., keep], ball, theta0[:, keep], lam)
                    bb = float((ball ** 2).sum())
                else:
                    gram, cross = acc["gram"][:, keep, keep], acc["cross"][:, keep]
                    theta, lam_used, spec = primal_solve(gram, cross, acc["bb"], acc["rows"], theta0[:, keep], lam)
                    bb = float(acc["bb"].sum())
                if layer.bias is None:
                    theta = torch.cat([theta, theta.new_zeros(theta.shape[0], 1, theta.shape[2])], 1)
                set_theta(layer, theta.to(layer.weight.dtype))
                if bn == "per-layer":  # the next layer is fitted on the inputs it will see
                    recalibrate_bn(fine, _chunks(x, chunk))
                fit = float(spec.rss(lam_used * spec.rows).sum())
                denom = max(bb, 1e-300)
                report.append({"layer": plan.name, "sweep": sweep, "groups": plan.groups, "calls": plan.calls,
                               "rows": acc["rows"], "unknowns": plan.unknowns,
                               "solve": "dual" if plan.dual else "primal", "lam": lam_used,
                               "lam_by": "fixed" if lam is not None else "gcv",
                               "residual_start": (float(spec.rr.sum()) / denom) ** 0.5,
                               "residual_fit": (fit / denom) ** 0.5})
    finally:
        coarse.train(modes[0]), fine.train(modes[1])
    return report


# ----------------------------------------------------------------------------- distillation
def distill(teacher: nn.Module, student: nn.Module, x: torch.Tensor, family: str, steps: int, batch_size: int,
            lr: float, momentum: float = 0.9, temperature: float = 2.0, seed: int = 0) -> list[float]:
    """``distill``: ``steps`` SGD steps on batches of ``x`` (fine images, drawn by ``seed``) minimising
    T²·KL(softmax(teacher(R x)/T) ‖ softmax(student(x)/T)); the student trains (BN in train mode), the
    teacher is evaluated. Returns the loss of every step."""
    was = (teacher.training, student.training)
    teacher.eval(), student.train()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    gen = torch.Generator().manual_seed(seed)
    t = temperature
    losses = []
    try:
        for _ in range(steps):
            idx = torch.randint(len(x), (min(batch_size, len(x)),), generator=gen).to(x.device)
            xb = x[idx]
            with torch.no_grad():
                target = F.log_softmax(teacher(restrict_to_shape(xb, (xb.shape[-2] // 2, xb.shape[-1] // 2),
                                                                 family)).float() / t, -1)
            out = F.log_softmax(student(xb).float() / t, -1)
            loss = F.kl_div(out, target, log_target=True, reduction="batchmean") * t * t
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        teacher.train(was[0]), student.train(was[1])
    return losses

"""Make the fine model agree with the coarse one on data, after a start transfer (DESIGN §3).

Conventions: the coarse model sees ``R x``, the fine model ``x`` (fine training images); ``R`` is the
operator family's image restriction, applied per channel; a layer's *output* is its pre-activation
(conv or linear, before any BN or nonlinearity).

``galerkin-data`` — the Galerkin condition asked of the data. Exact Galerkin makes
``R K_h P = K_2h``: the fine layer agrees with the coarse one on images in the range of ``P``. Real
fine activations are not there, so ask instead, layer by layer in forward order, that restriction
commute with the layer on them: ``R (K_h a_h) ≈ b_2h``, with ``a_h`` the fine layer's input
(propagated through the fine layers fitted so far) and ``b_2h`` the coarse layer's own output on ``R x``.
A conv's output is linear in its kernel, and ``R`` is linear, so

    R (K_h a_h)[n, o, q] = Σ_j θ[o, j] X[(n, q), j],   X = R applied to the im2col patches of a_h

and each layer is a ridge least-squares problem with one design matrix for all output channels:

    min_θ (1/M) ‖X θᵀ − B‖² + λ ‖θ − θ_start‖²   ⇒   (XᵀX/M + λI) θᵀ = XᵀB/M + λ θ_startᵀ

solved in closed form from normal equations accumulated over chunks of the calibration set (no
gradient descent). On inputs ``x = P y`` it asks ``R K_h P y ≈ K_2h R P y``: where ``R P = I``
(``average-constant``) that is exact Galerkin (tested); for the other families it fits ``K_2h R P``.
A linear head has the same form without ``R`` (``logits_h(x) ≈ logits_2h(R x)``); a flatten head has
more unknowns than calibration rows, so it is solved in the dual (Woodbury):
``θᵀ = θ_startᵀ + Xᵀ (XXᵀ + λ M I)⁻¹ (B − X θ_startᵀ)``. The copy's ÷4 rule is this fit's answer when
the fine features restrict exactly to the coarse ones (``W_h = W_2h R``); the fit corrects for
features that do not. BN layers are not fitted: the conv before each is, and the job recalibrates
BN afterwards as for every transfer. Poly-MgNet is refused: its smoother applies ``A`` inside a
polynomial ``Σ c_k A^k``, so a smoothing step is not linear in ``A``'s weights.

``distill`` — the gradient-descent answer to the same question: ``steps`` SGD steps on fine
training images, KL(teacher ‖ student) with temperature ``T`` (× T², Hinton et al.), teacher the
coarse model on ``R x``.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from .operators import restrict_images

FITTED = (nn.Conv2d, nn.Linear)
DUAL_ABOVE = 4096  # unknowns per output above which a layer is solved in the dual (flatten heads)


# ----------------------------------------------------------------------------- one layer's rows
def restricted_patches(a: torch.Tensor, conv: nn.Conv2d, out_shape: tuple[int, int], family: str) -> torch.Tensor:
    """The design rows of ``conv`` on input ``a``: im2col patches (with the conv's padding mode), each
    patch column restricted until its map has the coarse output's shape, plus a column for the
    bias (``R 1``). Returns (N·Hc·Wc, C·kh·kw + 1)."""
    ph, pw = conv.padding if isinstance(conv.padding, tuple) else (conv.padding, conv.padding)
    if isinstance(conv.padding, str):
        raise UserError(f"galerkin-data: conv with padding={conv.padding!r} is not supported (give integers)")
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


def layer_theta(module: nn.Module) -> torch.Tensor:
    """The layer's weights as the (D + 1, O) unknowns of its rows (bias last, 0 when it has none)."""
    w = module.weight.detach().reshape(module.weight.shape[0], -1)
    bias = module.bias.detach() if module.bias is not None else w.new_zeros(w.shape[0])
    return torch.cat([w, bias[:, None]], 1).T


def set_theta(module: nn.Module, theta: torch.Tensor) -> None:
    with torch.no_grad():
        module.weight.copy_(theta[:-1].T.reshape(module.weight.shape))
        if module.bias is not None:
            module.bias.copy_(theta[-1])


def ridge_solve(gram: torch.Tensor, cross: torch.Tensor, rows: int, lam: float, theta0: torch.Tensor,
                fit_bias: bool = True) -> torch.Tensor:
    """``(G/M + λI) θ = C/M + λ θ0`` in float64 (``G = XᵀX``, ``C = XᵀB``, ``M`` rows); a bias-free
    layer's bias row is pinned to 0. A singular system (λ = 0, too few rows) falls back to the
    least-norm solution."""
    g, c = gram.double() / rows, cross.double() / rows
    keep = slice(None) if fit_bias else slice(0, -1)
    g, c, t0 = g[keep, keep], c[keep], theta0.double()[keep]
    a = g + lam * torch.eye(len(g), dtype=g.dtype, device=g.device)
    rhs = c + lam * t0
    try:
        theta = torch.linalg.solve(a, rhs)
    except RuntimeError:
        theta = torch.linalg.lstsq(a.cpu(), rhs.cpu(), driver="gelsd").solution.to(a.device)
    if not fit_bias:
        theta = torch.cat([theta, theta.new_zeros(1, theta.shape[1])])
    return theta


def dual_solve(x: torch.Tensor, b: torch.Tensor, lam: float, theta0: torch.Tensor, fit_bias: bool = True) -> torch.Tensor:
    """The same ridge problem with more unknowns than rows: θ = θ0 + Xᵀ (XXᵀ + λ M I)⁻¹ (B − X θ0)."""
    t0 = theta0.to(x.dtype)
    if not fit_bias:
        x, t0 = x[:, :-1], t0[:-1]
    k = (x @ x.T).double() + lam * len(x) * torch.eye(len(x), dtype=torch.float64, device=x.device)
    alpha = torch.linalg.solve(k, (b - x @ t0).double())
    theta = theta0.double()[:len(t0)] + (x.T @ alpha.to(x.dtype)).double()
    return theta if fit_bias else torch.cat([theta, theta.new_zeros(1, theta.shape[1])])


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


def fitted_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The convs and linear layers (groups = 1) in the order of their first call on ``x``."""
    order: list[str] = []
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, FITTED) and getattr(m, "groups", 1) == 1]
    handles = [m.register_forward_pre_hook(lambda mod, args, n=n: order.append(n) if n not in order else None)
               for n, m in mods]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return order


def refuse_polynomial(model: nn.Module) -> None:
    levels = getattr(model, "smoothing_levels", None)
    if callable(levels) and any(lvl.coeffs for lvl in levels()):
        raise UserError("galerkin-data fits layers whose output is linear in their weights; Poly-MgNet's smoother "
                        "applies its stencil A inside a polynomial Σ c_k A^k, so it is not: use transfer, galerkin "
                        "or galerkin-reg for poly-mgnet (or distill)")


def _chunks(x: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for i in range(0, len(x), size):
        yield x[i:i + size]


@torch.no_grad()
def fit_to_coarse(coarse: nn.Module, fine: nn.Module, x: torch.Tensor, family: str, lam: float = 1e-3,
                  chunk: int = 128) -> list[dict[str, Any]]:
    """``galerkin-data``: fit every conv and linear layer of ``fine`` (already holding its start weights)
    so that ``R (layer_h a_h) ≈ layer_2h(R x)`` on the calibration images ``x``, layer by layer in
    forward order. Both models run in eval mode; modes are restored. Returns per layer its name, the
    rows used and the relative residual of the start and of the fit on the calibration rows."""
    refuse_polynomial(fine)
    modes = (coarse.training, fine.training)
    coarse.eval(), fine.eval()
    dev = next(fine.parameters()).device
    xc_all = restrict_to_shape(x, (x.shape[-2] // 2, x.shape[-1] // 2), family)
    report = []
    try:
        names = fitted_layers(fine, x[:2].to(dev))
        fmods = dict(fine.named_modules())
        for name in names:
            layer = fmods[name]
            theta0 = layer_theta(layer).double()
            fit_bias = layer.bias is not None
            dual = theta0.shape[0] > DUAL_ABOVE
            gram = cross = None
            xs, bs = [], []
            rows, res0 = 0, [0.0, 0.0]
            for xf, xc in zip(_chunks(x, chunk), _chunks(xc_all, chunk)):
                a_calls = _calls(fine, [name], xf.to(dev), "in")[name]
                b_calls = _calls(coarse, [name], xc.to(next(coarse.parameters()).device), "out")[name]
                if len(a_calls) != len(b_calls):
                    raise UserError(f"galerkin-data: layer {name} runs {len(a_calls)}× in the fine model and "
                                    f"{len(b_calls)}× in the coarse one; the models must share their structure")
                for a, b in zip(a_calls, b_calls):
                    # rows in the activations' precision (float32: the products are the cost), sums in float64
                    xr, br = layer_rows(layer, a, b.to(a.device, a.dtype), family)
                    rows += len(xr)
                    res0[0] += float(((xr @ theta0.to(xr.dtype) - br).double() ** 2).sum())
                    res0[1] += float((br.double() ** 2).sum())
                    if dual:
                        xs.append(xr), bs.append(br)
                    else:
                        g, c = (xr.T @ xr).double(), (xr.T @ br).double()
                        gram, cross = (g, c) if gram is None else (gram + g, cross + c)
            if dual:
                xs_all, bs_all = torch.cat(xs), torch.cat(bs)
                theta = dual_solve(xs_all, bs_all, lam, theta0, fit_bias)
                fit = float(((xs_all.double() @ theta - bs_all.double()) ** 2).sum())
            else:
                theta = ridge_solve(gram, cross, rows, lam, theta0, fit_bias)
                fit = _residual(gram, cross, theta, res0[1])
            set_theta(layer, theta.to(layer.weight.dtype))
            denom = max(res0[1], 1e-300)
            report.append({"layer": name, "rows": rows, "solve": "dual" if dual else "normal equations",
                           "residual_start": (res0[0] / denom) ** 0.5, "residual_fit": (max(fit, 0.0) / denom) ** 0.5})
    finally:
        coarse.train(modes[0]), fine.train(modes[1])
    return report


def _residual(gram: torch.Tensor, cross: torch.Tensor, theta: torch.Tensor, bb: float) -> float:
    """‖Xθ − B‖² from the normal equations: θᵀGθ − 2 θᵀC + ‖B‖² (summed over outputs)."""
    return float((theta * (gram.double() @ theta)).sum() - 2 * (theta * cross.double()).sum()) + bb


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

"""Second-order optimizers: CG-Steihaug, a trust-region inexact-Newton method (seed 003 eq. 3.7).

Conventions: the parameters are one vector ``x`` (the concatenation of every parameter tensor);
``g`` and ``H·v`` are its gradient and Hessian-vector products, the latter by double backward,
so no Hessian is ever formed.  Each :meth:`CGSteihaug.step` is one outer iteration of Nocedal &
Wright Alg. 4.1 with the inner solve of their Alg. 7.2 (Steihaug's truncated CG)::

    p ≈ argmin_{‖p‖ ≤ Δ} m(p) = f + gᵀp + ½ pᵀHp      CG from p = 0; exits on negative curvature,
                                                       on the boundary, or at ‖r‖ < min(½, √‖g‖)·‖g‖
    ρ = (f(x) − f(x + p)) / (m(0) − m(p))              Δ ← Δ/4 if ρ < ¼;  Δ ← min(2Δ, Δ_max) if ρ > ¾ on the boundary
    x ← x + p  if ρ > η

With these rules and defaults the iterates are those of ``scipy.optimize.minimize(method="trust-ncg")``
(tested in float64, full batch).  With mini-batches the step and its ratio test use one batch.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch


class CGSteihaug(torch.optim.Optimizer):
    """Trust-region Newton-CG. ``step(closure)``: ``closure()`` returns the loss with autograd enabled.

    The radius lives in ``param_groups[0]["radius"]`` so it is saved and resumed with the state dict.
    ``max_cg_iters=None`` runs CG until one of its exits (at most the dimension, in exact arithmetic).
    """

    def __init__(self, params: Iterable[torch.Tensor], radius: float = 1.0, max_radius: float = 1000.0,
                 eta: float = 0.15, max_cg_iters: int | None = None):
        if not 0 < radius <= max_radius:
            raise ValueError(f"radius must be in (0, max_radius={max_radius}], got {radius}")
        if not 0 <= eta < 0.25:
            raise ValueError(f"eta must be in [0, 0.25), got {eta}")
        if max_cg_iters is not None and max_cg_iters < 1:
            raise ValueError(f"max_cg_iters must be at least 1 (or None), got {max_cg_iters}")
        super().__init__(params, dict(radius=radius, max_radius=max_radius, eta=eta, max_cg_iters=max_cg_iters))
        if len(self.param_groups) != 1:
            raise ValueError("CGSteihaug takes one parameter group (one trust region)")
        self.last: dict[str, float] = {}  # the last step's ρ, ‖p‖, CG iterations, exit (for logs and tests)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor], loss: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """One trust-region iteration; returns the loss at the parameters the step started from.

        ``loss``: the closure's value at the current parameters, already built with autograd (saves
        one evaluation when the caller has it).
        """
        group = self.param_groups[0]
        params = [p for p in group["params"] if p.requires_grad]
        radius = float(group["radius"])
        with torch.enable_grad():
            f0 = closure() if loss is None else loss
            grads = torch.autograd.grad(f0, params, create_graph=True, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        g = torch.cat([gi.reshape(-1) for gi in grads]).detach()

        def hessp(v: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                hv = torch.autograd.grad(grads, params, grad_outputs=_split(v, params), retain_graph=True,
                                         allow_unused=True)
            return torch.cat([(torch.zeros_like(p) if h is None else h).reshape(-1) for p, h in zip(params, hv)])

        p, hits_boundary, iters, exit_ = steihaug_cg(g, hessp, radius, group["max_cg_iters"])
        predicted = -(g @ p + 0.5 * p @ hessp(p)) if iters else g.new_zeros(())
        x0 = [q.detach().clone() for q in params]
        for q, dq in zip(params, _split(p, params)):
            q.add_(dq)
        with torch.enable_grad():  # a closure may build a graph; only its value is used
            f1 = closure().detach()
        actual = f0.detach() - f1
        rho = float(actual / predicted) if predicted > 0 else -math.inf  # no predicted decrease: reject
        if not math.isfinite(rho):  # e.g. a non-finite loss at the proposal: reject and shrink
            rho = -math.inf
        if rho < 0.25:
            radius *= 0.25
        elif rho > 0.75 and hits_boundary:
            radius = min(2 * radius, group["max_radius"])
        if not rho > group["eta"]:
            for q, q0 in zip(params, x0):
                q.copy_(q0)
        group["radius"] = radius
        self.last = {"rho": rho, "step_norm": float(p.norm()), "cg_iters": iters, "exit": exit_,
                     "accepted": float(rho > group["eta"]), "radius": radius}
        return f0.detach()


def steihaug_cg(g: torch.Tensor, hessp: Callable[[torch.Tensor], torch.Tensor], radius: float,
                max_iters: int | None = None) -> tuple[torch.Tensor, bool, int, str]:
    """Approximately minimise gᵀp + ½pᵀHp over ‖p‖ ≤ radius (N&W Alg. 7.2, as scipy's trust-ncg).

    Returns (p, hits_boundary, CG iterations, exit reason: converged | negative-curvature | boundary | max-iters).
    """
    g_norm = float(g.norm())
    tol = min(0.5, math.sqrt(g_norm)) * g_norm
    z = torch.zeros_like(g)
    if g_norm == 0.0:
        return z, False, 0, "converged"
    r, d = g.clone(), -g
    limit = max_iters if max_iters is not None else 10 * g.numel() + 10
    for it in range(1, limit + 1):
        bd = hessp(d)
        dbd = d @ bd
        if dbd <= 0:  # negative curvature: the better of the two boundary points along d
            ta, tb = _boundary_intersections(z, d, radius)
            pa, pb = z + ta * d, z + tb * d
            model = lambda s: g @ s + 0.5 * s @ hessp(s)  # noqa: E731
            return (pa if model(pa) < model(pb) else pb), True, it, "negative-curvature"
        rr = r @ r
        alpha = rr / dbd
        z_next = z + alpha * d
        if float(z_next.norm()) >= radius:  # the CG step leaves the region: stop on its boundary
            _, tb = _boundary_intersections(z, d, radius)
            return z + tb * d, True, it, "boundary"
        r_next = r + alpha * bd
        rr_next = r_next @ r_next
        if math.sqrt(float(rr_next)) < tol:
            return z_next, False, it, "converged"
        d = -r_next + (rr_next / rr) * d
        z, r = z_next, r_next
    return z, False, limit, "max-iters"


def _boundary_intersections(z: torch.Tensor, d: torch.Tensor, radius: float) -> tuple[float, float]:
    """The two t with ‖z + t d‖ = radius, low to high (the cancellation-free quadratic formula)."""
    a, b, c = float(d @ d), 2 * float(z @ d), float(z @ z) - radius**2
    sq = math.sqrt(b * b - 4 * a * c)
    aux = b + math.copysign(sq, b)
    return tuple(sorted((-aux / (2 * a), -2 * c / aux)))  # type: ignore[return-value]


def _split(v: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for p in like:
        out.append(v[i:i + p.numel()].view_as(p))
        i += p.numel()
    return out

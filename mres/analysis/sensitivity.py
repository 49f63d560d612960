"""How much each polynomial step's coefficients act on a Poly-MgNet (seed 000), measured and explained.

A step's update passes through its ``update`` placement (``pair_update`` for pair steps). When that
holds a BatchNorm in training mode, BN(s·w) = sign(s)·BN(w) for a scalar s: the step's scale is
normalised away, so

* a ``q``/``g`` step's α acts only through its sign (its gradient is ~0 and scaling it changes nothing);
* a ``c`` step's (c1, c2) act only through their ratio c1/c2 = 2·Re z: |z| and Im z have no effect.

:func:`coefficient_sensitivity` measures it on a batch, in training mode (the mode in which the
coefficients are trained): per level and step, the relative change of the logits when that step's
coefficients are multiplied by 2 (for a pair step also when only Im z is), and the norm of the loss
gradient on them; :func:`scale_free_reason`
says which steps the placements make scale-free, and why.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..grids.spectrum import step_coefficients, step_roots


def scale_free_reason(step: nn.Module) -> str | None:
    """Why a step's coefficients cannot act through their scale (None if they can)."""
    norm = getattr(step, "update_norm", None)
    if norm is None or getattr(norm, "bn", None) is None:
        return None
    if step.kind == "c":
        return ("the BN after its pair update (pair_update: bn) normalises (c1 − c2 A) r: only c1/c2 = 2·Re z acts, "
                "|z| and Im z do not")
    return f"the BN after its update (update: {norm.placement}) normalises α·p(A) r: α acts only through its sign"


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).double()


def coefficient_sensitivity(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                            factor: float = 2.0) -> list[dict[str, Any]]:
    """Per level and step of a model with ``smoothing_levels()``: kind, ‖ΔL/Δcoeff‖ and the relative
    logit change ‖f(x; coeff·factor) − f(x)‖ / ‖f(x)‖, in training mode on the batch (x, y), with the
    model's parameters and BN statistics left as they were."""
    levels = model.smoothing_levels()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train()
    try:
        coeffs = [p for lv in levels for p in lv.coeffs]
        flags = [p.requires_grad for p in coeffs]
        for p in coeffs:
            p.requires_grad_(True)
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, coeffs)
        for p, f in zip(coeffs, flags):
            p.requires_grad_(f)
        model.load_state_dict(state)  # the forward above moved the BN running statistics
        base = _logits(model, x)
        model.load_state_dict(state)
        rows, k = [], 0
        steps_of = _steps(model)
        for lv in levels:
            for i, (kind, p) in enumerate(zip(lv.kinds, lv.coeffs)):
                with torch.no_grad():
                    p.mul_(factor)
                changed = _logits(model, x)
                model.load_state_dict(state)
                step = steps_of[lv.level - 1][i] if steps_of else None
                row = {"level": lv.level, "step": i + 1, "kind": kind, "grad_norm": float(grads[k].norm()),
                       "logit_change": _rel(changed, base),
                       "scale_free": scale_free_reason(step) if step is not None else None}
                if kind == "c":  # the pair's imaginary part alone ×factor, its real part kept
                    z = step_roots("c", p.detach())[0]
                    with torch.no_grad():
                        moved = torch.tensor([complex(float(z.real), factor * float(z.imag))], dtype=torch.complex128)
                        p.copy_(step_coefficients("c", moved).to(p))
                    row["imag_change"] = _rel(_logits(model, x), base)
                    model.load_state_dict(state)
                rows.append(row)
                k += 1
        return rows
    finally:
        model.load_state_dict(state)
        model.train(was_training)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _steps(model: nn.Module) -> list[list[nn.Module]] | None:
    levels = getattr(model, "levels", None)
    if levels is None or not all(hasattr(lv, "steps") for lv in levels):
        return None
    return [list(lv.steps) for lv in levels]


def sensitivity_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows for the report / CLI: level, step, kind, gradient norm, logit change, flag."""
    head = ["level", "step", "kind", "‖∂L/∂coeff‖", "logit change (coeff ×2)", "scale-free"]
    body = [[str(r["level"]), str(r["step"]), r["kind"], f"{r['grad_norm']:.2e}", f"{r['logit_change']:.2e}",
             "yes: " + r["scale_free"] if r["scale_free"] else "no"] for r in rows]
    return head, body

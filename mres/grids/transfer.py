"""Move a whole model's weights between a coarse and a fine grid, layer by layer (DESIGN §3.3–3.4).

This is the only module that knows how each layer type moves between grids:

==========================================  ===================================================
layer / tensor                              rule
==========================================  ===================================================
``nn.Conv2d`` k×k weight, k odd ≥ 3          stencil map: ``galerkin`` / ``galerkin-reg`` solve
(stride 1 or 2, any groups)                 ``M θ_h = θ_2h`` (prolongate) or apply ``θ_2h = M θ_h``
                                            (restrict); ``transfer`` copies; ``dilate`` copies
                                            and doubles the fine conv's dilation. Stride 2:
                                            ``average-constant`` has an exact map of S∘K
                                            (``grids.strided_stencil_map_1d``, rank 2 per axis):
                                            restriction exact, prolongation least squares with
                                            the ``lams`` regularisation (warned). Other families:
                                            the stride-1 map, an approximation (kind ``…-approx``).
                                            k > 3: (regularised) least squares with a warning.
``nn.ConvTranspose2d`` stride 2 (V-MgNet's  the map of R·T(w)·P (``grids.transposed_stencil_map_1d``):
P), kernel k, padding p                     restrict applies it, prolongate is least squares (the
                                            map is singular; ``lams`` regularise), warned; exact
                                            for average-constant (2×2), a truncation otherwise
                                            (kind ``…-approx``). ``transfer`` copies.
1×1 convs, biases, BN (affine + running     copied (pointwise, resolution-free)
stats), ``nn.Linear`` after a global pool
flatten head (``GridLinear``: a linear      each class's weight image per channel moves with
layer with ``.grid = (C, H, W)``)           the grid. ``transfer``: prolongated with P and
                                            **divided by 4** coarse→fine (restricted with R and
                                            **multiplied by 4** fine→coarse). Why 4:
                                            Σ_fine (P w)·(P g) ≈ 4 Σ_coarse w·g for smooth w, g
                                            (4 fine cells per coarse cell), so w_h = P w_2h / 4
                                            keeps the logits. The thesis text says "multiply by
                                            four"; that is off by 16× (tests/test_transfer.py).
                                            ``galerkin`` / ``galerkin-reg``: the dual pair
                                            w_h = P(PᵀP)⁻¹ w_2h, w_2h = Pᵀ w_h — exact logits
                                            for features in the range of P, restrict∘prolongate
                                            = I, ≈ P w / 4 on smooth w (equal to it for
                                            ``average-constant``). ``fresh`` leaves it.
polynomial coefficients (name contains      copied per tensor; then, for models with
``coeff``, or any scalar)                   ``smoothing_levels()`` (Poly-MgNet), a model-level
                                            pass applies ``coefficient_policy`` (DESIGN §4.2):
                                            ``keep`` (copy), ``rescale`` (map every root by the
                                            affine map between the spectral boxes of the source
                                            and the moved A), ``respectral`` (seed 000 Alg. 3 on
                                            the moved A) — see :func:`move_coefficients`
anything else                               copied when the shapes agree, else ``ValueError``
==========================================  ===================================================

``fresh`` leaves the destination untouched (its diagnostics still compare it to the source).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from .operators import (get_family, prolongate_dual_images, prolongate_images, restrict_dual_images,
                        prolongate_stencils, prolongate_transposed, restrict_transposed, strided_stencil_map_is_exact,
                        transposed_stencil_map_is_exact, restrict_images, restrict_stencils)
from .spectrum import init_coefficients, level_spectrum, step_roots

STRATEGIES: tuple[str, ...] = ("fresh", "transfer", "galerkin", "galerkin-reg")
REFERENCE_STRATEGIES: tuple[str, ...] = ("dilate",)  # correctness anchors, not for training
DIRECTIONS: tuple[str, ...] = ("prolongate", "restrict")
COEFFICIENT_POLICIES: tuple[str, ...] = ("keep", "rescale", "respectral")
PLANNED_COEFFICIENT_POLICIES: tuple[str, ...] = ()  # DESIGN §4.2: all built

_HEAD_AREA = 4.0  # fine cells per coarse cell in 2-D


@dataclass
class LayerDiag:
    """What a transfer did to one tensor (DESIGN §3.6).

    ``name``: the dotted parameter / buffer name; ``kind``: the rule applied (``conv3x3``,
    ``conv3x3-s2``, ``conv1x1``, ``grid-linear``, ``bn``, ``bias``, ``linear``, ``coefficient``,
    ``copy``, ...); ``norm_before`` / ``norm_after``: Frobenius norms of the source tensor and
    of the destination tensor after the transfer; ``growth = norm_after / norm_before``;
    ``galerkin_residual = ‖M θ_h − θ_2h‖ / ‖θ_2h‖`` for stencils (fine and coarse kernel of
    the pair after the transfer), ``None`` otherwise.
    """

    name: str
    kind: str
    norm_before: float
    norm_after: float
    growth: float
    galerkin_residual: float | None = None


def is_grid_linear(module: nn.Module) -> bool:
    """A flatten + linear head whose weights are images on a (C, H, W) feature grid."""
    grid = getattr(module, "grid", None)
    return isinstance(module, nn.Linear) and isinstance(grid, tuple) and len(grid) == 3


def map_stride(stride: int, family: str, size: int) -> int:
    """The stencil map a conv of this stride moves by: the stride-2 map where it is exact for the family
    (average-constant), else the stride-1 map (for a stride-2 conv an approximation)."""
    return 2 if stride == 2 and strided_stencil_map_is_exact(family, size) else 1


def galerkin_residual(fine: torch.Tensor, coarse: torch.Tensor, family: str, stride: int = 1) -> float:
    """``‖M θ_h − θ_2h‖ / ‖θ_2h‖`` (nan when the coarse kernel is zero)."""
    return _relative_gap(restrict_stencils(fine.detach().to(torch.float64), family, stride), coarse)


def _relative_gap(restricted: torch.Tensor, coarse: torch.Tensor) -> float:
    """``‖restricted − coarse‖ / ‖coarse‖`` in float64 (nan when the coarse tensor is zero)."""
    coarse = coarse.detach().to(torch.float64)
    denom = coarse.norm().item()
    return (restricted - coarse).norm().item() / denom if denom > 0 else float("nan")


def transfer_weights(
    src: nn.Module,
    dst: nn.Module,
    strategy: str,
    family: str = "average-bilinear",
    lam: float = 0.0,
    direction: str = "prolongate",
    coefficient_policy: str = "keep",
) -> list[LayerDiag]:
    """Fill ``dst`` (same architecture, built at the other resolution) from ``src``.

    ``direction="prolongate"``: ``src`` is the coarse model, ``dst`` the fine one;
    ``"restrict"`` the other way round. ``strategy`` is one of :data:`STRATEGIES` (or the
    reference ``"dilate"``, prolongation only: fine convs use the coarse kernel with doubled
    dilation — exact under piecewise-constant prolongation up to the first down-sampling
    layer). ``lam`` is the regularisation of ``galerkin-reg`` (ignored by ``galerkin`` for 3×3
    kernels; used by both for larger kernels). ``coefficient_policy`` decides how polynomial
    coefficients move (DESIGN §4.2, one of :data:`COEFFICIENT_POLICIES`; see
    :func:`move_coefficients`; models without ``smoothing_levels()`` always keep).

    Returns one :class:`LayerDiag` per floating-point parameter / buffer. Raises ``ValueError``
    for an unknown option, mismatched architectures, or a tensor whose shape differs between
    the models that no rule can move.
    """
    if strategy not in STRATEGIES + REFERENCE_STRATEGIES:
        raise ValueError(f"unknown transfer strategy {strategy!r}; allowed: {', '.join(STRATEGIES + REFERENCE_STRATEGIES)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; allowed: {', '.join(DIRECTIONS)}")
    if coefficient_policy in PLANNED_COEFFICIENT_POLICIES:
        raise NotImplementedError(f"coefficient_policy {coefficient_policy!r} is not implemented yet; use 'keep'")
    if coefficient_policy not in COEFFICIENT_POLICIES:
        raise ValueError(f"unknown coefficient_policy {coefficient_policy!r}; allowed: {', '.join(COEFFICIENT_POLICIES)}")
    if not (lam >= 0 and math.isfinite(lam)):
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")
    if strategy == "dilate" and direction != "prolongate":
        raise ValueError("strategy 'dilate' only prolongates (coarse → fine)")
    fam = get_family(family).name

    src_mods = dict(src.named_modules())
    dst_mods = dict(dst.named_modules())
    if src_mods.keys() != dst_mods.keys():
        only_src = sorted(src_mods.keys() - dst_mods.keys())
        only_dst = sorted(dst_mods.keys() - src_mods.keys())
        raise ValueError(f"models differ in structure: only in source {only_src}, only in destination {only_dst}")

    mover = _Mover(strategy, fam, lam, direction, coefficient_policy)
    # Plan every tensor first, then write: an error leaves dst untouched.
    plan: list[tuple[str, str, bool, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    seen: set[int] = set()  # tensors shared between modules are moved once
    with torch.no_grad():
        for mod_name, s_mod in src_mods.items():
            d_mod = dst_mods[mod_name]
            if type(s_mod) is not type(d_mod):
                raise ValueError(f"module {mod_name or '<root>'!r}: {type(s_mod).__name__} vs {type(d_mod).__name__}")
            s_tensors = dict(s_mod.named_parameters(recurse=False)) | dict(s_mod.named_buffers(recurse=False))
            d_tensors = dict(d_mod.named_parameters(recurse=False)) | dict(d_mod.named_buffers(recurse=False))
            if s_tensors.keys() != d_tensors.keys():
                raise ValueError(f"module {mod_name or '<root>'!r} holds {sorted(s_tensors)} vs {sorted(d_tensors)}")
            for local, s_t in s_tensors.items():
                d_t = d_tensors[local]
                if s_t is None or d_t is None or id(d_t) in seen:
                    continue
                seen.add(id(d_t))
                full = f"{mod_name}.{local}" if mod_name else local
                new, kind, stencil = mover.plan(full, s_mod, d_mod, local, s_t, d_t)
                plan.append((full, kind, stencil, s_t, d_t, new))

        # polynomial coefficients of MgNet-type models: checked here, before any write
        coeff_pass = strategy != "fresh" and _coefficient_levels(src, dst) > 0
        if coeff_pass and coefficient_policy != "keep":
            resolutions = _model_resolutions(src, dst, direction, coefficient_policy)
        for edit in mover.module_edits:  # e.g. 'dilate' changes the fine convs' dilation
            edit()
        for full, kind, stencil, s_t, d_t, new in plan:
            if strategy != "fresh" and new is not None:
                d_t.copy_(new.to(dtype=d_t.dtype, device=d_t.device))
        # model-level pass (DESIGN §4.2): the coefficients follow the moved A's
        coeff_kinds: dict[int, str] = {}
        if coeff_pass:
            if coefficient_policy != "keep":
                move_coefficients(src, dst, coefficient_policy, *resolutions)
            coeff_kinds = {id(p): f"coefficient-{coefficient_policy}"
                           for info in dst.smoothing_levels() for p in info.coeffs}
        diags: list[LayerDiag] = []
        for full, kind, stencil, s_t, d_t, new in plan:
            kind = coeff_kinds.get(id(d_t), kind)
            if not (d_t.is_floating_point() or d_t.is_complex()):
                continue  # e.g. BN's num_batches_tracked: moved, but no norm to report
            before = s_t.detach().double().norm().item()
            after = d_t.detach().double().norm().item()
            residual = mover.residual(s_t, d_t, kind) if stencil else None
            diags.append(LayerDiag(full, kind, before, after, after / before if before > 0 else float("nan"), residual))
    return diags


def transfer_like_weights(src: nn.Module, dst: nn.Module, tensors: dict[str, torch.Tensor], strategy: str,
                          family: str = "average-bilinear", lam: float = 0.0,
                          direction: str = "prolongate") -> dict[str, torch.Tensor]:
    """Move per-parameter tensors (SGD momentum buffers: pending weight updates) by their parameter's rule.

    A momentum buffer is a step in weight space, so it moves as the weights do (the same linear map
    per tensor): copies of the two models carry the tensors through :func:`transfer_weights`
    (coefficients: ``keep``). Parameters without a tensor move as zeros and are left out.
    """
    import copy

    s, d = copy.deepcopy(src), copy.deepcopy(dst)
    with torch.no_grad():
        for name, p in s.named_parameters():
            p.copy_(tensors[name].to(p.device, p.dtype) if name in tensors else torch.zeros_like(p))
    with warnings.catch_warnings():  # the weights' own transfer warned already
        warnings.simplefilter("ignore")
        transfer_weights(s, d, strategy, family, lam, direction, coefficient_policy="keep")
    return {name: p.detach().clone() for name, p in d.named_parameters() if name in tensors}


def move_tensors(src: nn.Module, dst: nn.Module, tensors: dict[str, torch.Tensor], strategy: str,
                 family: str = "average-bilinear", lam: float = 0.0,
                 direction: str = "prolongate") -> dict[str, torch.Tensor]:
    """The per-tensor rules of this module as a differentiable function: ``tensors`` (parameter name →
    a tensor shaped like ``src``'s parameter) → the moved tensors, shaped like ``dst``'s, in the
    tensors' dtype, with autograd through every rule (so vjp gives each map's adjoint). Parameters
    only; polynomial coefficients are kept (the per-tensor rule), ``fresh`` and ``dilate`` are refused."""
    if strategy not in ("transfer", "galerkin", "galerkin-reg"):
        raise ValueError(f"move_tensors needs a linear strategy (transfer, galerkin, galerkin-reg), not {strategy!r}")
    mover = _Mover(strategy, get_family(family).name, lam, direction, "keep", keep_graph=True)
    src_mods, dst_mods = dict(src.named_modules()), dict(dst.named_modules())
    out: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():  # the rules warn per call; a cycle calls them every time
        warnings.simplefilter("ignore")
        for mod_name, s_mod in src_mods.items():
            for local, d_t in dst_mods[mod_name].named_parameters(recurse=False):
                full = f"{mod_name}.{local}" if mod_name else local
                if full in tensors:
                    new, _, _ = mover.plan(full, s_mod, dst_mods[mod_name], local, tensors[full], d_t)
                    out[full] = new.to(tensors[full].dtype)
    return out


class _Mover:
    """The per-tensor rules of the module docstring for one transfer."""

    def __init__(self, strategy: str, family: str, lam: float, direction: str, coefficient_policy: str,
                 keep_graph: bool = False):
        self.strategy = strategy
        # keep_graph: the rules as differentiable functions of the source tensors (mres.c2f.multilevel)
        self._src: Callable[[torch.Tensor], torch.Tensor] = (lambda t: t) if keep_graph else (lambda t: t.detach())
        self.family = family
        self.lam = lam
        self.direction = direction
        self.coefficient_policy = coefficient_policy
        self.module_edits: list[Callable[[], None]] = []

    def plan(self, full: str, s_mod: nn.Module, d_mod: nn.Module, local: str,
             s_t: torch.Tensor, d_t: torch.Tensor) -> tuple[torch.Tensor | None, str, bool]:
        """(new value for d_t or None to leave it, kind, whether it is a Galerkin-moved stencil)."""
        if isinstance(s_mod, nn.Conv2d) and local == "weight":
            return self._conv(full, s_mod, d_mod, s_t, d_t)
        if isinstance(s_mod, nn.ConvTranspose2d) and local == "weight":
            return self._conv_transpose(full, s_mod, s_t, d_t)
        if is_grid_linear(s_mod) and local == "weight":
            return self._grid_linear(full, s_mod, d_mod, s_t, d_t), "grid-linear", False
        if isinstance(s_mod, nn.modules.batchnorm._BatchNorm):
            return self._copy(full, s_t, d_t), "bn", False
        if "coeff" in local.lower() or (s_t.numel() == 1 and d_t.numel() == 1):
            return self._coefficient(full, s_t, d_t), "coefficient", False
        if local == "bias":
            return self._copy(full, s_t, d_t), "bias", False
        if isinstance(s_mod, nn.Linear):
            if s_t.shape != d_t.shape:  # a flatten head: its inputs are a feature grid that changes size
                raise ValueError(f"cannot move {full!r}: a plain nn.Linear with {s_t.shape[-1]} inputs here and "
                                 f"{d_t.shape[-1]} on the other grid, and no grid rule applies to it; build the "
                                 "flatten + linear head as mres.models.cnn.GridLinear(channels, height, width, "
                                 "classes) (it moves by the grid rules), or pool to a fixed size before it "
                                 "(nn.AdaptiveAvgPool2d)")
            return self._copy(full, s_t, d_t), "linear", False
        return self._copy(full, s_t, d_t), "copy", False

    # -- rules ----------------------------------------------------------------------------------
    def _copy(self, full: str, s_t: torch.Tensor, d_t: torch.Tensor) -> torch.Tensor | None:
        if s_t.shape != d_t.shape:
            raise ValueError(f"cannot move {full!r}: shape {tuple(s_t.shape)} vs {tuple(d_t.shape)} "
                             "and no grid rule applies to it")
        return self._src(s_t)

    def _coefficient(self, full: str, s_t: torch.Tensor, d_t: torch.Tensor) -> torch.Tensor | None:
        # Every policy starts from a copy: 'rescale' and 'respectral' need the spectra of the A's the
        # coefficients act on, which a single tensor cannot see — transfer_weights then applies them
        # per smoothing level (move_coefficients) once every tensor has moved.
        return self._copy(full, s_t, d_t)

    def residual(self, s_t: torch.Tensor, d_t: torch.Tensor, kind: str = "") -> float:
        fine, coarse = (d_t, s_t) if self.direction == "prolongate" else (s_t, d_t)
        if kind.startswith("convT"):
            pad = int(kind.split("-p")[1].split("-")[0])
            return _relative_gap(restrict_transposed(fine.detach().double(), self.family, pad), coarse)
        exact_s2 = "-s2" in kind and not kind.endswith("-approx")
        return galerkin_residual(fine, coarse, self.family, stride=2 if exact_s2 else 1)

    def _conv(self, full: str, s_mod: nn.Conv2d, d_mod: nn.Conv2d, s_t: torch.Tensor,
              d_t: torch.Tensor) -> tuple[torch.Tensor | None, str, bool]:
        """(new weight or None, kind, whether it is a stencil moved by the Galerkin map)."""
        kh, kw = s_mod.kernel_size
        if s_t.shape != d_t.shape:
            raise ValueError(f"cannot move {full!r}: conv weight shape {tuple(s_t.shape)} vs {tuple(d_t.shape)}")
        if (kh, kw) == (1, 1):
            return self._src(s_t), "conv1x1", False
        sh, sw = s_mod.stride
        kind = f"conv{kh}x{kw}" + ("" if (sh, sw) == (1, 1) else f"-s{sh}" if sh == sw else f"-s{sh}x{sw}")
        if kh != kw or kh % 2 == 0 or s_mod.dilation != (1, 1) or sh != sw or sh not in (1, 2):
            warnings.warn(f"{full}: no grid rule for a {kh}×{kw} conv with stride {s_mod.stride} and "
                          f"dilation {s_mod.dilation}; copied as is", stacklevel=4)
            return self._src(s_t), kind + "-copied", False
        stride = map_stride(sh, self.family, kh)
        if sh == 2 and stride == 1:
            kind += "-approx"  # no exact stride-2 map for this family: the stride-1 map, an approximation
        if self.strategy == "fresh":
            return None, kind, True
        if self.strategy == "transfer":
            return self._src(s_t), kind, True
        if self.strategy == "dilate":
            self._check_dilatable(full, s_mod)
            self.module_edits.append(lambda: self._dilate(d_mod))
            return self._src(s_t), kind + "-dilated", False
        if self.direction == "restrict":  # θ_2h = M θ_h is exact for every kernel size here
            return restrict_stencils(self._src(s_t), self.family, stride), kind, True
        lam = self.lam if self.strategy == "galerkin-reg" or kh > 3 or stride == 2 else 0.0
        if kh > 3 or stride == 2:
            warnings.warn(f"{full}: {kh}×{kw}{' stride-2' * (stride == 2)} kernel — its Galerkin map is "
                          f"{'rank-deficient' if stride == 2 else 'ill-conditioned or singular'}; least squares "
                          f"with lam={lam}", stacklevel=4)
        with warnings.catch_warnings():  # already warned above, with the layer's name
            warnings.simplefilter("ignore")
            return prolongate_stencils(self._src(s_t), self.family, lam=lam, stride=stride), kind, True

    def _conv_transpose(self, full: str, s_mod: nn.ConvTranspose2d, s_t: torch.Tensor,
                        d_t: torch.Tensor) -> tuple[torch.Tensor | None, str, bool]:
        """Stride-2 transposed convs (V-MgNet's P): the map of R·T(w)·P (grids.transposed_stencil_map_1d)."""
        k, pad = s_mod.kernel_size[0], s_mod.padding[0]
        if s_t.shape != d_t.shape:
            raise ValueError(f"cannot move {full!r}: weight shape {tuple(s_t.shape)} vs {tuple(d_t.shape)}")
        kind = f"convT{k}x{k}-s2-p{pad}"
        if s_mod.stride != (2, 2) or s_mod.kernel_size != (k, k) or s_mod.padding != (pad, pad) \
                or s_mod.dilation != (1, 1) or s_mod.groups != 1:
            warnings.warn(f"{full}: no grid rule for a transposed conv with stride {s_mod.stride}, kernel "
                          f"{s_mod.kernel_size}, padding {s_mod.padding}; copied as is", stacklevel=4)
            return self._src(s_t), f"convT{k}x{k}-copied", False
        if not transposed_stencil_map_is_exact(self.family, k, pad):
            kind += "-approx"  # R·T·P is wider than k×k: the map truncates it
        if self.strategy == "fresh":
            return None, kind, True
        if self.strategy in ("transfer", "dilate"):
            return self._src(s_t), kind, True
        if self.direction == "restrict":
            return restrict_transposed(self._src(s_t), self.family, pad), kind, True
        lam = self.lam if self.strategy == "galerkin-reg" else 0.0
        warnings.warn(f"{full}: {k}×{k} stride-2 transposed conv — its Galerkin map is singular; least squares "
                      f"with lam={lam}", stacklevel=4)
        return prolongate_transposed(self._src(s_t), self.family, pad, lam), kind, True

    @staticmethod
    def _check_dilatable(full: str, s_mod: nn.Conv2d) -> None:
        if s_mod.stride != (1, 1):
            raise ValueError(f"strategy 'dilate' cannot move {full!r}: stride {s_mod.stride} (stride 1 only)")
        k = s_mod.kernel_size[0]
        if s_mod.padding != "same" and s_mod.padding != (k // 2, k // 2):
            raise ValueError(f"strategy 'dilate' needs 'same' padding at {full!r}, got {s_mod.padding}")

    @staticmethod
    def _dilate(d_mod: nn.Conv2d) -> None:
        half = d_mod.kernel_size[0] // 2
        d_mod.dilation = (2, 2)
        if d_mod.padding != "same":
            d_mod.padding = (2 * half, 2 * half)
        # non-'zeros' padding modes pad explicitly with this cached list (see nn.Conv2d.__init__)
        d_mod._reversed_padding_repeated_twice = [2 * half] * 4

    def _grid_linear(self, full: str, s_mod: nn.Module, d_mod: nn.Module, s_t: torch.Tensor,
                     d_t: torch.Tensor) -> torch.Tensor | None:
        (c_s, h_s, w_s), (c_d, h_d, w_d) = s_mod.grid, d_mod.grid
        if s_mod.grid == d_mod.grid:  # head grid unchanged (e.g. a model with adaptive pooling)
            return self._copy(full, s_t, d_t)
        expect = (c_s, 2 * h_s, 2 * w_s) if self.direction == "prolongate" else (c_s, h_s // 2, w_s // 2)
        if (c_d, h_d, w_d) != expect:
            raise ValueError(f"cannot {self.direction} {full!r}: head grid {s_mod.grid} → {d_mod.grid}, "
                             f"expected {expect}")
        if self.strategy == "fresh":
            return None
        images = self._src(s_t).reshape(s_t.shape[0], c_s, h_s, w_s)
        if self.strategy in ("galerkin", "galerkin-reg"):
            # the dual pair (Pᵀ, P(PᵀP)⁻¹): restrict∘prolongate = I, logits exact on P-range features
            moved = (prolongate_dual_images(images, self.family) if self.direction == "prolongate"
                     else restrict_dual_images(images, self.family))
        elif self.direction == "prolongate":
            moved = prolongate_images(images, self.family) / _HEAD_AREA
        else:
            moved = restrict_images(images, self.family) * _HEAD_AREA
        return moved.reshape(d_t.shape)


# ---------------------------------------------------------------------------------------------
# Polynomial coefficients across grids (DESIGN §4.2)
# ---------------------------------------------------------------------------------------------


def _smoothing_levels(model: nn.Module) -> list | None:
    levels = getattr(model, "smoothing_levels", None)
    return levels() if callable(levels) else None


def _coefficient_levels(src: nn.Module, dst: nn.Module) -> int:
    """How many coefficient tensors the model-level pass handles (0: none, e.g. no ``smoothing_levels``).

    Raises ``ValueError`` when the two models' smoothing levels do not correspond.
    """
    s_levels, d_levels = _smoothing_levels(src), _smoothing_levels(dst)
    if s_levels is None or d_levels is None:
        return 0
    if len(s_levels) != len(d_levels):
        raise ValueError(f"models differ in their smoothing levels: {len(s_levels)} vs {len(d_levels)}")
    count = 0
    for s, d in zip(s_levels, d_levels):
        if list(s.kinds) != list(d.kinds) or s.coarsening != d.coarsening or len(s.coeffs) != len(d.coeffs):
            raise ValueError(f"smoothing level {s.level}: steps {''.join(s.kinds)}/coarsening {s.coarsening} vs "
                             f"{''.join(d.kinds)}/coarsening {d.coarsening}")
        count += len(d.coeffs)
    return count


def _model_resolutions(src: nn.Module, dst: nn.Module, direction: str, policy: str) -> tuple[int, int]:
    """Input resolutions of source and destination (``model.resolution``, set by ``build_model``)."""
    rs, rd = getattr(src, "resolution", None), getattr(dst, "resolution", None)
    up = direction == "prolongate"
    if rs is None and rd is not None:
        rs = rd // 2 if up else rd * 2
    if rd is None and rs is not None:
        rd = rs * 2 if up else rs // 2
    if rs is None or rd is None:
        raise ValueError(f"coefficient_policy {policy!r} needs the models' input resolutions "
                         "(the attribute 'resolution' that build_model sets)")
    return int(rs), int(rd)


def level_grid(resolution: int, coarsening: int) -> int:
    """Side of a smoothing level's grid: the input resolution / the level's coarsening (at least 1)."""
    return max(1, resolution // coarsening)


SpectralBox = tuple[float, float, float, float]  # (min Re, max Re, min Im, max Im)


def level_spectra(src: nn.Module, dst: nn.Module, src_resolution: int, dst_resolution: int) -> list[dict[str, Any]]:
    """Per smoothing level of a transfer: the spectral box of A and the polynomial's roots on each side
    (each model's spectrum_boundary) and the smallest |λ − root| gap, as plain lists — where the
    coefficients land after a transfer (DESIGN §4.2; monitoring)."""
    from .spectrum import polynomial_roots

    out = []
    s_bound, d_bound = (getattr(m, "spectrum_boundary", "periodic") for m in (src, dst))
    for s, d in zip(_smoothing_levels(src) or [], _smoothing_levels(dst) or []):
        entry: dict[str, Any] = {"level": s.level}
        for side, lv, res, bound in (("src", s, src_resolution, s_bound), ("dst", d, dst_resolution, d_bound)):
            n = level_grid(res, lv.coarsening)
            eigs = level_spectrum(lv.A.weight, n, bound).to(torch.complex128)
            roots = polynomial_roots(lv.kinds, list(lv.coeffs)) if lv.coeffs else torch.zeros(0, dtype=torch.complex128)
            entry[side] = {"grid": n, "box": list(spectral_box(eigs)),
                           "roots": [[z.real, z.imag] for z in roots.tolist()],
                           "roots_inside_box": int(sum(1 for z in roots.tolist() if inside_box(z, spectral_box(eigs))))}
        out.append(entry)
    return out


def inside_box(z: complex, box: SpectralBox) -> bool:
    # the box comes from float32 eigenvalues and the roots are often placed on its edge: a relative slack
    tol = 1e-5 * max(1.0, abs(box[0]), abs(box[1]), abs(box[2]), abs(box[3]))
    return box[0] - tol <= z.real <= box[1] + tol and box[2] - tol <= z.imag <= box[3] + tol


def spectral_box(eigs: torch.Tensor) -> SpectralBox:
    lam = torch.as_tensor(eigs).to(torch.complex128).reshape(-1)
    return (lam.real.min().item(), lam.real.max().item(), lam.imag.min().item(), lam.imag.max().item())


def _interval_map(lo: float, hi: float, lo2: float, hi2: float) -> tuple[float, float]:
    """(scale, shift) of the affine map [lo, hi] → [lo2, hi2]; a degenerate source interval moves its centre."""
    width = hi - lo
    if width > 1e-12 * max(abs(lo), abs(hi), 1e-30):
        s = (hi2 - lo2) / width
        return s, lo2 - s * lo
    return 1.0, (lo2 + hi2) / 2 - (lo + hi) / 2


def rescale_step(kind: str, coeff: torch.Tensor, src_box: SpectralBox, dst_box: SpectralBox) -> torch.Tensor:
    """One step's coefficients with every root mapped from ``src_box`` to ``dst_box`` (``rescale``).

    Real parts: the affine map of [min Re, max Re] onto the destination's; imaginary parts: the
    scale of [min Im, max Im] onto the destination's (the boxes of real operators are symmetric
    about the real axis, so conjugate pairs stay conjugate).  A ``g`` step's factor 1 − αλ² has
    roots ±ζ, symmetric about 0, which a shifting map would break: its box is the symmetric
    [−ρ, ρ], ρ = max |Re Λ| (the interval its spectral init reads), so real ζ scale by ρ'/ρ,
    imaginary ζ by the imaginary scale.  Roots at ∞ (a zero coefficient) stay there; a root mapped
    onto 0 is pushed out to 1e-6 × the destination's spectral scale (1/ζ must stay finite).
    """
    re_s, re_t = _interval_map(src_box[0], src_box[1], dst_box[0], dst_box[1])
    im_s, _ = _interval_map(src_box[2], src_box[3], dst_box[2], dst_box[3])
    rho_src = max(abs(src_box[0]), abs(src_box[1]))
    rho_dst = max(abs(dst_box[0]), abs(dst_box[1]))
    floor = 1e-6 * max(rho_dst, abs(dst_box[2]), abs(dst_box[3]), 1e-30)
    roots = step_roots(kind, coeff)

    def finite(z: complex) -> bool:
        return math.isfinite(z.real) and math.isfinite(z.imag)

    def moved(z: complex) -> complex:
        if not finite(z):
            return z
        if kind == "g":
            g_scale = rho_dst / rho_src if rho_src > 0 else 1.0
            w = complex(z.real * g_scale, z.imag * im_s)
        else:
            w = complex(re_s * z.real + re_t, z.imag * im_s)
        if abs(w) < floor:
            w = complex(floor if w.real >= 0 else -floor, w.imag)
        return w

    new = [moved(complex(z)) for z in roots.tolist()]
    inv = [1 / z if finite(z) else 0j for z in new]
    out = coeff.detach().to(torch.float64).cpu().reshape(-1).clone()
    if kind == "q":
        out[0] = inv[0].real
    elif kind == "g":
        out[0] = (inv[0] * inv[0]).real  # α = 1/ζ² (the pair ±ζ gives the same α)
    else:  # 1 − c1 λ + c2 λ² = (1 − λ/z1)(1 − λ/z2): a conjugate pair or two real roots
        out[0] = (inv[0] + inv[1]).real
        out[1] = (inv[0] * inv[1]).real
    return out.to(torch.float32)


def move_coefficients(src: nn.Module, dst: nn.Module, policy: str, src_resolution: int,
                      dst_resolution: int) -> None:
    """Set ``dst``'s polynomial coefficients from ``src``'s by ``policy`` (DESIGN §4.2), level by level.

    Both models need ``smoothing_levels()``; ``dst``'s A's must already hold their moved weights.
    A level's spectrum is that of its A on its own grid, ``resolution / coarsening``, with the
    model's ``spectrum_boundary`` (as its spectral init reads it), in complex64.

    * ``keep``: copy.
    * ``rescale``: per step, the roots of ``src``'s coefficients mapped by :func:`rescale_step`
      from the box of spec(A_src) to the box of spec(A_dst).
    * ``respectral``: seed 000 Alg. 3 on spec(A_dst) — what ``init_coefficients("spectral")`` of
      the destination model gives for its current A's.
    """
    if policy not in COEFFICIENT_POLICIES:
        raise ValueError(f"unknown coefficient_policy {policy!r}; allowed: {', '.join(COEFFICIENT_POLICIES)}")
    s_levels, d_levels = _smoothing_levels(src), _smoothing_levels(dst)
    if s_levels is None or d_levels is None:
        raise ValueError("move_coefficients needs models with smoothing_levels()")
    _coefficient_levels(src, dst)  # the levels correspond
    # each model's spectra are taken as its spectral init takes them (its spectrum_boundary)
    s_bound, d_bound = (getattr(m, "spectrum_boundary", "periodic") for m in (src, dst))
    with torch.no_grad():
        for s, d in zip(s_levels, d_levels):
            if not d.coeffs:
                continue
            if policy == "keep":
                values = [c.detach() for c in s.coeffs]
            elif policy == "respectral":
                eigs = level_spectrum(d.A.weight, level_grid(dst_resolution, d.coarsening), d_bound)
                values = init_coefficients(d.kinds, eigs, "spectral")
            else:
                src_box = spectral_box(level_spectrum(s.A.weight, level_grid(src_resolution, s.coarsening), s_bound))
                dst_box = spectral_box(level_spectrum(d.A.weight, level_grid(dst_resolution, d.coarsening), d_bound))
                values = [rescale_step(k, c, src_box, dst_box) for k, c in zip(s.kinds, s.coeffs)]
            for p, v in zip(d.coeffs, values):
                p.copy_(v.to(dtype=p.dtype, device=p.device).reshape(p.shape))


# ---------------------------------------------------------------------------------------------
# Function preservation and BN recalibration
# ---------------------------------------------------------------------------------------------


def _rel_err(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.double(), reference.double()
    denom = reference.norm().item()
    diff = (value - reference).norm().item()
    return diff / denom if denom > 0 else (0.0 if diff == 0 else float("inf"))


def _device_of(model: nn.Module) -> torch.device | None:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def function_preservation(coarse_model: nn.Module, fine_model: nn.Module, x_fine: torch.Tensor,
                          family: str = "average-bilinear") -> dict[str, Any]:
    """How far ``fine_model(x)`` is from ``coarse_model(R x)`` (DESIGN §3.6).

    Returns ``{"logits": ‖f_h − f_2h‖/‖f_2h‖, "agreement": fraction of equal argmax,
    "stages": {stage: relative error}}``; stages (only when both models have
    ``stages(x) -> list[(name, tensor)]``) compare ``R^k(fine feature)`` with the coarse feature,
    ``R`` applied as often as needed to match the coarse shape. Both models run in eval mode
    without gradients; their modes are restored.
    """
    modes = (coarse_model.training, fine_model.training)
    coarse_model.eval()
    fine_model.eval()
    try:
        with torch.no_grad():
            dev_f, dev_c = _device_of(fine_model), _device_of(coarse_model)
            x_f = x_fine.to(dev_f) if dev_f is not None else x_fine
            x_c = restrict_images(x_fine, family)
            x_c = x_c.to(dev_c) if dev_c is not None else x_c
            out_f, out_c = fine_model(x_f), coarse_model(x_c)
            result: dict[str, Any] = {
                "logits": _rel_err(out_f.to(out_c.device), out_c),
                "agreement": (out_f.argmax(-1).to(out_c.device) == out_c.argmax(-1)).double().mean().item(),
                "stages": {},
            }
            if callable(getattr(fine_model, "stages", None)) and callable(getattr(coarse_model, "stages", None)):
                for (name, f_feat), (_, c_feat) in zip(fine_model.stages(x_f), coarse_model.stages(x_c)):
                    f_feat = f_feat.to(c_feat.device)
                    while f_feat.shape[-2:] != c_feat.shape[-2:]:
                        if f_feat.shape[-1] <= c_feat.shape[-1] or f_feat.shape[-1] % 2:
                            raise ValueError(f"stage {name!r}: fine feature {tuple(f_feat.shape)} cannot be "
                                             f"restricted to {tuple(c_feat.shape)}")
                        f_feat = restrict_images(f_feat, family)
                    result["stages"][name] = _rel_err(f_feat, c_feat)
            return result
    finally:
        coarse_model.train(modes[0])
        fine_model.train(modes[1])


def recalibrate_bn(model: nn.Module, batches: Iterable[Any]) -> None:
    """Recompute every BN layer's running statistics from ``batches`` (DESIGN §3.3).

    Same semantics as ``torch.optim.swa_utils.update_bn``: running stats reset, momentum
    ``None`` (cumulative average over batches: each batch weighs the same), forward passes in
    train mode without gradients; each batch is a tensor or a (inputs, ...) tuple/list and is
    moved to the model's device. Momenta and the train/eval mode are restored even on error.
    No-op when the model has no BN layer.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = {bn: bn.momentum for bn in bns}
    was_training = model.training
    device = _device_of(model)
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        with torch.no_grad():
            for batch in batches:
                x = batch[0] if isinstance(batch, (list, tuple)) else batch
                model(x.to(device) if device is not None else x)
    finally:
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        model.train(was_training)

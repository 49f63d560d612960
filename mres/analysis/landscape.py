"""Loss landscapes (Li, Xu, Taylor, Studer, Goldstein 2018) of trained models.

A *surface* is the cross-entropy loss and the accuracy of a model on a fixed evaluation subset
at points ``θ + Σ_i c_i·d_i`` of a low-dimensional slice of weight space:

* 2-D slices ``θ + a·d1 + b·d2`` and 1-D slices ``θ + a·d1`` along random directions,
* 1-D interpolation ``(1−t)·θ_A + t·θ_B = θ_A + t·(θ_B − θ_A)`` between two checkpoints; here
  the floating BN buffers (running mean / variance) are interpolated too, and a running
  variance that extrapolation drives below zero is clamped at 0 (BN's eps keeps it finite).

Directions (Li et al. §4): one Gaussian draw per direction, *filter-normalised* to the model's
weights — every dim-0 slice (an output filter of a conv, a row of a linear layer) of the draw is
rescaled to the norm of the same slice of θ.  Tensors with ≤ 1 dimension (biases, BN weight /
bias, scalars) get a zero direction, and buffers are never perturbed.  (The reference
implementation copies biases into the direction unless told otherwise; we do not.)

Several checkpoints of one architecture share the Gaussian draw and each is normalised to its
*own* filter norms — what Li et al. do, so each panel shows the same random directions at the
scale of its own weights.  Each tensor's draw comes from its own generator seeded by
(seed, direction index, tensor name), so checkpoints whose shapes differ only in some tensors
(the thesis CNN's classifier at 14×14 vs 28×28) still share the draw of every other tensor.

Evaluation is in eval mode.  The fast path stacks K parameter sets along a new leading
dimension and evaluates them in one ``torch.vmap(torch.func.functional_call)`` forward (buffers
that do not move are shared); the fallback sets the parameters of one model at a time in place.
Both give the same surface up to floating-point reassociation.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..training.checkpoint import atomic_write
from ..errors import UserError

DIRECTIONS_FORMAT = "mres-directions/1"
LANDSCAPE_FORMAT = "mres-landscape/1"

# Layout of the arrays in landscape.npz (also stored in its settings).
NPZ_LAYOUT = (
    "x: (nx,) coordinates along direction 1 (or t for --between); y: (ny,) along direction 2 "
    "(empty for 1-D); loss, acc: (rows, nx, ny) for 2-D and (rows, nx) for 1-D, "
    "loss[k, i, j] is at (x[i], y[j]) for row k (= checkpoint k, or the one A→B path); "
    "labels: (rows,); loss = mean cross-entropy on the subset (no regularisation term), "
    "acc = fraction correct"
)

Tensors = dict[str, torch.Tensor]
ProgressFn = Callable[[int], None]


# --------------------------------------------------------------------------------- directions

def parameter_tensors(model_or_params: nn.Module | Mapping[str, torch.Tensor]) -> Tensors:
    """name → detached parameter tensor (a model's ``named_parameters`` or a given mapping)."""
    if isinstance(model_or_params, nn.Module):
        return {k: p.detach() for k, p in model_or_params.named_parameters()}
    return {k: v.detach() for k, v in model_or_params.items()}


def _tensor_seed(seed: int, index: int, name: str) -> int:
    return zlib.crc32(f"{seed}/{index}/{name}".encode())


def draw_key(name: str, shape: Sequence[int]) -> str:
    """Key of one tensor's Gaussian draw in a directions file: ``name@32x1x3x3``."""
    return f"{name}@{'x'.join(str(s) for s in shape) or 'scalar'}"


def gaussian_draw(params: Mapping[str, torch.Tensor], seed: int, index: int = 0) -> Tensors:
    """The raw N(0, 1) draw of direction ``index``: one CPU generator per tensor, seeded by name."""
    out = {}
    for name, p in params.items():
        gen = torch.Generator().manual_seed(_tensor_seed(seed, index, name))
        out[name] = torch.randn(tuple(p.shape), generator=gen, dtype=torch.float32).to(p.dtype)
    return out


def filter_normalize(draw: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor]) -> Tensors:
    """Li et al. filter normalisation: ‖d_f‖ = ‖θ_f‖ for every dim-0 slice; zero on 1-D tensors."""
    out = {}
    for name, p in params.items():
        d = draw[name].to(device=p.device, dtype=p.dtype)
        if p.dim() <= 1:
            out[name] = torch.zeros_like(p)
            continue
        d_norm = d.flatten(1).norm(dim=1)
        p_norm = p.flatten(1).norm(dim=1)
        scale = p_norm / d_norm.clamp_min(1e-12)
        out[name] = d * scale.view(-1, *[1] * (p.dim() - 1))
    return out


def random_direction(model_or_params: nn.Module | Mapping[str, torch.Tensor], seed: int,
                     index: int = 0) -> Tensors:
    """A seeded, filter-normalised Gaussian direction over a model's parameters."""
    params = parameter_tensors(model_or_params)
    return filter_normalize(gaussian_draw(params, seed, index), params)


@dataclass
class DirectionSet:
    """Raw Gaussian draws (keyed by ``draw_key``), one dict per direction, and their origin."""

    raw: list[Tensors]
    seed: int | None = None
    source: str = "generated"

    @classmethod
    def generate(cls, models: Sequence[nn.Module], n_directions: int, seed: int) -> "DirectionSet":
        raw: list[Tensors] = [{} for _ in range(n_directions)]
        for model in models:
            params = parameter_tensors(model)
            for i in range(n_directions):
                for name, t in gaussian_draw(params, seed, i).items():
                    raw[i].setdefault(draw_key(name, t.shape), t.cpu())
        return cls(raw, seed)

    def normalized_for(self, model: nn.Module, label: str = "model") -> list[Tensors]:
        """The directions of this set, filter-normalised to ``model``'s own weights."""
        params = parameter_tensors(model)
        dirs = []
        for i, raw in enumerate(self.raw):
            draw = {}
            for name, p in params.items():
                key = draw_key(name, p.shape)
                if key not in raw:
                    raise UserError(f"the directions ({self.source}) have no draw for {name} of shape "
                                    f"{tuple(p.shape)} needed by {label}")
                draw[name] = raw[key]
            dirs.append(filter_normalize(draw, params))
        return dirs

    def digest(self) -> str:
        h = hashlib.sha256()
        for raw in self.raw:
            for key in sorted(raw):
                h.update(key.encode())
                h.update(raw[key].detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def save(self, path: str | Path, normalized: Sequence[tuple[str, list[Tensors]]] = ()) -> Path:
        """Plain tensors, lists and strings only: loadable with ``torch.load(weights_only=True)``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": DIRECTIONS_FORMAT,
            "seed": self.seed,
            "raw": [{k: v.cpu() for k, v in raw.items()} for raw in self.raw],
            # for inspection: the directions actually used, per checkpoint
            "labels": [label for label, _ in normalized],
            "normalized": [[{k: v.cpu() for k, v in d.items()} for d in dirs] for _, dirs in normalized],
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        return atomic_write(path, buf.getbuffer(), "directions file")

    @classmethod
    def load(cls, path: str | Path) -> "DirectionSet":
        path = Path(path)
        if not path.exists():
            raise UserError(f"--directions: {path} does not exist")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(f"--directions: cannot load {path}: {str(exc).splitlines()[0]}") from exc
        if not isinstance(payload, dict) or payload.get("format") != DIRECTIONS_FORMAT:
            raise UserError(f"--directions: {path} is not an mres directions file ({DIRECTIONS_FORMAT})")
        return cls([dict(r) for r in payload["raw"]], payload.get("seed"), source=str(path))


# --------------------------------------------------------------------------------- evaluation

def _moving_state(model: nn.Module, include_buffers: bool) -> Tensors:
    """A copy (not a view: the loop path writes into the live tensors) of what may move."""
    state = {k: p.detach().clone() for k, p in model.named_parameters()}
    if include_buffers:
        state.update({k: b.detach().clone() for k, b in model.named_buffers() if b.is_floating_point()})
    return state


def _point_tensor(base: torch.Tensor, dirs: Sequence[torch.Tensor], coeffs: torch.Tensor) -> torch.Tensor:
    """base + Σ c_i·d_i for coeffs of shape (K, D) → (K, *base.shape).

    Both evaluation paths build their weights with this one function, so they see bit-identical
    parameters and differ only in how the forward pass is computed.
    """
    shape = (coeffs.shape[0],) + (1,) * base.dim()
    out = base.unsqueeze(0)
    for i, d in enumerate(dirs):
        out = out + coeffs[:, i].view(shape) * d.unsqueeze(0)
    return out


def _clamp_running_var(name: str, t: torch.Tensor) -> torch.Tensor:
    # extrapolated BN variances can go negative; 0 + eps keeps the normalisation finite
    return t.clamp_min(0.0) if name.endswith("running_var") else t


@torch.no_grad()
def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   batch_size: int = 1024) -> tuple[float, float]:
    """Plain (mean cross-entropy, accuracy) of ``model`` in eval mode on (x, y)."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for s in range(0, len(y), batch_size):
        logits = model(x[s:s + batch_size])
        loss_sum += float(F.cross_entropy(logits, y[s:s + batch_size], reduction="sum").double())
        correct += int((logits.argmax(-1) == y[s:s + batch_size]).sum())
    model.train(was_training)
    return loss_sum / len(y), correct / len(y)


def default_batch_size(device: torch.device | str, chunk: int, n_samples: int) -> int:
    """Samples per forward: about ``budget`` sample-evaluations (chunk × batch) per call.

    On a CPU a forward larger than a few hundred samples of the thesis CNN leaves the caches and
    gets slower per sample; a GPU wants large calls.
    """
    budget = 16384 if torch.device(device).type == "cuda" else 256
    return max(1, min(n_samples, budget // max(1, chunk)))


class SurfaceEvaluator:
    """Loss and accuracy of ``model`` at points base + Σ c_i·d_i, K points per call.

    ``base`` and every direction share their keys (parameter names, plus floating buffer names
    for interpolation); keys whose directions are all zero are left alone (shared by every
    point).  ``method``: "vmap" (batched), "loop" (one model at a time, in place) or "auto"
    (vmap, falling back to the loop if the model cannot be vmapped).
    """

    def __init__(self, model: nn.Module, base: Mapping[str, torch.Tensor],
                 directions: Sequence[Mapping[str, torch.Tensor]], x: torch.Tensor, y: torch.Tensor,
                 *, method: str = "auto", chunk: int = 8, batch_size: int | None = None,
                 channels_last: bool = False, warn: Callable[[str], None] | None = None):
        if method not in ("auto", "vmap", "loop"):
            raise ValueError(f"method must be auto, vmap or loop, not {method!r}")
        self.model = model.eval()
        if channels_last and x.dim() == 4:  # NHWC: the CPU's conv kernels keep their rate at larger grids
            self.model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        self.x, self.y = x, y
        self.moving = [k for k in base if any(bool(d[k].any()) for d in directions)]
        # own copies: the loop path writes into the model's tensors, which ``base`` may alias
        self.base = {k: base[k].detach().clone() for k in self.moving}
        self.dirs = {k: [d[k] for d in directions] for k in self.moving}
        self.n_dirs = len(directions)
        self.method = method
        self.chunk = max(1, int(chunk))
        self.batch_size = batch_size or default_batch_size(x.device, self.chunk if method != "loop" else 1,
                                                           len(y))
        self.warn = warn or (lambda msg: None)
        state = dict(model.named_parameters()) | dict(model.named_buffers())
        self._live = {k: state[k] for k in self.moving}

    # one chunk of points -----------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, coeffs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(loss, acc) arrays of shape (K,) for coeffs of shape (K, n_dirs)."""
        coeffs = coeffs.to(device=self.x.device, dtype=torch.float32)
        if self.method in ("auto", "vmap"):
            try:
                return self._evaluate_vmap(coeffs)
            except (RuntimeError, NotImplementedError) as exc:
                if self.method == "vmap" or _is_oom(exc):
                    raise
                self.warn(f"vmap cannot batch this model ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                          "evaluating one model at a time")
                self.method = "loop"
        return self._evaluate_loop(coeffs)

    def _evaluate_vmap(self, coeffs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        from torch.func import functional_call

        k = coeffs.shape[0]
        stacked = {name: _clamp_running_var(name, _point_tensor(self.base[name], self.dirs[name], coeffs))
                   for name in self.moving}

        def forward(state: Tensors, xb: torch.Tensor) -> torch.Tensor:
            return functional_call(self.model, state, (xb,))

        batched = torch.vmap(forward, in_dims=(0, None))
        loss = torch.zeros(k, dtype=torch.float64, device=self.x.device)
        correct = torch.zeros(k, dtype=torch.long, device=self.x.device)
        bs = max(1, self.batch_size)
        for s in range(0, len(self.y), bs):
            xb, yb = self.x[s:s + bs], self.y[s:s + bs]
            logits = batched(stacked, xb)  # (K, n, classes)
            per_sample = F.cross_entropy(logits.flatten(0, 1), yb.repeat(k), reduction="none").view(k, -1)
            loss += per_sample.sum(1).double()
            correct += (logits.argmax(-1) == yb).sum(1)
        n = len(self.y)
        return (loss / n).cpu().numpy(), (correct.double() / n).cpu().numpy()

    def _evaluate_loop(self, coeffs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        losses, accs = [], []
        bs = max(1, self.batch_size)
        try:
            for row in coeffs:
                for name in self.moving:
                    point = _point_tensor(self.base[name], self.dirs[name], row[None])[0]
                    self._live[name].copy_(_clamp_running_var(name, point))
                loss = torch.zeros((), dtype=torch.float64, device=self.x.device)
                correct = torch.zeros((), dtype=torch.long, device=self.x.device)
                for s in range(0, len(self.y), bs):
                    xb, yb = self.x[s:s + bs], self.y[s:s + bs]
                    logits = self.model(xb)
                    loss += F.cross_entropy(logits, yb, reduction="none").sum().double()
                    correct += (logits.argmax(-1) == yb).sum()
                losses.append(loss / len(self.y))
                accs.append(correct.double() / len(self.y))
        finally:  # leave the model as it was given
            for name in self.moving:
                self._live[name].copy_(self.base[name])
        return torch.stack(losses).cpu().numpy(), torch.stack(accs).cpu().numpy()


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def evaluate_points(model: nn.Module, base: Mapping[str, torch.Tensor],
                    directions: Sequence[Mapping[str, torch.Tensor]], coords: torch.Tensor | np.ndarray,
                    x: torch.Tensor, y: torch.Tensor, *, method: str = "auto", chunk: int = 8,
                    batch_size: int | None = None, progress: ProgressFn | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy at every row of ``coords`` (P, n_dirs), in chunks of ``chunk`` points."""
    coords = torch.as_tensor(np.asarray(coords, dtype=np.float64)).float()
    ev = SurfaceEvaluator(model, base, directions, x, y, method=method, chunk=chunk, batch_size=batch_size)
    losses, accs = np.empty(len(coords)), np.empty(len(coords))
    for s in range(0, len(coords), ev.chunk):
        losses[s:s + ev.chunk], accs[s:s + ev.chunk] = _evaluate_with_oom_retry(ev, coords[s:s + ev.chunk])
        if progress:
            progress(len(coords[s:s + ev.chunk]))
    return losses, accs


def _evaluate_with_oom_retry(ev: SurfaceEvaluator, coeffs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    while True:
        try:
            return ev.evaluate(coeffs)
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            if not _is_oom(exc) or ev.batch_size <= 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            ev.batch_size //= 2
            ev.warn(f"out of memory: {ev.batch_size} samples per forward from now on")


# --------------------------------------------------------------------------------- slices

def parse_axis(lo: float, hi: float, n: int) -> np.ndarray:
    """n evenly spaced coordinates in [lo, hi]; a coordinate within rounding of 0 is exactly 0."""
    xs = np.linspace(lo, hi, n)
    xs[np.abs(xs) < 1e-12 * max(1.0, abs(hi - lo))] = 0.0
    return xs


def with_endpoints(xs: np.ndarray, ends: Sequence[float] = (0.0, 1.0)) -> np.ndarray:
    """``xs`` with the interpolation's end points t = 0 (checkpoint A) and t = 1 (B) added where the grid
    misses them: an A→B curve that never evaluates A or B cannot show where they lie."""
    xs = np.asarray(xs, dtype=float).copy()
    tol = 1e-9 * max(1.0, float(np.ptp(xs)) if xs.size else 1.0)
    for e in ends:
        near = np.abs(xs - e) < tol
        xs[near] = e  # a grid point within rounding of an end point is that end point
        if not near.any():
            xs = np.append(xs, e)
    return np.sort(xs)


@dataclass
class SliceJob:
    """One row of a landscape: a model, its evaluation subset, base point and directions."""

    label: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    base: Tensors
    directions: list[Tensors]


def random_slice_jobs(models: Sequence[tuple[str, nn.Module]], data: Sequence[tuple[torch.Tensor, torch.Tensor]],
                      directions: DirectionSet) -> list[SliceJob]:
    """One job per checkpoint: the shared draw, normalised to each checkpoint's own filters."""
    jobs = []
    for (label, model), (x, y) in zip(models, data):
        dirs = directions.normalized_for(model, label)
        jobs.append(SliceJob(label, model.eval(), x, y, _moving_state(model, include_buffers=False), dirs))
    return jobs


def interpolation_job(label: str, model_a: nn.Module, model_b: nn.Module, x: torch.Tensor,
                      y: torch.Tensor) -> SliceJob:
    """θ(t) = θ_A + t(θ_B − θ_A) over parameters and floating buffers (BN running statistics)."""
    a = _moving_state(model_a, include_buffers=True)
    b = _moving_state(model_b, include_buffers=True)
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        bad = sorted(k for k in a.keys() & b.keys() if a[k].shape != b[k].shape)
        raise UserError("--between: the two checkpoints have different tensors"
                        + (f" (shapes differ for {', '.join(bad[:3])})" if bad else "")
                        + "; they must share architecture and resolution")
    delta = {k: b[k].to(a[k].device) - a[k] for k in a}
    if not any(bool(d.ne(0).any()) for d in delta.values()):
        raise UserError("--between: the two checkpoints hold identical weights (B − A = 0), so there is no line "
                        "to interpolate along; give two different checkpoints of one architecture")
    return SliceJob(label, model_a.eval(), x, y, a, [delta])


@dataclass
class LandscapeResult:
    x: np.ndarray
    y: np.ndarray
    loss: np.ndarray
    acc: np.ndarray
    labels: list[str]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return 2 if self.loss.ndim == 3 else 1

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        _savez_atomic(path, x=self.x, y=self.y, loss=self.loss, acc=self.acc,
                      labels=np.array(self.labels, dtype=str),
                      settings=np.array(json.dumps(self.settings, sort_keys=True)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LandscapeResult":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["x"], z["y"], z["loss"], z["acc"], [str(s) for s in z["labels"]],
                       json.loads(str(z["settings"])))


def _savez_atomic(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getbuffer(), "landscape")


def compute_landscape(jobs: Sequence[SliceJob], xs: np.ndarray, ys: np.ndarray | None = None, *,
                      method: str = "auto", chunk: int = 8, batch_size: int | None = None,
                      partial_path: str | Path | None = None, resume_key: str = "",
                      progress: ProgressFn | None = None, warn: Callable[[str], None] | None = None,
                      settings: dict[str, Any] | None = None) -> LandscapeResult:
    """Evaluate every job over the grid xs (× ys): loss[k, i, j] at (xs[i], ys[j]).

    With ``partial_path`` the results are written after every chunk (with ``resume_key``, which
    should identify everything that determines the numbers); a later call with the same key
    skips the points already there.
    """
    xs = np.asarray(xs, dtype=np.float64)
    if ys is None or len(ys) == 0:
        ys = np.zeros(0)
        coords = xs[:, None]
        grid_shape: tuple[int, ...] = (len(xs),)
    else:
        ys = np.asarray(ys, dtype=np.float64)
        gx, gy = np.meshgrid(xs, ys, indexing="ij")  # row-major: point i*ny + j is (xs[i], ys[j])
        coords = np.stack([gx.ravel(), gy.ravel()], axis=1)
        grid_shape = (len(xs), len(ys))
    n_rows, n_points = len(jobs), len(coords)
    for job in jobs:
        if len(job.directions) != coords.shape[1]:
            raise ValueError(f"{job.label}: {len(job.directions)} directions for a {coords.shape[1]}-D grid")

    loss = np.full((n_rows, n_points), np.nan)
    acc = np.full((n_rows, n_points), np.nan)
    done = np.zeros((n_rows, n_points), dtype=bool)
    partial = Path(partial_path) if partial_path else None
    if partial is not None and partial.exists():
        try:
            with np.load(partial, allow_pickle=False) as z:
                if str(z["key"]) == resume_key and z["loss"].shape == loss.shape:
                    loss, acc, done = z["loss"].copy(), z["acc"].copy(), z["done"].copy()
                elif warn:
                    warn(f"{partial} belongs to other settings; starting over")
        except Exception as exc:  # a torn or foreign file: start over
            if warn:
                warn(f"ignoring unreadable {partial}: {exc}")
    if progress and done.any():
        progress(int(done.sum()))

    coords_t = torch.as_tensor(coords).float()
    for k, job in enumerate(jobs):
        todo = np.flatnonzero(~done[k])
        if len(todo) == 0:
            continue
        ev = SurfaceEvaluator(job.model, job.base, job.directions, job.x, job.y, method=method, chunk=chunk,
                              batch_size=batch_size, warn=warn)
        for s in range(0, len(todo), ev.chunk):
            idx = todo[s:s + ev.chunk]
            loss[k, idx], acc[k, idx] = _evaluate_with_oom_retry(ev, coords_t[idx])
            done[k, idx] = True
            if partial is not None:
                _savez_atomic(partial, key=np.array(resume_key), loss=loss, acc=acc, done=done)
            if progress:
                progress(len(idx))
    return LandscapeResult(xs, ys, loss.reshape(n_rows, *grid_shape), acc.reshape(n_rows, *grid_shape),
                           [j.label for j in jobs], dict(settings or {}, layout=NPZ_LAYOUT))


# --------------------------------------------------------------------------------- figures

def _figure_grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def _save(fig: Any, out_dir: Path, stem: str) -> list[Path]:
    from .figures import save_figure

    return save_figure(fig, out_dir / f"{stem}.png", dpi=150)  # constrained_layout already fits


def _value_range(values: np.ndarray, vmax: float | None, log: bool) -> tuple[np.ndarray, float, float]:
    z = np.log10(np.maximum(values, 1e-12)) if log else values.astype(np.float64)
    finite = z[np.isfinite(z)]
    if finite.size == 0:
        return z, 0.0, 1.0
    lo = float(finite.min())
    hi = float(finite.max()) if vmax is None else (math.log10(vmax) if log else float(vmax))
    if hi <= lo:
        hi = lo + 1e-6 * max(1.0, abs(lo)) + 1e-12
    return z, lo, hi


def wants_log_scale(loss: np.ndarray, span: float = 100.0) -> bool:
    """Auto colour scale: log10 when the finite positive losses span more than ``span``×.

    Far from a minimum the loss of a filter-normalised slice grows by orders of magnitude; on a
    linear scale the basin around the centre is then one flat colour.
    """
    finite = loss[np.isfinite(loss) & (loss > 0)]
    return bool(finite.size) and float(finite.max()) > span * float(finite.min())


def plot_landscape(result: LandscapeResult, out_dir: str | Path, *, vmax: float | None = None,
                   log: bool | None = None, levels: int = 30) -> list[Path]:
    """Figures with one panel per row and one colour scale for all panels; PNG and PDF.

    2-D: contour lines, filled contours (loss, and accuracy), a 3-D surface, and 1-D cuts
    through the centre.  1-D: the loss and accuracy curves.  ``log=None``: log10 colour scale
    when the losses span more than 100× (:func:`wants_log_scale`).
    """
    if log is None:
        log = wants_log_scale(result.loss)
    import matplotlib

    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if result.dim == 2:
        return _plot_2d(result, out_dir, vmax, log, levels)
    return _plot_1d(result, out_dir, vmax, log)


def _axis_names(result: LandscapeResult) -> tuple[str, str]:
    if result.settings.get("mode") == "between":
        return "t  (θ = (1−t)·θ_A + t·θ_B)", ""
    return "α (direction 1)", "β (direction 2)"


def panel_levels(z: np.ndarray, shared: np.ndarray, at_least: int = 4) -> tuple[np.ndarray, bool]:
    """Contour levels for one panel: the shared ones, or finer ones where fewer than ``at_least`` cross it.

    A flat surface (e.g. a fresh initialisation, loss ≈ ln 10 everywhere) can fall between two
    shared levels and draw no line at all; its own levels keep the shared colour scale (same norm).
    """
    finite = z[np.isfinite(z)]
    if finite.size == 0:
        return shared, False
    lo, hi = float(finite.min()), float(finite.max())
    if np.count_nonzero((shared > lo) & (shared < hi)) >= at_least or hi <= lo:
        return shared, False
    return np.linspace(lo, hi, 10)[1:-1], True


def _plot_2d(result: LandscapeResult, out_dir: Path, vmax: float | None, log: bool, levels: int) -> list[Path]:
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    z_all, lo, hi = _value_range(result.loss, vmax, log)
    zlabel = "log10 loss" if log else "loss"
    norm = colors.Normalize(lo, hi)
    lv = np.linspace(lo, hi, levels)
    # contour wants Z[row=y, col=x]; our arrays are loss[k, i(x), j(y)], hence the transposes
    X, Y = np.meshgrid(result.x, result.y, indexing="xy")
    xname, yname = _axis_names(result)
    n = len(result.labels)
    rows, cols = _figure_grid(n)
    paths: list[Path] = []

    def panels(**kw: Any) -> tuple[Any, np.ndarray]:
        fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.0 * rows), squeeze=False,
                                 constrained_layout=True, **kw)
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        return fig, axes

    def decorate(ax: Any, k: int) -> None:
        ax.set_xlabel(xname)
        ax.set_ylabel(yname)
        ax.set_title(result.labels[k])
        ax.plot([0], [0], marker="+", color="k", markersize=10)
        ax.set_aspect("auto")

    for kind in ("contour", "filled"):
        fig, axes = panels()
        for k in range(n):
            ax = axes.flat[k]
            z = np.clip(z_all[k], None, hi)
            if kind == "contour":
                panel_lv, finer = panel_levels(z, lv)
                # no inline level labels: neighbouring ones overlapped each other and the titles; the
                # shared colour bar gives every line's value
                ax.contour(X, Y, z.T, levels=panel_lv, cmap="viridis", norm=norm, linewidths=0.9)
            else:
                ax.contourf(X, Y, z.T, levels=lv, cmap="viridis", norm=norm, extend="max")
            decorate(ax, k)
            if kind == "contour" and finer:
                ax.set_title(f"{result.labels[k]}  (finer levels)")
        fig.colorbar(cm.ScalarMappable(norm=norm, cmap="viridis"), ax=axes.ravel().tolist()[:n], label=zlabel)
        fig.suptitle(f"{zlabel} — {kind} {'lines' if kind == 'contour' else 'contours'}")
        paths += _save(fig, out_dir, f"landscape_{kind}")

    # accuracy, on a shared 0–1 scale
    fig, axes = panels()
    acc_norm = colors.Normalize(0.0, 1.0)
    for k in range(n):
        ax = axes.flat[k]
        ax.contourf(X, Y, result.acc[k].T, levels=np.linspace(0, 1, 21), cmap="magma", norm=acc_norm)
        decorate(ax, k)
    fig.colorbar(cm.ScalarMappable(norm=acc_norm, cmap="magma"), ax=axes.ravel().tolist()[:n], label="accuracy",
                 format=PercentFormatter(1.0, decimals=0))
    paths += _save(fig, out_dir, "landscape_acc_filled")

    # 3-D surface: add_subplot(projection="3d") (Axes3D(fig) no longer attaches itself to the
    # figure, which is what leaves the reference's 3-D plots blank), values clipped to the shared
    # range (NaN / inf would punch holes into or blank out the surface)
    fig = plt.figure(figsize=(5.0 * cols, 4.4 * rows), constrained_layout=True)
    axes3d = []
    for k in range(n):
        ax = fig.add_subplot(rows, cols, k + 1, projection="3d")
        z = np.nan_to_num(z_all[k], nan=hi, posinf=hi, neginf=lo)
        z = np.clip(z, lo, hi)
        ax.plot_surface(X, Y, z.T, cmap="viridis", norm=norm, linewidth=0, antialiased=True,
                        rcount=min(80, len(result.y)), ccount=min(80, len(result.x)))
        ax.set_zlim(lo, hi)
        # few, small tick labels: the default 9 per axis overlap on the foreshortened 3-D axes
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
            axis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10], min_n_ticks=3))
        ax.tick_params(axis="both", which="major", labelsize=7, pad=0)
        ax.tick_params(axis="z", which="major", labelsize=7, pad=2)
        # no axis labels per panel: on the foreshortened 3-D axes they ran into the tick labels, the z label
        # into the next panel and the bottom row's out of the figure; the figure title names the axes once
        # and the shared colour bar the height
        ax.set_title(result.labels[k])
        axes3d.append(ax)
    fig.suptitle(f"x: {xname}, y: {yname}; height and colour: {zlabel} (one scale for every panel)", fontsize=10)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap="viridis"), ax=axes3d, label=zlabel, shrink=0.6)
    paths += _save(fig, out_dir, "landscape_surface")

    # 1-D cuts through the centre (the grid line nearest 0 in the other coordinate)
    jx, iy = int(np.argmin(np.abs(result.y))), int(np.argmin(np.abs(result.x)))
    cuts = LandscapeResult(result.x, np.zeros(0), result.loss[:, :, jx], result.acc[:, :, jx],
                           result.labels, result.settings)
    cuts_y = LandscapeResult(result.y, np.zeros(0), result.loss[:, iy, :], result.acc[:, iy, :],
                             result.labels, result.settings)
    paths += _plot_curves([(cuts, f"α  (β = {result.y[jx]:.3g})", "along direction 1"),
                           (cuts_y, f"β  (α = {result.x[iy]:.3g})", "along direction 2")],
                          out_dir, "landscape_1d", vmax, log)
    return paths


def _plot_1d(result: LandscapeResult, out_dir: Path, vmax: float | None, log: bool) -> list[Path]:
    xname, _ = _axis_names(result)
    return _plot_curves([(result, xname, "")], out_dir, "landscape_1d", vmax, log)


def _plot_curves(series: list[tuple[LandscapeResult, str, str]], out_dir: Path, stem: str,
                 vmax: float | None, log: bool) -> list[Path]:
    """One panel per row (checkpoint); one line per series; loss left axis, accuracy right."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    n = len(series[0][0].labels)
    rows, cols = _figure_grid(n)
    all_loss = np.concatenate([s[0].loss.ravel() for s in series])
    finite = all_loss[np.isfinite(all_loss)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(vmax if vmax is not None else (finite.max() if finite.size else 1.0))
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.6 * rows), squeeze=False, constrained_layout=True)
    between = series[0][0].settings.get("mode") == "between"
    for k in range(n):
        ax = axes.flat[k]
        acc_ax = ax.twinx()
        for m, (res, xname, what) in enumerate(series):
            colour = f"C{m}"
            ax.plot(res.x, res.loss[k], color=colour, label=f"loss {what}".strip())
            acc_ax.plot(res.x, res.acc[k], color=colour, linestyle="--", alpha=0.7, label=f"accuracy {what}".strip())
            ax.set_xlabel(xname if len(series) == 1 else "coordinate along the direction (the other = 0)")
        ax.set_yscale("log" if log else "linear")
        ax.set_ylim(max(lo * 0.9, 1e-6) if log else lo - 0.05 * (hi - lo), hi * (1.1 if log else 1.0) + 1e-12)
        acc_ax.set_ylim(0, 1.02)
        acc_ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))  # percent, as in every table
        ax.set_ylabel("loss (solid)")
        acc_ax.set_ylabel("accuracy (dashed)")
        ax.set_title(series[0][0].labels[k])
        ax.axvline(0, color="0.6", linewidth=0.8)
        if between:  # the two checkpoints themselves, marked on the curve and named
            ax.axvline(1, color="0.6", linewidth=0.8)
            res0 = series[0][0]
            ends = [(t, name) for t, name in zip((0.0, 1.0), res0.settings.get("checkpoint_labels") or ("A", "B"))
                    if np.any(np.isclose(res0.x, t))]
            for t, name in ends:
                i = int(np.argmin(np.abs(res0.x - t)))
                ax.plot([t], [res0.loss[k][i]], "o", color="k", markersize=5, zorder=5)
                ax.annotate(name, (t, res0.loss[k][i]), textcoords="offset points", xytext=(4, 6), fontsize=7)
        if len(series) > 1 and k == 0:  # one legend for every panel, below them: it covers no curve
            lines = ax.get_lines()[: len(series)] + acc_ax.get_lines()
            fig.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="outside lower center",
                       ncol=len(lines), frameon=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return _save(fig, out_dir, stem)

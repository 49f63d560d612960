"""What a coarse-to-fine strategy is: one table (DESIGN §3.4–3.5, §9).

A strategy is one way of reaching the finest grid. Its :class:`Strategy` record says everything
the job, the recipe, the report and the bench need to know about it:

- ``needs_coarse``: it starts from the trial's trained coarse model, moved up by ``start`` (a rule
  of :mod:`mres.grids.transfer`, applied to weights and, with ``carry_optimizer``, to momentum buffers);
  otherwise it starts from a new model (``start`` is None);
- ``trains_on``: ``cascade`` (every grid after the coarsest, on the fine phase's examples and
  epochs), ``fine-subset`` (the finest grid only, on the fine phase's examples and epochs: the
  thesis's baseline) or ``budget`` (the finest grid only, on the coarse phase's examples, for the
  budget-matched ``fine_only`` epochs);
- ``per_lam``: one variant per recipe λ (``lams``); coefficient policies expand every strategy that
  transfers (they act on the moved Poly-MgNet coefficients);
- ``start_key``: a recipe key whose value replaces ``start`` (``galerkin_data.start``: copy or Galerkin);
- ``refine``: what follows the start rule before fine training — ``fit-to-coarse`` (the layer-wise
  data fit of mres/grids/datafit.py, closed form, its seconds counted as transfer) or ``distill`` (SGD steps
  towards the coarse model's predictions, counted as training);
- ``hooks``: the fit hooks the job attaches to its training (names; c2f builds them);
- ``baseline_rank``: the order in which strategies are tried as the reference of time to accuracy
  and paired tests (lowest first; None: never the reference).

Adding a strategy means adding a row here (and, for a new start rule or hook, its code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TrainsOn = Literal["cascade", "fine-subset", "budget"]


@dataclass(frozen=True)
class Strategy:
    name: str
    about: str
    needs_coarse: bool
    start: str | None
    trains_on: TrainsOn
    per_lam: bool = False
    start_key: str | None = None
    refine: Literal["fit-to-coarse", "distill"] | None = None
    hooks: tuple[str, ...] = ()
    baseline_rank: int | None = None
    default: bool = False  # in a recipe that names no strategies


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("fresh", "a new model for the fine phase's epochs on the fine examples (the thesis's baseline)",
             needs_coarse=False, start=None, trains_on="fine-subset", baseline_rank=1, default=True),
    Strategy("fine-only", "a new model at the finest grid on the coarse examples, budget-matched epochs",
             needs_coarse=False, start=None, trains_on="budget", baseline_rank=0, default=True),
    Strategy("transfer", "the coarse model's weights copied to the finer grids",
             needs_coarse=True, start="transfer", trains_on="cascade", default=True),
    Strategy("galerkin", "every 3×3 stencil prolongated so that R·K_fine·P = K_coarse",
             needs_coarse=True, start="galerkin", trains_on="cascade", default=True),
    Strategy("galerkin-reg", "Galerkin prolongation regularised towards the copy, one run per λ",
             needs_coarse=True, start="galerkin-reg", trains_on="cascade", per_lam=True, default=True),
    Strategy("galerkin-data", "the Galerkin condition on data: each layer fitted in closed form so that "
             "R·(K_h a_h) ≈ the coarse layer's output on R x", needs_coarse=True, start="transfer",
             trains_on="cascade", start_key="galerkin_data.start", refine="fit-to-coarse"),
    Strategy("distill", "the copy, then a few SGD steps matching the coarse model's predictions on R x (KL, "
             "temperature)", needs_coarse=True, start="transfer", trains_on="cascade", refine="distill"),
    Strategy("mgopt", "the copy, then MG/OPT coarse corrections during fine training",
             needs_coarse=True, start="transfer", trains_on="cascade", hooks=("mgopt-corrections",)),
    Strategy("joint", "a new finest-grid model trained on every grid at once (tied multiscale loss)",
             needs_coarse=False, start=None, trains_on="budget", hooks=("joint-loss",)),
)}
NAMES: tuple[str, ...] = tuple(STRATEGIES)
DEFAULTS: tuple[str, ...] = tuple(n for n, s in STRATEGIES.items() if s.default)
PAIRED_REFERENCE = "transfer"  # every variant is also tested against the plain copy
BASELINE_ORDER: tuple[str, ...] = tuple(sorted((n for n, s in STRATEGIES.items() if s.baseline_rank is not None),
                                               key=lambda n: STRATEGIES[n].baseline_rank))


def strategy(name: str) -> Strategy:
    """The record of ``name``; a clear error for a name not in the table."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; allowed: {', '.join(NAMES)}") from None


def variant_dir_name(label: str) -> str:
    """The run directory of a variant label, e.g. ``galerkin-reg(lam=0.1)`` → ``galerkin-reg-lam0.1`` (one
    rule: the job writes, the report and the studies read)."""
    return label.replace("(", "-").replace(")", "").replace("[", "-").replace("]", "").replace("=", "")


@dataclass(frozen=True)
class Variant:
    """One way of reaching the finest grid: a strategy (+ lam, + coefficient policy)."""

    strategy: str
    lam: float = 0.0
    policy: str = "keep"

    @property
    def record(self) -> Strategy:
        return strategy(self.strategy)

    @property
    def label(self) -> str:
        s = self.strategy
        if self.record.per_lam:
            s += f"(lam={self.lam:g})"
        if self.policy != "keep":
            s += f"[{self.policy}]"
        return s

    @property
    def slug(self) -> str:
        return variant_dir_name(self.label)

    @property
    def needs_coarse(self) -> bool:
        return self.record.needs_coarse


def variants(names: list[str], lams: list[float], policies: list[str]) -> list[Variant]:
    """Every variant of a recipe: strategies in its order, each transferring one per λ (``per_lam``) and
    per coefficient policy (``policies``: ["keep"] for a model without polynomial coefficients)."""
    out: list[Variant] = []
    for name in names:
        s = strategy(name)
        if not s.needs_coarse:
            out.append(Variant(name))
            continue
        for lam in (lams if s.per_lam else [0.0]):
            for pol in policies:
                out.append(Variant(name, lam, pol))
    return out

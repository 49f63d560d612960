"""Recipes: YAML validated against a schema before any work.

Every bad key or value is reported at once with its dotted path and what is allowed; a
duplicate YAML key is an error; ``1e-3`` parses as a number; ``--set key.path=value`` overrides.
Two recipe kinds share their blocks: :class:`TrainRecipe` (one model, one resolution) and
:class:`CoarseToFineRecipe` (a coarse-to-fine cascade, DESIGN §3.4–3.5).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError
from .strategies import DEFAULTS as DEFAULT_STRATEGIES, NAMES as STRATEGY_NAMES, STRATEGIES


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bools_as_numbers(cls, data: Any) -> Any:
        # pydantic reads `epochs: true` as 1; a recipe's true/false belongs to its bool keys only
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                value = data.get(name)
                if isinstance(value, bool) and bool not in _scalar_types(field.annotation):
                    raise ValueError(f"{name}: {value!r} is a yes/no value; {name} takes a number")
        return data


def _scalar_types(annotation: Any) -> set[Any]:
    """The scalar types a field annotation admits (``int | None`` → {int, NoneType}); Any: every type."""
    from typing import get_args, get_origin

    if annotation is Any:
        return {bool}
    args = get_args(annotation)
    if get_origin(annotation) in (list, dict, tuple):
        return set()
    if args and get_origin(annotation) is not Literal:
        return set().union(*(_scalar_types(a) for a in args))
    if get_origin(annotation) is Literal:
        return {type(a) for a in args}
    return {annotation}


# ----------------------------------------------------------------------------- data
class AugmentConfig(Strict):
    crop_padding: int = Field(0, ge=0, description="random crop with this zero padding (pixels at the native resolution)")
    flip: bool = Field(False, description="random horizontal flip")


class SyntheticConfig(Strict):
    size: int = Field(28, ge=4)
    channels: int = Field(1, ge=1)
    classes: int = Field(10, ge=2)
    n_train: int = Field(2000, ge=1)
    n_test: int = Field(500, ge=1)
    noise: float = Field(0.3, ge=0)


class DatasetConfig(Strict):
    name: Literal["fashion-mnist", "mnist", "cifar10", "cifar100", "npz", "synthetic"] = "fashion-mnist"
    path: str | None = Field(None, description="fashion-mnist: folder of the IDX .gz files; npz: the .npz file")
    data_root: str | None = Field(None, description="torchvision root for mnist/cifar (default ~/.cache/mres/data)")
    download: bool = Field(False, description="let torchvision download mnist/cifar (needs a network)")
    num_classes: int | None = Field(None, ge=2, le=100_000, description="npz: the class count (labels are "
                                    "0 … num_classes-1); null: the largest label of train ∪ test + 1")
    train_subset: int | None = Field(None, ge=1)
    test_subset: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    normalize: bool = True
    augment: AugmentConfig = AugmentConfig()
    synthetic: SyntheticConfig = SyntheticConfig()

    @field_validator("path", "data_root")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        # a run stores its recipe: an absolute path keeps it usable from any directory
        return v if not v else os.path.abspath(os.path.expanduser(v))

    @model_validator(mode="after")
    def _path_needed(self) -> "DatasetConfig":
        if self.name == "npz" and not self.path:
            raise ValueError("dataset.name 'npz' needs dataset.path (a .npz file with x_train, y_train, x_test, y_test)")
        if self.num_classes is not None and self.name != "npz":
            raise ValueError(f"dataset.num_classes applies to npz data only; {self.name} declares its own class "
                             "count (synthetic: dataset.synthetic.classes)")
        return self


NATIVE_RESOLUTION = {"fashion-mnist": 28, "mnist": 28, "cifar10": 32, "cifar100": 32}


# ----------------------------------------------------------------------------- training
SGD_LIKE_KEYS = ("lr", "momentum", "nesterov", "weight_decay", "betas")
TRUST_REGION_KEYS = ("radius", "max_radius", "eta", "max_cg_iters")


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam", "adamw", "cg-steihaug"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5.0e-4, ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    # cg-steihaug (mres/training/optim.py): a trust-region Newton-CG step per batch
    radius: float = Field(1.0, gt=0, description="cg-steihaug: initial trust-region radius")
    max_radius: float = Field(1000.0, gt=0, description="cg-steihaug: largest radius")
    eta: float = Field(0.15, ge=0, lt=0.25, description="cg-steihaug: accept a step when ρ > eta")
    max_cg_iters: int | None = Field(None, ge=1, description="cg-steihaug: inner CG iterations (null: until an exit)")

    @model_validator(mode="after")
    def _keys_of_this_optimizer(self) -> "OptimizerConfig":
        # a key of the other kind of optimizer would be silently ignored: refuse it instead
        # (a default value is allowed: resolved recipes are written out with every key)
        other = SGD_LIKE_KEYS if self.name == "cg-steihaug" else TRUST_REGION_KEYS
        given = [k for k in other if k in self.model_fields_set
                 and getattr(self, k) != type(self).model_fields[k].default]
        if given:
            allowed = TRUST_REGION_KEYS if self.name == "cg-steihaug" else SGD_LIKE_KEYS
            raise ValueError(f"{', '.join(given)} do not apply to optimizer {self.name!r} (its keys: "
                             f"{', '.join(allowed)}); for cg-steihaug use a model regularisation term "
                             "(e.g. the cnn's tikhonov) instead of weight_decay" if self.name == "cg-steihaug"
                             else f"{', '.join(given)} apply to cg-steihaug only (keys of {self.name!r}: "
                             f"{', '.join(allowed)})")
        if self.radius > self.max_radius:
            raise ValueError(f"radius {self.radius} exceeds max_radius {self.max_radius}")
        return self


class ScheduleConfig(Strict):
    name: Literal["constant", "step", "cosine", "one-cycle", "linear-to-zero", "inverse-sqrt"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    milestones: list[float] = Field([0.5, 0.75], description="step: fractions of the run where lr drops")
    gamma: float = Field(0.1, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v


class TrainConfig(Strict):
    epochs: int = Field(5, ge=0)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1000, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this value (off: null)")
    channels_last: bool = True
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    deterministic: bool = False
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints")
    check_every: int | None = Field(None, ge=1, description="optimizer steps between host reads of the "
                                    "non-finite-loss flag (null: 1 on CPU, 50 on CUDA, where a read stalls the GPU)")
    stages: list["StageConfig"] | None = Field(
        None, description="train in stages (e.g. the classifier alone, then all); epochs: their sum")
    sync_bn: bool = Field(False, description="under torchrun on GPUs: BN statistics over the global batch "
                                             "(SyncBatchNorm); off: each rank normalises by its shard")
    compile: bool = Field(False, description="torch.compile the training step's model (one graph per grid, "
                                             "compiled before the epoch clock starts)")
    log: list[Literal["csv", "tensorboard"]] = Field(
        ["csv"], description="per-epoch scalars: csv (metrics.csv beside metrics.jsonl, which is always written) "
                             "and/or tensorboard (events under the phase's tensorboard/ folder: "
                             "`tensorboard --logdir runs/`; needs `pip install 'mres[tensorboard]'`)")

    @field_validator("log")
    @classmethod
    def _loggers_here(cls, v: list[str]) -> list[str]:
        import importlib.util

        if "tensorboard" in v and importlib.util.find_spec("tensorboard") is None:
            raise ValueError("tensorboard logging needs the optional extra: pip install 'mres[tensorboard]' "
                             "(or drop tensorboard from log)")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _stages_and_schedule(self) -> "TrainConfig":
        if self.optimizer.name == "cg-steihaug":
            if "schedule" in self.model_fields_set and self.schedule.name != "constant":
                raise ValueError(f"schedule {self.schedule.name!r} does not apply to optimizer cg-steihaug (its "
                                 "trust-region radius sets the step length): remove the schedule or use constant")
            object.__setattr__(self, "schedule", ScheduleConfig(name="constant"))
        if self.stages:
            total = sum(st.epochs for st in self.stages)
            if "epochs" in self.model_fields_set and self.epochs != total:
                raise ValueError(f"epochs {self.epochs} differ from the sum of the stages' epochs ({total}): "
                                 "drop epochs (it is their sum) or make them agree")
            object.__setattr__(self, "epochs", total)  # not validate_assignment: fields_set stays as given
        return self

    def stage_configs(self) -> list[tuple["StageConfig", "TrainConfig"]]:
        """Each stage with its resolved train block: the stage's keys over this block's (an optimizer or
        schedule given in a stage replaces the whole block; a cg-steihaug stage has no lr schedule)."""
        out = []
        for st in self.stages or []:
            over = {k: v for k, v in st.model_dump(exclude={"params"}).items() if v is not None}
            base = self.model_dump(exclude={"stages", "epochs", *over})
            if st.optimizer is not None and st.optimizer.name == "cg-steihaug" and "schedule" not in over:
                base.pop("schedule", None)
            out.append((st, TrainConfig.model_validate({**base, **over})))
        return out


STAGE_PARAMS = ("all", "classifier", "features")


class StageConfig(Strict):
    """One stage of a staged phase: which parameters train (the rest are frozen: no update, no
    weight decay), for how many epochs, and the keys of the train block that differ."""

    params: Literal["all", "classifier", "features"] = Field(
        "all", description="all; classifier (the model's last linear layer); features (all but the classifier)")
    epochs: int = Field(..., ge=1)
    optimizer: OptimizerConfig | None = None
    schedule: ScheduleConfig | None = None
    batch_size: int | None = Field(None, ge=1)
    grad_clip: float | None = Field(None, gt=0, description="null: the block's")


TrainConfig.model_rebuild()


class ModelBlock(BaseModel):
    """``name`` plus the family's own options (validated by the model registry)."""

    model_config = ConfigDict(extra="allow")
    name: str = "cnn"

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RecipeBase(Strict):
    dataset: DatasetConfig = DatasetConfig()
    model: ModelBlock = ModelBlock()
    seed: int = Field(0, ge=0, le=2**63 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="CPU threads (default: all cores)")
    flush_denormal: bool = Field(True, description="flush subnormal floats to zero on the CPU (they take a slow "
                                                   "path: up to 2× per epoch after a kept transfer)")


class TrainRecipe(RecipeBase):
    resolution: int = Field(28, ge=1)
    train: TrainConfig = TrainConfig()

    @field_validator("train")
    @classmethod
    def _one_stage(cls, v: TrainConfig) -> TrainConfig:
        if v.stages:
            raise ValueError("stages run in coarse-to-fine phases (coarse.stages, fine.stages); `mres train` trains "
                             "all parameters in one stage — drop train.stages, or give each stage its own run")
        return v

    def grid_resolutions(self) -> list[int]:
        return [self.resolution]


class LandscapeSpec(Strict):
    """Loss-landscape panels of a coarse-to-fine run (coarse minimum, each strategy's start and end)."""

    grid: str = Field("9x9", pattern=r"^\d+(x\d+)?$", description="NxM points (2-D slice) or N (1-D slice)")
    range: str = Field("-1:1", pattern=r"^-?[\d.]+:-?[\d.]+$")
    samples: int = Field(256, ge=1)
    split: Literal["train", "test"] = "train"
    seed: int = Field(0, ge=0, le=2**63 - 1)
    log: bool | None = Field(None, description="log10 colour scale; null: log when the losses span > 100×")

    @field_validator("grid", mode="before")
    @classmethod
    def _grid_number(cls, v: Any) -> Any:
        # `--set analysis.landscape.grid=9` arrives as an int
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _grid_and_range(self) -> "LandscapeSpec":
        problems = []
        if min(int(n) for n in self.grid.split("x")) < 2:
            problems.append(f"grid {self.grid!r}: every size must be at least 2 (NxM for 2-D, N for 1-D)")
        try:
            lo, hi = (float(t) for t in self.range.split(":"))
        except ValueError:  # e.g. "1.2.3:4" gets past the pattern
            lo, hi = 0.0, 0.0
        if lo >= hi:
            problems.append(f"range {self.range!r}: expected LO:HI with LO < HI")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class FeaturesSpec(Strict):
    """Propagated-feature pictures of a coarse-to-fine run (thesis Figs. 4.4/4.6)."""

    samples: list[Annotated[int, Field(ge=0)]] = Field([0, 1], min_length=1, description="indices in the split")
    channels: list[Annotated[int, Field(ge=0)]] = Field([0], min_length=1)
    split: Literal["train", "test"] = "test"


class MultilevelConfig(Strict):
    """MG/OPT coarse corrections during the fine phase of the ``mgopt`` variant (mres/c2f/multilevel.py)."""
    cycle: Literal["V"] = Field("V", description="V: the coarse problem of each grid is solved by a cycle one grid down")
    every: int = Field(50, ge=1, description="fine optimizer steps between corrections (they are the smoothing)")
    coarse_steps: int = Field(5, ge=1, description="gradient steps on f_H(v) - <tau, v> at the coarsest grid")
    coarse_lr: float = Field(0.01, gt=0)
    tau_batch: int = Field(1024, ge=1, description="training examples of the batch shared by every grid")
    prolongation: Literal["galerkin", "copy"] = "galerkin"
    line_search: bool = Field(True, description="Armijo backtracking on the fine batch loss (never raises it)")


class JointConfig(Strict):
    """The ``joint`` variant: one set of finest-grid weights trained on every grid of the cascade at once."""
    tie: Literal["galerkin", "copy"] = Field("galerkin", description="coarse weights = M θ (galerkin) or the same "
                                                                        "stencils (copy, MGE's choice)")
    weights: list[Annotated[float, Field(ge=0)]] | None = Field(
        None, description="c_l per grid, finest first (null: 1, 1/2, 1/4, ...)")
    batch_scale: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="each grid's batch as a multiple of the step's, finest first (null: 1, 2, 4, ...)")


class AnalysisConfig(Strict):
    landscape: LandscapeSpec | None = None
    features: FeaturesSpec | None = None
    trial: int = Field(0, ge=0, description="which trial's checkpoints to analyse")


class GalerkinDataConfig(Strict):
    """The ``galerkin-data`` strategy: every layer fitted so that R·(K_h a_h) ≈ the coarse layer's output."""
    calibration: int = Field(1024, ge=1, description="fine training images the convs are fitted on")
    head_calibration: int | None = Field(None, ge=1, description="images the linear layers are fitted on (null: "
                                                                 "calibration; a flatten head's dual solve costs "
                                                                 "N² × its inputs)")
    lam: float | Literal["gcv"] = Field("gcv", description="ridge weight towards the start weights, or gcv: per "
                                                           "layer by generalised cross-validation")
    sweeps: int = Field(2, ge=1, le=10, description="forward-order passes over the layers (a shared conv's later "
                                                    "calls see the inputs the last pass left; one pass for a model "
                                                    "without shared layers)")
    bn: Literal["per-layer", "after", "keep"] = Field(
        "per-layer", description="BN running statistics: per-layer = recalibrated on the calibration images after "
                                 "each layer is fitted; after = by the job after the fit (bn_recalibrate); keep = "
                                 "the coarse model's")
    start: Literal["transfer", "galerkin"] = Field("transfer", description="the start weights θ_start: the copy "
                                                                          "or the Galerkin prolongation")
    chunk: int = Field(128, ge=1, description="calibration images per forward pass (memory)")

    @field_validator("lam")
    @classmethod
    def _lam_not_negative(cls, v: float | str) -> float | str:
        if isinstance(v, float) and not (v >= 0 and v != float("inf")):
            raise ValueError(f"must be a finite number ≥ 0 or 'gcv', got {v}")
        return v


class DistillConfig(Strict):
    """The ``distill`` strategy: SGD steps from the copy towards the coarse teacher's predictions on R x."""
    steps: int = Field(100, ge=1, description="optimizer steps (counted as training seconds)")
    temperature: float = Field(2.0, gt=0, allow_inf_nan=False)
    lr: float = Field(0.005, gt=0, allow_inf_nan=False)
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int | None = Field(None, ge=1, description="null: the fine block's batch size")


class FineOnlyConfig(TrainConfig):
    """The ``fine-only`` baseline's train block: keys not given are the coarse block's."""

    epochs: int | None = Field(None, ge=1, description="null: budget-matched to coarse + fine (pixel count)")


class CoarseToFineRecipe(RecipeBase):
    resolutions: list[int] = Field([14, 28], min_length=2, description="coarse to fine, each twice the last")
    family: Literal["average-constant", "average-bilinear", "fullweighting-linear"] = "average-bilinear"
    strategies: list[Literal[STRATEGY_NAMES]] = Field(  # type: ignore[valid-type]  (the table's names)
        list(DEFAULT_STRATEGIES), min_length=1, description="mres.strategies: " + "; ".join(
            f"{n}: {s.about}" for n, s in STRATEGIES.items()))
    lams: list[float] = Field([0.1], description="galerkin-reg regularisation weights (one run each)")
    coefficient_policies: list[Literal["keep", "rescale", "respectral"]] = ["keep"]
    coarse: TrainConfig = TrainConfig()
    fine: TrainConfig = TrainConfig()
    fine_only: FineOnlyConfig = FineOnlyConfig()
    coarse_subset: int | None = Field(None, ge=1, description="training examples for the coarse phases")
    fine_subset: int | None = Field(None, ge=1, description="training examples for the fine phase")
    epochs_per_grid: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="epochs at each grid, coarse to fine (replaces coarse.epochs and fine.epochs)")
    schedule_scope: Literal["phase", "run"] = Field(
        "phase", description="phase: each phase plans its own lr schedule; run: one schedule over every phase")
    carry_optimizer: bool = Field(False, description="move SGD momentum buffers with their tensor's transfer rule")
    coarse_batch_scaling: bool = Field(False, description="grids coarser than the finest: batch and lr × pixel ratio")
    eval_train: bool = Field(True, description="evaluate the whole training set after every epoch (monitoring)")
    trials: int = Field(1, ge=1)
    bn_recalibrate: bool = True
    multilevel: MultilevelConfig = Field(MultilevelConfig(), description="the mgopt variant's MG/OPT cycles")
    joint: JointConfig = Field(JointConfig(), description="the joint variant's multiscale loss")
    galerkin_data: GalerkinDataConfig = Field(GalerkinDataConfig(), description="the galerkin-data strategy's fit")
    distill: DistillConfig = Field(DistillConfig(), description="the distill strategy's steps")
    parallel: Literal["data", "variants"] = Field(
        "data", description="under torchrun: data = each phase data-parallel over the ranks; variants = the "
                            "trials' coarse phases, then the variants, dealt to the ranks (one device each)")
    analysis: AnalysisConfig = AnalysisConfig()

    def grid_resolutions(self) -> list[int]:
        return list(self.resolutions)

    def grid_epochs(self) -> list[int]:
        """Epochs at each grid, coarse to fine."""
        if self.epochs_per_grid is not None:
            return list(self.epochs_per_grid)
        return [self.coarse.epochs] + [self.fine.epochs] * (len(self.resolutions) - 1)

    @model_validator(mode="before")
    @classmethod
    def _fine_only_from_coarse(cls, data: Any) -> Any:
        # the fine-only baseline trains on the coarse phase's examples: by default with its settings
        if isinstance(data, dict) and isinstance(data.get("coarse", {}), dict) \
                and isinstance(data.get("fine_only", {}) or {}, dict):
            # known keys only (a bad coarse key is reported once, under coarse); schedule shorthand as a block
            base = {k: _schedule_block(k, v) for k, v in (data.get("coarse") or {}).items()
                    if k not in ("epochs", "stages") and k in TrainConfig.model_fields}
            over = {k: _schedule_block(k, v) for k, v in (data.get("fine_only") or {}).items()}
            data = {**data, "fine_only": _deep_merge(base, over)}
        return data

    @field_validator("resolutions")
    @classmethod
    def _doubling(cls, v: list[int]) -> list[int]:
        for a, b in zip(v, v[1:]):
            if b != 2 * a:
                raise ValueError(f"each resolution must be twice the previous one, got {v}")
        return v

    @model_validator(mode="after")
    def _joint_per_grid(self) -> "CoarseToFineRecipe":
        n = len(self.resolutions)
        for key in ("weights", "batch_scale"):
            v = getattr(self.joint, key)
            if v is not None and len(v) != n:
                raise ValueError(f"joint.{key} needs one value per grid, finest first ({n} grids: "
                                 f"{self.resolutions[::-1]}), got {v}")
        return self

    @field_validator("lams")
    @classmethod
    def _lams(cls, v: list[float]) -> list[float]:
        if any(x < 0 for x in v):
            raise ValueError("lams must be >= 0")
        return v

    def schedule_problems(self) -> list[tuple[str, str]]:
        """Combinations of the schedule keys that cannot work (checked with the other semantics)."""
        problems = []
        key = "epochs_per_grid" if self.epochs_per_grid is not None else None
        if key and len(self.epochs_per_grid) != len(self.resolutions):
            problems.append((key, f"{self.epochs_per_grid} has {len(self.epochs_per_grid)} "
                             f"entries; resolutions {self.resolutions} need {len(self.resolutions)}"))
        else:
            epochs = self.grid_epochs()
            transfers = any(STRATEGIES[s].needs_coarse for s in self.strategies)
            if epochs[0] < 1 and transfers:
                problems.append((key or "coarse.epochs", f"{epochs[0]} epochs at the coarsest grid: a transfer "
                                 "needs a trained coarse model (at least 1 epoch)"))
            if epochs[-1] < 1 and any(STRATEGIES[s].trains_on != "budget" for s in self.strategies):
                problems.append((key or "fine.epochs", f"{epochs[-1]} epochs at the finest grid: the variants "
                                 "need at least 1 epoch there to have a final accuracy"))
        if self.schedule_scope == "run":
            c, f = self.coarse.schedule, self.fine.schedule
            for key in ("name", "milestones", "gamma"):
                if getattr(c, key) != getattr(f, key):
                    problems.append((f"fine.schedule.{key}", f"{getattr(f, key)!r} differs from coarse.schedule.{key} "
                                     f"{getattr(c, key)!r}: schedule_scope 'run' plans one schedule (the coarse "
                                     "block's) over every phase; fine.schedule.warmup_epochs is a warm-up after "
                                     "each transfer"))
        per_lam = [s for s in self.strategies if STRATEGIES[s].per_lam]
        if per_lam and not self.lams:
            problems.append(("lams", f"[] gives {', '.join(per_lam)} nothing to run (one run per λ); give at least "
                             f"one λ, or leave {', '.join(per_lam)} out of strategies"))
        if self.fine_only.stages:
            problems.append(("fine_only.stages", "the fine-only baseline trains in one stage (its epochs are "
                             "budget-matched); stages belong in coarse or fine"))
        for block in ("coarse", "fine"):
            if getattr(self, block).stages:
                clash = [k for k, on in (("schedule_scope: run", self.schedule_scope == "run"),
                                         ("carry_optimizer", self.carry_optimizer),
                                         ("epochs_per_grid", self.epochs_per_grid is not None),
                                         ("coarse_batch_scaling", self.coarse_batch_scaling and block == "coarse"))
                         if on]
                if clash:
                    problems.append((f"{block}.stages", f"a staged block plans each stage on its own; it does not "
                                     f"combine with {', '.join(clash)}"))
        if self.carry_optimizer:
            for block in ("coarse", "fine"):
                o = getattr(self, block).optimizer
                if o.name != "sgd" or o.momentum == 0:
                    problems.append((f"{block}.optimizer", f"carry_optimizer moves SGD momentum buffers; got "
                                     f"{o.name} with momentum {o.momentum} (use sgd with momentum > 0, or "
                                     "carry_optimizer: false)"))
        return problems


def _schedule_block(key: str, value: Any) -> Any:
    return {"name": value} if key == "schedule" and isinstance(value, str) else value


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ----------------------------------------------------------------------------- YAML
MAX_YAML_NODES = 100_000  # a recipe has a few hundred; aliases count each time they are used


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, reads 1e-3 as a float (YAML 1.1 does not) and refuses a
    document whose aliases expand past ``MAX_YAML_NODES`` nodes (an alias bomb: 10 levels of 9 aliases
    would be 9^10 nodes once anything walks the result)."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        _expanded_size(node, {}, set())
        return node


def _expanded_size(node: yaml.Node, memo: dict[int, int], open_: set[int]) -> int:
    """Nodes of ``node`` with every alias expanded (each shared node counted once per use)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_:
        raise yaml.composer.ComposerError(None, None, "an anchor refers to itself (a recursive alias)",
                                          node.start_mark)
    open_.add(key)
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    else:
        children = []
    total = 1
    for child in children:
        total += _expanded_size(child, memo, open_)
        if total > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"the document expands to more than {MAX_YAML_NODES:,} nodes through its aliases "
                "(&anchor / *alias); a recipe needs a few hundred", node.start_mark)
    open_.discard(key)
    memo[key] = total
    return total


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    out: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=deep)
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_FLOAT_RE = re.compile(r"""^[-+]?(?:(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[0-9][0-9_]*[eE][-+]?[0-9]+
    |\.(?:inf|Inf|INF)|[-+]\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X)
_StrictLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _ch in list("-+0123456789."):
    _StrictLoader.yaml_implicit_resolvers[_ch] = [
        (tag, rx) for tag, rx in _StrictLoader.yaml_implicit_resolvers.get(_ch, []) if tag != "tag:yaml.org,2002:float"]
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def parse_yaml(text: str, source: str = "<string>") -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise UserError(f"{source}: invalid YAML: {exc}") from None
    except RecursionError:
        raise UserError(f"{source}: the YAML is nested too deeply to be a recipe (thousands of levels)") from None


# ----------------------------------------------------------------------------- loading
def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML scalars/lists)."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key.path=value")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".")]
        if not all(parts):
            raise UserError(f"--set {item!r}: empty key segment")
        node = raw
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise UserError(f"--set {item!r}: {p!r} is not a mapping in the recipe")
            node = child
        node[parts[-1]] = parse_yaml(value, f"--set {key}") if value.strip() else None
    return raw


RecipeT = Union[TrainRecipe, CoarseToFineRecipe]


def override_dataset(dataset: Any, overrides: list[str] | None, source: str) -> dict[str, Any]:
    """A stored run's dataset block with ``--set dataset.key=value`` applied and validated (commands that
    load a checkpoint's data: evaluate, transfer, landscape, features, spectrum), downloads off."""
    if not isinstance(dataset, dict):
        raise UserError(f"{source}: the checkpoint's recipe has no dataset block; cannot load its data")
    bad = [o for o in overrides or [] if not o.split("=", 1)[0].strip().startswith("dataset.")]
    if bad:
        keys = ", ".join(f"dataset.{k}" for k in DatasetConfig.model_fields)
        raise UserError(f"--set {bad[0]}: this command loads only the run's data; allowed keys: {keys}")
    raw = apply_overrides({"dataset": dict(dataset)}, list(overrides or []))["dataset"]
    # a stored recipe is data, not orders: reading a checkpoint never downloads (nor creates the download
    # folder); an absent dataset is then the loader's clear error, which --set dataset.path/data_root fixes
    raw["download"] = False
    try:
        return DatasetConfig.model_validate(raw).model_dump()
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise UserError(f"{source}: dataset{'.' + loc if loc else ''}: {_explain(DatasetConfig, err)}") from None


def read_recipe_text(path: Path) -> str:
    """The recipe's text; a binary or non-UTF-8 file is a UserError naming it (not a UnicodeDecodeError)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"recipe file {path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise UserError(f"recipe file {path} is a binary file (NUL byte at offset {nul}); a recipe is a YAML text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"recipe file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                        f"{exc.start}); a recipe is a YAML text file") from None


def load_recipe(path: str | Path | None, overrides: list[str] | None = None,
                kind: type[RecipeT] = TrainRecipe) -> RecipeT:
    """Read, override and validate a recipe; raise one UserError listing every problem."""
    raw: Any = {}
    source = "recipe"
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise UserError(f"recipe file {p} is a directory; give a YAML file (bundled recipes: `mres recipes`)")
        if p.exists() and not p.is_file():
            raise UserError(f"recipe file {p} is not a regular file (a device, a pipe or a socket); give a YAML file")
        if not p.is_file():
            raise UserError(f"recipe file {p} does not exist")
        source = str(p)
        raw = parse_yaml(read_recipe_text(p), source)
        if raw is None:
            raise UserError(f"recipe {p} is empty (no keys, only blank lines or comments); give the keys to run "
                            "(`mres recipes` lists complete examples), or leave out --recipe and give --set "
                            "key=value to run on the defaults")
        if not isinstance(raw, dict):
            raise UserError(f"{source}: a recipe is a mapping of keys, got {type(raw).__name__}")
        raw.pop("amendments", None)  # a resumed run's history (mres.training.rundir), not a setting
    raw = apply_overrides(raw, overrides or [])
    return validate_recipe(raw, kind, source)


def validate_recipe(raw: dict[str, Any], kind: type[RecipeT], source: str = "recipe") -> RecipeT:
    problems: list[tuple[str, str]] = []
    recipe = None
    try:
        recipe = kind.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            problems.append((".".join(loc) or "(top)", _explain(kind, err)))
    if recipe is not None:
        problems += _semantic_problems(recipe)
    elif isinstance(raw.get("model", {}), dict):
        # schema errors elsewhere: still check the model block, so every problem shows at once
        try:
            block = ModelBlock.model_validate(raw.get("model", {}))
            res = raw.get("resolutions") if kind is CoarseToFineRecipe else [raw.get("resolution", 28)]
            res = [r for r in (res or []) if isinstance(r, int)]
            from .models import check_model

            problems += [p for p in check_model(block.name, block.options(), res)
                         if p[0] not in {q[0] for q in problems}]
        except ValidationError:
            pass
    if problems:
        lines = "\n".join(f"  - {k}: {m}" for k, m in problems)
        n = len(problems)
        raise UserError(f"{source}: {n} problem{'s' if n > 1 else ''}:\n{lines}")
    return recipe  # type: ignore[return-value]


def _semantic_problems(recipe: RecipeT) -> list[tuple[str, str]]:
    from .models import check_model

    problems = check_model(recipe.model.name, recipe.model.options(), recipe.grid_resolutions())
    native = NATIVE_RESOLUTION.get(recipe.dataset.name)
    if recipe.dataset.name == "synthetic":
        native = recipe.dataset.synthetic.size
    if native is not None:  # npz: its image size is known only once loaded (mres.training.preflight then)
        key = "resolution" if isinstance(recipe, TrainRecipe) else "resolutions"
        problems += [(key, m) for _, m in resolution_problems(recipe.grid_resolutions(), native, recipe.dataset.name)]
    if isinstance(recipe, CoarseToFineRecipe):
        a = recipe.analysis
        if (a.landscape or a.features) and a.trial >= recipe.trials:
            problems.append(("analysis.trial", f"{a.trial}, but the run has trials 0..{recipe.trials - 1}"))
        problems += recipe.schedule_problems()
    return problems



def _explain(kind: type[BaseModel], err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(kind, list(err["loc"][:-1]))
        return f"unknown key (allowed: {', '.join(allowed)})" if allowed else "unknown key"
    msg = err["msg"]
    if err["type"] == "value_error":  # our own validators: the message names the value already
        return msg.removeprefix("Value error, ")
    if err["type"] == "literal_error":
        return msg.replace("Input should be", "must be one of")
    if "input" in err and err["type"] not in ("missing",):
        return f"{msg} (got {err['input']!r})"
    return msg


def _allowed_keys(cls: type[BaseModel], loc: list[Any]) -> list[str]:
    import typing

    for part in loc:
        field = cls.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        cands = [a for a in (typing.get_args(ann) or (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not cands:
            return []
        cls = cands[0]
    return list(cls.model_fields)


def to_plain(recipe: BaseModel) -> dict[str, Any]:
    """The resolved recipe as plain JSON-able types (for run dirs and checkpoints)."""
    return recipe.model_dump(mode="json")


def dump_yaml(recipe: BaseModel) -> str:
    return yaml.safe_dump(to_plain(recipe), sort_keys=False)


def halvings(native: int) -> list[int]:
    """The grids reachable from ``native``×``native`` images by halving."""
    out = [native]
    while out[-1] % 2 == 0 and out[-1] > 2:
        out.append(out[-1] // 2)
    return out


def resolution_problems(resolutions: list[int], native: int, dataset: str) -> list[tuple[str, str]]:
    """Each grid must be the images' size divided by a power of two."""
    return [("resolutions", f"{r} is not reachable from the {dataset} images ({native}×{native}) by halving; "
                            f"allowed: {', '.join(map(str, halvings(native)))}")
            for r in resolutions if r > native or native / r != 2 ** round(math.log2(native / r))]

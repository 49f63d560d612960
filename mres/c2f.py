"""The coarse-to-fine job (DESIGN §1, §3.4–3.5, §9): train coarse, transfer, train fine, compare.

For every trial: train the model at the coarsest grid (shared by every transfer strategy); then
for every variant (strategy × lam × coefficient policy) move it up grid by grid — transfer, BN
recalibration, evaluation before any fine training, training at that grid. Two baselines train at
the finest grid only: ``fresh`` (the thesis's: a new model for the fine phase's epochs on the fine
examples) and ``fine-only`` (budget-matched: the coarse phase's examples, epochs chosen so that its
pixel work equals coarse + fine, its own train block). Every phase writes its checkpoint and a
``result.json``; a rerun skips finished phases, so an interrupted job resumes.

Learning-rate plans: ``schedule_scope: phase`` gives each phase its own schedule; ``run`` plans
one schedule (the coarse block's shape) over the steps of every phase of a variant, each phase
continuing where the last stopped, with its own block's lr as the peak (equal lrs: one continuous
schedule). ``fine.schedule.warmup_epochs`` is then a warm-up after each transfer.

Run directory::

    recipe.yaml  summary.json  report.md  report.html  figures/
    trial0/coarse-14/{checkpoints/last.pt, metrics.jsonl, metrics.csv, result.json}
    trial0/galerkin/fine-28/{checkpoints/last.pt, checkpoints/start.pt, metrics.*, result.json, diagnostics.json}
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from rich.markup import escape

from . import stats, tta
from .checkpoint import load_checkpoint
from .data import TensorData, iterate_batches, load_dataset, num_batches
from .errors import DivergedError, Interrupted, UserError
from .models import build_model
from .recipe import CoarseToFineRecipe, TrainConfig, dump_yaml, parse_yaml, to_plain
from .report import variant_dir_name
from .distributed import agreed, alone, barrier, barrier_all, group, world
from .train import (LRPlan, configure_runtime, console, evaluate, fit, json_safe, momentum_buffers, select_device,
                    save_checkpoint_main, trainable, write_metrics)
from .transfer import function_preservation, level_spectra, recalibrate_bn, transfer_like_weights, transfer_weights

BASELINES = ("fresh", "fine-only", "joint")  # trained at the finest grid only, without the coarse model
START = {"mgopt": "transfer"}  # variants that start as another strategy's transfer, then train differently
COLLAPSE_DROP = 0.20  # final test accuracy this far below the accuracy at transfer: collapsed
COLLAPSE_MARGIN = 0.05  # ... or within this of chance


@dataclass(frozen=True)
class Variant:
    """One way of reaching the finest grid: a strategy (+ lam, + coefficient policy)."""

    strategy: str
    lam: float = 0.0
    policy: str = "keep"

    @property
    def label(self) -> str:
        s = self.strategy
        if self.strategy == "galerkin-reg":
            s += f"(lam={self.lam:g})"
        if self.policy != "keep":
            s += f"[{self.policy}]"
        return s

    @property
    def slug(self) -> str:
        return variant_dir_name(self.label)

    @property
    def needs_coarse(self) -> bool:
        return self.strategy not in BASELINES


def variants(recipe: CoarseToFineRecipe, has_coefficients: bool) -> list[Variant]:
    policies = recipe.coefficient_policies if has_coefficients else ["keep"]
    out: list[Variant] = []
    for s in recipe.strategies:
        if s in BASELINES:
            out.append(Variant(s))
            continue
        for lam in (recipe.lams if s == "galerkin-reg" else [0.0]):
            for pol in policies:
                out.append(Variant(s, lam, pol))
    return out


def _has_coefficients(model: nn.Module) -> bool:
    """Polynomial smoother coefficients that the coefficient policies act on (Poly-MgNet)."""
    levels = getattr(model, "smoothing_levels", None)
    return callable(levels) and any(lvl.coeffs for lvl in levels())


# ----------------------------------------------------------------------------- phases and lr plans
@dataclass(frozen=True)
class Phase:
    """One grid of the cascade: its resolution, its resolved train block and its training examples."""

    resolution: int
    cfg: TrainConfig
    n_train: int

    @property
    def steps_per_epoch(self) -> int:
        return num_batches(self.n_train, self.cfg.batch_size)

    @property
    def steps(self) -> int:
        return self.steps_per_epoch * self.cfg.epochs


def plan_phases(recipe: CoarseToFineRecipe, n_available: int) -> list[Phase]:
    """The phases of a coarse-to-fine variant: epochs per grid, and with ``coarse_batch_scaling`` the
    batch and lr of every coarser grid × (finest / grid)² (batch × pixels constant, lr linear in batch)."""
    finest = recipe.resolutions[-1]
    out = []
    for g, (res, epochs) in enumerate(zip(recipe.resolutions, recipe.grid_epochs())):
        block = recipe.coarse if g == 0 else recipe.fine
        subset = recipe.coarse_subset if g == 0 else recipe.fine_subset
        update: dict[str, Any] = {"epochs": epochs}
        n = min(subset or n_available, n_available)
        if recipe.coarse_batch_scaling and res < finest:
            batch = min(block.batch_size * (finest // res) ** 2, n)  # a batch cannot exceed the examples
            update["batch_size"] = batch
            update["optimizer"] = block.optimizer.model_copy(update={"lr": block.optimizer.lr * batch / block.batch_size})
        out.append(Phase(res, block.model_copy(update=update), n))
    return out


def lr_plans(phases: list[Phase], scope: str) -> list[LRPlan]:
    """Each phase's place in the lr schedule: its own (``phase``) or one plan over all (``run``)."""
    if scope == "phase":
        return [LRPlan.for_phase(p.cfg.schedule, p.steps_per_epoch, p.cfg.epochs) for p in phases]
    shape = phases[0].cfg.schedule
    total = sum(p.steps for p in phases)
    warmup = int(shape.warmup_epochs * phases[0].steps_per_epoch)
    plans, offset, epochs = [], 0, 0
    for i, p in enumerate(phases):
        restart = 0 if i == 0 else int(p.cfg.schedule.warmup_epochs * p.steps_per_epoch)
        plans.append(LRPlan(shape, max(1, total), p.steps_per_epoch, offset, epochs, warmup, restart))
        offset, epochs = offset + p.steps, epochs + p.cfg.epochs
    return plans


def pixel_work(phases: list[Phase]) -> float:
    """Training passes of every phase in finest-grid images (an image at grid r costs (r/finest)²)."""
    finest = phases[-1].resolution
    return sum(p.cfg.epochs * p.n_train * (p.resolution / finest) ** 2 for p in phases)


def budget_matched_epochs(phases: list[Phase], n_train: int) -> int:
    """The whole number of epochs at the finest grid on ``n_train`` examples closest to the pixel work
    of every phase (halves round up; at least 1)."""
    return max(1, math.floor(pixel_work(phases) / max(1, n_train) + 0.5))


# ----------------------------------------------------------------------------- the job
class CoarseToFine:
    def __init__(self, recipe: CoarseToFineRecipe, run_dir: Path, progress: bool = True):
        self.recipe, self.run_dir, self.progress = recipe, Path(run_dir), progress
        self.device = select_device(recipe.device)
        self.data: TensorData | None = None
        self.current: Path | None = None  # the phase being trained (for the Ctrl-C message)

    # ------------------------------------------------------------------ helpers
    def _arch(self, data: TensorData) -> dict[str, Any]:
        r = self.recipe
        return {"name": r.model.name, "options": r.model.options(), "in_channels": data.in_channels,
                "num_classes": data.num_classes}

    def _build(self, resolution: int, seed: int) -> nn.Module:
        assert self.data is not None
        torch.manual_seed(seed)
        model = build_model(self.recipe.model.name, self.recipe.model.options(), self.data.in_channels,
                            self.data.num_classes, resolution)
        model.reference_resolution = self.recipe.resolutions[-1]  # thesis: smoothness weight ×4 per coarsening
        return model.to(self.device)

    def _phase_data(self, resolution: int, subset: int | None, seed: int) -> TensorData:
        assert self.data is not None
        return self.data.subset(subset, None, seed=seed).at_resolution(resolution, self.recipe.family)

    def _extra(self, resolution: int, phase: str) -> dict[str, Any]:
        assert self.data is not None
        return {"recipe": to_plain(self.recipe), "resolution": resolution, "arch": self._arch(self.data),
                "phase": phase, "normalization": {"mean": list(self.data.mean), "std": list(self.data.std)}}

    def _train_phase(self, phase_dir: Path, model: nn.Module, data: TensorData, cfg: TrainConfig, seed: int,
                     label: str, resolution: int, plan: LRPlan | None = None,
                     momentum: dict[str, torch.Tensor] | None = None,
                     stage: dict[str, Any] | None = None, corrector: Any = None,
                     extra_loss: Any = None) -> dict[str, Any]:
        """Train one phase, resumably; returns its result (metrics, seconds, train_seconds, diverged)."""
        if cfg.stages:
            return self._train_stages(phase_dir, model, data, cfg, seed, label, resolution)
        result_path = phase_dir / "result.json"
        ckpt = phase_dir / "checkpoints" / "last.pt"
        config = phase_config(cfg, plan)
        if result_path.exists():  # finished before: reuse, if it was trained as this recipe asks
            result = json.loads(result_path.read_text())
            _check_phase(phase_dir, result.get("config"), config, finished=True)
            if not result.get("diverged") and ckpt.exists():
                model.load_state_dict(load_checkpoint(ckpt)["model"])
            return result
        state = load_checkpoint(ckpt) if ckpt.exists() else None
        if state is not None:
            _check_phase(phase_dir, state.get("phase_config"), config, finished=False)
        self.current = phase_dir
        diverged = None
        try:
            metrics = fit(model, data, cfg, seed=seed, augment=self.recipe.dataset.augment, ckpt_path=ckpt,
                          metrics_path=phase_dir / "metrics.jsonl",
                          extra={**self._extra(resolution, label), "phase_config": config,
                                 **({"stage": stage} if stage else {})},
                          resume=state, label=label, eval_train=self.recipe.eval_train, progress=self.progress,
                          lr_plan=plan, momentum=momentum, corrector=corrector, extra_loss=extra_loss)
        except DivergedError as exc:
            console.print(f"[yellow]diverged:[/] {escape(str(exc))}")
            diverged = {"epoch": exc.epoch, "step": exc.step, "message": str(exc)}
            metrics = [json_safe(m) for m in exc.metrics]
        # seconds are summed over the epochs' rows, which a resumed phase keeps from its checkpoint
        result = {"resolution": resolution, "metrics": metrics, "seconds": sum(m.get("seconds") or 0.0 for m in metrics),
                  "train_seconds": sum(m.get("train_seconds") or 0.0 for m in metrics), "diverged": diverged}
        result["config"] = config
        if group().distributed:  # which rank(s) trained it: all (data-parallel) or one (parallel: variants)
            result["trained_by"] = {"ranks": group().size if world().distributed else 1, "rank": group().rank}
        if plan is not None:
            result["lr_plan"] = {"offset": plan.offset, "total": plan.total}
        _write_json(result_path, result)
        return result

    def _train_stages(self, phase_dir: Path, model: nn.Module, data: TensorData, cfg: TrainConfig, seed: int,
                      label: str, resolution: int) -> dict[str, Any]:
        """A staged phase (``stages``): each stage trains its parameters (the rest frozen) as a phase of
        its own in ``stage<k>-<params>/``, resumable; the phase's result joins their metrics (each row
        with its ``stage``) and its checkpoint is the last stage's."""
        result_path = phase_dir / "result.json"
        ckpt = phase_dir / "checkpoints" / "last.pt"
        config = phase_config(cfg, None)
        if result_path.exists():
            result = json.loads(result_path.read_text())
            _check_phase(phase_dir, result.get("config"), config, finished=True)
            if not result.get("diverged") and ckpt.exists():
                model.load_state_dict(load_checkpoint(ckpt)["model"])
            return result
        resolved = cfg.stage_configs()
        stages: list[dict[str, Any]] = []
        diverged, sdir = None, phase_dir
        for i, (st, scfg) in enumerate(resolved, 1):
            sdir = phase_dir / f"stage{i}-{st.params}"
            with trainable(model, st.params):
                r = self._train_phase(sdir, model, data, scfg, seed + i - 1, f"{label} stage {i}/{len(resolved)} "
                                      f"({st.params})", resolution, stage={"index": i, "of": len(resolved),
                                                                           "params": st.params})
            stages.append({"stage": i, "params": st.params, "optimizer": scfg.optimizer.name, "epochs": scfg.epochs,
                           **{k: r[k] for k in ("metrics", "seconds", "train_seconds", "diverged")}})
            if r.get("diverged"):
                diverged = {**r["diverged"], "stage": i}
                break
        if diverged is None:
            save_checkpoint_main(ckpt, load_checkpoint(sdir / "checkpoints" / "last.pt"))
        metrics = [{**m, "stage": s["stage"]} for s in stages for m in s["metrics"]]
        if world().main:
            write_metrics(phase_dir / "metrics.jsonl", metrics)
        result = {"resolution": resolution, "metrics": metrics, "seconds": sum(s["seconds"] for s in stages),
                  "train_seconds": sum(s["train_seconds"] for s in stages), "diverged": diverged,
                  "stages": [{k: v for k, v in s.items() if k != "metrics"} | {"epochs_done": len(s["metrics"])}
                             for s in stages], "config": config}
        _write_json(result_path, result)
        return result

    def _check_resume(self) -> None:
        """A run directory with trained phases keeps its model, grids, data and family."""
        old_path = self.run_dir / "recipe.yaml"
        if not old_path.exists() or not any(self.run_dir.glob("trial*/*/result.json")) \
                and not any(self.run_dir.glob("trial*/*/*/result.json")):
            return
        old = parse_yaml(old_path.read_text(), str(old_path)) or {}
        new = to_plain(self.recipe)
        changed = [k for k in ("model", "dataset", "resolutions", "family", "coarse_subset", "fine_subset", "seed")
                   if old.get(k) != new.get(k)]
        if changed:
            raise UserError(f"{self.run_dir} holds phases trained with other {', '.join(changed)} "
                            f"({'; '.join(f'{k}: {old.get(k)!r} → {new.get(k)!r}' for k in changed)}); "
                            "resume with the run's own recipe, or start a new run with --out")

    # ------------------------------------------------------------------ the job
    def run(self) -> dict[str, Any]:
        r = self.recipe
        self._check_resume()
        if world().main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "recipe.yaml").write_text(dump_yaml(r))
        barrier()
        configure_runtime(r.threads, r.coarse.deterministic or r.fine.deterministic)
        self.data = load_dataset(r.dataset, self.device)
        phases = plan_phases(r, len(self.data.y_train))
        plans = lr_plans(phases, r.schedule_scope)
        probe = self._build(phases[0].resolution, r.seed)
        vs = variants(r, _has_coefficients(probe))
        del probe
        fine_only_epochs = r.fine_only.epochs or budget_matched_epochs(phases, phases[0].n_train)
        console.print(f"coarse-to-fine {escape(r.model.name)} on {r.dataset.name}: grids {r.resolutions}, "
                      f"epochs per grid {[p.cfg.epochs for p in phases]}, lr schedule per {r.schedule_scope}, "
                      f"{len(vs)} variants × {r.trials} trials → {escape(str(self.run_dir))}")
        if r.epochs_per_grid is not None and {"epochs"} & (r.coarse.model_fields_set | r.fine.model_fields_set):
            console.print(f"note: epochs_per_grid {r.epochs_per_grid} replaces coarse.epochs ({r.coarse.epochs}) "
                          f"and fine.epochs ({r.fine.epochs})")
        if any(v.strategy == "fine-only" for v in vs):
            console.print(f"fine-only: {fine_only_epochs} epochs at {phases[-1].resolution}×{phases[-1].resolution} "
                          f"on {phases[0].n_train} examples"
                          + (f" (budget-matched: {fine_only_epochs * phases[0].n_train:,} finest-grid image passes "
                             f"against coarse + fine's {pixel_work(phases):,.0f})" if r.fine_only.epochs is None else ""))
        trials: list[dict[str, Any]] = []
        try:
            if r.parallel == "variants" and group().distributed:
                self._spread(vs, phases, plans, fine_only_epochs)  # every phase trained: the loop below collects
            for trial in range(r.trials):
                seed = r.seed + 1000 * trial
                tdir = self.run_dir / f"trial{trial}"
                entry: dict[str, Any] = {"trial": trial, "seed": seed, "coarse": None, "variants": {}}
                coarse, coarse_state, entry["coarse"] = self._coarse(trial, vs, phases, plans)
                for v in vs:  # 2. each variant up the cascade (or a baseline at the finest grid)
                    entry["variants"][v.label] = self._run_variant(v, tdir, coarse, coarse_state, entry["coarse"],
                                                                   seed, trial, phases, plans, fine_only_epochs)
                trials.append(entry)
        except KeyboardInterrupt:
            raise Interrupted(self._interrupted_message()) from None
        chance = _chance(self.data)
        summary = summarize(r, vs, trials, chance=chance, fine_only_epochs=fine_only_epochs)
        summary["pixel_work"] = {"coarse_to_fine": pixel_work(phases),
                                 "fine_only": fine_only_epochs * phases[0].n_train}  # finest-grid image passes
        _write_json(self.run_dir / "summary.json", summary)
        from .report import write_report

        if world().main:
            write_report(self.run_dir)
        barrier()
        return summary

    def _coarse(self, trial: int, vs: list[Variant], phases: list[Phase],
                plans: list[LRPlan]) -> tuple[nn.Module | None, dict | None, dict | None]:
        """1. A trial's coarse training, shared by every transfer (reused when finished): the model, its
        state and the phase's result (all None when no variant needs it)."""
        if not any(v.needs_coarse for v in vs):
            return None, None, None
        r, p0 = self.recipe, phases[0]
        seed = r.seed + 1000 * trial
        cdir = self.run_dir / f"trial{trial}" / f"coarse-{p0.resolution}"
        coarse = self._build(p0.resolution, seed)
        cdata = self._phase_data(p0.resolution, r.coarse_subset, seed)
        cres = self._train_phase(cdir, coarse, cdata, p0.cfg, seed, f"t{trial} coarse {p0.resolution}", p0.resolution,
                                 plans[0])
        self._sensitivity(cdir, coarse, cdata, cres)
        return coarse, {k: v.detach().clone() for k, v in coarse.state_dict().items()}, cres

    def _spread(self, vs: list[Variant], phases: list[Phase], plans: list[LRPlan], fine_only_epochs: int) -> None:
        """``parallel: variants`` under torchrun: the trials' coarse phases, then every (trial, variant),
        dealt round-robin to the ranks; each rank trains its share alone on its device and writes its own
        phase directories. After this every phase is finished, so rank 0's pass over the trials only
        reads them back (and re-evaluates each start) to write the summary."""
        r, g = self.recipe, group()
        mine = lambda i: i % g.size == g.rank  # noqa: E731
        with alone():
            for trial in range(r.trials):
                if mine(trial):
                    self._coarse(trial, vs, phases, plans)
        barrier_all()  # every coarse phase on disk
        tasks = [(trial, v) for trial in range(r.trials) for v in vs]
        with alone():
            for i, (trial, v) in enumerate(tasks):
                if mine(i):
                    coarse, state, cres = self._coarse(trial, vs, phases, plans) if v.needs_coarse else (None,) * 3
                    self._run_variant(v, self.run_dir / f"trial{trial}", coarse, state, cres,
                                      r.seed + 1000 * trial, trial, phases, plans, fine_only_epochs)
        barrier_all()
        console.print(f"parallel: variants: {len(tasks)} variant runs over {g.size} ranks finished")

    def _interrupted_message(self) -> str:
        where = "no phase had started"
        if self.current is not None:
            ck = self.current / "checkpoints" / "last.pt"
            where = (f"the last good checkpoint of the phase being trained is {ck}" if ck.exists()
                     else f"phase {self.current} had no checkpoint yet")
        return (f"interrupted: finished phases are kept and {where}; resume with: "
                f"mres coarse-to-fine --resume {self.run_dir}")

    def _run_variant(self, v: Variant, tdir: Path, coarse: nn.Module | None, coarse_state: dict | None,
                     cres: dict | None, seed: int, trial: int, phases: list[Phase], plans: list[LRPlan],
                     fine_only_epochs: int) -> dict[str, Any]:
        r = self.recipe
        vdir = tdir / v.slug
        finest = phases[-1]
        out: dict[str, Any] = {"phases": [], "diverged": None, "skipped": None}
        if v.needs_coarse and cres and cres.get("diverged"):
            out["skipped"] = f"coarse phase diverged (epoch {cres['diverged']['epoch']}): nothing to transfer"
            console.print(f"[yellow]skipped:[/] t{trial} {escape(v.label)}: {out['skipped']}")
            return out
        if v.strategy == "fresh":  # the thesis baseline: the fine phase's epochs and examples, new weights
            model = self._build(finest.resolution, seed + 1)
            steps = [(finest, None, self._phase_data(finest.resolution, r.fine_subset, seed + 7), seed + 11)]
        elif v.strategy in ("fine-only", "joint"):  # budget-matched: the coarse phase's examples at the finest grid
            model = self._build(finest.resolution, seed + 1)
            cfg = TrainConfig.model_validate({**r.fine_only.model_dump(), "epochs": fine_only_epochs})
            data = self._phase_data(finest.resolution, r.coarse_subset, seed)
            steps = [(Phase(finest.resolution, cfg, len(data.y_train)), None, data, seed)]
        else:
            assert coarse is not None and coarse_state is not None
            coarse.load_state_dict(coarse_state)
            model = coarse
            steps = [(p, plan, self._phase_data(p.resolution, r.fine_subset, seed + 7), seed + 11)
                     for p, plan in zip(phases[1:], plans[1:])]
        src_dir = tdir / f"coarse-{phases[0].resolution}"
        for phase, plan, data, fit_seed in steps:
            res = phase.resolution
            pdir = vdir / f"fine-{res}"
            entry: dict[str, Any] = {"resolution": res}
            momentum = None
            if v.needs_coarse:
                src = model
                model = self._build(res, seed + 1)  # fresh init; overwritten by the transfer
                buffers = self._momentum(src, src_dir) if r.carry_optimizer else None  # disk: not counted
                _sync(self.device)
                t0 = time.perf_counter()
                diags = transfer_weights(src, model, START.get(v.strategy, v.strategy), r.family, v.lam, "prolongate",
                                         coefficient_policy=v.policy)
                if r.bn_recalibrate:
                    g = torch.Generator().manual_seed(seed)
                    recalibrate_bn(model, (xb for xb, _ in iterate_batches(data.x_train, data.y_train, 256, g)))
                if buffers is not None:
                    momentum = transfer_like_weights(src, model, buffers, v.strategy, r.family, v.lam)
                _sync(self.device)
                entry["transfer_seconds"] = time.perf_counter() - t0  # counted: the method needs it
                fp = function_preservation(src, model, data.x_test[:256], r.family)  # monitoring: not counted
                entry["diagnostics"] = {"layers": [d.__dict__ for d in diags], "function": fp}
                if _has_coefficients(model):  # where A's spectrum and the roots land (monitoring)
                    entry["diagnostics"]["spectra"] = level_spectra(src, model, res // 2, res)  # grids double
            # the start of this phase, for landscapes / feature pictures (thesis Fig. 4.3)
            start = pdir / "checkpoints" / "start.pt"
            if not agreed(start.exists()):  # rank 0's view: it may have written it already
                save_checkpoint_main(start, {**self._extra(res, f"{v.label} start"), "model": model.state_dict(),
                                             "epoch": 0, "metrics": []})
            # evaluation before any training at this grid
            tr_loss, tr_acc = evaluate(model, data.x_train, data.y_train)
            te_loss, te_acc = evaluate(model, data.x_test, data.y_test)
            entry["at_transfer"] = {"train_loss": tr_loss, "train_acc": tr_acc, "test_loss": te_loss,
                                    "test_acc": te_acc}
            corrector = self._corrector(v, data, phases, res, seed) if v.strategy == "mgopt" else None
            joint = self._joint(data, phases, res, seed) if v.strategy == "joint" else None
            result = self._train_phase(pdir, model, data, phase.cfg, fit_seed, f"t{trial} {v.label} {res}", res,
                                       plan, momentum, corrector=corrector, extra_loss=joint)
            if corrector is not None and corrector.alphas:  # this session's cycles (a resumed phase: since then)
                result["mgopt_alphas"] = corrector.alphas
                _write_json(pdir / "mgopt.json", {"alphas": corrector.alphas, "every": corrector.every})
            entry.update(result)
            if "diagnostics" in entry:
                _write_json(pdir / "diagnostics.json", entry["diagnostics"])
            self._sensitivity(pdir, model, data, result)
            out["phases"].append(entry)
            src_dir = pdir
            if result.get("diverged"):
                out["diverged"] = {"phase": f"fine-{res}", **result["diverged"]}
                break
        if out["diverged"] is None and len(phases) > 1:
            self._restricted(vdir, model, phases, seed)
        return out

    def _corrector(self, v: Variant, data: TensorData, phases: list[Phase], res: int, seed: int) -> Any:
        """MG/OPT corrections for a fine phase at grid ``res``: the coarser grids' models as templates."""
        from .multilevel import CycleConfig, Corrector

        m = self.recipe.multilevel
        coarser = [p.resolution for p in phases if p.resolution < res][::-1]  # one grid down first
        levels = [self._build(g, seed + 1) for g in coarser]
        cfg = CycleConfig(coarse_steps=m.coarse_steps, coarse_lr=m.coarse_lr, prolongation=m.prolongation,
                          line_search=m.line_search)
        return Corrector(levels, data.x_train, data.y_train, self.recipe.family, m.every, m.tau_batch, cfg, seed)

    def _joint(self, data: TensorData, phases: list[Phase], res: int, seed: int) -> Any:
        """The joint variant's coarse terms: every coarser grid of the cascade, tied to the finest weights."""
        from .multilevel import JointTerm

        j = self.recipe.joint
        coarser = [p.resolution for p in phases if p.resolution < res][::-1]
        n = len(coarser) + 1
        weights = j.weights or [0.5 ** ell for ell in range(n)]
        scale = j.batch_scale or [2 ** ell for ell in range(n)]
        if len(weights) != n or len(scale) != n:
            raise UserError(f"joint.weights and joint.batch_scale need one value per grid ({n}: "
                            f"{[res] + coarser}), got {len(weights)} and {len(scale)}")
        return JointTerm([self._build(g, seed + 1) for g in coarser], data.x_train, data.y_train,
                         self.recipe.family, j.tie, weights, scale, seed)

    def _restricted(self, vdir: Path, model: nn.Module, phases: list[Phase], seed: int) -> None:
        """Fine → coarse (thesis future work: cheap low-resolution inference): the variant's final model
        restricted to every coarser grid — by the Galerkin map (θ_2h = M θ_h, heads Pᵀ) and by copying
        (mres's ``transfer`` rule) — and evaluated on the test images restricted there
        (``restricted.json``; monitoring, not counted). BN statistics are recalibrated at each grid when
        the recipe recalibrates after transfers."""
        path = vdir / "restricted.json"
        if agreed(path.exists()):
            return
        r = self.recipe
        rows = []
        grids = [p.resolution for p in reversed(phases[:-1])]  # one grid down at a time: 28 → 14 → 7
        datasets = {g: self._phase_data(g, r.fine_subset, seed + 7) for g in grids}
        for rule in ("galerkin", "transfer"):
            src = model
            for g in grids:
                dst = self._build(g, seed + 1)
                with warnings.catch_warnings():  # the rules' warnings were shown at the transfers
                    warnings.simplefilter("ignore")
                    transfer_weights(src, dst, rule, r.family, 0.0, "restrict")
                data = datasets[g]
                if r.bn_recalibrate:
                    gen = torch.Generator().manual_seed(seed)
                    recalibrate_bn(dst, (xb for xb, _ in iterate_batches(data.x_train, data.y_train, 256, gen)))
                loss, acc = evaluate(dst, data.x_test, data.y_test)
                rows.append({"rule": rule, "resolution": g, "test_loss": loss, "test_acc": acc})
                src = dst
        _write_json(path, rows)

    @staticmethod
    def _sensitivity(phase_dir: Path, model: nn.Module, data: TensorData, result: dict[str, Any]) -> None:
        """Poly-MgNet: how much each step's coefficients act at the end of the phase (monitoring, not
        counted): ``sensitivity.json``, shown in the report (mres/sensitivity.py)."""
        path = phase_dir / "sensitivity.json"
        if agreed(path.exists()) or result.get("diverged") or not _has_coefficients(model):
            return
        from .sensitivity import coefficient_sensitivity

        _write_json(path, coefficient_sensitivity(model, data.x_train[:64], data.y_train[:64]))

    @staticmethod
    def _momentum(src: nn.Module, src_dir: Path) -> dict[str, torch.Tensor]:
        """The SGD momentum buffers the source phase ended with (from its checkpoint), by parameter name."""
        ck = src_dir / "checkpoints" / "last.pt"
        return momentum_buffers(src, load_checkpoint(ck)["optimizer"]) if ck.exists() else {}


def phase_config(cfg: TrainConfig, plan: LRPlan | None) -> dict[str, Any]:
    """What a phase was trained with: its train block and its place in the lr plan (plain JSON)."""
    out: dict[str, Any] = {"train": cfg.model_dump(mode="json")}
    if plan is not None:
        out["lr_plan"] = {"total": plan.total, "offset": plan.offset, "warmup": plan.warmup,
                          "restart_warmup": plan.restart_warmup, "schedule": plan.schedule.model_dump(mode="json")}
    return out


def _check_phase(phase_dir: Path, saved: dict[str, Any] | None, now: dict[str, Any], finished: bool) -> None:
    """A finished phase is reused only if trained as the recipe asks now; an unfinished one may only
    change its epochs (its lr plan may then change: a warning, as for ``mres train --resume``)."""
    if saved is None:  # written before phases recorded their settings
        return
    # a setting added to mres after the phase was trained counts as its default (what it was trained with)
    defaults = TrainConfig().model_dump(mode="json")
    saved = {**saved, "train": {**{k: v for k, v in defaults.items() if k not in saved.get("train", {})},
                                **saved.get("train", {})}}
    if finished and saved != now:
        diff = _config_diff(saved, now)
        raise UserError(f"{phase_dir} was trained with {diff}; a finished phase is reused only as it was "
                        "trained. Resume with the run's own settings, or start a new run with --out")
    if not finished:
        a = {**saved, "train": {k: v for k, v in saved["train"].items() if k != "epochs"}}
        b = {**now, "train": {k: v for k, v in now["train"].items() if k != "epochs"}}
        a.pop("lr_plan", None), b.pop("lr_plan", None)
        if a != b:
            raise UserError(f"{phase_dir} was started with {_config_diff(saved, now)}; only its epochs may change "
                            "on --resume. Resume with the run's own settings, or start a new run with --out")
        if saved.get("lr_plan") != now.get("lr_plan"):
            console.print(f"[yellow]note:[/] {escape(str(phase_dir))} continues under a changed lr plan "
                          f"({escape(_config_diff(saved, now))})")


def _config_diff(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        parts = [_config_diff(a.get(k), b.get(k), f"{path}.{k}" if path else k) for k in dict.fromkeys([*a, *b])]
        return "; ".join(p for p in parts if p)
    return "" if a == b else f"{path} {a!r} (the recipe now: {b!r})"


def _chance(data: TensorData) -> float:
    """Accuracy of always predicting the most frequent test class (1/K on balanced data)."""
    counts = torch.bincount(data.y_test.cpu(), minlength=data.num_classes)
    return float(counts.max()) / max(1, len(data.y_test))


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work before reading the clock (kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _write_json(path: Path, obj: Any) -> None:
    """Atomic JSON; under torchrun rank 0 writes and every rank waits for it."""
    if world().main:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(json_safe(obj), indent=1, default=float, allow_nan=False))
        os.replace(tmp, path)
    barrier()


# ----------------------------------------------------------------------------- summary.json
def variant_curve(v: Variant, trial: dict[str, Any], coarse_resolution: int) -> list[dict[str, Any]]:
    """Test accuracy against cumulative training seconds (coarse phase, transfers, fine epochs)."""
    points: list[dict[str, Any]] = []
    seconds = 0.0
    cres = trial.get("coarse")
    if v.needs_coarse and cres:
        res0 = cres.get("resolution", coarse_resolution)
        for m in cres["metrics"]:
            seconds += m.get("train_seconds") or 0.0
            points.append({"seconds": seconds, "test_acc": m.get("test_acc"), "resolution": res0, "phase": "coarse"})
    for ph in trial["variants"][v.label]["phases"]:
        seconds += ph.get("transfer_seconds", 0.0)
        points.append({"seconds": seconds, "test_acc": ph["at_transfer"]["test_acc"], "resolution": ph["resolution"],
                       "phase": "start"})
        for m in ph.get("metrics", []):
            seconds += m.get("train_seconds") or 0.0
            points.append({"seconds": seconds, "test_acc": m.get("test_acc"), "resolution": ph["resolution"],
                           "phase": f"fine-{ph['resolution']}"})
    return points


def stage_accuracies(phase: dict[str, Any]) -> list[dict[str, Any]]:
    """Per stage of a staged phase: training/test accuracy at its start (before its first step), after
    its first epoch (the thesis's "Initial") and at its end ("After") — thesis Table 4.3."""
    out, start = [], {"train": phase["at_transfer"]["train_acc"], "test": phase["at_transfer"]["test_acc"]}
    for st in phase["stages"]:
        rows = [m for m in phase["metrics"] if m.get("stage") == st["stage"]]
        pick = (lambda m: {"train": m.get("train_eval_acc"), "test": m.get("test_acc")})  # noqa: E731
        entry = {"stage": st["stage"], "params": st["params"], "optimizer": st["optimizer"], "epochs": st["epochs"],
                 "start": start, "initial": pick(rows[0]) if rows else None,
                 "end": pick(rows[-1]) if rows and not st.get("diverged") else None}
        out.append(entry)
        start = entry["end"] or {"train": None, "test": None}
    return out


def is_collapsed(acc_final: float | None, acc_at_transfer: float | None, chance: float) -> bool:
    """At chance after fine training, or far below the accuracy right after the transfer (DESIGN §9)."""
    if acc_final is None or not math.isfinite(acc_final):
        return False  # no final accuracy: diverged or skipped, reported as such
    if acc_final <= chance + COLLAPSE_MARGIN:
        return True
    return acc_at_transfer is not None and math.isfinite(acc_at_transfer) and acc_at_transfer - acc_final > COLLAPSE_DROP


def summarize(recipe: CoarseToFineRecipe, vs: list[Variant], trials: list[dict[str, Any]], chance: float = 0.1,
              fine_only_epochs: int | None = None) -> dict[str, Any]:
    """Per variant, lists over trials (test accuracies in [0, 1], seconds), curves, time to accuracy,
    collapse flags and paired statistics — summary.json."""
    finest = recipe.resolutions[-1]
    strategies: dict[str, Any] = {}
    for v in vs:
        keys = ("acc_at_transfer", "acc_after_first_epoch", "acc_final", "train_acc_at_transfer",
                "train_acc_after_first_epoch", "train_acc_final", "seconds", "train_seconds", "coarse_seconds",
                "transfer_seconds", "fine_seconds", "diverged", "collapsed", "skipped", "curve", "stages")
        rows: dict[str, list[Any]] = {k: [] for k in keys}
        for t in trials:
            e = t["variants"][v.label]
            div = e.get("diverged")
            cres = t.get("coarse") if v.needs_coarse else None
            coarse_s = cres["seconds"] if cres else 0.0
            coarse_train_s = cres.get("train_seconds", 0.0) if cres else 0.0
            fine_s = sum(p.get("seconds", 0.0) for p in e["phases"])
            fine_train_s = sum(p.get("train_seconds", 0.0) for p in e["phases"])
            trans_s = sum(p.get("transfer_seconds", 0.0) for p in e["phases"])
            last = e["phases"][-1] if e["phases"] else None
            m = last["metrics"] if last else []
            ok = bool(m) and not div
            at = last["at_transfer"]["test_acc"] if last else None
            final = m[-1]["test_acc"] if ok else None
            rows["acc_at_transfer"].append(at)
            rows["train_acc_at_transfer"].append(last["at_transfer"]["train_acc"] if last else None)
            rows["acc_after_first_epoch"].append(m[0]["test_acc"] if m else None)
            rows["train_acc_after_first_epoch"].append(m[0].get("train_eval_acc") if m else None)
            rows["acc_final"].append(final)
            rows["train_acc_final"].append(m[-1].get("train_eval_acc") if ok else None)
            rows["coarse_seconds"].append(coarse_s)
            rows["transfer_seconds"].append(trans_s)
            rows["fine_seconds"].append(fine_s)
            rows["seconds"].append(coarse_s + trans_s + fine_s)
            rows["train_seconds"].append(coarse_train_s + trans_s + fine_train_s)
            rows["diverged"].append(bool(div))
            rows["skipped"].append(e.get("skipped"))
            rows["collapsed"].append(is_collapsed(final, at if v.strategy not in BASELINES else None, chance))
            rows["curve"].append(variant_curve(v, t, recipe.resolutions[0]))
            rows["stages"].append(stage_accuracies(last) if last and last.get("stages") else None)
        strategies[v.label] = {"strategy": v.strategy, "lam": v.lam, "policy": v.policy, **rows}
    baseline = next((b for b in ("fine-only", "fresh") if b in strategies), None)
    summary = {"recipe": to_plain(recipe), "resolutions": recipe.resolutions, "trials": len(trials),
               "chance": chance, "baseline": baseline, "fine_only_epochs": fine_only_epochs,
               "strategies": strategies}
    summary["time_to_accuracy"] = time_to_accuracy(strategies, baseline, finest)
    summary["statistics"] = statistics(strategies, baseline)
    return summary


def time_to_accuracy(strategies: dict[str, Any], baseline: str | None, finest: int) -> dict[str, Any]:
    """Training seconds until each variant's test accuracy at the finest grid first reached a, for a =
    the baseline's mean final accuracy and 1 and 2 points below it, with the speedup over the baseline."""
    if baseline is None:
        return {}
    target = stats.mean_ci(strategies[baseline]["acc_final"])["mean"]
    if target is None:
        return {"baseline": baseline, "levels": [], "variants": {}}
    levels = [target, target - 0.01, target - 0.02]
    out: dict[str, Any] = {"baseline": baseline, "levels": levels, "granularity": "epoch", "variants": {}}
    base_times = [[tta.seconds_to(c, a, finest) for c in strategies[baseline]["curve"]] for a in levels]
    for label, s in strategies.items():
        per_level = []
        for a, base in zip(levels, base_times):
            times = [tta.seconds_to(c, a, finest) for c in s["curve"]]
            reached = [t for t in times if t is not None]
            # paired: the trials in which both the variant and the baseline reached a
            both = [(t, b) for t, b in zip(times, base) if t is not None and b is not None]
            speedup = (sum(b for _, b in both) / sum(t for t, _ in both)) if both and all(t > 0 for t, _ in both) \
                else None
            per_level.append({"accuracy": a, "seconds": times, "reached": len(reached),
                              "mean_seconds": sum(reached) / len(reached) if reached else None,
                              "speedup": speedup, "speedup_trials": len(both)})
        out["variants"][label] = per_level
    return out


def statistics(strategies: dict[str, Any], baseline: str | None) -> dict[str, Any]:
    """Per variant: the final accuracy's mean, std and 95 % CI, and paired tests against ``transfer``
    and against the baseline (every trial shares the coarse model, data order and seeds)."""
    out: dict[str, Any] = {}
    refs = [r for r in dict.fromkeys(["transfer", baseline]) if r in strategies]
    for label, s in strategies.items():
        entry: dict[str, Any] = {"acc_final": stats.mean_ci(s["acc_final"]), "vs": {}}
        for ref in refs:
            if ref != label:
                entry["vs"][ref] = stats.paired_test(s["acc_final"], strategies[ref]["acc_final"])
        out[label] = entry
    return out


def run_coarse_to_fine(recipe: CoarseToFineRecipe, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    return CoarseToFine(recipe, run_dir, progress).run()

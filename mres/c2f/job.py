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
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from rich.markup import escape

from ..training.checkpoint import atomic_write, load_checkpoint, load_for_resume
from ..training.data import TensorData, iterate_batches, load_dataset
from ..grids.datafit import distill, fit_to_coarse, plan_fit
from ..training.distributed import agreed, alone, barrier, barrier_all, group, world
from ..errors import DivergedError, Interrupted, UserError
from ..training.hooks import CarryMomentum, FitHook
from ..training.loggers import logger_hooks
from ..models import build_model
from ..models.plugins import imported_plugins
from ..training.rundir import RunLock, changed_keys, record_recipe, restore_recipe
from ..models.registry import parameter_count
from ..training.preflight import (available_memory, features_problems, forward_problems, memory_problems,
                                  raise_problems, subset_problems, transfer_problems)
from .phases import (Phase, budget_matched_epochs, check_phase, lr_plans, phase_config,  # noqa: F401 (public here)
                     pixel_work, plan_phases)
from ..recipe import CoarseToFineRecipe, TrainConfig, parse_yaml, resolution_problems, to_plain
from ..strategies import Strategy, Variant, variants as strategy_variants
from .summary import is_collapsed, summarize  # noqa: F401 (public here)
from ..training.fit import (LRPlan, configure_runtime, console, evaluate, fit, json_safe, momentum_buffers,
                            select_device, save_checkpoint_main, trainable, write_metrics)
from ..grids.transfer import (function_preservation, level_spectra, recalibrate_bn, transfer_like_weights,
                              transfer_weights)


def variants(recipe: CoarseToFineRecipe, has_coefficients: bool) -> list[Variant]:
    """The recipe's variants (mres.strategies.variants): coefficient policies only for Poly-MgNet."""
    return strategy_variants(recipe.strategies, recipe.lams, recipe.coefficient_policies if has_coefficients else ["keep"])


def _has_coefficients(model: nn.Module) -> bool:
    """Polynomial smoother coefficients that the coefficient policies act on (Poly-MgNet)."""
    levels = getattr(model, "smoothing_levels", None)
    return callable(levels) and any(lvl.coeffs for lvl in levels())


# ----------------------------------------------------------------------------- the job
class CoarseToFine:
    def __init__(self, recipe: CoarseToFineRecipe, run_dir: Path, progress: bool = True):
        self.recipe, self.run_dir, self.progress = recipe, Path(run_dir), progress
        self.device = select_device(recipe.device)
        self.data: TensorData | None = None
        self.current: Path | None = None  # the phase being trained (for the Ctrl-C message)

    # ------------------------------------------------------------------ helpers
    def _preflight(self, probe: nn.Module, vs: list[Variant]) -> None:
        """Data and model checked together before any epoch (mres.training.preflight); the RNG is left as it was."""
        assert self.data is not None
        r, data, res = self.recipe, self.data, self.recipe.grid_resolutions()
        problems = resolution_problems(res, data.resolution, r.dataset.name)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if not problems:
                problems += memory_problems(lambda g: parameter_count(r.model.name, r.model.options(),
                                                                      data.in_channels, data.num_classes, g),
                                            res, r.model.name)
            if not problems:
                problems += forward_problems(lambda g: self._build(g, r.seed), res, data.in_channels,
                                             data.num_classes, r.model.name)
            starts = {v.record.start for v in vs if v.record.needs_coarse and v.record.start}
            if any(v.record.refine == "fit-to-coarse" for v in vs):
                starts.add(r.galerkin_data.start)
            if not problems:
                for lo, hi in zip(res, res[1:]):
                    problems += transfer_problems(self._build(lo, r.seed), self._build(hi, r.seed), sorted(starts),
                                                  r.family)
            if not problems and any(v.record.refine == "fit-to-coarse" for v in vs):
                problems += self._fit_problems()
        problems += features_problems(probe, r.analysis.features is not None)
        problems += subset_problems({"coarse_subset": r.coarse_subset, "fine_subset": r.fine_subset},
                                    len(data.y_train), r.dataset.name)
        raise_problems(problems, f"{r.model.name} on {r.dataset.name}")

    def _fit_problems(self) -> list[tuple[str, str]]:
        """galerkin-data's plan at every fine grid: each layer it cannot fit, each problem over the memory."""
        assert self.data is not None
        r, gd = self.recipe, self.recipe.galerkin_data
        n = min(gd.calibration, r.fine_subset or len(self.data.y_train))
        head = min(gd.head_calibration or gd.calibration, r.fine_subset or len(self.data.y_train))
        for res in r.grid_resolutions()[1:]:
            model = self._build(res, r.seed)
            x = torch.zeros(1, self.data.in_channels, res, res, device=next(model.parameters()).device)
            try:
                plan_fit(model, x, n, head, available_memory())
            except UserError as exc:
                return [("strategies", f"galerkin-data at {res}×{res}: {exc}")]
        return []

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
                "phase": phase, "normalization": {"mean": list(self.data.mean), "std": list(self.data.std)},
                "plugins": imported_plugins()}

    def _train_phase(self, phase_dir: Path, model: nn.Module, data: TensorData, cfg: TrainConfig, seed: int,
                     label: str, resolution: int, plan: LRPlan | None = None, hooks: tuple[FitHook, ...] = (),
                     stage: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train one phase, resumably; returns its result (metrics, seconds, train_seconds, diverged)."""
        if cfg.stages:
            return self._train_stages(phase_dir, model, data, cfg, seed, label, resolution)
        result_path = phase_dir / "result.json"
        ckpt = phase_dir / "checkpoints" / "last.pt"
        config = phase_config(cfg, plan)
        if result_path.exists():  # finished before: reuse, if it was trained as this recipe asks
            result = json.loads(result_path.read_text())
            check_phase(phase_dir, result.get("config"), config, finished=True)
            if not result.get("diverged") and ckpt.exists():
                model.load_state_dict(load_checkpoint(ckpt)["model"])
            return result
        state = load_for_resume(ckpt)
        if state is not None:
            check_phase(phase_dir, state.get("phase_config"), config, finished=False)
        self.current = phase_dir
        diverged = None
        try:
            hooks = (*hooks, *logger_hooks(cfg.log, phase_dir, f"{label} ({phase_dir.relative_to(self.run_dir)})"))
            metrics = fit(model, data, cfg, seed=seed, augment=self.recipe.dataset.augment, ckpt_path=ckpt,
                          metrics_path=phase_dir / "metrics.jsonl",
                          extra={**self._extra(resolution, label), "phase_config": config,
                                 **({"stage": stage} if stage else {})},
                          resume=state, label=label, eval_train=self.recipe.eval_train, progress=self.progress,
                          lr_plan=plan, hooks=hooks)
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
            check_phase(phase_dir, result.get("config"), config, finished=True)
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
                   if changed_keys(old.get(k), new.get(k))]  # leaves: a key added since with its null default is no change
        if changed:
            raise UserError(f"{self.run_dir} holds phases trained with other {', '.join(changed)} "
                            f"({'; '.join(f'{k}: {old.get(k)!r} → {new.get(k)!r}' for k in changed)}); "
                            "resume with the run's own recipe, or start a new run with --out")

    # ------------------------------------------------------------------ the job
    def run(self) -> dict[str, Any]:
        r = self.recipe
        self._check_resume()
        configure_runtime(r.threads, r.coarse.deterministic or r.fine.deterministic, r.flush_denormal)
        self.data = load_dataset(r.dataset, self.device)
        phases = plan_phases(r, len(self.data.y_train))
        plans = lr_plans(phases, r.schedule_scope)
        probe = self._build(phases[0].resolution, r.seed)
        vs = variants(r, _has_coefficients(probe))
        self._preflight(probe, vs)
        del probe
        old_recipe = None  # every check passed: now the run directory may change (a resume: an amendment)
        if world().main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            old_recipe = record_recipe(self.run_dir, to_plain(r), resume=True)
        barrier()
        fine_only_epochs = r.fine_only.epochs or budget_matched_epochs(phases, phases[0].n_train)
        console.print(f"coarse-to-fine {escape(r.model.name)} on {r.dataset.name}: grids {r.resolutions}, "
                      f"epochs per grid {[p.cfg.epochs for p in phases]}, lr schedule per {r.schedule_scope}, "
                      f"{len(vs)} variants × {r.trials} trials → {escape(str(self.run_dir))}")
        if r.epochs_per_grid is not None and {"epochs"} & (r.coarse.model_fields_set | r.fine.model_fields_set):
            console.print(f"note: epochs_per_grid {r.epochs_per_grid} replaces coarse.epochs ({r.coarse.epochs}) "
                          f"and fine.epochs ({r.fine.epochs})")
        budget = [v.label for v in vs if v.record.trains_on == "budget"]
        if budget:
            console.print(f"{', '.join(budget)}: {fine_only_epochs} epochs at {phases[-1].resolution}×{phases[-1].resolution} "
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
        except UserError:  # refused part-way (a phase trained otherwise): the run's recipe as it was
            if world().main:
                restore_recipe(self.run_dir, old_recipe)
            raise
        chance = _chance(self.data)
        summary = summarize(r, vs, trials, chance=chance, fine_only_epochs=fine_only_epochs)
        summary["pixel_work"] = {"coarse_to_fine": pixel_work(phases),
                                 "fine_only": fine_only_epochs * phases[0].n_train}  # finest-grid image passes
        summary["plugins"] = imported_plugins()  # the --import files a later command needs again
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
        rec = v.record
        if rec.trains_on == "fine-subset":  # the thesis baseline: the fine phase's epochs and examples, new weights
            model = self._build(finest.resolution, seed + 1)
            steps = [(finest, None, self._phase_data(finest.resolution, r.fine_subset, seed + 7), seed + 11)]
        elif rec.trains_on == "budget":  # budget-matched: the coarse phase's examples at the finest grid
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
            hooks: list[FitHook] = []
            if rec.needs_coarse:
                src = model
                model = self._build(res, seed + 1)  # fresh init; overwritten by the transfer
                buffers = self._momentum(src, src_dir) if r.carry_optimizer else None  # disk: not counted
                _sync(self.device)
                t0 = time.perf_counter()
                rule = self._start_rule(rec)
                diags = transfer_weights(src, model, rule, r.family, v.lam, "prolongate", coefficient_policy=v.policy)
                fitted = self._fit_to_coarse(src, model, data) if rec.refine == "fit-to-coarse" else None
                if r.bn_recalibrate and (fitted is None or r.galerkin_data.bn == "after"):  # else the fit's rule
                    g = torch.Generator().manual_seed(seed)
                    recalibrate_bn(model, (xb for xb, _ in iterate_batches(data.x_train, data.y_train, 256, g)))
                if buffers is not None:  # momentum moves by the weights' rule
                    hooks.append(CarryMomentum(transfer_like_weights(src, model, buffers, rule, r.family, v.lam)))
                _sync(self.device)
                entry["transfer_seconds"] = time.perf_counter() - t0  # counted: the method needs it
                if rec.refine == "distill":  # training steps: counted as training seconds
                    entry["distill"] = self._distill(src, model, data, phase.cfg, seed)
                fp = function_preservation(src, model, data.x_test[:256], r.family)  # monitoring: not counted
                entry["diagnostics"] = {"layers": [d.__dict__ for d in diags], "function": fp}
                if fitted is not None:
                    entry["diagnostics"]["data_fit"] = fitted
                if "distill" in entry:
                    entry["diagnostics"]["distill"] = entry["distill"]
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
            hooks += [HOOKS[name](self, data, phases, res, seed) for name in rec.hooks]
            result = self._train_phase(pdir, model, data, phase.cfg, fit_seed, f"t{trial} {v.label} {res}", res,
                                       plan, tuple(hooks))
            for h in hooks:  # what a hook logged this session (a resumed phase: since then)
                result.update(h.record())
                for name, obj in h.files().items():
                    _write_json(pdir / name, obj)
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

    def _start_rule(self, rec: Strategy) -> str:
        """The transfer rule a strategy starts with: its record's, or the recipe key it names."""
        if rec.start_key is None:
            return rec.start
        block, key = rec.start_key.split(".")
        return getattr(getattr(self.recipe, block), key)

    def _fit_to_coarse(self, src: nn.Module, model: nn.Module, data: TensorData) -> list[dict[str, Any]]:
        """galerkin-data: every layer fitted to the coarse model's on the calibration images (closed form)."""
        gd = self.recipe.galerkin_data
        head = data.x_train[:gd.head_calibration] if gd.head_calibration else None
        return fit_to_coarse(src, model, data.x_train[:gd.calibration], self.recipe.family,
                             None if gd.lam == "gcv" else gd.lam, gd.chunk, gd.sweeps, gd.bn, head)

    def _distill(self, src: nn.Module, model: nn.Module, data: TensorData, cfg: TrainConfig,
                 seed: int) -> dict[str, Any]:
        """distill: SGD steps towards the coarse model's predictions on R x; their seconds count as training."""
        d = self.recipe.distill
        _sync(self.device)
        t0 = time.perf_counter()
        losses = distill(src, model, data.x_train, self.recipe.family, d.steps, d.batch_size or cfg.batch_size,
                         d.lr, d.momentum, d.temperature, seed)
        _sync(self.device)
        return {"seconds": time.perf_counter() - t0, "steps": d.steps, "loss_first": losses[0], "loss_last": losses[-1]}

    def _corrector(self, data: TensorData, phases: list[Phase], res: int, seed: int) -> FitHook:
        """MG/OPT corrections for a fine phase at grid ``res``: the coarser grids' models as templates."""
        from .multilevel import CycleConfig, Corrector

        m = self.recipe.multilevel
        coarser = [p.resolution for p in phases if p.resolution < res][::-1]  # one grid down first
        levels = [self._build(g, seed + 1) for g in coarser]
        cfg = CycleConfig(coarse_steps=m.coarse_steps, coarse_lr=m.coarse_lr, prolongation=m.prolongation,
                          line_search=m.line_search)
        return Corrector(levels, data.x_train, data.y_train, self.recipe.family, m.every, m.tau_batch, cfg, seed)

    def _joint(self, data: TensorData, phases: list[Phase], res: int, seed: int) -> FitHook:
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
        counted): ``sensitivity.json``, shown in the report (mres/analysis/sensitivity.py)."""
        path = phase_dir / "sensitivity.json"
        if agreed(path.exists()) or result.get("diverged") or not _has_coefficients(model):
            return
        from ..analysis.sensitivity import coefficient_sensitivity

        _write_json(path, coefficient_sensitivity(model, data.x_train[:64], data.y_train[:64]))

    @staticmethod
    def _momentum(src: nn.Module, src_dir: Path) -> dict[str, torch.Tensor]:
        """The SGD momentum buffers the source phase ended with (from its checkpoint), by parameter name."""
        ck = src_dir / "checkpoints" / "last.pt"
        return momentum_buffers(src, load_checkpoint(ck)["optimizer"]) if ck.exists() else {}


# the fit hooks a strategy's record names (mres.strategies), built per fine phase
HOOKS = {"mgopt-corrections": CoarseToFine._corrector, "joint-loss": CoarseToFine._joint}


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
        atomic_write(path, json.dumps(json_safe(obj), indent=1, default=float, allow_nan=False).encode())
    barrier()


def run_coarse_to_fine(recipe: CoarseToFineRecipe, run_dir: Path, progress: bool = True,
                       analysis: bool = True) -> dict[str, Any]:
    """The whole job: train, transfer, compare, then the recipe's ``analysis:`` block (landscape, features)
    and the report rewritten with it. ``analysis=False`` skips that block and says so."""
    with RunLock(run_dir) if world().main else nullcontext():  # the run directory is this job's alone
        return _run_and_analyse(recipe, Path(run_dir), progress, analysis)


def _run_and_analyse(recipe: CoarseToFineRecipe, run_dir: Path, progress: bool, analysis: bool) -> dict[str, Any]:
    summary = CoarseToFine(recipe, run_dir, progress).run()
    wanted = recipe.analysis.landscape or recipe.analysis.features
    if wanted and not analysis:
        console.print("analysis: skipped (run_coarse_to_fine(..., analysis=False)); the recipe's analysis block "
                      "is not in the report")
    elif wanted and world().main:
        from ..analysis.runner import analyse_coarse_to_fine
        from .report import write_report

        analyse_coarse_to_fine(recipe, Path(run_dir), progress=progress)
        write_report(Path(run_dir))
    barrier()
    return summary

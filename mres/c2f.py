"""The coarse-to-fine job (DESIGN §1, §3.4–3.5): train coarse, transfer, train fine, compare.

For every trial: train the model at the coarsest resolution (shared by all strategies); then
for every variant (strategy × lam × coefficient policy) move it up grid by grid — transfer,
BN recalibration, evaluation before any fine training, training at that grid — while ``fresh``
trains a new model at the finest grid only.  Every phase writes its checkpoint and a
``result.json``; a rerun skips finished phases, so an interrupted job resumes.

Run directory::

    recipe.yaml  summary.json  report.md  report.html  figures/
    trial0/coarse-14/{checkpoints/last.pt, metrics.jsonl, metrics.csv, result.json}
    trial0/galerkin/fine-28/{checkpoints/last.pt, metrics.*, result.json, diagnostics.json}
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .checkpoint import load_checkpoint, save_checkpoint
from .data import TensorData, iterate_batches, load_dataset
from .errors import DivergedError
from .models import build_model
from .recipe import CoarseToFineRecipe, TrainConfig, dump_yaml, to_plain
from .train import configure_runtime, console, evaluate, fit, select_device
from .transfer import function_preservation, recalibrate_bn, transfer_weights


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
        return self.label.replace("(", "-").replace(")", "").replace("[", "-").replace("]", "").replace("=", "")


def variants(recipe: CoarseToFineRecipe, has_coefficients: bool) -> list[Variant]:
    policies = recipe.coefficient_policies if has_coefficients else ["keep"]
    out: list[Variant] = []
    for s in recipe.strategies:
        if s == "fresh":
            out.append(Variant("fresh"))
            continue
        for lam in (recipe.lams if s == "galerkin-reg" else [0.0]):
            for pol in policies:
                out.append(Variant(s, lam, pol))
    return out


def _has_coefficients(model: nn.Module) -> bool:
    """Polynomial smoother coefficients that the coefficient policies act on (Poly-MgNet)."""
    levels = getattr(model, "smoothing_levels", None)
    return callable(levels) and any(lvl.coeffs for lvl in levels())


class CoarseToFine:
    def __init__(self, recipe: CoarseToFineRecipe, run_dir: Path, progress: bool = True):
        self.recipe, self.run_dir, self.progress = recipe, Path(run_dir), progress
        self.device = select_device(recipe.device)
        self.data: TensorData | None = None

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
                     label: str, resolution: int) -> dict[str, Any]:
        """Train one phase, resumably; returns its result dict (metrics, seconds, diverged)."""
        result_path = phase_dir / "result.json"
        if result_path.exists():  # finished before: reuse
            result = json.loads(result_path.read_text())
            if not result.get("diverged"):
                model.load_state_dict(load_checkpoint(phase_dir / "checkpoints" / "last.pt")["model"])
            return result
        ckpt = phase_dir / "checkpoints" / "last.pt"
        state = load_checkpoint(ckpt) if ckpt.exists() else None
        t0 = time.perf_counter()
        prior = float(state.get("seconds_so_far", 0.0)) if state else 0.0
        diverged = None
        try:
            metrics = fit(model, data, cfg, seed=seed, augment=self.recipe.dataset.augment, ckpt_path=ckpt,
                          metrics_path=phase_dir / "metrics.jsonl", extra=self._extra(resolution, label),
                          resume=state, label=label, eval_train=True, progress=self.progress)
        except DivergedError as exc:
            console.print(f"[yellow]diverged:[/] {exc}")
            diverged = {"epoch": exc.epoch, "step": exc.step, "message": str(exc)}
            last = phase_dir / "metrics.jsonl"
            metrics = [json.loads(l) for l in last.read_text().splitlines()] if last.exists() else []
        result = {"metrics": metrics, "seconds": prior + time.perf_counter() - t0, "diverged": diverged}
        _write_json(result_path, result)
        return result

    # ------------------------------------------------------------------ the job
    def run(self) -> dict[str, Any]:
        r = self.recipe
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "recipe.yaml").write_text(dump_yaml(r))
        configure_runtime(r.threads, r.coarse.deterministic or r.fine.deterministic)
        self.data = load_dataset(r.dataset, self.device)
        coarse_res, fine_res = r.resolutions[0], r.resolutions[-1]
        probe = self._build(coarse_res, r.seed)
        vs = variants(r, _has_coefficients(probe))
        del probe
        console.print(f"coarse-to-fine {r.model.name} on {r.dataset.name}: grids {r.resolutions}, "
                      f"{len(vs)} variants × {r.trials} trials → {self.run_dir}")
        trials: list[dict[str, Any]] = []
        for trial in range(r.trials):
            seed = r.seed + 1000 * trial
            tdir = self.run_dir / f"trial{trial}"
            # 1. coarse training, shared by every strategy of this trial
            coarse = self._build(coarse_res, seed)
            cdata = self._phase_data(coarse_res, r.coarse_subset, seed)
            cres = self._train_phase(tdir / f"coarse-{coarse_res}", coarse, cdata, r.coarse, seed,
                                     f"t{trial} coarse {coarse_res}", coarse_res)
            coarse_state = {k: v.detach().clone() for k, v in coarse.state_dict().items()}
            entry: dict[str, Any] = {"trial": trial, "seed": seed, "coarse": cres, "variants": {}}
            # 2. each variant up the cascade
            for v in vs:
                entry["variants"][v.label] = self._run_variant(v, tdir, coarse, coarse_state, cres, seed)
            trials.append(entry)
        summary = summarize(r, vs, trials)
        _write_json(self.run_dir / "summary.json", summary)
        from .report import write_report

        write_report(self.run_dir)
        return summary

    def _run_variant(self, v: Variant, tdir: Path, coarse: nn.Module, coarse_state: dict, cres: dict,
                     seed: int) -> dict[str, Any]:
        r = self.recipe
        vdir = tdir / v.slug
        fine_res = r.resolutions[-1]
        out: dict[str, Any] = {"phases": [], "diverged": None}
        if cres.get("diverged"):
            out["diverged"] = {"phase": "coarse", **cres["diverged"]}
            return out
        if v.strategy == "fresh":
            model = self._build(fine_res, seed + 1)
            chain = [fine_res]
        else:
            coarse.load_state_dict(coarse_state)
            model = coarse
            chain = r.resolutions[1:]
        for level, res in enumerate(chain):
            pdir = vdir / f"fine-{res}"
            data = self._phase_data(res, r.fine_subset, seed + 7)
            phase: dict[str, Any] = {"resolution": res}
            if v.strategy != "fresh":
                src = model
                model = self._build(res, seed + 1)  # fresh init; overwritten by the transfer
                t0 = time.perf_counter()
                diags = transfer_weights(src, model, v.strategy, r.family, v.lam, "prolongate",
                                         coefficient_policy=v.policy)
                if r.bn_recalibrate:
                    g = torch.Generator().manual_seed(seed)
                    recalibrate_bn(model, (xb for xb, _ in iterate_batches(data.x_train, data.y_train, 256, g)))
                x_probe = data.x_test[:256]
                fp = function_preservation(src, model, x_probe, r.family)
                phase["transfer_seconds"] = time.perf_counter() - t0
                phase["diagnostics"] = {"layers": [d.__dict__ for d in diags], "function": fp}
            # the start of this phase, for landscapes / feature pictures (thesis Fig. 4.3)
            start = pdir / "checkpoints" / "start.pt"
            if not start.exists():
                save_checkpoint(start, {**self._extra(res, f"{v.label} start"), "model": model.state_dict(),
                                        "epoch": 0, "metrics": []})
            # evaluation before any training at this grid
            tr_loss, tr_acc = evaluate(model, data.x_train, data.y_train)
            te_loss, te_acc = evaluate(model, data.x_test, data.y_test)
            phase["at_transfer"] = {"train_loss": tr_loss, "train_acc": tr_acc, "test_loss": te_loss,
                                    "test_acc": te_acc}
            res_ = self._train_phase(pdir, model, data, r.fine, seed + 11, f"t{seed // 1000} {v.label} {res}", res)
            phase.update(res_)
            if "diagnostics" in phase:
                _write_json(pdir / "diagnostics.json", phase["diagnostics"])
            out["phases"].append(phase)
            if res_.get("diverged"):
                out["diverged"] = {"phase": f"fine-{res}", **res_["diverged"]}
                break
        return out


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


def summarize(recipe: CoarseToFineRecipe, vs: list[Variant], trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Per strategy, lists over trials (test accuracies in [0, 1], seconds) — summary.json."""
    strategies: dict[str, Any] = {}
    for v in vs:
        rows = {k: [] for k in ("acc_at_transfer", "acc_after_first_epoch", "acc_final", "train_acc_at_transfer",
                                "train_acc_after_first_epoch", "train_acc_final", "seconds", "coarse_seconds",
                                "transfer_seconds", "fine_seconds", "diverged")}
        for t in trials:
            e = t["variants"][v.label]
            div = e.get("diverged")
            rows["diverged"].append(bool(div))
            coarse_s = 0.0 if v.strategy == "fresh" else t["coarse"]["seconds"]
            fine_s = sum(p.get("seconds", 0.0) for p in e["phases"])
            trans_s = sum(p.get("transfer_seconds", 0.0) for p in e["phases"])
            last = e["phases"][-1] if e["phases"] else None
            m = last["metrics"] if last else []
            nan = float("nan")
            rows["acc_at_transfer"].append(last["at_transfer"]["test_acc"] if last else nan)
            rows["train_acc_at_transfer"].append(last["at_transfer"]["train_acc"] if last else nan)
            ok = bool(m) and not div
            rows["acc_after_first_epoch"].append(m[0]["test_acc"] if m else nan)
            rows["train_acc_after_first_epoch"].append(m[0].get("train_eval_acc", m[0]["train_acc"]) if m else nan)
            rows["acc_final"].append(m[-1]["test_acc"] if ok else nan)
            rows["train_acc_final"].append(m[-1].get("train_eval_acc", m[-1]["train_acc"]) if ok else nan)
            rows["coarse_seconds"].append(coarse_s)
            rows["transfer_seconds"].append(trans_s)
            rows["fine_seconds"].append(fine_s)
            rows["seconds"].append(coarse_s + trans_s + fine_s)
        strategies[v.label] = {"strategy": v.strategy, "lam": v.lam, "policy": v.policy, **rows}
    return {"recipe": to_plain(recipe), "resolutions": recipe.resolutions, "trials": len(trials),
            "strategies": strategies}


def run_coarse_to_fine(recipe: CoarseToFineRecipe, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    return CoarseToFine(recipe, run_dir, progress).run()

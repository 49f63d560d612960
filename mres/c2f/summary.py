"""``summary.json``: what the trials of a coarse-to-fine run show (DESIGN §9).

Per variant, lists over trials (accuracies in [0, 1] at the transfer, after the first fine epoch
and at the end, seconds by phase), the curve of test accuracy against cumulative training seconds,
collapse flags, time to accuracy against the baseline and paired tests. Pure functions of the
trials' results: no training, no files.
"""

from __future__ import annotations

import math
from typing import Any

from . import stats, tta
from ..recipe import CoarseToFineRecipe, to_plain
from ..strategies import BASELINE_ORDER, PAIRED_REFERENCE, Variant

COLLAPSE_DROP = 0.20  # final test accuracy this far below the accuracy at transfer: collapsed
COLLAPSE_MARGIN = 0.05  # ... or within this of chance


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
        seconds += ph.get("transfer_seconds", 0.0) + _distill_seconds(ph)
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
        keys = ("coarse_acc", "acc_at_first_transfer", "kept", "acc_at_transfer", "acc_after_first_epoch", "acc_final", "train_acc_at_transfer",
                "train_acc_after_first_epoch", "train_acc_final", "seconds", "train_seconds", "coarse_seconds",
                "transfer_seconds", "fine_seconds", "diverged", "collapsed", "skipped", "curve", "stages")
        rows: dict[str, list[Any]] = {k: [] for k in keys}
        for t in trials:
            e = t["variants"][v.label]
            div = e.get("diverged")
            cres = t.get("coarse") if v.needs_coarse else None
            coarse_s = cres["seconds"] if cres else 0.0
            coarse_train_s = cres.get("train_seconds", 0.0) if cres else 0.0
            fine_s = sum(p.get("seconds", 0.0) + _distill_seconds(p) for p in e["phases"])
            fine_train_s = sum(p.get("train_seconds", 0.0) + _distill_seconds(p) for p in e["phases"])
            trans_s = sum(p.get("transfer_seconds", 0.0) for p in e["phases"])
            last = e["phases"][-1] if e["phases"] else None
            m = last["metrics"] if last else []
            ok = bool(m) and not div
            at = last["at_transfer"]["test_acc"] if last else None
            final = m[-1]["test_acc"] if ok else None
            # what the (first) transfer kept of the coarse model's accuracy on its own grid
            c_acc = cres["metrics"][-1].get("test_acc") if cres and cres.get("metrics") else None
            first = e["phases"][0]["at_transfer"]["test_acc"] if v.needs_coarse and e["phases"] else None
            rows["coarse_acc"].append(c_acc)
            rows["acc_at_first_transfer"].append(first)
            rows["kept"].append(first - c_acc if first is not None and c_acc is not None else None)
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
            rows["collapsed"].append(is_collapsed(final, at if v.needs_coarse else None, chance))
            rows["curve"].append(variant_curve(v, t, recipe.resolutions[0]))
            rows["stages"].append(stage_accuracies(last) if last and last.get("stages") else None)
        strategies[v.label] = {"strategy": v.strategy, "lam": v.lam, "policy": v.policy, **rows}
    baseline, note = choose_baseline(strategies, chance)
    summary = {"recipe": to_plain(recipe), "resolutions": recipe.resolutions, "trials": len(trials),
               "chance": chance, "baseline": baseline, "baseline_note": note, "fine_only_epochs": fine_only_epochs,
               "strategies": strategies}
    summary["time_to_accuracy"] = time_to_accuracy(strategies, baseline, finest)
    summary["statistics"] = statistics(strategies, baseline)
    return summary


def choose_baseline(strategies: dict[str, Any], chance: float) -> tuple[str | None, str | None]:
    """The reference of speedups and paired tests: the first baseline (mres.strategies.BASELINE_ORDER) run
    whose every trial trained — never one that collapsed, diverged or was skipped. Returns it and, when
    one was passed over or none trained, the line that says so."""
    passed = []
    for b in (b for b in BASELINE_ORDER if b in strategies):
        s = strategies[b]
        why = _untrained(s, chance)
        if why is None:
            note = (f"{'; '.join(passed)}: the reference is `{b}`" if passed else None)
            return b, note
        passed.append(f"`{b}` {why}")
    return None, (f"{'; '.join(passed)}: no baseline trained, so no speedups or paired tests against one"
                  if passed else None)


def _untrained(s: dict[str, Any], chance: float) -> str | None:
    """Why a baseline's trials cannot be a reference (None: they can)."""
    finals = [a for a in s["acc_final"] if a is not None]
    if any(s["diverged"]):
        return f"diverged in {sum(map(bool, s['diverged']))} of {len(s['diverged'])} trials"
    if any(s["skipped"]) or len(finals) < len(s["acc_final"]):
        return "has trials without a final accuracy"
    if any(s["collapsed"]):
        return (f"collapsed (final {100 * sum(finals) / len(finals):.1f} %, chance {100 * chance:.1f} %) in "
                f"{sum(map(bool, s['collapsed']))} of {len(s['collapsed'])} trials")
    return None


def _distill_seconds(phase: dict[str, Any]) -> float:
    return (phase.get("distill") or {}).get("seconds", 0.0)


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
    refs = [r for r in dict.fromkeys([PAIRED_REFERENCE, baseline]) if r in strategies]
    for label, s in strategies.items():
        entry: dict[str, Any] = {"acc_final": stats.mean_ci(s["acc_final"]), "vs": {}}
        for ref in refs:
            if ref != label:
                entry["vs"][ref] = stats.paired_test(s["acc_final"], strategies[ref]["acc_final"])
        out[label] = entry
    return out

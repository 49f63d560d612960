"""Results beyond one run directory: several coarse-to-fine runs side by side.

One row per (run, strategy): final test accuracy (mean ± std, 95 % CI), what the transfer kept, training
seconds to a common reference accuracy, wall-clock, trials — and a column saying what differs between the
runs' recipes (dotted keys, computed from the recipes, never typed).  Each run's strategies are compared
with the same strategy of the first run that has it: **paired** (``scipy.stats.ttest_rel``, trial by
trial) when the two runs share their seed and trials — then trial k of both started from the same seed —
otherwise **unpaired**, Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``), and the table says
which.  The reference accuracy is the lowest final mean accuracy of the runs' baselines, so that every
run's baseline reaches it.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats as sps

from ..analysis.figures import save_figure
from ..errors import UserError
from ..training.rundir import changed_keys, get_dotted
from . import stats, tta
from .report import read_summary

HEAD = ["run", "strategy", "final %", "95 % CI", "kept (pts)", "s to ref.", "wall s", "trials", "vs first run",
        "differs"]


@dataclass
class Run:
    name: str
    path: Path
    summary: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def finest(self) -> int:
        return int(self.summary["resolutions"][-1])


def load_runs(paths: Sequence[Path]) -> list[Run]:
    """Each directory's summary, with a note where it is incomplete; a directory that is not a finished run
    is a UserError naming it."""
    if not paths:
        raise UserError("mres compare needs at least one run directory")
    runs: list[Run] = []
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            raise UserError(f"{p} is not a directory (give coarse-to-fine run directories)")
        if not (p / "summary.json").exists():
            hint = " (it has trial folders: finish it with --resume)" if any(p.glob("trial*")) else ""
            raise UserError(f"{p} is not a finished coarse-to-fine run: no summary.json{hint}")
        summary = read_summary(p)
        run = Run(_unique_name(p, [r.name for r in runs]), p, summary)
        asked = (summary.get("recipe") or {}).get("trials")
        if isinstance(asked, int) and asked > summary["trials"]:
            run.notes.append(f"{run.name}: {summary['trials']} of the {asked} trials its recipe asks are finished; "
                             "only those are compared")
        runs.append(run)
    finest = {r.finest for r in runs}
    if len(finest) > 1:
        runs[0].notes.append("the runs end on different grids (" + ", ".join(f"{r.name}: {r.finest}×{r.finest}"
                                                                            for r in runs)
                             + "): accuracies are of different images")
    return runs


def _unique_name(path: Path, taken: list[str]) -> str:
    name = path.name or str(path)
    k = 2
    base = name
    while name in taken:
        name = f"{base}#{k}"
        k += 1
    return name


def recipe_differences(runs: Sequence[Run]) -> list[str]:
    """Per run, ``key=value`` for every dotted recipe key whose value is not the same in all runs."""
    recipes = [{k: v for k, v in (r.summary.get("recipe") or {}).items() if k != "amendments"} for r in runs]
    keys: set[str] = set()
    for other in recipes[1:]:
        keys.update(changed_keys(recipes[0], other))
    out = []
    for rec in recipes:
        parts = [f"{k}={_short(get_dotted(rec, k))}" for k in sorted(keys)]
        out.append(", ".join(parts) if parts else "—")
    return out


def _short(v: Any) -> str:
    text = str(v).replace(" ", "")
    return text if len(text) <= 24 else text[:21] + "…"


def reference_accuracy(runs: Sequence[Run]) -> float | None:
    """The lowest of the runs' baseline mean final accuracies (every baseline reaches it)."""
    means = []
    for r in runs:
        base = r.summary.get("baseline")
        if base and base in r.summary["strategies"]:
            m = stats.mean_ci(r.summary["strategies"][base]["acc_final"])["mean"]
            if m is not None:
                means.append(m)
    return min(means) if means else None


def shares_trials(a: Run, b: Run) -> bool:
    """Trial k of both runs started from the same seed (the c2f job seeds trial k with seed + 1000 k)."""
    return (a.summary["recipe"].get("seed") == b.summary["recipe"].get("seed")
            and a.summary["trials"] == b.summary["trials"])


def counterpart(label: str, a: Run, b: Run) -> str | None:
    """The variant of run ``b`` to set against ``label`` of run ``a``: the same label, or — when the runs differ
    in λ or policy — the one variant of the same strategy, if each run has exactly one."""
    if label in b.summary["strategies"]:
        return label
    name = a.summary["strategies"][label].get("strategy")
    mine = [k for k, s in a.summary["strategies"].items() if s.get("strategy") == name]
    theirs = [k for k, s in b.summary["strategies"].items() if s.get("strategy") == name]
    return theirs[0] if name and len(mine) == 1 and len(theirs) == 1 else None


def compare_to(a: Run, b: Run, label: str) -> dict[str, Any] | None:
    """``label``'s final accuracy in run ``a`` against its counterpart in run ``b``: paired when they share
    trials, else Welch."""
    other = counterpart(label, a, b)
    if other is None:
        return None
    x = a.summary["strategies"][label]["acc_final"]
    y = b.summary["strategies"][other]["acc_final"]
    if shares_trials(a, b):
        t = stats.paired_test(x, y)
        p = t["p_t"] if t["p_t"] is not None else t["p_sign"]
        return {"test": "paired", "n": t["n"], "mean_diff": t["mean_diff"], "p": p, "significant": t["significant"]}
    xs, ys = stats._finite(x), stats._finite(y)
    out = {"test": "unpaired (Welch)", "n": [len(xs), len(ys)],
           "mean_diff": float(xs.mean() - ys.mean()) if len(xs) and len(ys) else None, "p": None,
           "significant": False}
    if len(xs) > 1 and len(ys) > 1 and (xs.std() > 0 or ys.std() > 0):
        p = float(sps.ttest_ind(xs, ys, equal_var=False).pvalue)
        out.update(p=p, significant=p < stats.ALPHA)
    return out


def compare_rows(runs: Sequence[Run]) -> tuple[list[str], list[list[str]], list[dict[str, Any]], float | None]:
    """The table (head, rows as text), the same rows as numbers (for CSV readers and tests) and the reference
    accuracy."""
    ref = reference_accuracy(runs)
    diffs = recipe_differences(runs)
    rows: list[list[str]] = []
    records: list[dict[str, Any]] = []
    for i, (run, diff) in enumerate(zip(runs, diffs)):
        for label, s in run.summary["strategies"].items():
            final = stats.mean_ci(s["acc_final"])
            kept = stats.mean_ci(s.get("kept") or [])
            secs = [tta.seconds_to(c, ref, run.finest) for c in s.get("curve") or []] if ref is not None else []
            reached = [t for t in secs if t is not None]
            wall = stats.mean_ci(s.get("seconds") or [])
            first = next((r for r in runs[:i] if counterpart(label, run, r) is not None), None)
            vs = compare_to(run, first, label) if first is not None else None
            rec = {"run": run.name, "path": str(run.path), "strategy": label, "final_mean": final["mean"],
                   "final_std": final["std"], "final_ci": final["ci"], "kept_mean": kept["mean"],
                   "seconds_to_reference": float(np.mean(reached)) if reached else None,
                   "reached": f"{len(reached)}/{len(secs)}", "wall_seconds": wall["mean"], "trials": final["n"],
                   "vs": vs, "vs_run": first.name if first is not None else None, "differs": diff}
            records.append(rec)
            rows.append([run.name, label, _pct_ms(final), _ci(final["ci"]),
                         "—" if kept["mean"] is None else f"{kept['mean'] * 100:+.1f}",
                         _reached(rec["seconds_to_reference"], len(reached), len(secs)),
                         "—" if wall["mean"] is None else f"{wall['mean']:.1f}", str(final["n"]),
                         _vs(vs, first.name if first else None), diff])
    return list(HEAD), rows, records, ref


def _pct_ms(m: dict[str, Any]) -> str:
    if m["mean"] is None:
        return "—"
    return f"{m['mean'] * 100:.2f}" + (f" ± {m['std'] * 100:.2f}" if m["std"] is not None else "")


def _ci(ci: list[float] | None) -> str:
    return "—" if not ci else f"{max(0.0, ci[0]) * 100:.1f}–{min(1.0, ci[1]) * 100:.1f}"


def _reached(mean: float | None, k: int, n: int) -> str:
    if mean is None:
        return "—" if n else "n/a"
    return f"{mean:.2f}" + ("" if k == n else f" ({k}/{n})")


def _vs(vs: dict[str, Any] | None, name: str | None) -> str:
    if not vs or vs["mean_diff"] is None:
        return "—"
    p = "p n/a" if vs["p"] is None else f"p={vs['p']:.3f}"
    mark = "*" if vs["significant"] else ""
    return f"{vs['mean_diff'] * 100:+.2f}{mark} vs {name} ({vs['test']} {p})"


def compare_figure(runs: Sequence[Run], out: Path, ref: float | None = None) -> list[Path]:
    """Test accuracy (%) against counted training seconds, mean over trials: one colour per run, one line
    style per strategy, the legend outside the axes; the reference accuracy as a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = ["-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 1)), (0, (5, 3, 1, 3))]
    names = sorted({s.get("strategy") or label for r in runs for label, s in r.summary["strategies"].items()})
    fig, ax = plt.subplots(figsize=(8.5, 4.2), constrained_layout=True)
    handles = []
    for i, run in enumerate(runs):
        colour = f"C{i % 10}"
        for label, s in run.summary["strategies"].items():
            xs, ys = _mean_curve(s.get("curve") or [], run.finest)
            if not xs:
                continue
            style = styles[names.index(s.get("strategy") or label) % len(styles)]  # one style per strategy
            (h,) = ax.plot(xs, ys, color=colour, linestyle=style, marker=".",
                           markersize=3, linewidth=1.3, label=f"{run.name}: {label}")
            handles.append(h)
    if ref is not None:
        ax.axhline(ref * 100, color="0.5", linestyle=":", linewidth=0.9)
        ax.annotate(f"reference {ref * 100:.1f} %", (0, ref * 100), xycoords=("axes fraction", "data"),
                    xytext=(4, 3), textcoords="offset points", fontsize=7, color="0.35")
    ax.set_xlabel("training seconds, coarse phases included (counted: steps, transfers, BN recalibration)")
    ax.set_title("test accuracy on the finest grid, mean over trials", fontsize=9)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    return save_figure(fig, out / "compare.png", dpi=150)


def _mean_curve(curves: list[list[dict[str, Any]]], finest: int) -> tuple[list[float], list[float]]:
    """Point k of every trial's curve on the finest grid averaged (trials of one run have the same epochs);
    its seconds include the coarse phases before it."""
    curves = [[p for p in c if p.get("resolution") == finest] for c in curves]
    curves = [c for c in curves if c]
    if not curves:
        return [], []
    n = min(len(c) for c in curves)
    xs, ys = [], []
    for k in range(n):
        acc = [c[k].get("test_acc") for c in curves]
        acc = [a for a in acc if a is not None and math.isfinite(a)]
        if acc:
            xs.append(float(np.mean([c[k]["seconds"] for c in curves])))
            ys.append(float(np.mean(acc)) * 100)
    return xs, ys


CSV_HEAD = ["run", "path", "strategy", "final_mean_pct", "final_std_pct", "ci_low_pct", "ci_high_pct", "kept_pts",
            "seconds_to_reference", "reached", "wall_seconds", "trials", "vs first run", "differs"]


def write_compare_csv(records: Sequence[dict[str, Any]], rows: Sequence[Sequence[str]], path: Path) -> None:
    """The compare table as numbers (percent, seconds), one line per run and strategy."""
    def x100(v: float | None) -> float | None:
        return None if v is None else round(v * 100, 4)

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_HEAD)
        for rec, row in zip(records, rows):
            ci = rec["final_ci"] or [None, None]
            w.writerow([rec["run"], rec["path"], rec["strategy"], x100(rec["final_mean"]), x100(rec["final_std"]),
                        x100(ci[0]), x100(ci[1]), x100(rec["kept_mean"]), rec["seconds_to_reference"],
                        rec["reached"], rec["wall_seconds"], rec["trials"], row[HEAD.index("vs first run")],
                        rec["differs"]])

"""Time to accuracy: Pareto fronts of coarse-to-fine against fine-only training (DESIGN §9).

Every point is one budget-planned run of the coarse-to-fine job (``mres.c2f``), so the bench
measures exactly what a user's run does:

- fine-only: the thesis CNN trained at the finest grid only, for each budget in ``--fine-budgets``
  epochs, each with its own cosine plan;
- coarse-to-fine: the same model trained on R-restricted images and transferred (``--strategies``),
  over a grid of (coarse epochs, fine epochs), the two schedule scopes (``phase``: each phase its
  own cosine; ``run``: one cosine over both), momentum carried across the transfer, coarse batch
  scaling, and cascades 7 → 14 → 28.

Seconds are training seconds (optimizer steps + transfer + BN recalibration; per-epoch evaluation
is monitoring and not counted). Points are measured interleaved in one run, so drift of the
machine's speed hits both fronts alike. The bench prints every (seconds, accuracy) point, both
Pareto fronts, T_c2f(a) / T_fine(a) at matched accuracy along the fine-only front (linear between
front points — an assumption) and, as the headline, that ratio at the fine-only's best accuracy.

    python analysis/bench_c2f.py                    # full sweep, Fashion-MNIST 20k/5k (~35 min, 2 cores)
    python analysis/bench_c2f.py --quick            # a first look (~8 min)
    python analysis/bench_c2f.py --dataset npz --path F.npz
    python analysis/bench_c2f.py --out runs/bench --points run-c8-f1,fo-e6 --trials 3   # resumable

With ``--out DIR`` every point is a resumable run directory under ``DIR/points/``; a rerun reuses
finished points (it says from which sessions they come: timings of different sessions are not
side by side). Without ``--out`` a temporary directory is used and removed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mres import tta
from mres.c2f import CoarseToFine
from mres.recipe import CoarseToFineRecipe, validate_recipe
from mres.train import configure_runtime, fit
from mres.train import console as job_console

OPT = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}


@dataclass
class Point:
    """One budget-planned run: a name, its recipe overrides and which front it belongs to."""

    name: str
    front: str  # "fine-only" or "c2f"
    recipe: dict[str, Any]
    what: str
    results: list[dict[str, Any]] = field(default_factory=list)  # one per strategy of the run


def sweep(args: argparse.Namespace) -> list[Point]:
    """The points of the sweep, interleaved fine-only / coarse-to-fine so both fronts see the same drift."""
    fine = args.fine
    coarse, coarser = fine // 2, fine // 4
    fo = [Point(f"fo-e{e}", "fine-only", {"resolutions": [coarse, fine], "strategies": ["fine-only"],
                                          "fine_only": {"epochs": e}}, f"fine-only {e} epochs")
          for e in args.fine_budgets]
    c2f: list[Point] = []

    def add(name: str, what: str, **kw: Any) -> None:
        rec = {"resolutions": [coarse, fine], "strategies": args.strategies, **kw}
        c2f.append(Point(name, "c2f", rec, what))

    quick = args.quick
    phase_grid = [(4, 1)] if quick else [(2, 1), (4, 1), (4, 2), (8, 1)]
    run_grid = [(4, 1), (8, 1)] if quick else [(2, 1), (4, 1), (4, 2), (8, 1), (8, 2), (12, 1)]
    for ce, fe in phase_grid:  # the thesis's way: each phase its own cosine, fine lr 0.02
        add(f"phase-c{ce}-f{fe}", f"{coarse}→{fine} phase-scope c{ce}+f{fe}", epochs_per_grid=[ce, fe],
            schedule_scope="phase", fine={"optimizer": {**OPT, "lr": 0.02}})
    for ce, fe in run_grid:  # one cosine over both phases (progressive resizing)
        add(f"run-c{ce}-f{fe}", f"{coarse}→{fine} run-scope c{ce}+f{fe}", epochs_per_grid=[ce, fe],
            schedule_scope="run")
    for ce, fe in ([(8, 1)] if quick else [(4, 1), (8, 1)]):
        if not quick:
            add(f"run-carry-c{ce}-f{fe}", f"{coarse}→{fine} run-scope + momentum carried c{ce}+f{fe}",
                epochs_per_grid=[ce, fe], schedule_scope="run", carry_optimizer=True)
        add(f"run-bs-c{ce}-f{fe}", f"{coarse}→{fine} run-scope + coarse batch ×4 (lr ×4) c{ce}+f{fe}",
            epochs_per_grid=[ce, fe], schedule_scope="run", coarse_batch_scaling=True)
    for eg in ([[4, 4, 1]] if quick else [[4, 2, 1], [4, 4, 1], [8, 4, 1]]):  # cascades
        add(f"cascade-{'-'.join(map(str, eg))}", f"{coarser}→{coarse}→{fine} run-scope {eg}",
            resolutions=[coarser, coarse, fine], epochs_per_grid=eg, schedule_scope="run")
    out: list[Point] = []
    for i in range(max(len(fo), len(c2f))):
        out += fo[i:i + 1] + c2f[i:i + 1]
    if args.points:
        wanted = set(args.points)
        unknown = wanted - {p.name for p in out}
        if unknown:
            sys.exit(f"--points: unknown {', '.join(sorted(unknown))}; known: {', '.join(p.name for p in out)}")
        out = [p for p in out if p.name in wanted]
    return out


def base_recipe(args: argparse.Namespace) -> dict[str, Any]:
    ds: dict[str, Any] = {"name": args.dataset, "train_subset": args.n_train, "test_subset": args.n_test}
    if args.dataset == "npz":
        ds["path"] = args.path
    if args.dataset == "synthetic":
        ds["synthetic"] = {"n_train": args.n_train, "n_test": args.n_test, "size": args.fine}
    block = {"batch_size": 128, "optimizer": OPT, "schedule": "cosine"}
    return {"dataset": ds, "model": {"name": "cnn", "pool": args.pool}, "family": args.family,
            "coarse": dict(block), "fine": dict(block), "trials": args.trials, "eval_train": False,
            "bn_recalibrate": True, "seed": 0}


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run_point(p: Point, base: dict[str, Any], root: Path, session: str) -> None:
    pdir = root / "points" / p.name
    done = pdir / "bench.json"
    if done.exists():
        saved = json.loads(done.read_text())
        if saved["recipe"] == merge(base, p.recipe):
            p.results = saved["results"]
            return
        shutil.rmtree(pdir)  # the sweep's settings changed: measure again
    recipe = validate_recipe(merge(base, p.recipe), CoarseToFineRecipe, f"point {p.name}")
    t0 = time.perf_counter()
    summary = CoarseToFine(recipe, pdir, progress=False).run()
    for label, s in summary["strategies"].items():
        acc = [a for a in s["acc_final"] if a is not None]
        secs = s["train_seconds"]
        p.results.append({
            "strategy": label, "seconds": sum(secs) / len(secs), "acc": sum(acc) / len(acc) if acc else None,
            "seconds_trials": secs, "acc_trials": s["acc_final"], "collapsed": s["collapsed"],
            "coarse_seconds": s["coarse_seconds"], "transfer_seconds": s["transfer_seconds"],
            "finest_seconds": _finest_seconds(pdir, summary, label), "session": session})
    done.write_text(json.dumps({"recipe": merge(base, p.recipe), "results": p.results,
                                "wall": time.perf_counter() - t0}, indent=1))


def _finest_seconds(pdir: Path, summary: dict[str, Any], label: str) -> list[float]:
    """Training seconds spent on the finest grid, per trial (from the phases' results)."""
    from mres.c2f import Variant

    s = summary["strategies"][label]
    slug = Variant(s["strategy"], s["lam"], s["policy"]).slug
    finest = summary["resolutions"][-1]
    out = []
    for t in range(summary["trials"]):
        r = pdir / f"trial{t}" / slug / f"fine-{finest}" / "result.json"
        out.append(json.loads(r.read_text()).get("train_seconds", 0.0) if r.exists() else 0.0)
    return out


def warm_up(base: dict[str, Any], args: argparse.Namespace) -> None:
    """A few untimed steps at every grid, so the first measured point pays no start-up costs."""
    from mres.data import load_dataset
    from mres.models import build_model
    from mres.recipe import DatasetConfig, TrainConfig

    data = load_dataset(DatasetConfig.model_validate({**base["dataset"], "train_subset": 1024, "test_subset": 256}))
    for res in (args.fine // 4, args.fine // 2, args.fine):
        d = data.at_resolution(res, args.family)
        model = build_model("cnn", {"pool": args.pool}, d.in_channels, d.num_classes, res)
        fit(model, d, TrainConfig(epochs=1, batch_size=128, optimizer=OPT), progress=False)


def fmt_front(front: list[tuple[float, float]]) -> str:
    return "  ".join(f"({s:.0f} s, {a * 100:.2f} %)" for s, a in front)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "npz", "synthetic"])
    ap.add_argument("--path", help="the .npz file of --dataset npz (x_train, y_train, x_test, y_test)")
    ap.add_argument("--n-train", type=int, default=None, help="training examples (default 20000; 10000 with --quick)")
    ap.add_argument("--n-test", type=int, default=None, help="test examples (default 5000; 2000 with --quick)")
    ap.add_argument("--fine", type=int, default=28, help="finest grid (coarse grids: /2, /4)")
    ap.add_argument("--fine-budgets", type=lambda t: [int(x) for x in t.split(",")], default=None,
                    help="fine-only budgets in epochs (default 1,2,3,4,6; 1,2,4 with --quick)")
    ap.add_argument("--strategies", type=lambda t: t.split(","), default=["transfer"])
    ap.add_argument("--family", default="average-bilinear")
    ap.add_argument("--pool", action="store_true", help="the thesis CNN with its 2×2 average pool")
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a smaller sweep on fewer examples, for a first look")
    ap.add_argument("--points", type=lambda t: t.split(","), default=None, help="only these points (names)")
    ap.add_argument("--out", type=Path, default=None, help="keep the runs here (resumable); default: a temp dir")
    ap.add_argument("--plot", type=Path, default=None, help="PNG of the fronts (default OUT/fronts.png or ./)")
    args = ap.parse_args()
    if args.dataset == "npz" and not args.path:
        ap.error("--dataset npz needs --path F.npz")
    args.n_train = args.n_train or (10000 if args.quick else 20000)
    args.n_test = args.n_test or (2000 if args.quick else 5000)
    args.fine_budgets = args.fine_budgets or ([1, 2, 4] if args.quick else [1, 2, 3, 4, 6])

    configure_runtime(os.cpu_count())
    root = args.out or Path(tempfile.mkdtemp(prefix="bench_c2f_"))
    root.mkdir(parents=True, exist_ok=True)
    session = time.strftime("%Y-%m-%d %H:%M:%S")
    points = sweep(args)
    base = base_recipe(args)
    print(f"{args.dataset}: {args.n_train} train / {args.n_test} test images, finest grid {args.fine}, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}, threads {torch.get_num_threads()}, "
          f"{len(points)} points × {args.trials} trial(s) → {root}", flush=True)
    job_console.quiet = True  # the jobs' own header lines; the bench prints one line per point
    warm_up(base, args)
    for i, p in enumerate(points, 1):
        run_point(p, base, root, session)
        for r in p.results:
            print(f"[{i}/{len(points)}] {p.name:<18} {r['strategy']:<22} {r['seconds']:7.1f} s  "
                  f"{(r['acc'] or 0) * 100:6.2f} %  ({p.what})", flush=True)
    report(points, args, root, session)
    if args.out is None:
        shutil.rmtree(root)


def report(points: list[Point], args: argparse.Namespace, root: Path, session: str) -> None:
    rows = [(p, r) for p in points for r in p.results if r["acc"] is not None]
    sessions = sorted({r["session"] for _, r in rows})
    fo = [(r["seconds"], r["acc"]) for p, r in rows if p.front == "fine-only"]
    c2f = [(r["seconds"], r["acc"]) for p, r in rows if p.front == "c2f"]
    print("\nall points (training seconds, final test accuracy; mean over trials):")
    print(f"  {'point':<20}{'strategy':<22}{'seconds':>9}{'acc %':>8}{'finest-grid share':>19}  what")
    for p, r in sorted(rows, key=lambda pr: pr[1]["seconds"]):
        share = sum(r["finest_seconds"]) / max(1e-9, sum(r["seconds_trials"]))
        col = " collapsed" if any(r["collapsed"]) else ""
        print(f"  {p.name:<20}{r['strategy']:<22}{r['seconds']:9.1f}{r['acc'] * 100:8.2f}{share:19.0%}  {p.what}{col}")
    f_front, c_front = tta.pareto_front(fo), tta.pareto_front(c2f)
    print(f"\nfine-only front:      {fmt_front(f_front)}")
    print(f"coarse-to-fine front: {fmt_front(c_front)}")
    ratios = tta.matched_ratios(c2f, fo)
    if ratios:
        print("\nmatched accuracy along the fine-only front (T_fine interpolated linearly between its points):")
        for m in ratios:
            print(f"  a = {m['accuracy'] * 100:.2f} %: T_c2f {m['seconds']:.0f} s, T_fine(a) {m['reference_seconds']:.0f} s, "
                  f"ratio {m['ratio']:.3f}")
    h = tta.headline(c2f, fo)
    best_c2f = max(((r["acc"], r["seconds"], p) for p, r in rows if p.front == "c2f"), default=None,
                   key=lambda t: t[0])
    if h["reached"]:
        how = ("its cheapest point, already above a*: an upper bound" if h.get("upper_bound")
               else "interpolated on the c2f front")
        print(f"\nheadline: at the fine-only's best accuracy a* = {h['accuracy'] * 100:.2f} %, "
              f"T_c2f(a*) = {h['candidate_seconds']:.0f} s ({how}), "
              f"T_fine(a*) = {h['reference_seconds']:.0f} s: ratio {h['ratio']:.3f} (goal <= 0.5)")
    elif h["accuracy"] is not None:
        extra = (f"; at the best accuracy both reach ({h['candidate_best'] * 100:.2f} %) the ratio is {h['ratio']:.3f}"
                 if h.get("ratio") else "")
        print(f"\nheadline: coarse-to-fine never reached the fine-only's best accuracy {h['accuracy'] * 100:.2f} % "
              f"(its best: {h['candidate_best'] * 100:.2f} %){extra} (goal <= 0.5)")
    if best_c2f:
        p = best_c2f[2]
        print(f"best coarse-to-fine point: {p.name} ({p.what}): {best_c2f[0] * 100:.2f} % in {best_c2f[1]:.0f} s")
    if len(sessions) > 1:
        print(f"note: points come from {len(sessions)} sessions ({', '.join(sessions)}); only points of one session "
              "are measured side by side")
    if args.trials < 2:
        print("note: one trial per point; a ratio near the goal is not a finding until the key points have >= 3 trials")
    png = args.plot or ((args.out / "fronts.png") if args.out else Path("bench_c2f_fronts.png"))
    plot(rows, f_front, c_front, h, png, args)
    (root / "points.json").write_text(json.dumps([{"name": p.name, "front": p.front, "what": p.what, **r}
                                                  for p, r in rows], indent=1))
    print(f"figure: {png}")


def plot(rows: list[tuple[Point, dict]], f_front, c_front, h: dict, png: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6))
    styles = {"fine-only": ("tab:blue", "o"), "c2f": ("tab:orange", "s")}
    for front_name, (color, marker) in styles.items():
        pts = [(r["seconds"], r["acc"], p.name) for p, r in rows if p.front == front_name]
        ax.scatter([s for s, _, _ in pts], [a * 100 for _, a, _ in pts], color=color, marker=marker, alpha=0.5,
                   label=f"{front_name} points")
        for s, a, name in pts:
            ax.annotate(name, (s, a * 100), fontsize=6, xytext=(3, -8), textcoords="offset points", color=color)
    for front, (color, _), name in ((f_front, styles["fine-only"], "fine-only front"),
                                    (c_front, styles["c2f"], "coarse-to-fine front")):
        ax.plot([s for s, _ in front], [a * 100 for _, a in front], color=color, lw=2, label=name)
    if h.get("reached"):
        ax.axhline(h["accuracy"] * 100, color="grey", ls=":", lw=1)
        ax.annotate(f"ratio {h['ratio']:.2f} at fine-only best", (h["candidate_seconds"], h["accuracy"] * 100),
                    xytext=(5, 5), textcoords="offset points", fontsize=9)
    ax.set_xlabel("training seconds (optimizer steps + transfers + BN recalibration; evaluation not counted)")
    ax.set_ylabel("final test accuracy %")
    ax.set_title(f"time to accuracy, {args.dataset} ({args.n_train} train), thesis CNN, finest grid {args.fine}; "
                 f"{args.trials} trial(s) per point")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()

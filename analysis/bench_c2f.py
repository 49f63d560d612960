"""Time to accuracy: Pareto fronts of coarse-to-fine against fine-only training (DESIGN §9).

Every point is one budget-planned run of the coarse-to-fine job (``mres.c2f.job``), so the bench
measures exactly what a user's run does:

- fine-only: the thesis CNN trained at the finest grid only, for each budget in ``--fine-budgets``
  epochs, each with its own cosine plan;
- coarse-to-fine: the same model trained on R-restricted images and transferred (``--strategies``),
  over a grid of (coarse epochs, fine epochs), the two schedule scopes (``phase``: each phase its
  own cosine; ``run``: one cosine over both), momentum carried across the transfer, coarse batch
  scaling, and cascades 7 → 14 → 28;
- multilevel training (mres/c2f/multilevel.py), set against the one-shot coarse-to-fine front: ``mgopt``
  (run-scope schedules plus MG/OPT coarse corrections every N fine steps) and ``joint`` (the finest
  weights trained on both grids at once, Galerkin-tied); ``--no-multilevel`` leaves them out.

Seconds are training seconds (optimizer steps + transfer + BN recalibration; per-epoch evaluation
is monitoring and not counted). Points are measured interleaved in one run, so drift of the
machine's speed hits both fronts alike. The bench prints every (seconds, accuracy) point, both
Pareto fronts, T_c2f(a) / T_fine(a) at matched accuracy along the fine-only front (linear between
front points — an assumption) and, as the headline, that ratio at the fine-only's best accuracy.

    python analysis/bench_c2f.py                    # full sweep, 35 points, Fashion-MNIST 20k/5k (~30 min, 2 cores)
    python analysis/bench_c2f.py --quick            # a first look (~5 min)
    python analysis/bench_c2f.py --dataset npz --path F.npz
    python analysis/bench_c2f.py --out runs/bench --points run-c8-f1,fo-e6 --trials 3   # resumable

``--flush-compare POINT`` measures one point twice, subnormal floats kept (``flush_denormal: false``) and
flushed (the default), and prints per strategy the finest grid's seconds per epoch side by side, their
ratio and both accuracies (flushing must not change them):

    python analysis/bench_c2f.py --flush-compare run-c8-f2 --strategies transfer,galerkin-data,distill

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

from mres.analysis.figures import save_figure
from mres.c2f import tta
from mres.c2f.job import CoarseToFine
from mres.errors import UserError
from mres.recipe import CoarseToFineRecipe, validate_recipe
from mres.strategies import STRATEGIES
from mres.training.fit import configure_runtime, fit
from mres.training.fit import console as job_console

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
    phase_grid = [(4, 1), (4, 2)] if quick else [(2, 1), (4, 1), (4, 2), (8, 1), (8, 2), (4, 3), (4, 4), (8, 4)]
    run_grid = [(4, 1), (8, 1)] if quick else [(2, 1), (4, 1), (4, 2), (8, 1), (8, 2), (8, 4), (12, 1), (16, 1)]
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
    if not quick:  # a warm-up after the transfer (half an epoch, linear)
        warm = {"schedule": {"name": "cosine", "warmup_epochs": 0.5}}
        add("phase-warm-c4-f2", f"{coarse}→{fine} phase-scope c4+f2, fine warm-up 0.5 epoch",
            epochs_per_grid=[4, 2], schedule_scope="phase", fine={"optimizer": {**OPT, "lr": 0.02}, **warm})
        add("run-warm-c8-f2", f"{coarse}→{fine} run-scope c8+f2, warm-up 0.5 epoch after the transfer",
            epochs_per_grid=[8, 2], schedule_scope="run", fine=warm)
    for eg in ([[4, 4, 1]] if quick else [[4, 2, 1], [4, 4, 1], [8, 4, 1], [8, 8, 1]]):  # cascades
        add(f"cascade-{'-'.join(map(str, eg))}", f"{coarser}→{coarse}→{fine} run-scope {eg}",
            resolutions=[coarser, coarse, fine], epochs_per_grid=eg, schedule_scope="run")
    for eg in ([] if quick else [[4, 4, 1], [4, 4, 2]]):
        add(f"cascade-phase-{'-'.join(map(str, eg))}", f"{coarser}→{coarse}→{fine} phase-scope {eg}",
            resolutions=[coarser, coarse, fine], epochs_per_grid=eg, schedule_scope="phase",
            fine={"optimizer": {**OPT, "lr": 0.02}})
    # transfers that keep what the coarse phase learned: the data fit, distillation, galerkin-reg at 3 λ
    keeping = {"strategies": ["galerkin-data", "distill", "galerkin-reg"], "lams": [0.01, 0.1, 1.0]}
    for ce, fe in ([(8, 1)] if quick else [(4, 1), (8, 1)]):
        add(f"keep-run-c{ce}-f{fe}", f"{coarse}→{fine} run-scope c{ce}+f{fe}, keeping transfers",
            epochs_per_grid=[ce, fe], schedule_scope="run", **keeping)
        add(f"keep-phase-c{ce}-f{fe}", f"{coarse}→{fine} phase-scope c{ce}+f{fe}, keeping transfers",
            epochs_per_grid=[ce, fe], schedule_scope="phase", fine={"optimizer": {**OPT, "lr": 0.02}}, **keeping)
    for ce in ([] if quick else [4, 8]):  # two fine epochs: does a kept start reach fine-only's best accuracy?
        add(f"keep-run-c{ce}-f2", f"{coarse}→{fine} run-scope c{ce}+f2, data fit and distill",
            epochs_per_grid=[ce, 2], schedule_scope="run", strategies=["galerkin-data", "distill"])
    # MG/OPT (mres/c2f/multilevel.py): the one-shot run-scope schedule plus coarse corrections in the fine phase
    mg: list[Point] = []
    for ce, fe in ([(8, 1)] if quick else [(4, 1), (8, 1), (8, 2)]):
        for every in ([50] if quick else [20, 80]):
            mg.append(Point(f"mgopt-c{ce}-f{fe}-e{every}", "mgopt",
                            {"resolutions": [coarse, fine], "strategies": ["mgopt"], "epochs_per_grid": [ce, fe],
                             "schedule_scope": "run", "multilevel": {"every": every, "tau_batch": 512}},
                            f"{coarse}→{fine} run-scope c{ce}+f{fe} + MG/OPT correction every {every} steps"))
    for e in (args.fine_budgets[-1:] if quick else args.fine_budgets[1::2]):  # joint multiscale training, tied weights
        mg.append(Point(f"joint-e{e}", "mgopt", {"resolutions": [coarse, fine], "strategies": ["joint"],
                                                 "fine_only": {"epochs": e}},
                        f"joint {fine}+{coarse} (Galerkin tie, c = 1, 1/2; coarse batch ×2) {e} epochs"))
    # the joint loss is 1.3× sharper than the fine loss at initialisation (multilevel_training/sharpness.py):
    # the same lr relative to its stability limit is 0.05 / 1.3
    for e in ([] if quick else [4, 6]):
        mg.append(Point(f"joint-lr0.038-e{e}", "mgopt",
                        {"resolutions": [coarse, fine], "strategies": ["joint"],
                         "fine_only": {"epochs": e, "optimizer": {**OPT, "lr": 0.038}}},
                        f"joint {fine}+{coarse} (Galerkin tie) {e} epochs at lr 0.038"))
    if args.no_multilevel:
        mg = []
    # spread each group evenly over the run (by fractional position), so a drift hits every front alike
    keyed = [((i + 0.5) / len(group), g, p) for g, group in enumerate((fo, c2f, mg)) for i, p in enumerate(group)]
    out = [p for _, _, p in sorted(keyed, key=lambda t: (t[0], t[1]))]
    if args.flush_compare:
        chosen = [p for p in out if p.name == args.flush_compare]
        if not chosen:
            sys.exit(f"--flush-compare: unknown point {args.flush_compare}; known: {', '.join(p.name for p in out)}")
        return [Point(f"{chosen[0].name}-flush-{word}", chosen[0].front, {**chosen[0].recipe, "flush_denormal": on},
                      f"{chosen[0].what}, subnormals {'flushed' if on else 'kept'}")
                for word, on in (("off", False), ("on", True))]
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
    want = merge(base, p.recipe)
    sessions = [session] * want["trials"]  # the session that measured each trial
    if done.exists():
        saved = json.loads(done.read_text())
        if saved["recipe"] == want:
            p.results = saved["results"]
            return
        if {**saved["recipe"], "trials": want["trials"]} != want:
            shutil.rmtree(pdir)  # the sweep's settings changed: measure again
        else:  # only the number of trials changed: the job keeps the finished trials and adds the rest
            old = _sessions(saved["results"][0], saved["recipe"]["trials"]) if saved["results"] else []
            sessions = (old + sessions)[:want["trials"]] if len(old) < want["trials"] else old[:want["trials"]]
    try:
        recipe = validate_recipe(want, CoarseToFineRecipe, f"point {p.name}")
        t0 = time.perf_counter()
        summary = CoarseToFine(recipe, pdir, progress=False).run()
    except UserError as exc:
        sys.exit(f"error: {exc}")
    for label, s in summary["strategies"].items():
        ok = [i for i, a in enumerate(s["acc_final"]) if a is not None]  # trials with a final accuracy
        p.results.append({
            "strategy": label, "seconds": sum(s["train_seconds"][i] for i in ok) / len(ok) if ok else None,
            "acc": sum(s["acc_final"][i] for i in ok) / len(ok) if ok else None,
            "seconds_trials": s["train_seconds"], "acc_trials": s["acc_final"], "collapsed": s["collapsed"],
            "coarse_seconds": s["coarse_seconds"], "transfer_seconds": s["transfer_seconds"],
            "finest_seconds": _finest_seconds(pdir, summary, label), "sessions": sessions,
            "start": _start_point(s["curve"], summary["resolutions"][-1])})
    done.write_text(json.dumps({"recipe": want, "results": p.results,
                                "wall": time.perf_counter() - t0}, indent=1))


def _start_point(curves: list[list[dict[str, Any]]], finest: int) -> dict[str, float] | None:
    """The model right after the transfer to the finest grid, a model the user can stop at: its mean
    seconds (coarse phases + transfers) and test accuracy over trials; None for a run that starts there."""
    starts = [next((q for q in c if q["phase"] == "start" and q["resolution"] == finest), None) for c in curves]
    starts = [q for q in starts if q is not None and q["test_acc"] is not None]
    if not starts:
        return None
    return {"seconds": sum(q["seconds"] for q in starts) / len(starts),
            "acc": sum(q["test_acc"] for q in starts) / len(starts)}


def _sessions(result: dict[str, Any], trials: int | None = None) -> list[str]:
    """The session of each trial (a bench.json of an earlier version names one session for all)."""
    if "sessions" in result:
        return list(result["sessions"])
    return [result["session"]] * (trials or len(result["acc_trials"]))


def _finest_seconds(pdir: Path, summary: dict[str, Any], label: str) -> list[float]:
    """Training seconds spent on the finest grid, per trial (from the phases' results)."""
    from mres.strategies import Variant

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
    from mres.training.data import load_dataset
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
                    help="fine-only budgets in epochs (default 1,2,3,4,6,8; 1,2,4 with --quick)")
    ap.add_argument("--strategies", type=lambda t: t.split(","), default=["transfer"])
    ap.add_argument("--family", default="average-bilinear")
    ap.add_argument("--pool", action="store_true", help="the thesis CNN with its 2×2 average pool")
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--no-multilevel", action="store_true", help="leave out the MG/OPT points")
    ap.add_argument("--quick", action="store_true", help="a smaller sweep on fewer examples, for a first look")
    ap.add_argument("--points", type=lambda t: t.split(","), default=None, help="only these points (names)")
    ap.add_argument("--flush-compare", default=None, metavar="POINT",
                    help="run POINT with subnormals kept and flushed; print seconds per finest epoch side by side")
    ap.add_argument("--out", type=Path, default=None, help="keep the runs here (resumable); default: a temp dir")
    ap.add_argument("--plot", type=Path, default=None, help="PNG of the fronts (default OUT/fronts.png, without --out runs/bench_c2f/fronts.png; "
                         "with --points fronts_<n>points_<k>trials.png)")
    args = ap.parse_args()
    if args.dataset == "npz" and not args.path:
        ap.error("--dataset npz needs --path F.npz")
    transfers = [n for n, s in STRATEGIES.items() if s.needs_coarse]  # the c2f front's strategies: mres's table
    if bad := [s for s in args.strategies if s not in transfers]:
        ap.error(f"--strategies {','.join(bad)}: allowed {', '.join(transfers)}")
    args.n_train = args.n_train or (10000 if args.quick else 20000)
    args.n_test = args.n_test or (2000 if args.quick else 5000)
    args.fine_budgets = args.fine_budgets or ([1, 2, 4] if args.quick else [1, 2, 3, 4, 6, 8])

    configure_runtime(os.cpu_count())
    root = args.out or Path(tempfile.mkdtemp(prefix="bench_c2f_"))
    root.mkdir(parents=True, exist_ok=True)
    session = time.strftime("%Y-%m-%d %H:%M:%S")
    points = sweep(args)
    base = base_recipe(args)
    from mres.training.data import load_dataset
    from mres.recipe import DatasetConfig

    used = load_dataset(DatasetConfig.model_validate(base["dataset"]))  # what the runs get, not what was asked
    print(f"{args.dataset}: {len(used.y_train)} train / {len(used.y_test)} test images (asked {args.n_train} / "
          f"{args.n_test}), finest grid {args.fine}, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}, threads {torch.get_num_threads()}, "
          f"{len(points)} points × {args.trials} trial(s) → {root}", flush=True)
    job_console.quiet = True  # the jobs' own header lines; the bench prints one line per point
    warm_up(base, args)
    for i, p in enumerate(points, 1):
        run_point(p, base, root, session)
        for r in p.results:
            print(f"[{i}/{len(points)}] {p.name:<18} {r['strategy']:<22} {r['seconds']:7.1f} s  "
                  f"{(r['acc'] or 0) * 100:6.2f} %  ({p.what})", flush=True)
    if args.flush_compare:
        flush_report(points)
    else:
        report(points, args, root, session)
    if args.out is None:
        shutil.rmtree(root)


def flush_report(pair: list[Point]) -> None:
    """Seconds per finest-grid epoch with subnormals kept vs flushed, per strategy, and both accuracies."""
    off, on = pair
    epochs = off.recipe["epochs_per_grid"][-1]
    print(f"\n{off.name[:-len('-flush-off')]}: seconds per finest-grid epoch (mean over trials), subnormals kept vs "
          "flushed, measured in this run")
    print(f"{'strategy':<16} {'kept':>8} {'flushed':>8} {'kept/flushed':>13} {'acc kept':>9} {'acc flushed':>12}")
    for a, b in zip(off.results, on.results):
        sa, sb = (sum(r["finest_seconds"]) / len(r["finest_seconds"]) / epochs for r in (a, b))
        print(f"{a['strategy']:<16} {sa:7.1f}s {sb:7.1f}s {sa / sb:12.2f}× {a['acc'] * 100:8.2f}% {b['acc'] * 100:11.2f}%")


def report(points: list[Point], args: argparse.Namespace, root: Path, session: str) -> None:
    rows = [(p, r) for p in points for r in p.results if r["acc"] is not None]
    sessions = sorted({s for _, r in rows for s in _sessions(r)})
    fo = [(r["seconds"], r["acc"]) for p, r in rows if p.front == "fine-only"]
    # the model right after a transfer is one the user can stop at: a point of the front at its seconds
    starts = [(p, r["start"]) for p, r in rows if r.get("start")]
    c2f = [(r["seconds"], r["acc"]) for p, r in rows if p.front == "c2f"] + \
          [(st["seconds"], st["acc"]) for p, st in starts if p.front == "c2f"]
    print("\nall points (training seconds, final test accuracy; mean over trials):")
    print(f"  {'point':<20}{'strategy':<22}{'seconds':>9}{'acc %':>8}{'finest-grid share':>19}  what")
    for p, r in sorted(rows, key=lambda pr: pr[1]["seconds"]):
        share = sum(r["finest_seconds"]) / max(1e-9, sum(t or 0.0 for t in r["seconds_trials"]))
        col = " collapsed" if any(r["collapsed"]) else ""
        print(f"  {p.name:<20}{r['strategy']:<22}{r['seconds']:9.1f}{r['acc'] * 100:8.2f}{share:19.0%}  {p.what}{col}")
    if starts:
        print("right after the transfer to the finest grid (coarse phases + transfer seconds; points of the c2f front):")
        for p, r in rows:
            if r.get("start"):
                print(f"  {p.name:<20}{r['strategy'] + ' start':<22}{r['start']['seconds']:9.1f}"
                      f"{r['start']['acc'] * 100:8.2f}")
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
    mg = [(r["seconds"], r["acc"]) for p, r in rows if p.front == "mgopt"]
    if mg and c_front:  # multigrid training against the best one-shot schedules (the c2f front)
        print("\nMG/OPT and joint points against the one-shot coarse-to-fine front (T interpolated along it):")
        for m in tta.matched_ratios(mg, c_front):
            print(f"  a = {m['accuracy'] * 100:.2f} %: T_mgopt {m['seconds']:.0f} s, T_one-shot(a) "
                  f"{m['reference_seconds']:.0f} s, ratio {m['ratio']:.3f}")
        hm = tta.headline(mg, c2f)
        if hm.get("ratio"):
            print(f"  at the one-shot front's best accuracy: ratio {hm['ratio']:.3f}"
                  + ("" if hm["reached"] else " (multilevel training did not reach it: at its own best)"))
    if best_c2f:
        p = best_c2f[2]
        print(f"best coarse-to-fine point: {p.name} ({p.what}): {best_c2f[0] * 100:.2f} % in {best_c2f[1]:.0f} s")
    if args.trials >= 2:
        trials_table(rows)
    if len(sessions) > 1:
        print(f"note: points come from {len(sessions)} sessions ({', '.join(sessions)}); only points of one session "
              "are measured side by side")
    if args.trials < 2:
        print("note: one trial per point; a ratio near the goal is not a finding until the key points have >= 3 trials")
    tag = "" if not args.points else f"_{len(args.points)}points_{args.trials}trials"  # a subset keeps the sweep's files
    png = args.plot or (args.out or Path("runs") / "bench_c2f") / f"fronts{tag}.png"  # never the working directory
    png.parent.mkdir(parents=True, exist_ok=True)
    if f_front and c_front:
        plot(rows, f_front, c_front, h, png, args)
    (root / f"points{tag}.json").write_text(json.dumps([{"name": p.name, "front": p.front, "what": p.what, **r}
                                                  for p, r in rows], indent=1))
    print(f"figure: {png}" if f_front and c_front else "no figure: a front is empty")


GROUPS = (("fo-", "fine-only", "tab:blue", "o"), ("keep-", "keeping transfers (data fit, distill, reg)", "tab:brown", "8"), ("mgopt", "MG/OPT (run + corrections)", "tab:gray", "p"),
          ("joint", "joint multiscale (tied)", "tab:olive", "d"), ("cascade-phase", "cascade, phase scope", "tab:cyan", "h"), ("phase-warm", "phase + warm-up", "tab:brown", "P"),
          ("phase-", "phase scope", "tab:orange", "s"), ("run-carry", "run + momentum", "tab:red", "v"),
          ("run-bs", "run + batch scaling", "tab:purple", "D"), ("run-warm", "run + warm-up", "tab:olive", "X"),
          ("run-", "run scope", "tab:green", "^"), ("cascade", "cascade 7→14→28", "tab:pink", "*"))


def _group(name: str) -> tuple[str, str, str]:
    return next((label, color, marker) for prefix, label, color, marker in GROUPS if name.startswith(prefix))


def trials_table(rows: list[tuple[Point, dict]]) -> None:
    """With trials: each point's mean ± std and 95 % CI, and every coarse-to-fine point against the best
    fine-only point, paired by trial (trial t of every run draws the same examples and seeds)."""
    from mres.c2f import stats

    print("\nper point over trials (accuracy %: mean ± std [95 % CI]; seconds: mean ± std):")
    for p, r in rows:
        a, s = stats.mean_ci(r["acc_trials"]), stats.mean_ci(r["seconds_trials"])
        ci = f"[{a['ci'][0] * 100:.2f}, {a['ci'][1] * 100:.2f}]" if a["ci"] else ""
        print(f"  {p.name:<20}{r['strategy']:<12} n={a['n']}  {a['mean'] * 100:.2f} ± {(a['std'] or 0) * 100:.2f} {ci}"
              f"   {s['mean']:.1f} ± {(s['std'] or 0):.1f} s")
    fine = [(p, r) for p, r in rows if p.front == "fine-only"]
    if not fine:
        return
    bp, br = max(fine, key=lambda pr: pr[1]["acc"])
    print(f"\ncoarse-to-fine points against the best fine-only point {bp.name} ({br['acc'] * 100:.2f} %, "
          f"{br['seconds']:.0f} s), paired by trial:")
    for p, r in rows:
        if p.front != "c2f":
            continue
        t = stats.paired_test(r["acc_trials"], br["acc_trials"])
        if t["mean_diff"] is None:
            continue
        ci = f" [{t['ci'][0] * 100:+.2f}, {t['ci'][1] * 100:+.2f}]" if t["ci"] else ""
        p_txt = f"p={t['p_t']:.3g}" if t["p_t"] is not None else (f"sign p={t['p_sign']:.3g}" if t["p_sign"] else "")
        verdict = "significant" if t["significant"] else "not significant"
        print(f"  {p.name:<20}{r['strategy']:<12} Δacc {t['mean_diff'] * 100:+.2f} points{ci}, {p_txt} ({verdict}); "
              f"seconds ratio {r['seconds'] / br['seconds']:.3f}")


def plot(rows: list[tuple[Point, dict]], f_front, c_front, h: dict, png: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [3, 2]})
    fronts = {(round(s, 6), round(a, 6)) for s, a in f_front + c_front}
    lo = min(a for _, a in f_front + c_front) * 100 - 1.0
    hi = max(a for _, a in f_front + c_front) * 100 + 0.5
    below = []
    seen: set[str] = set()
    for p, r in rows:
        label, color, marker = _group(p.name)
        acc = r["acc"] * 100
        if acc < lo:
            below.append(f"{p.name} {acc:.1f} %")
            continue
        ax.scatter(r["seconds"], acc, color=color, marker=marker, s=40, alpha=0.8,
                   label=None if label in seen else label)
        seen.add(label)
        if (round(r["seconds"], 6), round(r["acc"], 6)) in fronts:
            ax.annotate(p.name, (r["seconds"], acc), fontsize=7, xytext=(4, -9), textcoords="offset points")
        st = r.get("start")
        if st and st["acc"] * 100 >= lo:  # right after the transfer: hollow, same group
            ax.scatter(st["seconds"], st["acc"] * 100, facecolors="none", edgecolors=color, marker=marker, s=40,
                       label=None if "start" in seen else "right after a transfer (hollow)")
            seen.add("start")
    for front, color, name in ((f_front, "tab:blue", "fine-only front"), (c_front, "black", "coarse-to-fine front")):
        ax.plot([s for s, _ in front], [a * 100 for _, a in front], color=color, lw=1.5, label=name)
    if h.get("accuracy") is not None:
        ax.axhline(h["accuracy"] * 100, color="grey", ls=":", lw=1)
    if below:
        ax.text(0.99, 0.02, "below this axis: " + ", ".join(below), transform=ax.transAxes, ha="right",
                fontsize=7, color="dimgrey")
    ax.set_ylim(lo, hi)
    ax.set_xlabel("training seconds (steps + transfers + BN recalibration; evaluation not counted)")
    ax.set_ylabel("final test accuracy %")
    ax.set_title(f"{args.dataset} ({args.n_train} train), thesis CNN, finest grid {args.fine}; "
                 f"{args.trials} trial(s) per point", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ratios = tta.matched_ratios([(s, a) for s, a in c_front], f_front)
    if ratios:
        ax2.plot([m["accuracy"] * 100 for m in ratios], [m["ratio"] for m in ratios], "o-", color="black")
    ax2.axhline(0.5, color="tab:red", ls="--", lw=1, label="goal 0.5")
    ax2.axhline(1.0, color="grey", ls=":", lw=1, label="no saving")
    if h.get("ratio"):
        ax2.scatter([(h.get("candidate_best") or h["accuracy"]) * 100], [h["ratio"]], marker="*", s=150,
                    color="tab:red", zorder=3, label="headline")
    ax2.set_xlabel("matched test accuracy a %")
    ax2.set_ylabel("T_c2f(a) / T_fine(a)")
    ax2.set_ylim(0, 1.3)
    ax2.set_title("seconds ratio at matched accuracy (c2f front points)", fontsize=10)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, png, dpi=130)


if __name__ == "__main__":
    main()

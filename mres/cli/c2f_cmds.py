"""`mres coarse-to-fine`, `mres transfer`, `mres report`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from ..errors import UserError
from ..training.terminal import fit_table, fmt_seconds, wrap_items
from . import app, console
from .train_cmds import DataSetOpt, OutOpt, OverwriteOpt, QuietOpt, RecipeOpt, ResumeOpt, SetOpt, recipe_and_run_dir


@app.command("coarse-to-fine")
def coarse_to_fine_cmd(
    recipe: Optional[Path] = RecipeOpt,
    out: Optional[Path] = OutOpt,
    set_: Optional[List[str]] = SetOpt,
    resume: Optional[Path] = ResumeOpt,
    quiet: bool = QuietOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Train coarse, transfer with every strategy, train fine; write the comparison report."""
    from ..c2f.job import run_coarse_to_fine
    from ..recipe import CoarseToFineRecipe

    rec, run_dir = recipe_and_run_dir(recipe, out, set_, resume, CoarseToFineRecipe, "coarse-to-fine", overwrite)

    summary = run_coarse_to_fine(rec, run_dir, progress=not quiet)  # with the recipe's analysis block
    print_summary(summary)
    from rich.markup import escape

    console.print(f"report: [bold]{escape(str(run_dir / 'report.md'))}[/] (+ report.html, summary.json, figures/)")


def print_summary(summary: dict) -> None:
    from rich.markup import escape

    from ..c2f.report import _ms
    from ..c2f.stats import significance_mark

    res = summary["resolutions"]
    base = summary.get("baseline")
    st = summary.get("statistics") or {}
    note = ["start: right after the transfer", "epoch 1: after the first fine epoch (means)", "final: mean ± std",
            "time s: training seconds counted for time to accuracy (coarse + transfer + fine, evaluation excluded)",
            f"*: significant paired difference from {base or 'the baseline'} (p < 0.05 in every test)",
            "div/col: diverged / collapsed trials"]
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False,
                  title=f"coarse-to-fine {' → '.join(map(str, res))}: test accuracy % over {summary['trials']} "
                        "trial(s)")
    table.add_column("strategy", no_wrap=True)
    for col in ("start", "ep. 1", "final", "95% CI", "time s", "div/col"):
        table.add_column(col, justify="right", no_wrap=True)
    for label, s in summary["strategies"].items():
        a = (st.get(label) or {}).get("acc_final") or {}
        ci = "—" if not a.get("ci") else "–".join(f"{min(100.0, max(0.0, c * 100)):.1f}" for c in a["ci"])
        mark = significance_mark(((st.get(label) or {}).get("vs") or {}).get(base))
        table.add_row(Text(label), _mean(s["acc_at_transfer"], 100), _mean(s["acc_after_first_epoch"], 100),
                      _ms(s["acc_final"]) + mark, ci, _mean_seconds(s.get("train_seconds", s["seconds"])),
                      f"{sum(s['diverged'])}/{sum(s.get('collapsed') or [])}")
    console.print(fit_table(table, console))
    _footnote(note)
    tt = summary.get("time_to_accuracy") or {}
    if tt.get("levels"):
        t2 = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False,
                   title=escape(f"training seconds to reach {tt['baseline']}'s test accuracy"))
        t2.add_column("strategy", no_wrap=True)
        for a in tt["levels"]:
            t2.add_column(f"{a * 100:.1f} %", justify="right", no_wrap=True)
        for label, levels in tt["variants"].items():
            cells = []
            for lv in levels:
                if not lv["reached"]:
                    cells.append("—")
                else:
                    sp = f" ({lv['speedup']:.2f}×)" if lv.get("speedup") else ""
                    cells.append(f"{fmt_seconds(lv['mean_seconds'])}{sp}")
            t2.add_row(Text(label), *cells)
        console.print(fit_table(t2, console))
        _footnote(["finest grid, epoch granularity", f"(n×): speedup over {tt['baseline']}", "—: not reached"])
    if summary["trials"] < 2:
        console.print("one trial: differences are anecdotes, not findings (use --set trials=3 for paired tests)")


def _footnote(items: list) -> None:
    """A table's note, left-aligned under it, broken between its items to the console's width."""
    console.print(wrap_items(items, console.width), markup=False, highlight=False, style="dim")


def _mean(values: list, scale: float) -> str:
    vals = [v for v in values if v is not None]
    return f"{sum(vals) / len(vals) * scale:.1f}" if vals else "—"


def _mean_seconds(values: list) -> str:
    vals = [v for v in values if v is not None]
    return fmt_seconds(sum(vals) / len(vals), unit=False) if vals else "—"


@app.command("report")
def report_cmd(
    run_dir: Path = typer.Argument(..., help="A coarse-to-fine run directory."),
    csv_dir: Optional[Path] = typer.Option(None, "--csv", help="Also write every table as DIR/NN-title.csv."),
    latex_dir: Optional[Path] = typer.Option(None, "--latex", help="Also write every table as DIR/NN-title.tex "
                                                                     "(booktabs)."),
) -> None:
    """Regenerate report.md / report.html / figures of a coarse-to-fine run (and its tables as CSV/LaTeX)."""
    from rich.markup import escape

    from ..c2f.report import read_summary, write_report

    for flag, d in (("--csv", csv_dir), ("--latex", latex_dir)):
        if d is not None and d.exists() and not d.is_dir():
            raise UserError(f"{flag} {d}: a file is there; give a directory for the tables")
    path = write_report(run_dir, csv_dir, latex_dir)
    print_summary(read_summary(run_dir))
    console.print(f"report: [bold]{escape(str(path))}[/]")
    for flag, d in (("csv", csv_dir), ("LaTeX", latex_dir)):
        if d is not None:
            console.print(f"{flag} tables: {escape(str(d))}", markup=False)


@app.command("compare")
def compare_cmd(
    runs: List[Path] = typer.Argument(..., help="Coarse-to-fine run directories (the first is the reference)."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Write the table as CSV (numbers, one row per "
                                                                "run and strategy)."),
    latex_path: Optional[Path] = typer.Option(None, "--latex", help="Write the table as LaTeX (booktabs)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the accuracy-vs-seconds figure "
                                                                 "(compare.png/.pdf) here."),
) -> None:
    """Runs side by side: final accuracy with CI, kept points, seconds to a common accuracy, what differs."""
    from ..c2f.compare import compare_figure, compare_rows, load_runs, write_compare_csv
    from ..c2f.export import to_latex

    for flag, p in (("--csv", csv_path), ("--latex", latex_path)):
        if p is not None and p.is_dir():
            raise UserError(f"{flag} {p} is a directory; give the file to write (e.g. {p / 'compare'}"
                            f"{'.csv' if flag == '--csv' else '.tex'})")
    loaded = load_runs(runs)
    head, rows, records, ref = compare_rows(loaded)
    shown = [0, 1, 2, 3, 4, 5, 8]  # the terminal view; trials, wall-clock and the recipe diff below the table
    trials = sorted({r[7] for r in rows})
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False,
                  title=f"{len(loaded)} runs, {'/'.join(trials)} trial(s) each; reference accuracy "
                        f"{'—' if ref is None else f'{ref * 100:.2f} %'}")
    for k in shown:
        table.add_column(head[k], justify="left" if k in (0, 1, 8) else "right", no_wrap=k in (2, 3, 4, 5))
    for row, rec in zip(rows, records):
        table.add_row(*(Text(row[k]) for k in shown[:-1]), Text(_vs_short(rec["vs"])))
    console.print(fit_table(table, console, names=(0, 1)))
    _footnote(["final %: mean ± std of the final test accuracy", "95 % CI: Student t",
               "kept: accuracy right after the transfer − the coarse model's (points)",
               "s to ref.: counted training seconds to the reference accuracy, the lowest baseline final mean "
               "(k/n: trials that reached it)",
               "vs first run: difference in points from the first run with that strategy; P: paired t-test (the "
               "runs share seed and trials), W: Welch's t-test; *: p < 0.05"])
    seen = set()
    for rec in records:
        if rec["run"] not in seen:
            seen.add(rec["run"])
            console.print(f"{rec['run']}: {rec['path']} — differs: {rec['differs']}", markup=False, soft_wrap=True)
    for run in loaded:
        for note in run.notes:
            console.print(f"note: {note}", markup=False)
    if csv_path is not None:
        write_compare_csv(records, rows, csv_path)
        console.print(f"csv: {csv_path}", markup=False)
    if latex_path is not None:
        latex_path.parent.mkdir(parents=True, exist_ok=True)
        latex_path.write_text(to_latex(head, rows, caption="Runs compared: final test accuracy in %",
                                       label="tab:compare"))
        console.print(f"LaTeX: {latex_path}", markup=False)
    if out is not None:
        figs = compare_figure(loaded, out, ref)
        console.print("figure: " + ", ".join(str(p) for p in figs), markup=False)


def _vs_short(vs: dict | None) -> str:
    """``+1.20* paired p=0.01``: the terminal's cell (the CSV/LaTeX name the reference run too)."""
    if not vs or vs.get("mean_diff") is None:
        return "—"
    kind = "P" if vs["test"] == "paired" else "W"
    p = "" if vs["p"] is None else f" p={vs['p']:.2f}"
    return f"{vs['mean_diff'] * 100:+.2f}{'*' if vs['significant'] else ''}{p} {kind}"


@app.command("transfer")
def transfer_cmd(
    ckpt: Path = typer.Argument(..., help="Checkpoint to move to the other grid."),
    to: str = typer.Option(..., "--to", help="fine (2× resolution) or coarse (½ resolution)."),
    strategy: str = typer.Option("galerkin", "--strategy",
                                 help="transfer (copy), galerkin, galerkin-reg, or dilate (reference: doubled "
                                      "dilation, --to fine only)."),
    family: str = typer.Option("average-bilinear", "--family",
                               help="Operator family of R and P: average-constant, average-bilinear, "
                                    "fullweighting-linear."),
    lam: Optional[float] = typer.Option(None, "--lam",
                                        help="λ of galerkin-reg (default 0.1, as the recipe's lams); with galerkin "
                                             "it only affects kernels larger than 3×3 (default 0)."),
    policy: str = typer.Option("keep", "--coefficient-policy", help="Polynomial coefficients: keep, rescale, respectral."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the new checkpoint."),
    samples: int = typer.Option(256, min=0, help="Test images for the function-preservation check (0 = skip)."),
    set_: Optional[List[str]] = DataSetOpt,
) -> None:
    """Move a checkpoint's weights to the fine or the coarse grid and print the diagnostics."""
    import math

    from rich.markup import escape

    from ..training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    from ..grids.operators import FAMILIES
    from ..models import build_model
    from ..grids.transfer import COEFFICIENT_POLICIES, STRATEGIES, function_preservation, transfer_weights

    if to not in ("fine", "coarse"):
        raise UserError(f"--to {to!r}: allowed fine, coarse")
    allowed = [s for s in STRATEGIES if s != "fresh"] + ["dilate"]
    if strategy not in allowed:
        raise UserError(f"--strategy {strategy!r}: allowed {', '.join(allowed)}")
    if family not in FAMILIES:
        raise UserError(f"--family {family!r}: allowed {', '.join(FAMILIES)}")
    if lam is not None and strategy not in ("galerkin", "galerkin-reg"):
        raise UserError(f"--lam {lam:g} does not apply to --strategy {strategy} (only to galerkin-reg, and to "
                        "galerkin for kernels larger than 3×3)")
    if lam is None:
        lam = 0.1 if strategy == "galerkin-reg" else 0.0
    if not (lam >= 0 and math.isfinite(lam)):
        raise UserError(f"--lam {lam}: must be a finite number >= 0")
    if policy not in COEFFICIENT_POLICIES:
        raise UserError(f"--coefficient-policy {policy!r}: allowed {', '.join(COEFFICIENT_POLICIES)}")
    source = ckpt / "checkpoints" / "last.pt" if ckpt.is_dir() else ckpt
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise UserError(f"--out {out} is its input {ckpt}: the transferred model would replace the one it came "
                        "from; write it elsewhere (e.g. --out fine.pt)")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give the checkpoint file to write (e.g. {out / 'fine.pt'})")
    c = load_checkpoint(ckpt)
    src = model_from_checkpoint(c)
    res = c["resolution"]
    new_res = res * 2 if to == "fine" else res // 2
    arch = c["arch"]
    from ..models import check_model

    problems = check_model(arch["name"], arch["options"], [new_res])
    if to == "coarse" and res % 2:
        problems.append(("resolution", f"{res} is odd"))
    if problems:
        raise UserError(f"cannot move {arch['name']} from {res} to {new_res}: " + "; ".join(m for _, m in problems))
    dst = build_model(arch["name"], arch["options"], arch["in_channels"], arch["num_classes"], new_res)
    try:
        diags = transfer_weights(src, dst, strategy, family, lam, "prolongate" if to == "fine" else "restrict",
                                 coefficient_policy=policy)
    except (ValueError, NotImplementedError) as exc:
        raise UserError(str(exc)) from None
    payload = {k: v for k, v in c.items() if k not in ("optimizer", "scheduler", "rng", "format", "versions")}
    payload.update({"model": dst.state_dict(), "resolution": new_res, "epoch": 0, "metrics": [],
                    "transferred_from": {"checkpoint": str(ckpt), "resolution": res, "strategy": strategy,
                                         "family": family, "lam": lam,
                                         "coefficient_policy": policy}})
    save_checkpoint(out, payload)
    lam_s = f", lam={lam:g}" if strategy == "galerkin-reg" or lam else ""
    table = Table(title=escape(f"{arch['name']}: {res}×{res} → {new_res}×{new_res} ({strategy}, {family}{lam_s})"))
    for col in ("tensor", "kind", "‖before‖", "‖after‖", "growth", "Galerkin residual"):
        table.add_column(col, justify="right")
    for d in diags:
        if d.kind in ("bn", "buffer") or d.name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        table.add_row(Text(d.name), Text(d.kind), f"{d.norm_before:.4g}", f"{d.norm_after:.4g}", f"{d.growth:.3f}",
                      "—" if d.galerkin_residual is None else f"{d.galerkin_residual:.2e}")
    console.print(fit_table(table, console, names=(0, 1)))
    if samples > 0 and "recipe" in c:
        from ..training.data import load_eval_subset
        from ..recipe import override_dataset

        try:
            x, _ = load_eval_subset(override_dataset(c["recipe"].get("dataset"), set_, str(ckpt)), "test", samples,
                                    max(res, new_res))
        except UserError as exc:
            console.print(f"[yellow]function-preservation check skipped:[/] {escape(str(exc))}")
        else:
            coarse_m, fine_m = (src, dst) if to == "fine" else (dst, src)
            fp = function_preservation(coarse_m, fine_m, x, family)
            stages = ", ".join(f"{k} {v:.3f}" for k, v in fp["stages"].items())
            console.print(f"function preservation on {len(x)} test images: logits rel. error {fp['logits']:.4f}, "
                          f"same prediction {fp['agreement']:.1%}" + (f"; stages: {stages}" if stages else ""))
    console.print(f"wrote [bold]{escape(str(out))}[/] (resolution {new_res})")
    if strategy == "dilate":
        console.print("[yellow]note:[/] the doubled dilation is not part of a checkpoint: the file holds the coarse "
                      "kernels in a plain fine model (use dilate for the function-preservation check above)")

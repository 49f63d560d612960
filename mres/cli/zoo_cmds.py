"""`mres params` (weight-count table of the model zoo) and `mres spectrum` (spectrum of A with the roots)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..errors import UserError
from ..training.terminal import fit_table
from . import app, console
from .train_cmds import DataSetOpt


@app.command("params")
def params_cmd(
    dataset: str = typer.Option("cifar10", "--dataset", "-d", help="cifar10, cifar100, fashion-mnist or mnist"),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
) -> None:
    """Weight counts of the model zoo next to the papers' and reference codes' figures."""
    from ..zoo import param_table

    rows = param_table(dataset)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"weights on {dataset} (BN affine included, shared tensors once)")
    table.add_column("model")
    table.add_column("ours", justify="right", no_wrap=True)
    table.add_column("reference", justify="right", no_wrap=True)
    table.add_column("Δ %", justify="right", no_wrap=True)
    table.add_column("source")
    for r in rows:
        ref = r["reference"]
        if ref is None:
            ref_s = "–"
        elif r["reference_kind"] == "rounded":
            ref_s = f"≈{ref / 1e6:.1f}M"
        else:
            ref_s = f"{int(ref):,}"
        diff = "–" if r["diff_pct"] is None else f"{r['diff_pct']:+.3f}"
        model = r["model"] + "".join(f"\n  {k}={v}" for k, v in r["options"].items())
        table.add_row(Text(model), f"{r['ours']:,}", ref_s, diff, escape(r["source"]))
    console.print(fit_table(table, console))
    for r in rows:
        if r["note"] and r["diff_pct"] is not None:
            console.print(f"{r['model']}: {r['note']}", highlight=False, markup=False)


@app.command("spectrum")
def spectrum_cmd(
    ckpt: Path = typer.Argument(..., help="Checkpoint file (or run directory)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the figures (default: <ckpt dir>/spectrum)."),
    grid: Optional[str] = typer.Option(None, "--grid", "-n",
                                       help="Input grid N or NxN (square; as `mres landscape --grid`); level ℓ "
                                            "uses N/2^(ℓ−1) (default: the checkpoint's resolution)."),
    boundary: Optional[str] = typer.Option(None, "--boundary", "-b",
                                           help="periodic (Fourier symbols), zeros (the models' zero padding, dense, "
                                                "C·n² ≤ 16384) or auto (zeros on grids ≤ 8); default: the model's "
                                                "spectrum_boundary, else periodic."),
    samples: int = typer.Option(64, "--samples", min=0,
                                help="Training images of the checkpoint's dataset for the coefficient-sensitivity "
                                     "table (0: skip it)."),
    set_: Optional[List[str]] = DataSetOpt,
) -> None:
    """Spectrum of every level's A with the smoothing polynomial's roots."""
    from ..training.checkpoint import load_checkpoint, model_from_checkpoint
    from ..analysis.spectrum_plot import plot_spectrum
    from ..grids.spectrum import SPECTRUM_BOUNDARIES, polynomial_roots, residual_polynomial, spectrum_boundary
    from ..grids.spectrum import conv_spectrum

    data = load_checkpoint(ckpt)
    model = model_from_checkpoint(data)
    if not callable(getattr(model, "smoothing_levels", None)):
        raise UserError(f"{ckpt}: model {data['arch']['name']!r} is no MgNet or Poly-MgNet (no shared operator A)")
    n = _square_grid(grid) if grid is not None else int(data["resolution"])
    policy = boundary or getattr(model, "spectrum_boundary", "periodic")
    if policy not in (*SPECTRUM_BOUNDARIES, "auto"):
        raise UserError(f"--boundary {policy!r}: allowed: auto, {', '.join(SPECTRUM_BOUNDARIES)}")
    folder = out or ((ckpt if ckpt.is_dir() else ckpt.parent) / "spectrum")
    table = Table(title=escape(f"spectrum of A: {data['arch']['name']} on a {n}×{n} grid ({policy} boundary)"))
    for col in ("level", "grid", "boundary", "C", "Re λ min", "Re λ max", "Im λ max", "roots", "max |q(λ)|", "figure"):
        table.add_column(col, justify="right" if col not in ("roots", "figure") else "left")
    for info in model.smoothing_levels():
        side = max(1, n // info.coarsening)
        bound = spectrum_boundary(policy, side, info.A.weight.shape[0])
        try:
            eigs = conv_spectrum(info.A.weight, side, boundary=bound)
        except ValueError as exc:  # the dense zero-padded operator is too large
            raise UserError(f"level {info.level}: {exc}") from None
        roots = polynomial_roots(info.kinds, list(info.coeffs)) if info.kinds else None
        path = plot_spectrum(eigs, roots, folder / f"spectrum_level{info.level}.png",
                             title=f"level {info.level}: A on {side}×{side} ({bound}), steps {''.join(info.kinds) or '–'}")
        if roots is not None:
            qmax = f"{residual_polynomial(roots, eigs).abs().max().item():.3g}"
            roots_s = " ".join(_fmt_complex(z) for z in roots.tolist())
        else:
            qmax, roots_s = "–", "–"
        table.add_row(str(info.level), f"{side}×{side}", bound, str(info.A.weight.shape[0]), f"{eigs.real.min().item():.3g}",
                      f"{eigs.real.max().item():.3g}", f"{eigs.imag.max().item():.3g}", roots_s, qmax,
                      Text(str(path)))
    console.print(fit_table(table, console, names=(9,)))
    if samples and any(info.coeffs for info in model.smoothing_levels()):
        _sensitivity_section(model, data, samples, set_)


def _sensitivity_section(model, data: dict, samples: int, overrides: Optional[List[str]] = None) -> None:
    """Per level and step: gradient norm and logit change under coefficients × 2, with the flags."""
    from ..training.data import load_dataset
    from ..recipe import DatasetConfig, override_dataset
    from ..analysis.sensitivity import coefficient_sensitivity, sensitivity_table

    rec = data.get("recipe") or {}
    dataset = override_dataset(rec.get("dataset", {}), overrides, "checkpoint")
    try:
        ds = load_dataset(DatasetConfig.model_validate(dataset), "cpu")
        ds = ds.at_resolution(int(data["resolution"]), rec.get("family", "average-bilinear"))
    except (UserError, ValueError) as exc:
        console.print(f"[yellow]coefficient sensitivity skipped:[/] the checkpoint's data cannot be loaded "
                      f"({escape(str(exc).splitlines()[0])})")
        return
    rows = coefficient_sensitivity(model, ds.x_train[:samples], ds.y_train[:samples])
    head, body = sensitivity_table(rows)
    table = Table(title=f"coefficient sensitivity (training mode, {min(samples, len(ds.y_train))} training images)")
    for col in head:
        table.add_column(col, justify="left" if col in ("kind", "scale-free") else "right")
    for row in body:
        table.add_row(*(escape(c) for c in row))
    console.print(fit_table(table, console))


def _square_grid(text: str) -> int:
    """``--grid`` of ``mres spectrum``: N or NxN with the parser of ``mres landscape --grid`` (square only)."""
    from ..analysis.runner import parse_grid

    nx, ny = parse_grid(text, 2, max_points=None)
    if nx != ny:
        raise UserError(f"--grid {text!r}: the spectrum is of a square grid; give N or NxN (e.g. 32 or 32x32)")
    if nx > MAX_SPECTRUM_GRID:
        raise UserError(f"--grid {text!r}: at most {MAX_SPECTRUM_GRID} (N² frequencies, each a C×C eigenproblem; "
                        "the spectrum of a 3×3 conv changes little beyond 256)")
    return nx


MAX_SPECTRUM_GRID = 1024


def _fmt_complex(z: complex) -> str:
    if abs(z.imag) < 1e-12:
        return f"{z.real:.3g}"
    return f"{z.real:.3g}{z.imag:+.3g}i"

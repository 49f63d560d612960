"""`mres landscape` (loss landscapes, Li et al. 2018) and `mres features` (propagated features).

Flag checking only; the work is in ``mres.analysis.runner``.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError
from . import app
from .train_cmds import DataSetOpt


def parse_int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values):
        raise UserError(f"{flag} {text!r}: expected comma-separated non-negative integers, e.g. 0,3")
    return values


def _split_labels(labels: Optional[str], n: int) -> Optional[list[str]]:
    if labels is None:
        return None
    out = [s.strip() for s in labels.split(",")]
    if len(out) != n:
        raise UserError(f"--labels: {len(out)} labels for {n} checkpoints")
    return out


@app.command("landscape")
def landscape_cmd(
    ckpts: Optional[List[Path]] = typer.Argument(None, help="Checkpoints (or run directories) of one architecture; "
                                                            "with --between exactly two, A and B."),
    out: Path = typer.Option(Path("landscape"), "--out", "-o", help="Output directory (a rerun there resumes)."),
    grid: Optional[str] = typer.Option(None, "--grid",
                                       help="Grid points: NxM, or N for N×N; N points on a line with --dim 1 or "
                                            "--between (default 31x31, 1-D: 31)."),
    range_: Optional[str] = typer.Option(None, "--range",
                                         help="LO:HI along direction 1 (default -1:1; -0.5:1.5 with --between)."),
    yrange: Optional[str] = typer.Option(None, "--yrange", help="LO:HI along direction 2 (default: --range)."),
    dim: Optional[int] = typer.Option(None, "--dim", help="1 or 2 random directions (default 2)."),
    between: bool = typer.Option(False, "--between",
                                 help="1-D interpolation from the first checkpoint A to the second B: "
                                      "--between A.pt B.pt (BN buffers too)."),
    samples: int = typer.Option(1000, "--samples", help="Number of evaluation images (a fixed random subset)."),
    split: str = typer.Option("train", "--split", help="train or test"),
    chunk: int = typer.Option(8, "--chunk", help="Grid points per batched (vmap) forward."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Samples per forward (default: by device and chunk)."),
    method: str = typer.Option("auto", "--method", help="auto (vmap, loop if it cannot), vmap or loop."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    seed: int = typer.Option(0, "--seed", help="Seed of the random directions."),
    data_seed: int = typer.Option(0, "--data-seed", help="Seed choosing the evaluation subset."),
    directions: Optional[Path] = typer.Option(None, "--directions", help="Reuse the directions of an earlier run."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated panel titles."),
    vmax: Optional[float] = typer.Option(None, "--vmax", help="Upper end of the colour scale (default: max loss)."),
    log: Optional[bool] = typer.Option(None, "--log/--linear",
                                       help="Colour scale on log10(loss) or linear "
                                            "(default: log when the losses span more than 100×)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    set_: Optional[List[str]] = DataSetOpt,
) -> None:
    """Loss landscape: 2-D / 1-D slices along filter-normalised random directions, or A→B interpolation."""
    from ..analysis import runner as an

    # --- flags -------------------------------------------------------------------------
    if between and len(ckpts or []) != 2:
        got = ", ".join(map(str, ckpts or [])) or "none"
        raise UserError(f"--between takes two checkpoints, A and B (mres landscape --between A.pt B.pt); "
                        f"got {len(ckpts or [])}: {got}")
    if not ckpts:
        raise UserError("no checkpoints given (mres landscape CKPT [CKPT ...] or --between A B)")
    mode = "between" if between else None
    if dim is None:
        dim = 1 if mode else 2
    if dim not in (1, 2):
        raise UserError(f"--dim {dim}: expected 1 or 2")
    if mode and dim != 1:
        raise UserError("--between is a 1-D interpolation; --dim 2 does not apply")
    if mode and directions is not None:
        raise UserError("--directions does not apply to --between (the direction is B − A)")
    mode = mode or f"{dim}d"
    if method not in ("auto", "vmap", "loop"):
        raise UserError(f"--method {method!r}: expected auto, vmap or loop")
    if chunk < 1:
        raise UserError(f"--chunk {chunk}: expected a positive integer")
    if samples < 1:
        raise UserError(f"--samples {samples}: expected a positive integer")
    if batch is not None and batch < 1:
        raise UserError(f"--batch {batch}: expected a positive integer")
    sizes = an.parse_grid(grid if grid is not None else ("31x31" if dim == 2 else "31"), dim)
    xr = an.parse_range(range_ if range_ is not None else ("-0.5:1.5" if mode == "between" else "-1:1"))
    yr = an.parse_range(yrange, "--yrange") if yrange is not None else xr
    if dim == 1 and yrange is not None:
        raise UserError("--yrange applies to 2-D slices only" + (" (--between is 1-D)" if mode == "between" else
                                                                  " (--dim 2)"))
    if split not in ("train", "test"):
        raise UserError(f"--split {split!r}: expected train or test")
    dev = an.select_device(device)

    paths = list(ckpts)
    _, figures = an.run_landscape(an.LandscapeRequest(
        paths=paths, out=out, mode=mode, sizes=sizes, xrange=xr, yrange=yr if dim == 2 else None,
        samples=samples, split=split, chunk=chunk, batch=batch, method=method, device=dev, seed=seed,
        data_seed=data_seed, directions=directions, labels=_split_labels(labels, len(paths)), vmax=vmax, log=log,
        progress=not quiet, overrides=list(set_ or [])))
    an.console.print(f"data: {out / 'landscape.npz'}", markup=False)
    an.console.print("figures: " + ", ".join(str(p) for p in figures if p.suffix == ".png"), markup=False)


# ------------------------------------------------------------------------------ features

@app.command("features")
def features_cmd(
    ckpts: List[Path] = typer.Argument(..., help="Checkpoints (or run directories), one figure row each."),
    inputs: Optional[str] = typer.Option(None, "--inputs",
                                         help="Indices of the input images in the split, e.g. 0,1 (default 0,1)."),
    samples: Optional[str] = typer.Option(None, "--samples", hidden=True,
                                          help="Deprecated name of --inputs (elsewhere --samples is a count)."),
    channels: str = typer.Option("0", "--channels", help="Channels to show at every stage, e.g. 0,3."),
    out: Path = typer.Option(Path("features"), "--out", "-o", help="Output directory."),
    split: str = typer.Option("test", "--split", help="train or test"),
    data_seed: int = typer.Option(0, "--data-seed", help="Seed choosing the evaluation subset."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated row titles."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    set_: Optional[List[str]] = DataSetOpt,
) -> None:
    """Propagated features (thesis Figs. 4.4/4.6): feature maps after every stage, one row per checkpoint."""
    from ..analysis import runner as an

    if split not in ("train", "test"):
        raise UserError(f"--split {split!r}: expected train or test")
    if samples is not None:
        if inputs is not None:
            raise UserError("--samples is the old name of --inputs; give only --inputs")
        an.console.print("note: `mres features --samples` is now --inputs (indices of the input images)",
                         markup=False, highlight=False)
    flag = "--samples" if samples is not None else "--inputs"
    inputs = samples if samples is not None else (inputs if inputs is not None else "0,1")
    paths = an.run_features(list(ckpts), out, parse_int_list(inputs, flag),
                            parse_int_list(channels, "--channels"), split=split, data_seed=data_seed,
                            labels=_split_labels(labels, len(ckpts)), device=an.select_device(device),
                            samples_key=flag, overrides=list(set_ or []))
    an.console.print("figures: " + ", ".join(str(p) for p in paths), markup=False)

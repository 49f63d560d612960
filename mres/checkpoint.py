"""Checkpoints: a dict of plain types, written atomically, loaded with ``weights_only=True``.

Keys: ``model`` (state_dict), ``optimizer``, ``scheduler``, ``epoch``, ``rng``, ``recipe``
(resolved, plain dict), ``resolution``, ``arch`` ({name, options, in_channels, num_classes}),
``metrics`` (list of per-epoch dicts), ``versions``.  A checkpoint never executes code.
"""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import UserError

FORMAT = "mres-checkpoint/1"


def versions() -> dict[str, str]:
    import numpy

    return {"mres": _mres_version(), "torch": str(torch.__version__), "numpy": str(numpy.__version__),
            "python": platform.python_version()}


def _mres_version() -> str:
    from . import __version__

    return __version__


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write atomically: temp file in the same folder, fsync, rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "versions": versions(), **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        cand = path / "checkpoints" / "last.pt"
        if not cand.exists():
            raise UserError(f"{path} is a directory without checkpoints/last.pt")
        path = cand
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file or one holding arbitrary objects
        raise UserError(f"cannot load checkpoint {path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not an mres checkpoint (format {FORMAT!r} expected)")
    return ckpt


def arch_of(model: nn.Module, name: str, options: dict[str, Any], in_channels: int,
            num_classes: int) -> dict[str, Any]:
    return {"name": name, "options": dict(options), "in_channels": in_channels, "num_classes": num_classes}


def model_from_checkpoint(ckpt: dict[str, Any], resolution: int | None = None) -> nn.Module:
    """Rebuild the model a checkpoint holds (at its own resolution unless told otherwise)."""
    from .models import build_model

    arch = ckpt["arch"]
    res = ckpt["resolution"] if resolution is None else resolution
    model = build_model(arch["name"], arch["options"], arch["in_channels"], arch["num_classes"], res)
    if resolution is None or resolution == ckpt["resolution"]:
        model.load_state_dict(ckpt["model"])
    return model

"""Checkpoints: a dict of plain types, written atomically, loaded with ``weights_only=True``.

Keys: ``model`` (state_dict), ``optimizer``, ``scheduler``, ``epoch``, ``rng``, ``recipe``
(resolved, plain dict), ``resolution``, ``arch`` ({name, options, in_channels, num_classes}),
``metrics`` (list of per-epoch dicts), ``versions``.  A checkpoint never executes code.
"""

from __future__ import annotations

import errno
import glob
import io
import os
import platform
import sys
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserError
from .signals import deferred

FORMAT = "mres-checkpoint/1"


def versions() -> dict[str, str]:
    import numpy

    return {"mres": _mres_version(), "torch": str(torch.__version__), "numpy": str(numpy.__version__),
            "python": platform.python_version()}


def _mres_version() -> str:
    from .. import __version__

    return __version__


def save_checkpoint(path: str | Path, payload: dict[str, Any], keep_previous: bool = False) -> Path:
    """Write atomically: serialise in memory, write a temp file in the same folder, fsync, rename.

    Serialising first means a full disk shows up as ``OSError(ENOSPC)`` from the write (torch's
    own writer reports it as an opaque "unexpected pos" error); the old checkpoint is untouched.
    ``keep_previous``: the file being replaced stays as :func:`previous_path` (``last.previous.pt``), the
    fallback of :func:`load_for_resume` when the newest is damaged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "versions": versions(), **payload}
    check_plain(payload, str(path))
    buf = io.BytesIO()
    torch.save(payload, buf)
    remove_stale_temps(path)
    if keep_previous and path.exists():
        _keep_as_previous(path)
    return atomic_write(path, buf.getbuffer(), "checkpoint")


def _keep_as_previous(path: Path) -> None:
    """``path`` also as ``previous_path(path)``, ``path`` itself untouched (a full disk later keeps both):
    a hard link where the file system has them, else a copy; either appears by an atomic rename."""
    prev, tmp = previous_path(path), path.with_name(f".{path.name}.previous.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        import shutil

        shutil.copy2(path, tmp)
    os.replace(tmp, prev)


def previous_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def damaged_member(path: Path) -> str | None:
    """The first member of a checkpoint's zip whose bytes fail their CRC-32 (None: all intact).

    torch's format is a zip that stores a CRC per member; a bit flipped on disk or a partial copy shows
    here before any tensor is used."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip()
    except zipfile.BadZipFile as exc:
        return f"(the zip itself: {exc})"
    except (OSError, EOFError, ValueError) as exc:  # zlib errors of a damaged compressed member, short reads
        return f"(reading it: {type(exc).__name__}: {exc})"


def load_for_resume(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The checkpoint to resume from: ``path``, or — when it is missing or damaged — the previous one kept
    beside it, with one line saying so. None when neither exists; a damaged file without a previous one is
    refused naming it."""
    path = Path(path)
    prev = previous_path(path)
    if not path.exists():
        if not prev.exists():
            return None
        reason = "is missing"
    else:
        try:
            return load_checkpoint(path, map_location)
        except UserError as exc:
            if not prev.exists():
                raise
            reason = f"cannot be used ({exc})"
    state = load_checkpoint(prev, map_location)
    print(f"note: {path} {reason}; resuming from the previous checkpoint {prev} (epoch {state.get('epoch')})",
          file=sys.stderr, flush=True)
    return state


def atomic_write(path: str | Path, data: bytes | memoryview, what: str = "file") -> Path:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never a part: a temp
    file in the same folder, fsync, rename, fsync the folder. A full disk raises ``OSError(ENOSPC)``
    naming the path and the size, the old file untouched; a killed writer leaves only ``.name.*.tmp``
    (:func:`remove_stale_temps`)."""
    with deferred():  # a first Ctrl-C waits for the rename: the file is old or new, and the stop comes after
        return _atomic_write(Path(path), data, what)


def _atomic_write(path: Path, data: bytes | memoryview, what: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    view = memoryview(data)
    size = view.nbytes
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            kept = f"; {path} is kept as it was" if path.exists() else ""
            raise OSError(errno.ENOSPC, f"no space left on {path.parent} (writing a {size / 1e6:.1f} MB "
                                        f"{what}){kept}", str(path)) from None
        raise
    return path


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete temp files a killed writer of ``path`` left behind (``.last.pt.*.tmp``)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


_PLAIN_SCALARS = (str, int, float, bool, type(None))
_PLAIN_CONTAINERS = (dict, OrderedDict, list, tuple)


def check_plain(obj: Any, source: str, where: str = "") -> None:
    """Refuse anything but dict/list/tuple/str/int/float/bool/None and tensors, naming the key path.

    Checked by exact type, independently of what torch's ``weights_only`` unpickler allows.
    """
    kind = type(obj)
    if kind in _PLAIN_SCALARS or kind in (torch.Tensor, torch.nn.Parameter):
        return
    if kind not in _PLAIN_CONTAINERS:
        raise UserError(f"{source}: {'key ' + where if where else 'the top level'} holds a {kind.__module__}.{kind.__qualname__}; "
                        "an mres checkpoint holds only dicts, lists, tuples, str, int, float, bool, None "
                        "and tensors")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if type(k) not in (str, int):
                raise UserError(f"{source}: {'key ' + where if where else 'the top level'} has a key of type "
                                f"{type(k).__qualname__}; checkpoint keys are str or int")
            check_plain(v, source, f"{where}[{k!r}]")
    else:
        for i, v in enumerate(obj):
            check_plain(v, source, f"{where}[{i}]")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True`` and check that every value is a plain type."""
    path = Path(path)
    if path.is_dir():
        cand = path / "checkpoints" / "last.pt"
        if not cand.exists():
            raise UserError(f"{path} is a directory without checkpoints/last.pt")
        path = cand
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise UserError(f"checkpoint {path} is not a regular file (a device, a pipe or a socket)")
    if path.stat().st_size == 0:
        raise UserError(f"cannot load checkpoint {path}: the file is empty (0 bytes)")
    bad = damaged_member(path) if zipfile.is_zipfile(path) else None
    if bad is not None:
        raise UserError(f"checkpoint {path} is damaged: {bad} fails its CRC check (the file changed after it "
                        "was written); use an intact copy, or resume a run from its previous checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file or one holding arbitrary objects
        raise UserError(f"cannot load checkpoint {path}: {_load_failure_reason(exc)} (not an mres checkpoint, "
                        "or a damaged one)") from None
    check_plain(ckpt, f"cannot load checkpoint {path}")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not an mres checkpoint (format {FORMAT!r} expected)")
    return ckpt


def _load_failure_reason(exc: Exception) -> str:
    """What torch.load said, without its advice to retry with ``weights_only=False`` (mres never does)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:  # the reason follows torch's boilerplate
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [l.strip() for l in text.splitlines() if l.strip() and "weights_only" not in l]
    return (lines[0] if lines else type(exc).__name__).rstrip(" .:")


def arch_of(model: nn.Module, name: str, options: dict[str, Any], in_channels: int,
            num_classes: int) -> dict[str, Any]:
    return {"name": name, "options": dict(options), "in_channels": in_channels, "num_classes": num_classes}


def model_from_checkpoint(ckpt: dict[str, Any], resolution: int | None = None) -> nn.Module:
    """Rebuild the model a checkpoint holds (at its own resolution unless told otherwise)."""
    from ..models import build_model

    missing = [k for k in ("arch", "resolution", "model") if k not in ckpt]
    if missing or not isinstance(ckpt.get("arch"), dict):
        raise UserError(f"the checkpoint lacks {', '.join(missing) or 'a valid arch'}: it was not written by mres "
                        "train / coarse-to-fine / transfer, or was edited")
    arch = ckpt["arch"]
    res = ckpt["resolution"] if resolution is None else resolution
    try:
        model = build_model(arch["name"], arch["options"], arch["in_channels"], arch["num_classes"], res)
    except ValueError as exc:
        if not str(exc).startswith("unknown model"):
            raise
        plugins = ckpt.get("plugins") or []
        hint = (f"; it was trained with {' '.join(f'--import {p}' for p in plugins)}: pass that again "
                f"(mres {' '.join(f'--import {p}' for p in plugins)} <command> …)") if plugins else ""
        raise UserError(f"{exc}{hint}") from None
    if resolution is None or resolution == ckpt["resolution"]:
        try:
            model.load_state_dict(ckpt["model"])
        except (RuntimeError, TypeError, AttributeError) as exc:  # other tensors or shapes than its arch builds
            first = str(exc).strip().splitlines()
            raise UserError(f"the checkpoint's weights do not fit the {arch['name']} its arch describes "
                            f"({first[1].strip() if len(first) > 1 else first[0][:200]})") from None
    return model

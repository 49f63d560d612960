"""A run directory belongs to one run: an exclusive lock for the run's life, and no silent overwrite.

- :class:`RunLock` — ``RUN/.lock`` created with ``O_CREAT | O_EXCL`` (atomic on every local file system),
  holding ``{pid, host, started, command}``.  A second process is refused naming the holder; a lock left
  by a process that no longer exists on this host is stale and taken over (said in one line).
- :func:`claim_new_run` — ``--out`` onto a directory that already holds a run is refused, with the ways
  on (``--resume``, another ``--out``, ``--overwrite``); ``--overwrite`` removes only what a run writes.
- :func:`amend_recipe` — a resumed run records the keys it may change (more epochs) as a dated amendment
  under ``amendments:`` in ``recipe.yaml`` instead of rewriting the recipe as if it had always said so.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from ..errors import UserError

LOCK_NAME = ".lock"
# what mres writes into a run directory; --overwrite removes these and nothing else
RUN_ENTRIES = ("recipe.yaml", "metrics.jsonl", "metrics.csv", "checkpoints", "summary.json", "report.md",
               "report.html", "figures", "landscape", "features", "diagnostics.json", "sensitivity.json",
               "restricted.json", "mgopt.json", "logs", "tensorboard")
RUN_PATTERNS = ("trial*", "stage*", ".*.tmp")


def run_entries(run_dir: Path) -> list[Path]:
    """The entries of ``run_dir`` that a run wrote (empty: no run there)."""
    if not run_dir.is_dir():
        return []
    found = {run_dir / name for name in RUN_ENTRIES if (run_dir / name).exists()}
    for pattern in RUN_PATTERNS:
        found.update(run_dir.glob(pattern))
    return sorted(found)


def holds_run(run_dir: Path) -> bool:
    return any(p.name in ("recipe.yaml", "metrics.jsonl", "checkpoints", "summary.json") for p in run_entries(run_dir))


def lock_holder(run_dir: Path) -> dict[str, Any] | None:
    """Who holds ``run_dir``'s lock, or None when no live process does (a stale lock counts as none)."""
    info = _read_lock(run_dir / LOCK_NAME)
    if info is None or _is_stale(info):
        return None
    return info


def describe_holder(run_dir: Path, info: dict[str, Any]) -> str:
    return (f"{run_dir} is in use by pid {info.get('pid')} on {info.get('host')} since {info.get('started')} "
            f"({info.get('command') or 'an mres run'}; lock file {run_dir / LOCK_NAME}); wait for it to end, or "
            "choose another --out")


def claim_new_run(run_dir: Path, overwrite: bool) -> None:
    """Refuse ``--out`` onto a file, a run in use, or a finished run (unless ``overwrite``); on ``overwrite``
    remove the old run's entries — only those — before the new run starts."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir}: a file is there, not a directory; choose another --out")
    holder = lock_holder(run_dir)
    if holder is not None:
        raise UserError(describe_holder(run_dir, holder))
    if not holds_run(run_dir):
        return
    if not overwrite:
        what = ", ".join(p.name for p in run_entries(run_dir)[:4])
        raise UserError(f"--out {run_dir} already holds a run ({what}, …): continue it with --resume {run_dir}, "
                        "choose another --out, or replace it with --overwrite")
    for p in run_entries(run_dir):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


class RunLock:
    """Exclusive ownership of a run directory for a ``with`` block (creates the directory)."""

    def __init__(self, run_dir: str | Path, command: str | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.command = command if command is not None else " ".join(Path(a).name if i == 0 else a
                                                                     for i, a in enumerate(sys.argv))[:200]
        self.held = False
        self.created = False

    def acquire(self) -> "RunLock":
        self.created = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": self.command}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                old = _read_lock(self.path)
                if old is not None and old.get("pid") == os.getpid() and old.get("host") == info["host"]:
                    return self  # this process holds it already (a job inside a job)
                if old is None or _is_stale(old):
                    _remove_stale(self.path, old)
                    continue
                raise UserError(describe_holder(self.run_dir, old)) from None
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
            self.held = True
            return self
        raise UserError(f"{self.path}: could not take the run's lock (it keeps reappearing); is another mres "
                        "process starting on this directory?")

    def release(self) -> None:
        if self.held:
            self.held = False
            info = _read_lock(self.path)
            if info is not None and info.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            if self.created:  # a run refused before writing anything leaves no empty folder behind
                try:
                    self.run_dir.rmdir()
                except OSError:
                    pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text())
        return info if isinstance(info, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable or half-written: judged by its age below


def _is_stale(info: dict[str, Any]) -> bool:
    pid, host = info.get("pid"), info.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return not info  # another host's lock cannot be checked from here: only an empty one is stale
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.ESRCH
    return False


def _remove_stale(path: Path, info: dict[str, Any] | None) -> None:
    if info:
        print(f"note: {path} was left by pid {info.get('pid')} ({info.get('started')}), which is gone; taking it over",
              file=sys.stderr)
    path.unlink(missing_ok=True)


def amend_recipe(old: dict[str, Any], new: dict[str, Any], changed: list[str]) -> dict[str, Any]:
    """``new`` with the history of the run: earlier amendments kept, this one added (date and old → new)."""
    amendments = list(old.get("amendments") or [])
    amendments.append({"date": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "changed": {k: {"from": get_dotted(old, k), "to": get_dotted(new, k)} for k in changed}})
    return {**new, "amendments": amendments}


def get_dotted(d: Any, dotted: str) -> Any:
    """``d['a']['b']`` for ``'a.b'`` (None where a part is missing)."""
    for part in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain recipes (leaves only)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            if k == "amendments" and not prefix:
                continue
            out += changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def record_recipe(run_dir: Path, new: dict[str, Any], resume: bool,
                  may_change: Callable[[str], bool] = lambda key: True) -> str | None:
    """Write ``run_dir/recipe.yaml`` for a new run; on ``resume`` refuse the keys that ``may_change`` does not
    allow (naming each, old → new) and record the allowed ones as a dated amendment.  Nothing is written
    when a key is refused.  Returns the previous text (None if there was none) so that a run refused later
    can put it back (:func:`restore_recipe`)."""
    from ..recipe import parse_yaml

    path = run_dir / "recipe.yaml"
    old_text = path.read_text() if path.exists() else None
    if not resume or old_text is None:
        path.write_text(yaml.safe_dump(new, sort_keys=False))
        return old_text
    old = parse_yaml(old_text, str(path)) or {}
    settings = {k: v for k, v in old.items() if k != "amendments"}
    changed = changed_keys(settings, new)
    refused = [k for k in changed if not may_change(k)]
    if refused:
        what = "; ".join(f"{k}: {get_dotted(settings, k)!r} → {get_dotted(new, k)!r}" for k in refused)
        raise UserError(f"--resume {run_dir}: {what} would change what is already trained, yet the run would record "
                        f"it as if it had always been so; resume without that --set, or start a new run with --out")
    if changed:
        path.write_text(yaml.safe_dump(amend_recipe(old, new, changed), sort_keys=False))
    return old_text


def restore_recipe(run_dir: Path, old_text: str | None) -> None:
    """Put back the recipe a refused run replaced."""
    if old_text is not None:
        (run_dir / "recipe.yaml").write_text(old_text)

"""Ctrl-C and SIGTERM as one clean stop: never inside an import or a file write, never swallowed.

The command line installs :func:`install` before it imports anything heavy.  The first SIGINT or SIGTERM
raises ``KeyboardInterrupt`` where Python code runs — unless an import is in progress (a C extension half
initialised is what made early Ctrl-C segfault) or a :func:`deferred` section (an atomic file write) is
open; then the stop is retried every 50 ms (SIGALRM) until it can be raised.  The job's own handlers turn
it into the last good checkpoint and one line; the exit code is 130 (SIGINT) or 143 (SIGTERM).  A second
signal ends the process at once.  :func:`pending` tells the CLI, at the very end, that a stop was asked
for even if some library swallowed the ``KeyboardInterrupt``.

No imports beyond the standard library: the handler runs while anything may be half imported.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from types import FrameType
from typing import Iterator

RETRY_S = 0.05
_state = {"signum": None, "depth": 0, "installed": False, "raised": False}


def install() -> None:
    """Route SIGINT and SIGTERM through :func:`_on_signal` (main thread only; idempotent)."""
    if _state["installed"]:
        return
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGALRM, _retry)
    _state["installed"] = True


def pending() -> int | None:
    """The signal number of a stop asked for (None: none)."""
    return _state["signum"]


def disarm() -> None:
    """No retry pending (called on the way out: a SIGALRM during exit would end the process as killed)."""
    if _state["installed"]:
        signal.setitimer(signal.ITIMER_REAL, 0)


def exit_code() -> int:
    return 128 + (_state["signum"] or signal.SIGINT)


@contextmanager
def deferred() -> Iterator[None]:
    """A section a first signal must not cut (a file written and renamed): the stop waits until it ends."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
    if _state["depth"] == 0 and _state["signum"] is not None and not _state["raised"]:
        _stop()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _state["signum"] is not None:  # the second one: stop now, whatever is running
        os.write(2, b"interrupted again: stopping now\n")
        os._exit(128 + signum)
    _state["signum"] = signum
    _raise_or_retry(frame)


def _retry(signum: int, frame: FrameType | None) -> None:
    if _state["signum"] is not None and not _state["raised"]:
        _raise_or_retry(frame)


def _raise_or_retry(frame: FrameType | None) -> None:
    if _state["depth"] > 0 or _importing(frame):
        signal.setitimer(signal.ITIMER_REAL, RETRY_S)
        return
    _stop()


def _stop() -> None:
    """Raise the stop once; the retry timer goes (a SIGALRM after the handlers are gone would kill the
    process with the wrong code while it exits)."""
    signal.setitimer(signal.ITIMER_REAL, 0)
    _state["raised"] = True
    raise KeyboardInterrupt


def _importing(frame: FrameType | None) -> bool:
    """Is an import running in this stack (importlib's frozen bootstrap, or a module body executing)?"""
    while frame is not None:
        code = frame.f_code
        if code.co_filename.startswith("<frozen importlib"):
            return True
        if code.co_name == "<module>" and frame.f_globals.get("__name__") != "__main__":
            return True  # a module body running: an import, whoever started it
        frame = frame.f_back
    return False


def reset_for_tests() -> None:
    """Back to no stop asked for (in-process tests run several commands)."""
    _state.update(signum=None, raised=False, depth=0)
    if _state["installed"]:
        signal.setitimer(signal.ITIMER_REAL, 0)

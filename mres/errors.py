"""Errors the CLI shows as one line, without a traceback.

- :class:`UserError` — bad input (recipe, file, flag): ``error: …``, exit 2.
- :class:`RunFailure` — the run cannot go on for a reason the user can act on (disk full, …):
  ``error: …``, exit 1.
- :class:`Interrupted` — Ctrl-C / SIGINT during a run: one line saying where the last good
  checkpoint is and how to resume, exit 130 (128 + SIGINT, as a shell reports it).
"""


class UserError(Exception):
    """Bad input (recipe, file, flag): shown without a traceback, exit code 2."""


class RunFailure(RuntimeError):
    """A runtime failure with a clear cause (e.g. no space left): one ``error:`` line, exit code 1."""


class Interrupted(Exception):
    """The user interrupted a run; the message says where the last good state is. Exit code 130."""


class DivergedError(RuntimeError):
    """Training produced a non-finite loss."""

    def __init__(self, message: str, epoch: int, step: int, metrics: list | None = None):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.metrics = list(metrics or [])  # the per-epoch rows so far (the last one may be non-finite)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name (messages can be empty)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__

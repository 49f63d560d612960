"""Errors that are the user's to fix: the CLI prints them as one `error:` line and exits 2."""


class UserError(Exception):
    """Bad input (recipe, file, flag): shown without a traceback, exit code 2."""


class DivergedError(RuntimeError):
    """Training produced a non-finite loss."""

    def __init__(self, message: str, epoch: int, step: int):
        super().__init__(message)
        self.epoch = epoch
        self.step = step

"""The `mres` command line (typer + rich).

Each command group lives in its own module and registers on ``app``:
``train_cmds`` (train, evaluate, datasets, recipes), ``c2f_cmds`` (coarse-to-fine, transfer,
report), ``zoo_cmds`` (params, spectrum), ``analysis_cmds`` (landscape, features).

Exit codes: 0 success, 2 bad input (one ``error:`` line), 1 runtime failure.  Full tracebacks
only with ``--debug``.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
from typing import List, Optional

from ..training import signals

if __import__("threading").current_thread() is __import__("threading").main_thread():
    signals.install()  # before anything heavy is imported: Ctrl-C never cuts an import short

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402

from ..errors import Interrupted, RunFailure, UserError, first_line  # noqa: E402

try:  # typer >= 0.26 vendors click; older typers depend on it
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException as _ClickException

app = typer.Typer(
    name="mres",
    help="Multiresolution, coarse-to-fine training of CNNs (CNN, MgNet, Poly-MgNet).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors (before or after the "
                                                               "command: mres train --debug …)."),
          imports: Optional[List[str]] = typer.Option(
              None, "--import", metavar="FILE.py|MODULE",
              help="Import a file or module that registers your own models (register_family) before the "
                   "command runs; repeatable.")) -> None:
    _state["debug"] = debug or _state["debug"]
    from ..models.plugins import import_plugin

    for spec in imports or []:
        import_plugin(spec)


def _hide_flag_types() -> None:
    """typer's rich help prints boolean flags as ``--quiet <bool>``; a flag takes no value, so show none."""
    try:
        from typer.core import TyperOption
    except ImportError:  # pragma: no cover
        return
    original = getattr(TyperOption, "display_type_rich", None)
    if original is None or getattr(original, "_mres_flag_aware", False):
        return

    def display_type_rich(self, ctx):
        if getattr(self, "is_flag", False):
            return None
        return original(self, ctx)

    display_type_rich._mres_flag_aware = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich


_hide_flag_types()


for _mod in ("train_cmds", "c2f_cmds", "zoo_cmds", "analysis_cmds"):
    try:
        importlib.import_module(f"{__name__}.{_mod}")
    except ModuleNotFoundError as _exc:  # a command group not written yet
        if _exc.name != f"{__name__}.{_mod}":
            raise


def _split_debug(args: list[str]) -> tuple[list[str], bool]:
    """Remove ``--debug`` wherever it stands (before ``--``): ``mres --debug train`` = ``mres train --debug``."""
    end = args.index("--") if "--" in args else len(args)
    head = [a for a in args[:end] if a != "--debug"]
    return head + args[end:], len(head) != end


MAX_MESSAGE = 2000  # characters of one error message (a value echoed back may be megabytes)


def cut_long(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` with its middle cut when it is longer than ``limit`` characters (the key and the
    start of the value stay, so the line still says what is wrong)."""
    if len(message) <= limit:
        return message
    keep = limit // 2
    return f"{message[:keep]} … ({len(message) - 2 * keep:,} characters cut) … {message[-keep:]}"


def _error(message: str, code: int, prefix: str = "error:") -> None:
    """One line on stderr (user text escaped: rich would eat ``[best]`` as markup) and exit.
    Under torchrun the line names the rank."""
    dist = sys.modules.get("mres.training.distributed")  # never imported here: torch may be half imported
    if dist is not None and dist.world().distributed:
        prefix = f"rank {dist.world().rank}: {prefix}".strip()
    message = cut_long(message)
    signals.disarm()
    err_console.print(f"[bold red]{prefix}[/] {escape(message)}" if prefix else escape(message),
                      highlight=False, soft_wrap=True)
    sys.exit(code)


def _join_ranks() -> None:
    """Under torchrun: join the process group; ranks other than 0 print nothing but their errors."""
    import atexit

    from ..training.distributed import init_from_env, shutdown

    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return
    w = init_from_env()
    atexit.register(shutdown)
    if not w.main:
        from ..training.fit import console as train_console

        console.quiet = True
        train_console.quiet = True


def _no_space_message(exc: OSError) -> str:
    """``no space left on DIR …`` (mres' own message), or the OS's reason with the file it was writing."""
    msg = exc.strerror or first_line(exc)
    if exc.filename and str(exc.filename) not in msg and not msg.startswith("no space left on "):
        msg = f"{msg} (writing {exc.filename})"
    return msg


def main() -> None:
    args, debug = _split_debug(sys.argv[1:])
    _state["debug"] = debug
    if not debug:  # torch's own warnings (deprecations, advice) are not for the user of a command line
        import warnings

        warnings.filterwarnings("ignore", module=r"torch(\.|$)")
    try:
        _join_ranks()
        # without standalone mode typer *returns* the code of an Exit — Ctrl-C outside a run
        # loop arrives as Exit(130), a command's `raise typer.Exit(n)` as n
        rv = app(args=args, prog_name="mres", standalone_mode=False)
        if isinstance(rv, int) and not isinstance(rv, bool) and rv:
            if rv == 130:
                _error("interrupted", signals.exit_code(), prefix="")
            sys.exit(rv)
    except UserError as exc:
        if debug:
            raise
        _error(str(exc) or first_line(exc), 2)
    except Interrupted as exc:
        if debug:
            raise
        _error(first_line(exc), signals.exit_code(), prefix="")
    except KeyboardInterrupt:
        if debug:
            raise
        _error("interrupted", signals.exit_code(), prefix="")
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", None)
        if code is None:
            code = getattr(exc, "code", 0)
        sys.exit(code or 0)
    except typer.Abort:
        _error("aborted", 1, prefix="")
    except RunFailure as exc:
        if debug:
            raise
        _error(first_line(exc), 1)
    except Exception as exc:  # usage errors and runtime failures
        if isinstance(exc, _ClickException):
            exc.show()
            sys.exit(getattr(exc, "exit_code", 2) or 0)
        if debug:
            raise
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            _error(_no_space_message(exc), 1)
        if isinstance(exc, PermissionError):  # a read-only --out, a folder of someone else's
            _error(f"cannot write {exc.filename or 'a file'}: permission denied; choose a place you may write to "
                   "(e.g. --out runs/NAME)", 2)
        what = first_line(exc)
        what = what if what == type(exc).__name__ else f"{type(exc).__name__}: {what}"
        _error(f"{what}  (rerun with --debug for the traceback)", 1, prefix="failed:")
    if signals.pending() is not None:  # a library swallowed the KeyboardInterrupt: still not a success
        _error("interrupted", signals.exit_code(), prefix="")
    signals.disarm()
    sys.exit(0)

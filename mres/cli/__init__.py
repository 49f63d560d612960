"""The `mres` command line (typer + rich).

Each command group lives in its own module and registers on ``app``:
``train_cmds`` (train, evaluate, datasets, recipes), ``c2f_cmds`` (coarse-to-fine, transfer,
report), ``zoo_cmds`` (params, spectrum), ``analysis_cmds`` (landscape, features).

Exit codes: 0 success, 2 bad input (one ``error:`` line), 1 runtime failure.  Full tracebacks
only with ``--debug``.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from ..errors import UserError

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
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _state["debug"] = debug


for _mod in ("train_cmds", "c2f_cmds", "zoo_cmds", "analysis_cmds"):
    try:
        importlib.import_module(f"{__name__}.{_mod}")
    except ModuleNotFoundError as _exc:  # a command group not written yet
        if _exc.name != f"{__name__}.{_mod}":
            raise


def main() -> None:
    debug = "--debug" in sys.argv[1:]
    try:
        app(standalone_mode=False)
    except UserError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", None)
        if code is None:
            code = getattr(exc, "code", 0)
        sys.exit(code or 0)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except Exception as exc:  # usage errors and runtime failures
        if isinstance(exc, _ClickException):
            exc.show()
            sys.exit(getattr(exc, "exit_code", 2) or 0)
        if debug:
            raise
        err_console.print(f"[bold red]failed:[/] {type(exc).__name__}: {exc}  (rerun with --debug for the traceback)",
                          highlight=False, soft_wrap=True)
        sys.exit(1)
    sys.exit(0)

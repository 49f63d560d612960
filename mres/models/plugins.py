"""Your own models in every command: ``mres --import mymodels.py …`` and the ``mres.models`` entry points.

A plugin is a Python file (or an importable module) that calls
``mres.models.register_family(ModelFamily(...))`` when imported.  ``--import`` takes a path ending
in ``.py`` or a dotted module name and may be repeated; installed packages can instead declare an
entry point in the group ``mres.models`` (``[project.entry-points."mres.models"] mine = "pkg.models"``),
which the registry loads with the built-in families.  A run records the plugins it was made with
(``summary.json: plugins``), so a later ``unknown model`` error can say which ``--import`` to pass.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import zlib
from importlib.metadata import entry_points
from pathlib import Path

from ..errors import UserError

ENTRY_POINT_GROUP = "mres.models"
_imported: list[str] = []  # what this process imported, as given (absolute paths for files)


def import_plugin(spec: str) -> str:
    """Import one plugin (a ``.py`` path or a module name); return how it is recorded (absolute path or name)."""
    if spec.endswith(".py") or "/" in spec or Path(spec).is_file():
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"--import {spec}: no such file (give a .py file that calls register_family, "
                            "or an importable module name)")
        name = f"mres_plugin_{path.stem}_{zlib.crc32(str(path).encode()):08x}"
        if name not in sys.modules:
            module_spec = importlib.util.spec_from_file_location(name, path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[name]
                raise UserError(f"--import {spec}: importing it failed: {type(exc).__name__}: {exc}") from exc
        recorded = str(path)
    else:
        try:
            importlib.import_module(spec)
        except ImportError as exc:
            raise UserError(f"--import {spec}: cannot import the module ({exc}); give a .py path or an "
                            "importable module name") from None
        except Exception as exc:
            raise UserError(f"--import {spec}: importing it failed: {type(exc).__name__}: {exc}") from exc
        recorded = spec
    if recorded not in _imported:
        _imported.append(recorded)
    return recorded


def imported_plugins() -> list[str]:
    """The plugins imported in this process (recorded in a run's summary)."""
    return list(_imported)


def load_entry_points() -> list[str]:
    """Import every installed ``mres.models`` entry point; a broken one is a UserError naming it."""
    loaded = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:
            raise UserError(f"entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP}) failed to load: "
                            f"{type(exc).__name__}: {exc}") from exc
        loaded.append(ep.value)
    return loaded

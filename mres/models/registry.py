"""One registry builds every model from a name and a few options (timm style).

A *family* registers a name matcher, a pydantic options schema (``extra="forbid"``) and a
builder.  Recipes name a model (``cnn``, ``mgnet[2,2,2,2]-[256]-Bl``, ``poly-g4``, ...) and give
options; ``check_model`` validates both before any work, ``build_model`` constructs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn
from pydantic import BaseModel, ConfigDict, ValidationError


class ModelOptions(BaseModel):
    """Base class of every family's options: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ModelFamily:
    family: str
    matches: Callable[[str], bool]
    options: type[ModelOptions]
    # build(name, options, in_channels, num_classes, resolution) -> nn.Module
    build: Callable[[str, Any, int, int, int], nn.Module]
    # divisor(name, options) -> int: input resolutions must be multiples of it
    divisor: Callable[[str, Any], int]
    examples: tuple[str, ...] = ()
    # parse(name) -> None or raises ValueError with a readable message (name grammar)
    parse: Callable[[str], Any] | None = None


_FAMILIES: list[ModelFamily] = []


def register_family(family: ModelFamily) -> ModelFamily:
    _FAMILIES[:] = [f for f in _FAMILIES if f.family != family.family]
    _FAMILIES.append(family)
    return family


def families() -> list[ModelFamily]:
    _load_builtin()
    return list(_FAMILIES)


def known_names() -> list[str]:
    return [ex for f in families() for ex in (f.examples or (f.family,))]


def find_family(name: str) -> ModelFamily:
    for fam in families():
        if fam.matches(name):
            return fam
    raise ValueError(f"unknown model {name!r}; known: {', '.join(known_names())} (a model of your own: "
                     "register it in a file and pass `mres --import FILE.py …`, see docs/api.md)")


def parse_options(name: str, options: dict[str, Any]) -> Any:
    return find_family(name).options(**options)


def check_model(name: str, options: dict[str, Any], resolutions: list[int]) -> list[tuple[str, str]]:
    """All problems with a model block as (dotted path, message) pairs; empty when fine."""
    try:
        fam = find_family(name)
    except ValueError as exc:
        return [("model.name", str(exc))]
    problems: list[tuple[str, str]] = []
    if fam.parse is not None:
        try:
            fam.parse(name)
        except ValueError as exc:
            return [("model.name", str(exc))]
    try:
        opts = fam.options(**options)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            problems.append((f"model.{loc}", _pydantic_message(err, fam.options)))
        return problems
    div = fam.divisor(name, opts)
    for r in resolutions:
        if r % div != 0 or r < div:
            problems.append(
                ("resolution", f"{r} cannot be taken by {name}: it must be a positive multiple of {div}")
            )
    return problems


def build_model(name: str, options: dict[str, Any], in_channels: int, num_classes: int,
                resolution: int) -> nn.Module:
    fam = find_family(name)
    opts = fam.options(**options)
    model = fam.build(name, opts, in_channels, num_classes, resolution)
    model.mres_name = name  # type: ignore[attr-defined]
    model.resolution = resolution  # type: ignore[attr-defined]
    return model


def parameter_count(name: str, options: dict[str, Any], in_channels: int, num_classes: int,
                    resolution: int) -> int | None:
    """Weights of the model, counted on the meta device (nothing allocated); None when its builder cannot
    run there (it then is built for real, as before)."""
    import torch

    try:
        with torch.device("meta"):
            model = build_model(name, options, in_channels, num_classes, resolution)
    except Exception:  # noqa: BLE001 - a builder that computes on its weights (e.g. a spectral init)
        return None
    return sum(p.numel() for p in model.parameters())


def _pydantic_message(err: dict[str, Any], options: type[ModelOptions]) -> str:
    """What is wrong, what is allowed and the value given (``model.width1: … ≥ 1 (got -1)``)."""
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(["name", *options.model_fields]) if options.model_fields else "name only"
        return f"unknown key (allowed for this model: {allowed})"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "literal_error":
        msg = msg.replace("Input should be", "must be one of")
    if "input" in err and err["type"] != "missing":
        msg = f"{msg} (got {err['input']!r})"
    return msg


_loaded = False


def _load_builtin() -> None:
    """Import the model modules so they register themselves (lazy: avoids import cycles)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib

    for mod in ("cnn", "mgnet", "vmgnet", "poly", "resnet"):
        try:
            importlib.import_module(f"mres.models.{mod}")
        except ModuleNotFoundError as exc:  # a family still being written
            if exc.name != f"mres.models.{mod}":
                raise
    from .plugins import load_entry_points

    load_entry_points()  # installed packages' families (entry-point group mres.models)

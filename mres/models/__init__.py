"""Model zoo: every model is built by name through one registry."""

from .registry import ModelFamily, ModelOptions, build_model, check_model, families, find_family, register_family

__all__ = ["ModelFamily", "ModelOptions", "build_model", "check_model", "families", "find_family", "register_family"]

"""Registry of named architectures with a single construction path (``create_model``)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DEFAULTS: dict[str, dict] = {}


def register_model(name: str, factory: Callable[..., nn.Module], **defaults) -> None:
    """Register ``factory`` under ``name`` with default keyword arguments."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = factory
    _DEFAULTS[name] = defaults


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a glob ``pattern``."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_defaults(name: str) -> dict:
    """The registered keyword arguments of ``name`` (a copy)."""
    _check(name)
    return dict(_DEFAULTS[name])


def create_model(name: str, **overrides) -> nn.Module:
    """Build the registered architecture ``name``; ``overrides`` replace its default kwargs."""
    _check(name)
    return _REGISTRY[name](**{**_DEFAULTS[name], **overrides})


def _check(name: str) -> None:
    if name not in _REGISTRY:
        from gie_cli.errors import UsageError

        raise UsageError(f"unknown model {name!r}", hint=f"known: {', '.join(list_models())}")

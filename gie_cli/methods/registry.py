"""The method registry: built-in methods come from :mod:`gie_cli.catalog`; plugins add theirs with
:func:`register_method`. ``create_method`` is the one construction path of every method."""

from __future__ import annotations

from collections.abc import Callable

import torch

from gie_cli import catalog
from gie_cli.errors import UsageError
from gie_cli.methods.base import InversionMethod

MethodFactory = Callable[..., InversionMethod]
_PLUGINS: dict[str, tuple[MethodFactory, str]] = {}


def register_method(name: str, summary: str) -> Callable[[MethodFactory], MethodFactory]:
    """Decorator registering a plugin loader ``factory(weights: str | None, **options) -> InversionMethod``."""

    def deco(factory: MethodFactory) -> MethodFactory:
        if name in catalog.METHODS or name in _PLUGINS:
            raise ValueError(f"method {name!r} is already registered")
        _PLUGINS[name] = (factory, summary)
        return factory

    return deco


def list_methods() -> dict[str, str]:
    """Registered method names -> one-line summaries (imports nothing)."""
    names = {k: e.summary for k, e in catalog.METHODS.items()} | {k: v[1] for k, v in _PLUGINS.items()}
    return dict(sorted(names.items()))


def method_factory(name: str) -> MethodFactory:
    """The loader of method ``name``.

    Raises:
        UsageError: No such method.
    """
    if name in _PLUGINS:
        return _PLUGINS[name][0]
    if name not in catalog.METHODS:
        raise UsageError(f"unknown method {name!r}", hint=f"choose one of: {', '.join(list_methods())}")
    return catalog.load(catalog.METHODS[name])


def create_method(
    name: str, weights: str | None = None, device: torch.device | str = "cpu", **options: object
) -> InversionMethod:
    """Build method ``name`` on ``device``.

    Args:
        name: A registered method.
        weights: A file path or weights-registry name; None picks the method's embedded default (the demo zoo).
        device: Where the method runs.
        **options: Method-specific settings (strings from ``--set`` or typed values).
    """
    factory = method_factory(name)
    if weights:  # a registry name or a path -> the file (downloaded if needed; offline: a clear error)
        from gie_cli.weights import resolve_weights

        weights = str(resolve_weights(weights, method=name).resolve())
    method = factory(weights, **options)
    # without weights the factory picks the method's embedded default and records it
    method.weights_path = weights or getattr(method, "weights_path", "")
    method.options = {k: str(v) for k, v in options.items()}
    return method.to(device).eval()

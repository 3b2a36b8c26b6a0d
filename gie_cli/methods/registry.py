"""The method registry: built-in methods come from :mod:`gie_cli.catalog`; plugins add theirs with
:func:`register_method`. ``create_method`` is the one construction path of every method."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from gie_cli import catalog
from gie_cli.errors import UsageError
from gie_cli.methods.base import InversionMethod
from gie_cli.settings import coerce

MethodFactory = Callable[..., InversionMethod]
REGISTRY = catalog.LazyRegistry(
    "method",
    catalog.METHODS,
    lambda name, known: UsageError(f"unknown method {name!r}", hint=f"choose one of: {', '.join(known)}"),
)


def register_method(name: str, summary: str) -> Callable[[MethodFactory], MethodFactory]:
    """Decorator registering a plugin loader ``factory(weights: str | None, **options) -> InversionMethod``."""
    return REGISTRY.register(name, summary)


OptionsCheck = Callable[[dict[str, Any]], Any]


def checks_options(check: OptionsCheck) -> Callable[[MethodFactory], MethodFactory]:
    """Decorator attaching ``check(options)`` to a method factory: it parses and range-checks the method's settings
    without loading any weights (raising :class:`UsageError`), so commands validate ``--set`` before any item runs.

    A factory without a check accepts no settings.
    """

    def deco(factory: MethodFactory) -> MethodFactory:
        factory.check_options = check  # type: ignore[attr-defined]
        return factory

    return deco


def bool_options(method: str, options: Mapping[str, object], defaults: Mapping[str, bool]) -> dict[str, bool]:
    """Parse a method's boolean settings (e.g. GradStyle's ``use_gam``, HFGI's ``use_ada``): ``defaults`` names them.

    Raises:
        UsageError: an unknown setting, or a value that is not a boolean.
    """
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        known = ", ".join(f"{k} (true|false)" for k in defaults)
        raise UsageError(f"{method} has no option {unknown[0]!r}", hint=f"known: {known}")
    return {k: bool(coerce(method, k, options.get(k, d), bool)) for k, d in defaults.items()}


def check_method_options(name: str, options: Mapping[str, object]) -> None:
    """Validate the settings of method ``name`` (``--set`` strings or typed values) without building it.

    Raises:
        UsageError: no such method, an unknown setting, a value of the wrong type, not finite or out of range.
    """
    factory = method_factory(name)
    check = getattr(factory, "check_options", None)
    if check is not None:
        check(dict(options))
    elif options:
        raise UsageError(f"{name} has no settings (got {', '.join(sorted(options))})", hint="drop --set", param="set")


def list_methods() -> dict[str, str]:
    """Registered method names -> one-line summaries (imports nothing)."""
    return REGISTRY.summaries()


def method_factory(name: str) -> MethodFactory:
    """The loader of method ``name``.

    Raises:
        UsageError: No such method.
    """
    return REGISTRY.factory(name)


def create_method(
    name: str, weights: str | None = None, device: torch.device | str = "cpu", **options: object
) -> InversionMethod:
    """Build method ``name`` on ``device``.

    Args:
        name: A registered method.
        weights: A file path or weights-registry name; None picks the method's embedded default (the demo zoo).
        device: Where the method runs.
        **options: Method-specific settings (strings from ``--set`` or typed values).

    Raises:
        UsageError: an unknown method, or settings that :func:`check_method_options` refuses.
    """
    factory = method_factory(name)
    check_method_options(name, options)
    if weights:  # a registry name or a path -> the file (downloaded if needed; offline: a clear error)
        from gie_cli.weights import resolve_weights

        weights = str(resolve_weights(weights, method=name).resolve())
    method = factory(weights, **options)
    # without weights the factory picks the method's embedded default and records it
    method.weights_path = weights or getattr(method, "weights_path", "")
    method.options = {k: str(v) for k, v in options.items()}
    return method.to(device).eval()

"""Typed ``KEY=VALUE`` settings of methods and trainers (``--set``): one parser whose errors name their owner."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from gie_cli.errors import UsageError

T = TypeVar("T")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

#: the range keys a dataclass field's ``metadata`` may carry (see :func:`setting`).
_BOUNDS = {"gt": (">", lambda v, b: v > b), "ge": (">=", lambda v, b: v >= b), "lt": ("<", lambda v, b: v < b)}
_BOUNDS["le"] = ("<=", lambda v, b: v <= b)


def setting(default: Any, **bounds: float) -> Any:
    """A dataclass field with range checks applied by :func:`parse_settings`: ``lr: float = setting(0.1, gt=0)``.

    Args:
        default: The field's default.
        **bounds: ``gt``, ``ge``, ``lt``, ``le``: the value must be greater than / at least / less than / at most.
    """
    unknown = set(bounds) - set(_BOUNDS)
    if unknown:
        raise TypeError(f"unknown bound(s) {sorted(unknown)}; use {sorted(_BOUNDS)}")
    return dataclasses.field(default=default, metadata={"bounds": bounds})


def check_range(owner: str, key: str, value: Any, bounds: Mapping[str, float]) -> None:
    """Check a typed setting against ``bounds`` (see :func:`setting`); floats must also be finite.

    Raises:
        UsageError: a non-finite float, or a value out of range (the message names the owner, key and bound).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{owner} setting {key}={value!r} is not a finite number")
    for name, bound in bounds.items():
        op, ok = _BOUNDS[name]
        if not ok(value, bound):
            raise UsageError(f"{owner} setting {key}={value!r} is out of range", hint=f"it must be {op} {bound:g}")


def coerce(owner: str, key: str, value: Any, typ: type) -> Any:
    """Convert a ``--set`` string to ``typ`` (``bool`` accepts 1/0, true/false, yes/no, on/off); typed values pass.

    Args:
        owner: Who the setting belongs to, named in errors (e.g. ``"optim"``, ``"gradstyle training"``).
        key: The setting's name.
        value: A string from the command line, or an already typed value.
        typ: The target type (``bool``, ``int``, ``float``, ``str``).

    Raises:
        UsageError: ``value`` does not parse as ``typ``, or is a float that is not finite (``nan``, ``inf``).
    """
    if not isinstance(value, str) or typ is str:
        if typ is float and isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{owner} setting {key}={value!r} is not a finite number")
        return value
    try:
        if typ is bool:
            if value.lower() in _TRUE:
                return True
            if value.lower() in _FALSE:
                return False
            raise ValueError(value)
        out = typ(value)
    except ValueError:
        raise UsageError(f"{owner} setting {key}={value!r} is not a valid {typ.__name__}") from None
    if isinstance(out, float) and not math.isfinite(out):
        raise UsageError(f"{owner} setting {key}={value!r} is not a finite number", hint="give a finite number")
    return out


def parse_settings(cls: type[T], settings: Mapping[str, Any], owner: str) -> T:
    """Build the dataclass ``cls`` from ``settings`` (strings or typed values), each coerced to its field's type.

    Args:
        cls: A dataclass whose fields all have defaults.
        settings: Setting name -> value.
        owner: Who the settings belong to, named in errors.

    Raises:
        UsageError: An unknown setting (the error lists the known ones), a value of the wrong type, a non-finite float,
            or a value outside its field's bounds (``metadata["bounds"]``, see :func:`setting`).
    """
    defaults = cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in settings if k not in fields]
    if unknown:
        raise UsageError(f"{owner} has no setting {unknown[0]!r}", hint=f"known: {', '.join(sorted(fields))}")
    values = {k: coerce(owner, k, v, type(getattr(defaults, k))) for k, v in settings.items()}
    for k, v in values.items():
        check_range(owner, k, v, fields[k].metadata.get("bounds", {}))
    return cls(**values)

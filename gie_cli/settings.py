"""Typed ``KEY=VALUE`` settings of methods and trainers (``--set``): one parser whose errors name their owner."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from gie_cli.errors import UsageError

T = TypeVar("T")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def coerce(owner: str, key: str, value: Any, typ: type) -> Any:
    """Convert a ``--set`` string to ``typ`` (``bool`` accepts 1/0, true/false, yes/no, on/off); typed values pass.

    Args:
        owner: Who the setting belongs to, named in errors (e.g. ``"optim"``, ``"gradstyle training"``).
        key: The setting's name.
        value: A string from the command line, or an already typed value.
        typ: The target type (``bool``, ``int``, ``float``, ``str``).

    Raises:
        UsageError: ``value`` does not parse as ``typ``.
    """
    if not isinstance(value, str) or typ is str:
        return value
    try:
        if typ is bool:
            if value.lower() in _TRUE:
                return True
            if value.lower() in _FALSE:
                return False
            raise ValueError(value)
        return typ(value)
    except ValueError:
        raise UsageError(f"{owner} setting {key}={value!r} is not a valid {typ.__name__}") from None


def parse_settings(cls: type[T], settings: Mapping[str, Any], owner: str) -> T:
    """Build the dataclass ``cls`` from ``settings`` (strings or typed values), each coerced to its field's type.

    Args:
        cls: A dataclass whose fields all have defaults.
        settings: Setting name -> value.
        owner: Who the settings belong to, named in errors.

    Raises:
        UsageError: An unknown setting (the error lists the known ones) or a value of the wrong type.
    """
    defaults = cls()
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in settings if k not in known]
    if unknown:
        raise UsageError(f"{owner} has no setting {unknown[0]!r}", hint=f"known: {', '.join(sorted(known))}")
    return cls(**{k: coerce(owner, k, v, type(getattr(defaults, k))) for k, v in settings.items()})

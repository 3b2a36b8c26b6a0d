"""The error of invalid directions and of directions that do not fit a generator."""

from __future__ import annotations

from gie_cli.errors import GieError


class DirectionError(GieError):
    """A direction file is invalid, or does not fit the generator it is applied to."""

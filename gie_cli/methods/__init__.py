"""Inversion methods: the interface (:mod:`.base`), the registry (:mod:`.registry`) and one folder per method.

Built-in methods are listed in :mod:`gie_cli.catalog`; this package never imports them itself.
"""

from gie_cli.methods.base import Inversion, InversionMethod, invert_and_render, synchronize
from gie_cli.methods.registry import create_method, list_methods, method_factory, register_method

__all__ = [
    "Inversion",
    "InversionMethod",
    "create_method",
    "invert_and_render",
    "list_methods",
    "method_factory",
    "register_method",
    "synchronize",
]

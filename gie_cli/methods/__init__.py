"""Inversion methods: the interface (:mod:`.base`), the registry (:mod:`.registry`) and one folder per method.

Built-in methods are listed in :mod:`gie_cli.catalog`; this package never imports them itself.
"""

from gie_cli.methods.base import (
    EDIT_MASK_KEY,
    AlignmentProbe,
    Inversion,
    InversionMethod,
    NonFiniteError,
    check_inversion,
    invert_and_render,
    nonfinite,
    nonfinite_parts,
    nonfinite_reason,
    synchronize,
)
from gie_cli.methods.registry import (
    check_method_options,
    checks_options,
    create_method,
    list_methods,
    method_factory,
    register_method,
)

__all__ = [
    "EDIT_MASK_KEY",
    "AlignmentProbe",
    "Inversion",
    "InversionMethod",
    "NonFiniteError",
    "check_inversion",
    "check_method_options",
    "checks_options",
    "create_method",
    "invert_and_render",
    "list_methods",
    "method_factory",
    "nonfinite",
    "nonfinite_parts",
    "nonfinite_reason",
    "register_method",
    "synchronize",
]

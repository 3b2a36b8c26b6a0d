"""Device, dtype and precision resolution: `--device auto|cpu|cuda[:N]`, `--dtype auto|fp32|fp16|bf16`,
`--precision fp32|bf16|fp16` (autocast), `--cuda-graphs`; host-to-device copies of batches."""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import warnings
from collections.abc import Sequence

import torch

from gie_cli.errors import UsageError

log = logging.getLogger(__name__)

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISIONS = ("fp32", "bf16", "fp16")
"""``--precision``: fp32, or autocast of an fp32 model to bfloat16 / float16 (see ``FastPath.precision``)."""


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn a user's device string into a usable ``torch.device``, logging the choice.

    ``auto`` picks ``cuda`` when available, else ``cpu``. An explicit CUDA device that cannot be used is an error,
    never a silent CPU run.

    Raises:
        UsageError: malformed spec, or an explicit accelerator that is not usable.
    """
    spec = (spec or "auto").strip().lower()
    if not _DEVICE_RE.match(spec):
        # the wording "invalid --device" is kept: library callers (and tests) match it
        raise UsageError(f"invalid --device {spec!r}", hint="use auto, cpu, cuda or cuda:N", param="device", value=spec)
    if spec == "auto":
        dev = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        why = "CUDA available" if dev.type == "cuda" else "no CUDA device found"
        log.info("device: %s (auto: %s)", _describe(dev), why)
        return dev
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            reason = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise UsageError(
                f"device {spec!r}: CUDA is not usable ({reason})", hint="use cpu or auto", param="device", value=spec
            )
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise UsageError(
                f"device {spec!r}: only {n} CUDA device(s) visible",
                hint=f"use cuda:0..cuda:{n - 1}",
                param="device",
                value=spec,
            )
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UsageError(f"device {spec!r}: MPS is not available", hint="use cpu or auto", param="device", value=spec)
    log.info("device: %s", _describe(dev))
    return dev


def _describe(dev: torch.device) -> str:
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"cuda:{idx} ({torch.cuda.get_device_name(idx)})"
    if dev.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(dev)


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """``auto`` -> fp32 (fp16 and bf16 only on CUDA, where they are asked for explicitly).

    Raises:
        UsageError: unknown dtype, or half precision requested on a device without fast support.
    """
    spec = (spec or "auto").lower()
    if spec == "auto":
        return torch.float32
    if spec not in DTYPES:
        # the wording "invalid --dtype" is kept: library callers (and tests) match it
        raise UsageError(f"invalid --dtype {spec!r}", hint="use auto, fp32, fp16 or bf16", param="dtype", value=spec)
    if spec != "fp32" and device.type != "cuda":
        raise UsageError(
            f"dtype {spec} needs a CUDA device (got {device.type})", hint="use fp32 on CPU", param="dtype", value=spec
        )
    return DTYPES[spec]


def resolve_precision(spec: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """Check an autocast precision (``--precision``) for ``device`` and the model dtype ``dtype`` (``--dtype``).

    Returns:
        ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    Raises:
        UsageError: unknown precision; half-precision autocast of a model already cast to half (``--dtype``); fp16
            on CPU (torch autocasts to it there, but has no fast float16 convolutions: hundreds of times slower than
            fp32); a precision this torch build cannot autocast to on ``device``.
    """
    spec = (spec or "fp32").strip().lower()
    if spec not in PRECISIONS:
        raise UsageError(f"invalid --precision {spec!r}", hint="use fp32, bf16 or fp16", param="precision", value=spec)
    if spec == "fp32":
        return spec
    if dtype != torch.float32:
        name = next((k for k, v in DTYPES.items() if v == dtype), str(dtype))
        raise UsageError(
            f"--precision {spec} autocasts an fp32 model, but --dtype {name} casts the whole model",
            hint="use one of them: --precision with --dtype auto/fp32, or --dtype with --precision fp32",
            param="precision",
            value=spec,
        )
    if spec == "fp16" and device.type == "cpu":
        raise UsageError(
            "--precision fp16 on CPU: torch has no fast float16 convolutions there (far slower than fp32)",
            hint="use bf16 or fp32 on CPU",
            param="precision",
            value=spec,
        )
    if device.type == "cuda" and spec == "bf16" and not torch.cuda.is_bf16_supported():
        raise UsageError(
            f"--precision bf16: {_describe(device)} has no bfloat16 support", hint="use fp16 or fp32",
            param="precision", value=spec,
        )  # fmt: skip
    if not autocast_supported(device.type, DTYPES[spec]):
        raise UsageError(
            f"--precision {spec}: torch {torch.__version__} cannot autocast to {spec} on {device.type}",
            hint="use fp32" + (" or bf16" if autocast_supported(device.type, torch.bfloat16) else ""),
            param="precision",
            value=spec,
        )
    return spec


@functools.cache
def autocast_supported(device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``torch.autocast(device_type, dtype)`` runs a matmul in ``dtype`` here (older builds warn and disable
    autocast for dtypes they do not support on CPU)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.autocast(device_type, dtype=dtype):
                a = torch.ones(2, 2, device=device_type)
                return (a @ a).dtype == dtype
    except (RuntimeError, ValueError, AssertionError):
        return False


def autocast(
    device: torch.device, precision: str = "fp32", cache_enabled: bool = True
) -> contextlib.AbstractContextManager[None]:
    """``torch.autocast`` to ``precision`` (``bf16`` / ``fp16``) on ``device``; nothing for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision], cache_enabled=cache_enabled)


def check_cuda_graphs(enabled: bool, device: torch.device) -> None:
    """``--cuda-graphs`` needs a CUDA device.

    Raises:
        UsageError: it is asked for on another device.
    """
    if enabled and device.type != "cuda":
        raise UsageError(
            f"--cuda-graphs needs a CUDA device (got {device.type})",
            hint="drop --cuda-graphs, or use --device cuda",
            param="cuda_graphs",
        )


def to_device(x: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x`` on ``device`` in ``dtype``; a CPU tensor goes to CUDA through pinned memory, without blocking the host
    (the dtype is converted on the device). Elsewhere a plain ``.to``."""
    if device.type == "cuda" and x.device.type == "cpu":
        if not x.is_pinned():
            x = x.pin_memory()
        x = x.to(device, non_blocking=True)
    return x.to(device, dtype)


def stack_to_device(xs: Sequence[torch.Tensor], device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.stack(xs)`` on ``device`` in ``dtype``: for CUDA stacked straight into pinned memory (one host copy)
    and copied without blocking the host (see :func:`to_device`)."""
    if device.type == "cuda" and all(x.device.type == "cpu" for x in xs):
        buf = torch.empty((len(xs), *xs[0].shape), dtype=xs[0].dtype, pin_memory=True)
        return to_device(torch.stack(list(xs), out=buf), device, dtype)
    return torch.stack(list(xs)).to(device, dtype)

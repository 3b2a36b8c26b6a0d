"""Device and dtype resolution: `--device auto|cpu|cuda[:N]`, `--dtype auto|fp32|fp16|bf16`."""

from __future__ import annotations

import logging
import re

import torch

from gie_cli.errors import UsageError

log = logging.getLogger(__name__)

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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

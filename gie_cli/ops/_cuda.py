"""Implementation selection and the lazily JIT-built CUDA extension for the StyleGAN2 ops (Karras et al. 2020).

Nothing here compiles at import time. The extension (``csrc/``) is built with ``torch.utils.cpp_extension.load``
(ninja) the first time an op resolves ``impl="auto"`` or ``impl="cuda"`` for a CUDA tensor, cached in torch's
extension directory (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``), and attempted at most once per
process. If that build fails (CPU-only PyTorch, no nvcc, no ninja, compiler error), ``"auto"`` falls back to the
pure-PyTorch implementation and one ``RuntimeWarning`` names the reason; ``"cuda"`` raises instead.

Implementations: ``"auto"`` (compiled CUDA op for CUDA tensors when it builds, else ``"torch"``; ``"torch"`` while
``torch.compile`` traces), ``"torch"`` (fast pure-PyTorch path), ``"ref"`` (the plain reference formulas) and
``"cuda"`` (compiled op, error if unavailable). The process-wide default that ``impl="auto"`` defers to comes from
``GIE_OPS_IMPL`` and :func:`set_default_impl`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

IMPLS = ("auto", "torch", "ref", "cuda")
ENV_VAR = "GIE_OPS_IMPL"
EXTENSION_NAME = "gie_ops_v3"  # bump when the C++/CUDA interface changes
CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("ops.cpp", "upfirdn2d_kernel.cu", "bias_act_kernel.cu")

_lock = threading.Lock()
_plugin: ModuleType | None = None
_attempted = False
_error: str | None = None
_warned = False


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"unknown ops implementation {impl!r}; expected one of {', '.join(IMPLS)}")
    return impl


def _impl_from_env() -> str:
    """The default implementation named by ``$GIE_OPS_IMPL`` ("auto" when unset; warns and ignores bad values)."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value:
        return "auto"
    if value not in IMPLS:
        warnings.warn(f"ignoring {ENV_VAR}={value!r}: expected one of {', '.join(IMPLS)}", RuntimeWarning, stacklevel=2)
        return "auto"
    return value


_default_impl = _impl_from_env()


def get_default_impl() -> str:
    """Return the process-wide implementation that ``impl="auto"`` resolves through (initially ``$GIE_OPS_IMPL``)."""
    return _default_impl


def set_default_impl(impl: str) -> str:
    """Force an implementation for every op called with ``impl="auto"``; returns the previous default.

    Args:
        impl: ``"auto"``, ``"torch"``, ``"ref"`` or ``"cuda"``. ``"auto"`` restores automatic selection.

    Returns:
        The previous default.
    """
    global _default_impl
    previous, _default_impl = _default_impl, _check_impl(impl)
    return previous


@contextlib.contextmanager
def use_impl(impl: str) -> Iterator[None]:
    """Context manager: :func:`set_default_impl` for the duration of a ``with`` block."""
    previous = set_default_impl(impl)
    try:
        yield
    finally:
        set_default_impl(previous)


def _build() -> ModuleType:
    """Compile (or load from torch's extension cache) the CUDA extension; raises with a reason on failure."""
    if torch.version.cuda is None:
        raise RuntimeError("this PyTorch build has no CUDA support")
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        raise RuntimeError("CUDA toolkit not found (no nvcc; set CUDA_HOME)")
    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja is not installed")
    return cpp_extension.load(
        name=EXTENSION_NAME,
        sources=[str(CSRC / name) for name in SOURCES],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3"],
        verbose=os.environ.get("GIE_OPS_VERBOSE", "") not in ("", "0"),
    )


def load_plugin() -> ModuleType | None:
    """Return the compiled extension, building it on the first call; ``None`` if it cannot be built.

    The build is attempted once per process; later calls return the cached result (module or ``None``).
    """
    global _plugin, _attempted, _error
    with _lock:
        if not _attempted:
            _attempted = True
            try:
                _plugin = _build()
            except Exception as exc:  # any build/load failure means "not available"
                lines = str(exc).strip().splitlines()
                _error = f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]
                _plugin = None
    return _plugin


def build_error() -> str | None:
    """Why the extension is unavailable (``None`` if it built or was never attempted)."""
    return _error


def _reset() -> None:
    """Forget the build attempt and the warning (tests only)."""
    global _plugin, _attempted, _error, _warned
    with _lock:
        _plugin, _attempted, _error, _warned = None, False, None, False


def _warn_fallback() -> None:
    global _warned
    with _lock:
        if _warned:
            return
        _warned = True
    warnings.warn(
        f"gie.ops: CUDA extension unavailable ({_error}); using the pure-PyTorch implementation instead "
        "(GIE_OPS_VERBOSE=1 shows the build log)",
        RuntimeWarning,
        stacklevel=4,
    )


def resolve_impl(impl: str, device: torch.device | str, cuda_ok: bool = True) -> str:
    """Decide which implementation runs an op; builds the CUDA extension lazily when it is wanted.

    Args:
        impl: The op's ``impl`` argument; ``"auto"`` defers to :func:`get_default_impl`.
        device: Device of the op's input tensor. The extension is only ever loaded for CUDA devices.
        cuda_ok: ``False`` when the compiled op cannot serve this call (e.g. a kernel that requires grad); ``"auto"``
            then picks ``"torch"`` and an explicit ``"cuda"`` raises.

    Returns:
        ``"cuda"``, ``"torch"`` or ``"ref"``.

    Raises:
        ValueError: Unknown ``impl``, or ``"cuda"`` requested for a non-CUDA tensor or an unsupported call.
        RuntimeError: ``"cuda"`` requested but the extension could not be built.
    """
    impl = _check_impl(impl)
    if impl == "auto":
        impl = _default_impl
    if impl in ("torch", "ref"):
        return impl
    if impl == "auto" and torch.compiler.is_compiling():
        return "torch"  # torch.compile traces the pure-PyTorch ops; the compiled extension would break the graph
    is_cuda = torch.device(device).type == "cuda"
    if impl == "cuda":
        if not is_cuda:
            raise ValueError(f"impl='cuda' needs CUDA tensors, got a tensor on {device}")
        if not cuda_ok:
            raise ValueError("impl='cuda' does not support this call (e.g. a kernel that requires grad)")
        if load_plugin() is None:
            raise RuntimeError(f"impl='cuda' requested but the CUDA extension is unavailable ({_error})")
        return "cuda"
    if not is_cuda or not cuda_ok:
        return "torch"
    if load_plugin() is None:
        _warn_fallback()
        return "torch"
    return "cuda"


def active_impl(device: torch.device | str = "cpu") -> str:
    """The implementation that ``impl="auto"`` would run on ``device`` (builds the extension on a CUDA device)."""
    return resolve_impl("auto", device)

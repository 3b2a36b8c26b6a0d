"""Safe checkpoint reading (weights-only torch.load, safetensors), strict state-dict loading and gie's own format."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import pickle
import re
import struct
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as _safetensors_save

from gie_cli.errors import CheckpointError, StateDictMismatchError
from gie_cli.io.atomic import atomic_write, atomic_write_bytes

__all__ = [
    "GIE_CHECKPOINT_FORMAT",
    "GIE_CONFIG_KEY",
    "read_checkpoint",
    "get_prefixed",
    "strip_prefix",
    "load_state_dict_strict",
    "latent_avg_as_wplus",
    "save_safetensors",
    "load_safetensors",
]

logger = logging.getLogger(__name__)

GIE_CONFIG_KEY = "gie_config"  # safetensors metadata key holding gie's JSON config
GIE_CHECKPOINT_FORMAT = "gie-checkpoint/1"  # the "format" of gie's method checkpoints (config key)

_HEAD_BYTES = 4096
_REDOWNLOAD = "delete it and download it again"
_PICKLE_HINT = (
    "gie only reads weights-only checkpoints (tensors and plain values) or safetensors; ask the publisher for one "
    "(or use the registry's copy: `gie weights list`)"
)
_NVIDIA_PICKLE_HINT = (
    "an NVIDIA stylegan2-ada-pytorch network pickle is converted once, without running its code: "
    "`gie weights import --convert {path} --output FILE.safetensors` (or --name stylegan2_ada.ffhq), then pass "
    "the .safetensors file"
)


# ----------------------------------------------------------------------------------------------- reading


def read_checkpoint(path: str | Path, *, allow_tensor: bool = False) -> dict[str, Any]:
    """Reads a checkpoint without executing any pickled code.

    ``.pt``/``.pth``/``.ckpt`` files go through ``torch.load(map_location="cpu", weights_only=True)`` (zip and
    legacy formats); safetensors files (by suffix or content) through safetensors. ``argparse.Namespace`` is the
    only extra class allowed (old ``opts``); top-level Namespace values are returned as plain dicts.

    Args:
        path: Checkpoint file.
        allow_tensor: Accept a bare tensor at the top level (official direction files such as InterFaceGAN's
            ``age.pt``), returned as ``{"": tensor}``.

    Returns:
        The top-level dict (a state dict, or e.g. ``{"state_dict": ..., "opts": {...}, "latent_avg": ...}``),
        all tensors on the CPU.

    Raises:
        CheckpointError: Missing/empty file, a web page or Git LFS pointer instead of weights, truncated or corrupt
            data, pickled Python objects that would need code execution, a TorchScript archive, or a top level
            that is not a dict.
    """
    p = Path(path)
    head = _read_head(p)
    if p.suffix.lower() == ".safetensors" or _looks_like_safetensors(head):
        return _read_safetensors(p)[0]
    if head.startswith(b"PK"):
        _check_zip(p)
    try:
        with _safe_globals_ctx(), warnings.catch_warnings():
            # torch's note on pickle protocols is noise to a user: what the file holds is checked below
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _classify_unpickling_error(p, e) from e
    except MemoryError as e:
        raise CheckpointError(p, "not enough memory to load it") from e
    except Exception as e:  # RuntimeError/EOFError/OSError/ValueError from the zip reader or the unpickler
        raise CheckpointError(
            p, f"truncated or corrupt file ({type(e).__name__}: {_first_line(str(e))})", _redownload_hint(p)
        ) from e
    if allow_tensor and isinstance(obj, torch.Tensor):
        return {"": obj}
    if not isinstance(obj, dict):
        raise CheckpointError(
            p, f"top level is a {type(obj).__name__}, expected a dict (a state dict or a checkpoint dict)"
        )
    if any(isinstance(v, argparse.Namespace) for v in obj.values()):
        obj = {k: vars(v) if isinstance(v, argparse.Namespace) else v for k, v in obj.items()}
    logger.debug("read checkpoint %s (%d top-level keys)", p, len(obj))
    return obj


def _read_head(p: Path) -> bytes:
    """Returns the first bytes of ``p`` after checking it exists, is a file, is non-empty and holds no text."""
    try:
        with open(p, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except FileNotFoundError:
        raise CheckpointError(p, "file not found", "check the path, or download the weights first") from None
    except IsADirectoryError:
        raise CheckpointError(p, "is a directory, not a weights file") from None
    except OSError as e:
        raise CheckpointError(p, f"cannot read file ({e.strerror or e})") from None
    if not head:
        raise CheckpointError(p, "empty file (0 bytes)", _REDOWNLOAD)
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"<"):
        lower = text.lower()
        gdrive = any(m in lower for m in (b"google drive", b"drive.google", b"virus scan", b"uc?export"))
        what = "Google Drive's download/virus-scan confirmation page" if gdrive else "an error or login page"
        raise CheckpointError(
            p,
            f"is an HTML page, not model weights (probably {what} saved in place of the file)",
            "download it again in a browser or with `gdown --fuzzy <url>`, and check its size (usually 100s of MB)",
        )
    if text.startswith(b"version https://git-lfs"):
        raise CheckpointError(
            p,
            "is a Git LFS pointer file, not the weights",
            "run `git lfs pull` in the repository it came from, or download the file directly",
        )
    sample = head[:1024]
    if not any(b < 9 or 13 < b < 32 for b in sample):  # no control bytes: plain text
        snippet = sample[:60].decode("utf-8", errors="replace").strip()
        raise CheckpointError(p, f"is a text file, not model weights (starts with {snippet!r})", _REDOWNLOAD)
    return head


def _check_zip(p: Path) -> None:
    """Rejects truncated zip archives and TorchScript archives before torch.load sees them."""
    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            p, "truncated or corrupt zip archive (the download was probably interrupted)", _REDOWNLOAD
        ) from e
    if any(n.endswith("/constants.pkl") or n.split("/", 2)[1:2] == ["code"] for n in names):
        raise CheckpointError(
            p,
            "is a TorchScript archive (torch.jit.save), not a checkpoint of weights",
            "export the model's state_dict() with torch.save instead",
        )


def _looks_like_safetensors(head: bytes) -> bool:
    """True if ``head`` starts like a safetensors file: a little-endian u64 header length, then '{'."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n < 100_000_000


def _safe_globals_ctx() -> contextlib.AbstractContextManager:
    """Allow-lists argparse.Namespace for weights-only unpickling where torch supports it (>= 2.5)."""
    ctx = getattr(torch.serialization, "safe_globals", None)
    return ctx([argparse.Namespace]) if ctx is not None else contextlib.nullcontext()


def _first_line(msg: str, limit: int = 200) -> str:
    line = next((ln.strip() for ln in msg.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _classify_unpickling_error(p: Path, e: pickle.UnpicklingError) -> CheckpointError:
    """Maps a weights-only unpickling failure to a specific CheckpointError."""
    msg = str(e)
    names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", msg)))
    if names or "Unsupported global" in msg:
        scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5, no execution
        with contextlib.suppress(Exception):  # legacy files are not supported by the scan: keep the message's name
            names = sorted(set(scan(p) if scan is not None else ())) or names
        what = ", ".join(names) if names else "unknown classes"
        nvidia = p.suffix.lower() == ".pkl" or any(n.split(".", 1)[0] in ("torch_utils", "dnnlib") for n in names)
        return CheckpointError(
            p,
            f"contains pickled Python objects ({what}) that can only be loaded by executing code; "
            "gie refuses to execute them",
            _NVIDIA_PICKLE_HINT.format(path=p) if nvidia else _PICKLE_HINT,
        )
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", msg)
    reason = _first_line(detail.group(1)) if detail else _first_line(msg)
    return CheckpointError(p, f"not a PyTorch checkpoint, or corrupt ({reason})", _redownload_hint(p))


def _redownload_hint(p: Path) -> str:
    """How to fix an unreadable file: a ``.pkl`` is an NVIDIA network pickle to convert, anything else is fetched
    again."""
    return _NVIDIA_PICKLE_HINT.format(path=p) if p.suffix.lower() == ".pkl" else _REDOWNLOAD


def _read_safetensors(p: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Reads all tensors and the raw string metadata of a safetensors file."""
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError, OSError, ...
        raise CheckpointError(
            p, f"not a valid safetensors file, or truncated ({_first_line(str(e))})", _REDOWNLOAD
        ) from e
    return tensors, metadata


# ----------------------------------------------------------------------------------------------- state dicts


def get_prefixed(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Keeps the keys under ``prefix`` and strips it (pSp-family ``get_keys``).

    Args:
        state_dict: Flat state dict.
        prefix: Key prefix without or with the trailing dot, e.g. ``"encoder"`` or ``"encoder.module"``.

    Returns:
        ``{key[len(prefix) + 1:]: value}`` for keys starting with ``prefix + "."`` (possibly empty).
    """
    prefix = prefix.rstrip(".")
    if not prefix:
        return dict(state_dict)
    start = prefix + "."
    out = {k[len(start) :]: v for k, v in state_dict.items() if k.startswith(start)}
    if not out:
        logger.debug("no keys under prefix %r", start)
    return out


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """Strips ``prefix`` from the keys that start with it (e.g. DataParallel's ``module.``); others are kept.

    Raises:
        ValueError: Stripping makes two keys collide.
    """
    out: dict[str, Any] = {}
    for k, v in state_dict.items():
        new = k[len(prefix) :] if k.startswith(prefix) else k
        if new in out:
            raise ValueError(f"stripping {prefix!r} makes key {new!r} appear twice")
        out[new] = v
    return out


def _top_level_names(keys: list[str], limit: int = 8) -> str:
    names = list(dict.fromkeys(k.split(".", 1)[0] for k in keys))
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def load_state_dict_strict(
    module: torch.nn.Module, state_dict: Mapping[str, Any], source: str, assign: bool = False
) -> None:
    """Loads ``state_dict`` into ``module`` after checking keys and shapes, with a readable error.

    Floating-point tensors are cast to the module's dtype for that key (e.g. fp16 weights into an fp32 model);
    numpy arrays and Python numbers are converted to tensors.

    Args:
        module: Target module.
        state_dict: Flat state dict (already prefix-stripped).
        source: Where it came from, for messages, e.g. ``"e4e_ffhq_encode.pt (encoder.*)"``.
        assign: Use the given tensors as the parameters (for modules built on the ``meta`` device, which skips
            allocating and initialising weights that are replaced anyway).

    Raises:
        StateDictMismatchError: Missing, unexpected or wrongly shaped keys (all of them listed).
    """
    expected = module.state_dict()
    given: OrderedDict[str, Any] = OrderedDict()
    unexpected: list[str] = []
    for k, v in state_dict.items():
        if isinstance(v, np.ndarray | int | float):
            v = torch.as_tensor(v)
        if not isinstance(v, torch.Tensor):
            unexpected.append(f"{k} (a {type(v).__name__}, not a tensor)")
            continue
        given[k] = v
    missing = [k for k in expected if k not in given]
    unexpected += [k for k in given if k not in expected]
    shape_mismatch = [
        (k, tuple(v.shape), tuple(expected[k].shape))
        for k, v in given.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shape_mismatch:
        hint = None
        if expected and not any(k in expected for k in given):
            hint = (
                f"no key matches; the weights' keys start with: {_top_level_names(list(state_dict)) or '(none)'} "
                f"and the model's with: {_top_level_names(list(expected))} (wrong file or key prefix?)"
            )
        raise StateDictMismatchError(source, missing, unexpected, shape_mismatch, hint=hint)
    for k, v in given.items():
        want = expected[k].dtype
        if v.dtype != want and v.is_floating_point() and want.is_floating_point:
            given[k] = v.to(want)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:  # module version info used by some _load_from_state_dict hooks
        given._metadata = metadata  # type: ignore[attr-defined]
    module.load_state_dict(given, strict=True, assign=assign)
    logger.debug("loaded %d tensors from %s into %s", len(given), source, type(module).__name__)


def latent_avg_as_wplus(latent_avg: torch.Tensor, n_latent: int, source: str | None = None) -> torch.Tensor:
    """Returns the average latent as a W+ code.

    Args:
        latent_avg: Tensor [D], [1, D], [n_latent, D] or [1, n_latent, D].
        n_latent: Number of W+ entries of the generator (18 for 1024px, 14 for 256px).
        source: Where it came from, for messages.

    Returns:
        A new tensor [n_latent, D] (same dtype).

    Raises:
        CheckpointError: Any other shape.
    """
    t = torch.as_tensor(latent_avg).detach()
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() == 1:
        t = t[None]
    if t.dim() == 2 and t.shape[0] == 1:
        return t.repeat(n_latent, 1)
    if t.dim() == 2 and t.shape[0] == n_latent:
        return t.clone()
    raise CheckpointError(
        source or "<latent_avg>",
        f"latent_avg has shape {list(torch.as_tensor(latent_avg).shape)}, expected [D], [1, D], "
        f"[{n_latent}, D] or [1, {n_latent}, D]",
        "the checkpoint was probably made for a generator of another resolution",
    )


# ----------------------------------------------------------------------------------------------- gie format


def save_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> None:
    """Atomically writes tensors plus a JSON config (metadata key ``"gie_config"``) as a safetensors file.

    Tensors are detached, moved to the CPU and made contiguous; tensors sharing storage with an earlier one are
    cloned (safetensors refuses shared memory).

    Args:
        path: Output file (``.safetensors``).
        tensors: Name -> tensor.
        config: JSON-serialisable dict.

    Raises:
        CheckpointError: The config is not JSON-serialisable, or the file cannot be written.
    """
    p = Path(path)
    try:
        cfg = json.dumps(dict(config), sort_keys=True)
    except (TypeError, ValueError) as e:
        raise CheckpointError(p, f"cannot save: config is not JSON-serialisable ({e})") from e
    prepared: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"save_safetensors: {k!r} is a {type(t).__name__}, not a tensor")
        t = t.detach().cpu()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel():
            t = t.clone()
        seen.add(ptr)
        prepared[k] = t.contiguous()
    try:
        data = _safetensors_save(prepared, metadata={"format": "pt", GIE_CONFIG_KEY: cfg})
        atomic_write_bytes(p, data)
    except OSError as e:
        raise CheckpointError(p, f"cannot write ({e.strerror or e})") from e
    logger.debug("saved %d tensors to %s", len(prepared), p)


#: safetensors dtype names of the torch dtypes gie writes.
_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
    torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


def save_safetensors_rows(
    path: str | Path,
    layout: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
    rows: Iterable[Mapping[str, torch.Tensor]],
    config: Mapping[str, Any],
) -> int:
    """Atomically write a safetensors file of stacked tensors one row at a time, never holding them whole.

    The file is what :func:`save_safetensors` of the stacked tensors would hold (the same tensors and metadata; the
    byte layout may differ): the header is written from ``layout`` first, then each row's slices at their offsets.

    Args:
        path: Output file.
        layout: Name -> ``(dtype, shape)`` of the stacked tensor, ``shape[0]`` = the number of rows.
        rows: Per row, name -> tensor of shape ``shape[1:]`` (or ``[1, *shape[1:]]``) and the layout's dtype.
        config: JSON-serialisable dict (metadata key ``"gie_config"``).

    Returns:
        The number of rows written.

    Raises:
        CheckpointError: the config is not JSON-serialisable, a row does not match the layout, the rows are fewer or
            more than the layout says, or the file cannot be written.
    """
    p = Path(path)
    try:
        cfg = json.dumps(dict(config), sort_keys=True)
    except (TypeError, ValueError) as e:
        raise CheckpointError(p, f"cannot save: config is not JSON-serialisable ({e})") from e
    counts = {int(shape[0]) for _, shape in layout.values()}
    if len(counts) != 1:
        raise CheckpointError(p, f"cannot save: the tensors have different row counts {sorted(counts)}")
    n = counts.pop()
    header: dict[str, Any] = {"__metadata__": {"format": "pt", GIE_CONFIG_KEY: cfg}}
    starts, row_bytes, offset = {}, {}, 0
    for name in sorted(layout):
        dtype, shape = layout[name]
        size = torch.empty((), dtype=dtype).element_size() * math.prod(shape)
        header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        starts[name], row_bytes[name] = offset, size // max(n, 1)
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    base = 8 + len(raw)
    written = 0
    try:
        with atomic_write(p, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for i, row in enumerate(rows):
                if i >= n or set(row) != set(layout):
                    raise CheckpointError(
                        p, f"cannot save: row {i} does not match the layout ({n} rows of {sorted(layout)})"
                    )
                for name, t in row.items():
                    dtype, shape = layout[name]
                    t = t.detach().cpu()
                    if t.dtype != dtype or t.numel() * t.element_size() != row_bytes[name]:
                        raise CheckpointError(p, f"cannot save: row {i} of {name!r} is {t.dtype} {tuple(t.shape)}, "
                                                 f"expected {dtype} {tuple(shape[1:])}")  # fmt: skip
                    f.seek(base + starts[name] + i * row_bytes[name])
                    f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
                written = i + 1
            if written != n:
                raise CheckpointError(p, f"cannot save: {written} rows given, the layout has {n}")
            f.seek(base + offset)
            f.truncate()
    except OSError as e:
        raise CheckpointError(p, f"cannot write ({e.strerror or e})") from e
    logger.debug("saved %d rows of %d tensors to %s", n, len(layout), p)
    return n


def load_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Reads a safetensors file written by ``save_safetensors``.

    Args:
        path: Safetensors file.

    Returns:
        ``(tensors, config)``; config is ``{}`` when the file has no ``"gie_config"`` metadata. Half-precision
        tensors (the embedded zoo stores fp16 to save space, see :func:`half_precision_copy`) come back as float32.

    Raises:
        CheckpointError: Missing/empty/corrupt file, or invalid config JSON.
    """
    p = Path(path)
    _read_head(p)
    tensors, metadata = _read_safetensors(p)
    tensors = {k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for k, v in tensors.items()}
    raw = metadata.get(GIE_CONFIG_KEY)
    if raw is None:
        logger.debug("%s has no %r metadata", p, GIE_CONFIG_KEY)
        return tensors, {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(p, f"invalid {GIE_CONFIG_KEY} metadata ({e})") from e
    if not isinstance(config, dict):
        raise CheckpointError(p, f"{GIE_CONFIG_KEY} metadata is a {type(config).__name__}, expected a JSON object")
    return tensors, config


def half_precision_copy(src: str | Path, dst: str | Path, keep_fp32: tuple[str, ...] = ()) -> None:
    """Writes ``src`` (a gie safetensors file) to ``dst`` with float32 tensors stored as float16 (same config).

    Args:
        src: Input file.
        dst: Output file (written atomically).
        keep_fp32: Substrings of tensor names that stay float32 (e.g. ``"latent_avg"``).
    """
    p = Path(src)
    _read_head(p)
    tensors, metadata = _read_safetensors(p)
    out = {
        k: v.half() if v.dtype == torch.float32 and not any(s in k for s in keep_fp32) else v
        for k, v in tensors.items()
    }
    raw = metadata.get(GIE_CONFIG_KEY)
    save_safetensors(dst, out, json.loads(raw) if raw else {})

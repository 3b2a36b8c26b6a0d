"""Latent files written by `gie invert` and read by `gie edit`: safetensors with W+, extras and provenance."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gie_cli.errors import CheckpointError
from gie_cli.io.checkpoint import load_safetensors, save_safetensors, save_safetensors_rows
from gie_cli.io.writer import run_or_defer

log = logging.getLogger(__name__)

LATENT_FORMAT = "gie-latent/1"
LATENT_SUFFIX = ".latent.safetensors"
_LATENT_HINT = (
    "re-run `gie invert` on its source image with --on-existing overwrite to write it again "
    "(latent files are made by `gie invert`, not downloaded)"
)


def save_latent(
    path: str | Path, wplus: torch.Tensor, meta: dict, extras: dict[str, torch.Tensor] | None = None
) -> None:
    """Atomically write one item's latent.

    Args:
        path: destination (``*.latent.safetensors``).
        wplus: ``[n_latent, style_dim]`` or ``[1, n_latent, style_dim]``.
        meta: provenance (method, weights, image_size, source, source_sha256, ...), JSON-serialisable.
        extras: per-item tensors of the method's editing path, stored as ``extra.<name>`` (leading batch dim of 1
            removed).
    """
    if wplus.ndim == 3:
        assert wplus.shape[0] == 1, f"save_latent takes one item, got W+ {tuple(wplus.shape)}"
        wplus = wplus[0]
    assert wplus.ndim == 2, f"W+ must be [n_latent, style_dim], got {tuple(wplus.shape)}"
    tensors = {"wplus": wplus.detach().float().cpu()}
    for k, v in (extras or {}).items():
        v = v.detach().cpu()
        tensors[f"extra.{k}"] = v[0] if v.ndim and v.shape[0] == 1 else v
    run_or_defer(save_safetensors, path, tensors, {"format": LATENT_FORMAT, **meta})


def load_latent(path: str | Path) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
    """Read a latent file.

    Returns:
        ``(wplus [1, n_latent, D], extras {name: [1, ...]}, meta)``.

    Raises:
        CheckpointError: unreadable, truncated or corrupt file (the hint says to re-run `gie invert`), or not a gie
            latent file.
    """
    try:
        tensors, meta = load_safetensors(path)
    except CheckpointError as e:  # the file gie wrote is damaged: it is re-made, never downloaded
        if e.reason in ("file not found", "is a directory, not a weights file") or e.reason.startswith("cannot read"):
            raise CheckpointError(
                path, e.reason, hint="check the path; latent files are written by `gie invert`"
            ) from e
        raise CheckpointError(path, f"latent file is truncated or corrupt ({e.reason})", hint=_LATENT_HINT) from e
    if meta.get("format") != LATENT_FORMAT or "wplus" not in tensors:
        raise CheckpointError(path, "not a gie latent file", hint="pass the *.latent.safetensors files of `gie invert`")
    extras = {k[len("extra.") :]: v[None] for k, v in tensors.items() if k.startswith("extra.")}
    return tensors["wplus"][None], extras, meta


# ----------------------------------------------------------------------------------------------- packed latents
PACK_FORMAT = "gie-latent-pack/1"
PACK_NAME = "latents.safetensors"
"""``gie invert --pack-latents``: the packed file in the output folder (with ``--shard I/N``: see :func:`pack_name`)."""
_PACK_HINT = "re-run `gie invert` with --pack-latents to write it again (finished items are skipped)"


def pack_name(shard: tuple[int, int] | None = None) -> str:
    """``latents.safetensors``, or ``latents.shard-I-of-N.safetensors`` for shard ``(I, N)``."""
    return PACK_NAME if shard is None else f"latents.shard-{shard[0]}-of-{shard[1]}.safetensors"


@dataclass
class PackedLatents:
    """The latents of many items in one file (``gie invert --pack-latents``).

    Attributes:
        names: output names of the items (``NAME`` of ``NAME.latent.safetensors``), in input order.
        sources: each item's source image (resolved path, from its latent record).
        source_sha256: each source's sha256 (from its latent record).
        wplus: ``[N, n_latent, D]`` W+ codes.
        extras: ``name -> [N, ...]``, the method's per-item tensors (only those every item has with one shape).
        records: each item's latent record (``load_latent``'s meta).
    """

    names: list[str]
    sources: list[str | None]
    source_sha256: list[str | None]
    wplus: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)


def save_packed_latents(path: str | Path, entries: Sequence[tuple[str, str | Path]]) -> int:
    """Pack per-item latent files into one safetensors file, atomically, one item in memory at a time.

    ``wplus`` is stacked ``[N, n_latent, D]`` in ``entries`` order; an extra is stacked when every item has it with
    one shape and dtype, else left out with a warning. The metadata (``gie_config``) is a JSON index: ``format``,
    ``names``, ``sources``, ``source_sha256``, ``records`` (each item's latent record) and ``extras``. The files are
    read twice (shapes and records first, then the tensors, written row by row), so memory stays one item's whatever
    the pack's size.

    Args:
        path: destination file.
        entries: ``(name, latent file)`` per item, in order (at least one).

    Returns:
        The number of items packed.

    Raises:
        CheckpointError: a latent file is unreadable, changes between the two reads, or the W+ shapes differ.
        ValueError: no entries.
    """
    if not entries:
        raise ValueError("save_packed_latents needs at least one latent")
    names, records, shapes, extra_specs = [], [], set(), []
    for name, file in entries:
        w, ex, meta = load_latent(file)
        names.append(str(name))
        records.append(meta)
        shapes.add((tuple(w.shape[1:]), w.dtype))
        extra_specs.append({k: (v.dtype, tuple(v.shape[1:])) for k, v in ex.items()})
    if len(shapes) > 1:
        raise CheckpointError(path, f"cannot pack latents of different W+ shapes {sorted(s for s, _ in shapes)}")
    (w_shape, w_dtype), n = shapes.pop(), len(entries)
    layout = {"wplus": (w_dtype, (n, *w_shape))}
    kept = []
    for key in sorted({k for spec in extra_specs for k in spec}):
        parts = {spec.get(key) for spec in extra_specs}
        if None in parts or len(parts) > 1:
            log.warning("%s: extra %r is left out (not every item has it with one shape)", path, key)
            continue
        dtype, shape = parts.pop()
        layout[f"extra.{key}"] = (dtype, (n, *shape))
        kept.append(key)
    index = {
        "format": PACK_FORMAT,
        "names": names,
        "sources": [r.get("source") for r in records],
        "source_sha256": [r.get("source_sha256") for r in records],
        "records": records,
        "extras": kept,
    }

    def rows():
        for _, file in entries:
            w, ex, _ = load_latent(file)
            yield {"wplus": w, **{f"extra.{k}": ex[k] for k in kept if k in ex}}

    return save_safetensors_rows(path, layout, rows(), index)


def is_latent_pack(path: str | Path) -> bool:
    """Whether ``path`` is a packed latent file (reads its header only)."""
    from safetensors import safe_open

    from gie_cli.io.checkpoint import GIE_CONFIG_KEY

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get(GIE_CONFIG_KEY)
        return raw is not None and json.loads(raw).get("format") == PACK_FORMAT
    except Exception:  # noqa: BLE001 - anything unreadable is not a pack
        return False


def _check_pack(path: str | Path, config: dict, n: int) -> None:
    """Refuse a pack index that does not describe ``n`` items, or whose names are not unique relative paths (they
    become file names when unpacked)."""
    names = config.get("names")
    lists = [config.get(k) for k in ("names", "sources", "source_sha256", "records")]
    if not all(isinstance(v, list) and len(v) == n for v in lists):
        raise CheckpointError(path, f"corrupt latent pack: its index does not list {n} items", hint=_PACK_HINT)
    for name in names:
        parts = name.split("/") if isinstance(name, str) else []
        if not parts or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
            raise CheckpointError(path, f"corrupt latent pack: bad item name {name!r}", hint=_PACK_HINT)
    if len(set(names)) != n:
        raise CheckpointError(path, "corrupt latent pack: item names repeat", hint=_PACK_HINT)


def load_packed_latents(path: str | Path) -> PackedLatents:
    """Read a packed latent file (``gie invert --pack-latents``).

    Raises:
        CheckpointError: unreadable, not a latent pack, or an inconsistent index.
    """
    tensors, config = load_safetensors(path)
    if config.get("format") != PACK_FORMAT or "wplus" not in tensors:
        raise CheckpointError(path, "not a gie latent pack", hint="pass a file written by `gie invert --pack-latents`")
    wplus = tensors["wplus"]
    n = wplus.shape[0] if wplus.ndim == 3 else -1
    _check_pack(path, config, n)
    extras = {k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")}
    if any(v.ndim == 0 or v.shape[0] != n for v in extras.values()):
        raise CheckpointError(path, "corrupt latent pack: an extra does not hold one entry per item", hint=_PACK_HINT)
    return PackedLatents(
        list(config["names"]), config["sources"], config["source_sha256"], wplus, extras, config["records"]
    )


def unpack_latents(path: str | Path, out_dir: str | Path) -> list[Path]:
    """Write each item of a packed latent file as ``out_dir/NAME.latent.safetensors`` (the tensors and record of the
    latent file ``gie invert`` wrote for it, extras left out of the pack aside), with the alignment record its latent
    record names (``NAME.align.json`` beside the pack, as ``gie invert`` leaves it) copied alongside.

    Returns:
        The latent files, in pack order.

    Raises:
        CheckpointError: the pack is unreadable or inconsistent.
    """
    from gie_cli.io.atomic import atomic_write_bytes

    pack = load_packed_latents(path)
    src, out = Path(path).parent, Path(out_dir)
    files = []
    for i, name in enumerate(pack.names):
        dst = out / f"{name}{LATENT_SUFFIX}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: v for k, v in pack.records[i].items() if k != "format"}
        save_latent(dst, pack.wplus[i], meta, {k: v[i : i + 1] for k, v in pack.extras.items()})
        align = meta.get("alignment")
        if isinstance(align, str) and align and Path(align).name == align:
            record = src / Path(name).parent / align
            if record.is_file():
                atomic_write_bytes(dst.with_name(align), record.read_bytes())
        files.append(dst)
    return files

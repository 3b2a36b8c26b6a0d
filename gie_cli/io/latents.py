"""Latent files written by `gie invert` and read by `gie edit`: safetensors with W+, extras and provenance."""

from __future__ import annotations

from pathlib import Path

import torch

from gie_cli.errors import CheckpointError
from gie_cli.io.checkpoint import load_safetensors, save_safetensors

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
    save_safetensors(path, tensors, {"format": LATENT_FORMAT, **meta})


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

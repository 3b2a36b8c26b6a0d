"""Binding directions to generators: fingerprints, binding records, provenance, and the check before applying."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gie_cli.editing.direction import Direction
from gie_cli.editing.errors import DirectionError
from gie_cli.editing.spaces import edit_space
from gie_cli.models.stylegan2 import Generator

log = logging.getLogger(__name__)

_FP_CACHE: weakref.WeakKeyDictionary[Generator, tuple[tuple, str]] = weakref.WeakKeyDictionary()


def generator_fingerprint(generator: Generator) -> str:
    """sha256 (hex) of the generator's synthesis network: architecture plus every synthesis weight in fp32.

    The mapping MLP (``style.*``) and the noise buffers (``noises.*``) are left out: directions live in W / W+ /
    StyleSpace, whose meaning is fixed by the synthesis network, and Style Transformer fine-tunes the mapping of the
    same FFHQ generator. So e4e, pSp, HFGI, Style Transformer and SFE checkpoints of one generator share a fingerprint,
    and a generator with other weights (or shapes) never does. The result is cached per generator until a weight
    changes in place.

    Args:
        generator: the generator.

    Returns:
        64 hex digits.
    """
    items = [
        (k, v) for k, v in generator.state_dict().items() if not k.startswith(("style.", "noises.")) and k != "w_avg"
    ]
    key = tuple((k, v.data_ptr(), v._version) for k, v in items)
    hit = _FP_CACHE.get(generator)
    if hit is not None and hit[0] == key:
        return hit[1]
    h = hashlib.sha256()
    arch = {k: v for k, v in generator.config.items() if k not in ("n_mlp", "lr_mlp")}
    h.update(json.dumps(arch, sort_keys=True).encode())
    for k, v in sorted(items):
        t = v.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{k}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    digest = h.hexdigest()
    _FP_CACHE[generator] = (key, digest)
    return digest


def generator_binding(generator: Generator, weights_id: str = "", fingerprint: bool = True) -> dict[str, Any]:
    """The ``generator`` record of a direction made for ``generator``.

    Args:
        generator: the generator.
        weights_id: a readable id of its weights (file name + hash prefix, or a registry name).
        fingerprint: compute :func:`generator_fingerprint` (False: an unbound record with shapes only).
    """
    return {
        "id": weights_id,
        "fingerprint": generator_fingerprint(generator) if fingerprint else None,
        "size": generator.size,
        "style_dim": generator.style_dim,
        "n_latent": generator.n_latent,
    }


def provenance(method: str, source: str | Path | None = None, sha256: str | None = None, **extra: Any) -> dict:
    """A provenance record: how the direction was made (importer or fitting method), from what, when."""
    from gie_cli import __version__

    rec: dict[str, Any] = {
        "method": method,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "gie_version": __version__,
    }
    if source is not None:
        rec["source"] = str(source)
    if sha256 is not None:
        rec["sha256"] = sha256
    rec.update(extra)
    return rec


def check_generator(
    direction: Direction, generator: Generator, force: bool = False, fingerprint: str | None = None
) -> None:
    """Refuse to apply ``direction`` to a generator it was not made for.

    Shapes must always fit. A bound direction (one with a fingerprint) must match :func:`generator_fingerprint`
    unless ``force``; an unbound one is applied with a warning.

    Args:
        direction: the direction.
        generator: the generator the method renders with.
        force: apply a direction bound to another generator anyway (with a warning).
        fingerprint: the generator's fingerprint if already known.

    Raises:
        DirectionError: shapes that do not fit, or another generator's fingerprint without ``force``.
    """
    name = direction.name
    shape_err = edit_space(direction.space).shape_mismatch(direction, generator)
    made_for = direction.generator.get("id") or "an unnamed generator"
    if shape_err:
        raise DirectionError(
            f"direction {name!r} was made for another generator ({made_for}): {shape_err}",
            hint="use a direction made for this generator (gie directions import/fit --weights ...); "
            "--force cannot apply a direction whose shapes differ",
        )
    bound = direction.generator.get("fingerprint")
    if not bound:
        log.warning(
            "direction %s is not bound to a generator fingerprint (made for %s); it cannot be verified against "
            "this generator",
            name,
            made_for,
        )
        return
    fp = fingerprint or generator_fingerprint(generator)
    if fp == bound:
        return
    msg = (
        f"direction {name!r} was made for generator {made_for} (fingerprint {bound[:12]}), not for this one "
        f"(fingerprint {fp[:12]})"
    )
    if force:
        log.warning("%s; applying it anyway (--force)", msg)
        return
    raise DirectionError(
        msg,
        hint="use a direction imported/fitted for these weights (gie directions import/fit --weights ...), "
        "or pass --force to apply it anyway",
    )


def pick_for_generator(candidates: Sequence[Direction], fingerprint: str | None) -> Direction:
    """The first candidate bound to the generator with ``fingerprint``, else the first one (whose binding check then
    warns or refuses as usual)."""
    for d in candidates:
        if fingerprint and (d.generator or {}).get("fingerprint") == fingerprint:
            return d
    return candidates[0]


def load_generator(weights: str, device: str | torch.device = "cpu") -> tuple[Generator, str]:
    """The generator of any checkpoint gie reads (method checkpoints, rosinality ``g_ema`` files), frozen.

    Args:
        weights: a checkpoint path or registry name.
        device: where to put it (``auto`` | ``cpu`` | ``cuda[:N]``).

    Returns:
        ``(generator, weights_id)``.
    """
    from gie_cli.device import resolve_device
    from gie_cli.models.loading import build_generator
    from gie_cli.weights import load_components

    comp = load_components(weights)
    g = build_generator(comp).eval().requires_grad_(False)
    return g.to(resolve_device(str(device))), comp.weights_id


def weights_binding(
    weights: str | None, generator_id: str | None = None, device: str | torch.device = "cpu"
) -> dict[str, Any] | None:
    """The :func:`generator_binding` of the generator in ``weights`` (None without weights: unbound).

    Args:
        weights: a checkpoint path or registry name, or None.
        generator_id: readable id to record (default: the weights id).
        device: where to load the generator while fingerprinting it.
    """
    if weights is None:
        return None
    g, wid = load_generator(weights, device)
    return generator_binding(g, generator_id or wid)

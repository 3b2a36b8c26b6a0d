"""Importers of the official direction files: InterFaceGAN (Shen et al. 2020) tensors, GANSpace (Härkönen et al.
2020) PCA dicts and SFE's W+ boundaries, each with its repository's application convention made explicit.

Official formats (``anchors.md`` §3.5, §4):

- InterFaceGAN ``.pt`` (e4e, HFGI, PTI, SFE, ReStyle): a tensor ``[1, 512]`` (``age``, ``smile``, ``rotation``;
  unit norm, added to every W+ layer) or ``[1, 18, 512]`` (``pose``: 18 identical rows). e4e/HFGI apply
  ``w + factor * d`` (``scale = 1``, ``--convention e4e``); SFE applies ``w + (factor / 2) * d``
  (``scale = 0.5``, ``--convention sfe``).
- GANSpace ``ffhq_pca.pt``: a dict ``mean [1, 512]``, ``comp [80, 1, 512]`` (unit rows), ``std [80]``; named edits are
  ``(component, start, end, strength)`` tuples (tables below). Imported in ``set`` mode (the official formula).
- SFE ``editings/bound/*_boundary.npy``: float32 ``[1, 9216]`` = an 18 x 512 W+ boundary that SFE applies with the
  full factor (``w.flatten() + factor * b``, ``scale = 1``: only SFE's InterFaceGAN path halves the factor).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gie_cli.editing.binding import provenance
from gie_cli.editing.direction import Direction, check_name
from gie_cli.editing.errors import DirectionError
from gie_cli.errors import UsageError
from gie_cli.io.checkpoint import read_checkpoint
from gie_cli.io.images import sha256_file

log = logging.getLogger(__name__)

CONVENTIONS = {"e4e": 1.0, "hfgi": 1.0, "sfe": 0.5}
"""InterFaceGAN ``.pt`` application conventions -> ``scale`` (power multiplier)."""

FORMATS = ("auto", "interfacegan", "ganspace", "boundary")

# Recommended power ranges of SFE's README table (``available_directions.txt``), in SFE's own factor units.
_SFE_INTERFACEGAN_RANGES = {"age": (-10.0, 10.0), "smile": (-5.0, 5.0), "rotation": (-7.0, 7.0), "pose": (-7.0, 7.0)}
_SFE_BOUNDARIES = {  # file stem -> (gie name, power range)
    "Eyeglasses_boundary": ("fs_glasses", (-20.0, 30.0)),
    "Smiling_boundary": ("fs_smiling", (-10.0, 10.0)),
    "Heavy_Makeup_boundary": ("fs_makeup", (-10.0, 15.0)),
}


@dataclass(frozen=True)
class GanspaceEdit:
    """A named GANSpace edit of the official repos: PCA ``component``, W+ layers ``start:end``, default ``strength``."""

    component: int
    start: int
    end: int
    strength: float
    power_range: tuple[float, float] | None
    source: str
    description: str


#: Named FFHQ GANSpace edits shipped by the official repos (e4e's editing notebook; SFE's ``latent_editor.py``,
#: ranges from SFE's ``available_directions.txt``). HFGI's ``eyes``/``beard``/``lip`` use the same components and
#: layers as ``eye_openness``/``trimmed_beard``/``lipstick`` (strengths 20, -20, 20).
FFHQ_GANSPACE_EDITS: dict[str, GanspaceEdit] = {
    "eye_openness": GanspaceEdit(54, 7, 8, 20.0, (-30.0, 45.0), "e4e, HFGI, SFE", "positive closes the eyes"),
    "ganspace_smile": GanspaceEdit(46, 4, 5, -20.0, None, "e4e", "negative adds a smile"),
    "trimmed_beard": GanspaceEdit(58, 7, 9, 20.0, (-30.0, 30.0), "e4e, HFGI, SFE", "positive removes the beard"),
    "white_hair": GanspaceEdit(57, 7, 10, -24.0, None, "e4e", "negative whitens the hair"),
    "lipstick": GanspaceEdit(34, 10, 11, 20.0, (-30.0, 30.0), "e4e, HFGI, SFE", "positive adds lipstick"),
    "face_roundness": GanspaceEdit(37, 0, 5, 20.0, (-20.0, 15.0), "SFE", "positive makes the face rounder"),
    "nose_length": GanspaceEdit(51, 4, 5, -30.0, (-30.0, 30.0), "SFE", "positive shortens the nose"),
    "eyebrow_thickness": GanspaceEdit(37, 8, 9, 20.0, (-20.0, 20.0), "SFE", "positive thins the eyebrows"),
    "head_angle_up": GanspaceEdit(11, 1, 4, -10.5, None, "SFE", "tilts the head"),
    "displeased": GanspaceEdit(36, 4, 7, 10.0, (-10.0, 10.0), "SFE", "positive adds sadness"),
}

FFHQ_GENERATOR_ID = "stylegan2-ffhq-config-f"
_FFHQ_SHAPES = {"size": 1024, "style_dim": 512, "n_latent": 18}


def select_ganspace_edits(names: str | None) -> dict[str, GanspaceEdit] | None:
    """The named FFHQ GANSpace edits of a comma list (None or empty: None, i.e. all of them).

    Raises:
        UsageError: an unknown edit name.
    """
    if not names:
        return None
    wanted = [e.strip() for e in names.split(",") if e.strip()]
    unknown = [e for e in wanted if e not in FFHQ_GANSPACE_EDITS]
    if unknown:
        raise UsageError(
            f"unknown GANSpace edit(s) {', '.join(unknown)}",
            hint=f"known: {', '.join(FFHQ_GANSPACE_EDITS)}",
            param="edits",
            value=names,
        )
    return {e: FFHQ_GANSPACE_EDITS[e] for e in wanted}


def default_binding(generator: dict[str, Any] | None) -> dict[str, Any]:
    """The generator record of an import: the given one, else an unbound record of the official FFHQ config-f
    generator (shapes only: gie cannot fingerprint weights it does not have)."""
    if generator:
        return dict(generator)
    return {"id": FFHQ_GENERATOR_ID, "fingerprint": None, **_FFHQ_SHAPES}


def detect_format(path: str | Path) -> str:
    """``interfacegan`` (a bare tensor), ``ganspace`` (a dict with ``mean``/``comp``/``std``) or ``boundary`` (.npy).

    Raises:
        DirectionError: none of these.
        CheckpointError: unreadable file.
    """
    p = Path(path)
    if p.suffix.lower() == ".npy":
        return "boundary"
    obj = read_checkpoint(p, allow_tensor=True)
    if set(obj) == {""}:
        return "interfacegan"
    if {"mean", "comp", "std"} <= set(obj):
        return "ganspace"
    raise DirectionError(
        f"{p}: not an official direction file (top-level keys: {', '.join(sorted(obj)) or 'none'})",
        hint="expected an InterFaceGAN tensor .pt, a GANSpace PCA dict .pt, or an SFE boundary .npy",
    )


def _power_range(stem: str, scale: float) -> tuple[float, float] | None:
    """SFE's recommended range expressed in powers of a direction applied with ``scale``."""
    r = _SFE_INTERFACEGAN_RANGES.get(stem)
    if r is None:
        return None
    k = 0.5 / scale  # SFE's range is in factor units, applied with factor / 2
    return (r[0] * k, r[1] * k)


def import_interfacegan(
    path: str | Path,
    name: str | None = None,
    convention: str = "e4e",
    generator: dict[str, Any] | None = None,
    layers: list[int] | None = None,
) -> Direction:
    """Import an InterFaceGAN tensor ``[1, D]``/``[D]`` (space ``w``) or ``[1, L, D]``/``[L, D]`` (space ``wplus``).

    Args:
        path: the ``.pt`` file (read with ``weights_only``).
        name: direction name (default: the file stem).
        convention: ``e4e`` / ``hfgi`` (``w + power * d``) or ``sfe`` (``w + power / 2 * d``).
        generator: generator record (:func:`~gie_cli.editing.binding.generator_binding`); default: unbound FFHQ.
        layers: W+ layers to change (default all).

    Raises:
        UsageError: an unknown convention.
        DirectionError: an unexpected shape.
    """
    p = Path(path)
    if convention not in CONVENTIONS:
        raise UsageError(
            f"unknown convention {convention!r} (known: {', '.join(CONVENTIONS)})", param="convention", value=convention
        )
    obj = read_checkpoint(p, allow_tensor=True)
    if set(obj) != {""}:
        raise DirectionError(f"{p}: expected a bare InterFaceGAN tensor, found a dict ({', '.join(sorted(obj))})")
    t = obj[""].detach().float()
    t = t[0] if t.ndim >= 2 and t.shape[0] == 1 else t
    gen = default_binding(generator)
    scale = CONVENTIONS[convention]
    notes: dict[str, Any] = {"convention": convention, "shape": list(obj[""].shape)}
    if t.ndim == 1:
        space, n_rows = "w", int(gen.get("n_latent") or 18)
    elif t.ndim == 2:
        space, n_rows = "wplus", t.shape[0]
        if torch.allclose(t, t[:1].expand_as(t)):
            notes["identical_rows"] = True
    else:
        raise DirectionError(f"{p}: InterFaceGAN tensor of shape {list(obj[''].shape)}, expected [1,D] or [1,L,D]")
    stem = p.stem
    return Direction(
        name=check_name(name or stem),
        space=space,
        tensors={"vector": t.clone()},
        layers=layers if layers is not None else list(range(n_rows)),
        scale=scale,
        power_range=_power_range(stem, scale),
        generator=gen,
        provenance=provenance(f"import:interfacegan[{convention}]", p.resolve(), sha256_file(p), **notes),
        description=f"InterFaceGAN {stem} ({convention} convention: w + {scale:g} * power * d)",
    )


def import_boundary(
    path: str | Path, name: str | None = None, generator: dict[str, Any] | None = None, scale: float = 1.0
) -> Direction:
    """Import an SFE W+ boundary ``.npy`` ``[1, L * D]`` (space ``wplus``; SFE applies it with the full factor).

    Args:
        path: the ``.npy`` file (loaded with ``allow_pickle=False``).
        name: direction name (default: SFE's name for the known files, else the file stem).
        generator: generator record; default: unbound FFHQ.
        scale: power multiplier (SFE: 1).

    Raises:
        DirectionError: unreadable, or a size that is not ``n_latent * style_dim``.
    """
    p = Path(path)
    try:
        arr = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DirectionError(f"{p}: not a readable .npy array ({e})") from e
    gen = default_binding(generator)
    dim = int(gen.get("style_dim") or 512)
    if arr.size % dim:
        raise DirectionError(f"{p}: {arr.size} values are not a whole number of {dim}-wide W+ rows")
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).reshape(-1, dim)
    known_name, rng = _SFE_BOUNDARIES.get(p.stem, (None, None))
    return Direction(
        name=check_name(name or known_name or p.stem),
        space="wplus",
        tensors={"vector": t},
        layers=list(range(t.shape[0])),
        scale=scale,
        power_range=rng,
        generator=gen,
        provenance=provenance("import:sfe-boundary", p.resolve(), sha256_file(p), shape=list(arr.shape)),
        description=f"SFE W+ boundary {p.stem} (w + {scale:g} * power * b, the full factor as SFE applies it)",
    )


def read_ganspace_pca(path: str | Path) -> tuple[Tensor, Tensor, Tensor]:
    """``(mean [D], comp [K, D], std [K])`` of an official GANSpace PCA dict.

    Raises:
        DirectionError: missing keys or inconsistent shapes.
    """
    obj = read_checkpoint(path)
    if not {"mean", "comp", "std"} <= set(obj):
        raise DirectionError(f"{path}: not a GANSpace PCA dict (keys: {', '.join(sorted(obj))})")
    mean = torch.as_tensor(obj["mean"]).float().reshape(-1)
    comp = torch.as_tensor(obj["comp"]).float()
    comp = comp.reshape(comp.shape[0], -1)
    std = torch.as_tensor(obj["std"]).float().reshape(-1)
    if comp.shape[1] != mean.shape[0] or std.shape[0] != comp.shape[0]:
        raise DirectionError(
            f"{path}: inconsistent PCA shapes mean {list(mean.shape)}, comp {list(comp.shape)}, std {list(std.shape)}"
        )
    return mean, comp, std


def ganspace_direction(
    name: str,
    mean: Tensor,
    component: Tensor,
    std: float,
    index: int,
    start: int,
    end: int,
    mode: str = "set",
    power_range: tuple[float, float] | None = None,
    generator: dict[str, Any] | None = None,
    prov: dict[str, Any] | None = None,
    description: str = "",
    strength: float | None = None,
) -> Direction:
    """Build a ``ganspace`` direction from one PCA component applied to W+ layers ``start:end``."""
    params: dict[str, Any] = {"component": int(index), "std": float(std), "mode": mode}
    if strength is not None:
        params["strength"] = float(strength)
    return Direction(
        name=check_name(name),
        space="ganspace",
        tensors={"component": component.detach().float().clone(), "mean": mean.detach().float().clone()},
        layers=list(range(start, end)),
        params=params,
        power_range=power_range,
        generator=default_binding(generator),
        provenance=prov or {},
        description=description,
    )


def import_ganspace(
    path: str | Path,
    edits: dict[str, GanspaceEdit] | None = None,
    mode: str = "set",
    generator: dict[str, Any] | None = None,
) -> list[Direction]:
    """Import named GANSpace edits from an official PCA dict.

    Args:
        path: ``ffhq_pca.pt`` (or another PCA dict of the same layout).
        edits: name -> :class:`GanspaceEdit` (default: :data:`FFHQ_GANSPACE_EDITS`).
        mode: ``set`` (official: the power is the target coordinate) or ``add``.
        generator: generator record; default: unbound FFHQ.

    Returns:
        One direction per edit.
    """
    p = Path(path)
    mean, comp, std = read_ganspace_pca(p)
    digest = sha256_file(p)
    out = []
    for name, e in (edits if edits is not None else FFHQ_GANSPACE_EDITS).items():
        if not 0 <= e.component < comp.shape[0]:
            raise DirectionError(f"{p}: edit {name} uses component {e.component}, the file has {comp.shape[0]}")
        rng = e.power_range if e.power_range is not None else tuple(sorted((0.0, e.strength)))
        prov = provenance(
            "import:ganspace",
            p.resolve(),
            digest,
            edit=[e.component, e.start, e.end, e.strength],
            tables=e.source,
        )
        desc = f"GANSpace component {e.component} on layers {e.start}:{e.end} ({e.description}; official strength "
        desc += f"{e.strength:g})"
        out.append(
            ganspace_direction(
                name, mean, comp[e.component], float(std[e.component]), e.component, e.start, e.end, mode,
                rng, generator, prov, desc, e.strength,
            )
        )  # fmt: skip
    return out


def import_file(
    path: str | Path,
    fmt: str = "auto",
    name: str | None = None,
    convention: str = "e4e",
    generator: dict[str, Any] | None = None,
    layers: list[int] | None = None,
    ganspace_mode: str = "set",
    ganspace_edits: dict[str, GanspaceEdit] | None = None,
    origin: str | None = None,
) -> list[Direction]:
    """Import any official direction file (format detected unless given); see the per-format importers.

    ``origin`` (e.g. ``"omertov/encoder4editing@99ea505/editings/interfacegan_directions/age.pt"``) is recorded as the
    provenance ``source`` instead of the local path.

    Raises:
        UsageError: an unknown format or convention, or a ``name`` for a GANSpace file (it holds several edits).
        DirectionError: a file that is not an official direction file of the format.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})", param="format", value=fmt)
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind == "interfacegan":
        out = [import_interfacegan(path, name, convention, generator, layers)]
    elif kind == "boundary":
        out = [import_boundary(path, name, generator)]
        if layers is not None:
            out[0].layers = layers
            out[0].validate()
    elif name is not None:
        raise UsageError(
            f"{path}: a GANSpace PCA file holds several named edits; a direction name does not apply", param="name"
        )
    else:
        out = import_ganspace(path, ganspace_edits, ganspace_mode, generator)
    if origin:
        for d in out:
            d.provenance["source"] = origin
    return out

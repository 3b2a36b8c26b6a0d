"""Edit directions (InterFaceGAN, GANSpace, StyleSpace, Style Transformer label edits): file format, binding, apply.

A direction is one safetensors file (``NAME.direction.safetensors``) holding its tensors plus a JSON config: name,
space, the layers it touches, the scale convention, a recommended power range, the generator it was made for
(weights id + :func:`generator_fingerprint`) and its provenance. :func:`apply` turns ``(direction, power, W+ codes)``
into an :class:`Edit` (a W+ offset plus optional StyleSpace offsets) that :func:`render_edit` draws through the
method's own rendering path.

Spaces and what ``power`` (``p``) means; ``s = scale * p``:

- ``w``: one vector ``d [D]`` added to the listed W+ layers: ``w_l + s * d`` (InterFaceGAN, Shen et al. 2020; the
  official ``[1, 512]`` files, broadcast to every layer). SFE applies these files as ``w + (factor / 2) * d``: imported
  with ``--convention sfe`` that is ``scale = 0.5``, so the same power means the same edit as in SFE.
- ``wplus``: one vector per layer ``d [L, D]``: ``w_l + s * d_l`` (e4e/HFGI ``pose.pt [1, 18, 512]``, SFE's
  ``[1, 9216]`` boundaries which SFE applies with the full factor, so ``scale = 1``).
- ``ganspace``: a PCA component ``c [D]`` of W with the PCA ``mean [D]`` and the component's ``std``
  (GANSpace, Härkönen et al. 2020). Mode ``set`` is the official e4e/HFGI/SFE formula: with
  ``x = ((w_0 - mean) . c) / std`` the coordinate of W+ layer 0, layers ``start:end`` get ``(s - x) * c * std``, i.e.
  the power is the *target coordinate* in units of std (the official tuples' ``strength``; power 0 moves the
  coordinate to the mean, it is not the identity). Mode ``add`` moves by ``s * std * c`` (power 0 = identity).
- ``stylespace``: offsets of single style channels ``style.<l> [C_l]`` of conv layers (StyleSpace, Wu et al.
  2021): ``s_l + s * v_l``; the scale of a fitted channel is its std over sampled styles (power in std units); SFE's
  channel tables use ``scale = 3``.
- ``label``: an *editing path*, not a fixed vector: Style Transformer's first/second-order label-based edit (Hu et
  al. 2022) with the latent classifier stored in the file (``classifier.*``): ``w + s * d(w)`` with ``d(w)`` the
  per-latent unit-row direction of :func:`gie_cli.editing.label.label_edit_direction`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gie_cli.errors import GieError, UsageError
from gie_cli.io.checkpoint import load_safetensors, save_safetensors
from gie_cli.models.stylegan2 import Generator

log = logging.getLogger(__name__)

DIRECTION_FORMAT = "gie-direction/1"
DIRECTION_SUFFIX = ".direction.safetensors"
SPACES = ("w", "wplus", "ganspace", "stylespace", "label")
GANSPACE_MODES = ("set", "add")
DIRECTIONS_PATH_ENV = "GIE_DIRECTIONS_PATH"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class DirectionError(GieError):
    """A direction file is invalid, or does not fit the generator it is applied to."""


def check_name(name: str) -> str:
    """Validate a direction name (letters, digits, ``_`` and ``-``; used in output file names).

    Raises:
        UsageError: an invalid name.
    """
    if not _NAME_RE.match(name or ""):
        raise UsageError(
            f"invalid direction name {name!r}", hint="use letters, digits, '_' and '-' (it becomes part of file names)"
        )
    return name


# --------------------------------------------------------------------------------------------------- fingerprint
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


# --------------------------------------------------------------------------------------------------- edits
@dataclass
class Edit:
    """What a direction at one power does to a batch of codes.

    Attributes:
        delta: W+ offset ``[B, n_latent, D]`` (zeros for pure StyleSpace edits).
        styles: conv layer -> StyleSpace offset ``[B, C_l]`` (empty for W/W+ edits).
    """

    delta: Tensor
    styles: dict[int, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.delta.shape[0]

    def select(self, start: int, stop: int) -> Edit:
        """Items ``start:stop`` of the batch."""
        return Edit(self.delta[start:stop], {k: v[start:stop] for k, v in self.styles.items()})

    @staticmethod
    def cat(edits: Sequence[Edit]) -> Edit:
        """Concatenate edits along the batch; a style layer missing from some edits gets zero offsets there."""
        layers = sorted({k for e in edits for k in e.styles})
        styles = {}
        for k in layers:
            like = next(e.styles[k] for e in edits if k in e.styles)
            styles[k] = torch.cat([e.styles.get(k, like.new_zeros(len(e), like.shape[1])) for e in edits])
        return Edit(torch.cat([e.delta for e in edits]), styles)


# --------------------------------------------------------------------------------------------------- direction
@dataclass
class Direction:
    """One edit direction (see the module docstring for the spaces and the meaning of power).

    Attributes:
        name: short name (letters, digits, ``_``, ``-``).
        space: ``w`` | ``wplus`` | ``ganspace`` | ``stylespace`` | ``label``.
        tensors: ``vector [D]`` (w), ``vector [L, D]`` (wplus), ``component [D]`` + ``mean [D]`` (ganspace),
            ``style.<l> [C_l]`` (stylespace), ``classifier.*`` (label).
        layers: W+ layers it changes (conv layers for stylespace).
        scale: power multiplier (``s = scale * power``), e.g. 0.5 for SFE's ``factor / 2`` convention.
        power_range: recommended ``(low, high)`` powers, or None.
        params: space-specific settings (ganspace: ``component``, ``std``, ``mode``; label: ``attribute``, ``target``,
            ``order``, ``xi``, ``seed``, ``classifier`` config; stylespace: ``channels``).
        generator: what it was made for: ``id``, ``fingerprint`` (None = unbound), ``size``, ``style_dim``,
            ``n_latent``.
        provenance: ``method`` (importer/fitting method), ``source``, ``sha256``, ``created``, extra facts.
        description: one line for humans.
        path: the file it was loaded from (not stored).
    """

    name: str
    space: str
    tensors: dict[str, Tensor]
    layers: list[int]
    scale: float = 1.0
    power_range: tuple[float, float] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    generator: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    path: Path | None = None
    _classifier: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.layers = [int(x) for x in self.layers]
        self.scale = float(self.scale)
        if self.power_range is not None:
            self.power_range = (float(self.power_range[0]), float(self.power_range[1]))
        self.validate()

    # ------------------------------------------------------------------------------------------- checks
    def validate(self) -> None:
        """Check the fields are consistent.

        Raises:
            DirectionError: an unknown space, missing tensors, or inconsistent shapes.
        """
        src = str(self.path) if self.path else self.name

        def bad(msg: str) -> DirectionError:
            return DirectionError(f"direction {src}: {msg}")

        if not _NAME_RE.match(self.name or ""):
            raise bad(f"invalid name {self.name!r} (letters, digits, '_' and '-')")
        if self.space not in SPACES:
            raise bad(f"unknown space {self.space!r} (known: {', '.join(SPACES)})")
        if not self.layers or min(self.layers) < 0:
            raise bad(f"invalid layers {self.layers}")
        t = self.tensors
        if self.space in ("w", "wplus"):
            if "vector" not in t:
                raise bad("has no 'vector' tensor")
            want = 1 if self.space == "w" else 2
            if t["vector"].ndim != want:
                raise bad(f"space {self.space} needs a {want}-D vector, got {tuple(t['vector'].shape)}")
            if self.space == "wplus" and max(self.layers) >= t["vector"].shape[0]:
                raise bad(f"layers {self.layers} exceed the vector's {t['vector'].shape[0]} rows")
        elif self.space == "ganspace":
            if "component" not in t or "mean" not in t or t["component"].shape != t["mean"].shape:
                raise bad("needs 'component' and 'mean' tensors of the same shape [D]")
            if self.params.get("mode", "set") not in GANSPACE_MODES:
                raise bad(f"ganspace mode must be one of {GANSPACE_MODES}")
            if not float(self.params.get("std", 0)) > 0:
                raise bad("ganspace 'std' must be > 0")
        elif self.space == "stylespace":
            missing = [layer for layer in self.layers if f"style.{layer}" not in t]
            if missing:
                raise bad(f"has no style offsets for layers {missing}")
        elif self.space == "label":
            if not any(k.startswith("classifier.") for k in t) or "classifier" not in self.params:
                raise bad("needs 'classifier.*' tensors and a 'classifier' config")
            if int(self.params.get("order", 1)) not in (1, 2):
                raise bad("label order must be 1 or 2")

    @property
    def depends_on_latent(self) -> bool:
        """True when the offset depends on the code being edited (GANSpace ``set`` mode, label-based paths)."""
        return self.space == "label" or (self.space == "ganspace" and self.params.get("mode", "set") == "set")

    @property
    def style_dim(self) -> int | None:
        """Latent width the direction's vectors have (None for StyleSpace/label)."""
        if self.space in ("w", "wplus"):
            return int(self.tensors["vector"].shape[-1])
        if self.space == "ganspace":
            return int(self.tensors["component"].shape[-1])
        return None

    # ------------------------------------------------------------------------------------------- file format
    def config(self) -> dict[str, Any]:
        """The JSON config stored beside the tensors."""
        return {
            "format": DIRECTION_FORMAT,
            "name": self.name,
            "space": self.space,
            "layers": self.layers,
            "scale": self.scale,
            "power_range": list(self.power_range) if self.power_range is not None else None,
            "params": self.params,
            "generator": self.generator,
            "provenance": self.provenance,
            "description": self.description,
        }

    def save(self, path: str | Path) -> Path:
        """Atomically write the direction to ``path`` (a file) or ``path/NAME.direction.safetensors`` (a folder)."""
        p = Path(path)
        if p.is_dir() or not p.name.endswith(".safetensors"):
            p = p / f"{self.name}{DIRECTION_SUFFIX}"
        p.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(p, {k: v.detach().float().cpu() for k, v in self.tensors.items()}, self.config())
        log.debug("saved direction %s to %s", self.name, p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> Direction:
        """Read a direction file.

        Raises:
            DirectionError: not a gie direction file, or inconsistent.
            CheckpointError: unreadable file.
        """
        p = Path(path)
        tensors, cfg = load_safetensors(p)
        if cfg.get("format") != DIRECTION_FORMAT:
            raise DirectionError(
                f"{p}: not a gie direction file (format {cfg.get('format')!r})",
                hint="import official files with `gie directions import`",
            )
        missing = [k for k in ("name", "space", "layers") if k not in cfg]
        if missing:
            raise DirectionError(f"{p}: direction config lacks {', '.join(missing)}")
        return cls(
            name=cfg["name"],
            space=cfg["space"],
            tensors=tensors,
            layers=cfg["layers"],
            scale=cfg.get("scale", 1.0),
            power_range=tuple(cfg["power_range"]) if cfg.get("power_range") else None,
            params=cfg.get("params") or {},
            generator=cfg.get("generator") or {},
            provenance=cfg.get("provenance") or {},
            description=cfg.get("description", ""),
            path=p,
        )

    def summary(self) -> dict[str, Any]:
        """A short JSON-able description (``gie directions list/show``)."""
        gen = self.generator or {}
        out = {
            "name": self.name,
            "space": self.space,
            "layers": self.layers,
            "scale": self.scale,
            "power_range": list(self.power_range) if self.power_range else None,
            "generator": gen.get("id") or "",
            "fingerprint": (gen.get("fingerprint") or "")[:12] or None,
            "method": self.provenance.get("method", ""),
            "description": self.description,
            "path": str(self.path) if self.path else None,
        }
        if self.space == "ganspace":
            out["mode"] = self.params.get("mode", "set")
        return out

    # ------------------------------------------------------------------------------------------- application
    def classifier(self, device: torch.device | str = "cpu"):
        """The stored latent classifier (label directions), built once and moved to ``device``."""
        from gie_cli.editing.label import LatentClassifier
        from gie_cli.io.checkpoint import load_state_dict_strict

        if self._classifier is None:
            clf = LatentClassifier(**dict(self.params["classifier"]))
            sd = {k[len("classifier.") :]: v for k, v in self.tensors.items() if k.startswith("classifier.")}
            load_state_dict_strict(clf, sd, f"direction {self.name} [classifier.*]")
            self._classifier = clf.eval().requires_grad_(False)
        return self._classifier.to(device)

    def apply(self, power: float, wplus: Tensor) -> Edit:
        """See :func:`apply`."""
        return apply(self, power, wplus)


def apply(direction: Direction, power: float, wplus: Tensor) -> Edit:
    """Turn ``(direction, power, W+ codes)`` into an :class:`Edit`.

    Args:
        direction: the direction.
        power: edit strength (its meaning per space is in the module docstring).
        wplus: codes ``[B, n_latent, D]`` being edited.

    Returns:
        ``Edit`` with ``delta [B, n_latent, D]`` (same device/dtype as ``wplus``) and StyleSpace offsets.

    Raises:
        DirectionError: the direction does not fit the codes' shape.
    """
    assert wplus.ndim == 3, f"W+ codes must be [B, n_latent, D], got {tuple(wplus.shape)}"
    b, n_latent, dim = wplus.shape
    if max(direction.layers) >= n_latent and direction.space != "stylespace":
        raise DirectionError(f"direction {direction.name}: layers {direction.layers} exceed the codes' {n_latent}")
    if direction.style_dim is not None and direction.style_dim != dim:
        raise DirectionError(f"direction {direction.name} has width {direction.style_dim}, the codes have {dim}")
    w = wplus.detach().float()
    s = direction.scale * float(power)
    delta = torch.zeros_like(w)
    layers = direction.layers
    t = {k: v.to(w.device, torch.float32) for k, v in direction.tensors.items() if not k.startswith("classifier.")}
    styles: dict[int, Tensor] = {}
    if direction.space == "w":
        delta[:, layers] = s * t["vector"]
    elif direction.space == "wplus":
        if t["vector"].shape[0] != n_latent:
            raise DirectionError(
                f"direction {direction.name} has {t['vector'].shape[0]} W+ rows, the codes have {n_latent}"
            )
        delta[:, layers] = s * t["vector"][layers]
    elif direction.space == "ganspace":
        comp, mean, std = t["component"], t["mean"], float(direction.params["std"])
        if direction.params.get("mode", "set") == "set":
            coord = ((w[:, 0] - mean) @ comp) / std  # [B], from W+ layer 0 as the official code
            amount = (s - coord) * std
        else:
            amount = torch.full((b,), s * std, device=w.device)
        delta[:, layers] = amount[:, None, None] * comp
    elif direction.space == "stylespace":
        styles = {layer: (s * t[f"style.{layer}"])[None].expand(b, -1).clone() for layer in layers}
    elif direction.space == "label":
        from gie_cli.editing.label import label_edit_direction

        p = direction.params
        d = label_edit_direction(
            direction.classifier(w.device),
            w,
            int(p["attribute"]),
            float(p.get("target", 1.0)),
            int(p.get("order", 1)),
            float(p.get("xi", 1e-3)),
            int(p.get("seed", 0)),
            layers,
        )
        delta = s * d
    return Edit(delta.to(wplus.dtype), {k: v.to(wplus.dtype) for k, v in styles.items()})


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
    shape_err = None
    sd = direction.style_dim
    if sd is not None and sd != generator.style_dim:
        shape_err = f"its vectors have width {sd}, the generator's W has {generator.style_dim}"
    elif direction.space in ("w", "wplus", "ganspace", "label") and max(direction.layers) >= generator.n_latent:
        shape_err = f"it changes W+ layers {direction.layers}, the generator has {generator.n_latent}"
    elif direction.space == "wplus" and direction.tensors["vector"].shape[0] != generator.n_latent:
        shape_err = f"it has {direction.tensors['vector'].shape[0]} W+ rows, the generator {generator.n_latent}"
    elif direction.space == "stylespace":
        from gie_cli.editing.stylespace import style_channels

        for layer in direction.layers:
            if layer >= generator.num_layers:
                shape_err = f"it changes conv layer {layer}, the generator has {generator.num_layers}"
                break
            width = direction.tensors[f"style.{layer}"].shape[-1]
            if width != style_channels(generator, layer):
                shape_err = f"layer {layer} has {style_channels(generator, layer)} style channels, not {width}"
                break
    elif direction.space == "label":
        want = direction.params["classifier"]["fmaps"][0]
        if want != generator.n_latent * generator.style_dim:
            shape_err = (
                f"its classifier takes {want} inputs, the generator's W+ has {generator.n_latent}x{generator.style_dim}"
            )
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


def render_edit(method, inv, edit: Edit) -> Tensor:
    """Render ``inv`` edited by ``edit`` through the method's own path (``method.render(inv, delta)``), with the
    StyleSpace offsets hooked into the generator's style layers meanwhile.

    Args:
        method: an ``InversionMethod``.
        inv: ``Inversion`` with ``B`` items.
        edit: ``Edit`` with ``B`` items.

    Returns:
        ``[B, 3, S, S]`` images.
    """
    from gie_cli.editing.stylespace import style_offsets

    assert len(edit) == len(inv), f"edit has {len(edit)} items, inversion {len(inv)}"
    if not edit.styles:
        return method.render(inv, edit.delta)
    with style_offsets(method.generator, edit.styles):
        return method.render(inv, edit.delta)


# --------------------------------------------------------------------------------------------------- lookup
def user_directions_dir() -> Path:
    """Where imported and fitted directions go by default: ``<gie cache>/directions`` (``GIE_CACHE_DIR`` or the
    platform's user cache)."""
    from gie_cli.weights.cache import cache_dir

    return cache_dir() / "directions"


def shipped_directions_dirs() -> list[Path]:
    """Directions that come with gie: ``directions/`` at the root of a source checkout (when gie runs from one; a
    folder for the project's own files), then the official set packaged in ``gie_cli/editing/shipped/`` (package
    data, so installed wheels find it too)."""
    out = []
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "directions").is_dir():
        out.append(root / "directions")
    out.append(Path(__file__).resolve().parent / "shipped")
    return out


def search_path() -> list[Path]:
    """Folders searched for directions by name, first match wins: ``$GIE_DIRECTIONS_PATH`` (``os.pathsep``-separated),
    the user folder (:func:`user_directions_dir`), then the shipped folders."""
    env = [Path(p).expanduser() for p in os.environ.get(DIRECTIONS_PATH_ENV, "").split(os.pathsep) if p]
    return [*env, user_directions_dir(), *shipped_directions_dirs()]


def find_direction(name_or_path: str) -> Path:
    """The file of a direction given by name (searched in :func:`search_path`) or by path.

    Raises:
        UsageError: not found.
    """
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    looks_like_path = os.sep in name_or_path or name_or_path.endswith((".safetensors", ".pt", ".npy"))
    if not looks_like_path:
        for folder in search_path():
            cand = folder / f"{name_or_path}{DIRECTION_SUFFIX}"
            if cand.is_file():
                return cand
    known = sorted({d["name"] for d in list_directions()})
    raise UsageError(
        f"direction {name_or_path!r} not found",
        hint=(f"known: {', '.join(known)}; " if known else "")
        + "import official files or fit new ones with `gie directions import|fit`",
    )


def find_direction_candidates(name_or_path: str) -> list[Path]:
    """Every file a direction name could mean, in search-path order (a path gives just itself).

    Names can repeat across folders, e.g. the world's ``smile`` (bound to the embedded generator) and the official
    FFHQ ``smile``; :func:`pick_for_generator` chooses among them for a given generator.

    Raises:
        UsageError: not found.
    """
    first = find_direction(name_or_path)
    p = Path(name_or_path).expanduser()
    if p.is_file() or os.sep in name_or_path or name_or_path.endswith((".safetensors", ".pt", ".npy")):
        return [first]
    out = [first]
    for folder in search_path():
        cand = folder / f"{name_or_path}{DIRECTION_SUFFIX}"
        if cand.is_file() and cand.resolve() not in {c.resolve() for c in out}:
            out.append(cand)
    return out


def load_direction_candidates(name_or_path: str) -> list[Direction]:
    """:func:`load_direction` for every candidate of :func:`find_direction_candidates` (first = search-path winner)."""
    paths = find_direction_candidates(name_or_path)
    first = load_direction(str(paths[0]))
    rest = [Direction.load(p) for p in paths[1:] if p.name.endswith(".safetensors")]
    return [first, *rest]


def pick_for_generator(candidates: Sequence[Direction], fingerprint: str | None) -> Direction:
    """The first candidate bound to the generator with ``fingerprint``, else the first one (whose binding check then
    warns or refuses as usual)."""
    for d in candidates:
        if fingerprint and (d.generator or {}).get("fingerprint") == fingerprint:
            return d
    return candidates[0]


def load_direction(name_or_path: str) -> Direction:
    """Load a direction by name or path (see :func:`find_direction`).

    Raises:
        UsageError: not found, or an official file that has not been imported.
    """
    path = find_direction(name_or_path)
    if not path.name.endswith(".safetensors"):
        raise UsageError(
            f"{path} is not a gie direction file",
            hint=f"import official files first: gie directions import {path} (see its --convention)",
        )
    return Direction.load(path)


def read_direction_config(path: str | Path) -> dict[str, Any] | None:
    """The JSON config of a direction file without reading its tensors; None if it is not a direction file."""
    from safetensors import safe_open

    from gie_cli.io.checkpoint import GIE_CONFIG_KEY

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get(GIE_CONFIG_KEY)
        cfg = json.loads(raw) if raw else None
    except Exception:  # noqa: BLE001 - anything unreadable is simply not listed
        log.debug("cannot read %s", path, exc_info=True)
        return None
    return cfg if isinstance(cfg, dict) and cfg.get("format") == DIRECTION_FORMAT else None


def list_directions() -> list[dict[str, Any]]:
    """Every direction on the search path: its config plus ``path`` and ``shadowed`` (a same-named file earlier on
    the path wins)."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for folder in search_path():
        if not folder.is_dir():
            continue
        for f in sorted(folder.glob(f"*{DIRECTION_SUFFIX}")):
            cfg = read_direction_config(f)
            if cfg is None:
                continue
            name = f.name[: -len(DIRECTION_SUFFIX)]
            out.append({**cfg, "path": str(f), "shadowed": name in seen})
            seen.add(name)
    return out

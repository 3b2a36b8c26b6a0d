"""Parameters of the synthetic face world: attributes with ranges, OOD objects, sampling, the attribute vector."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_NAMES",
    "OOD_KINDS",
    "AttributeSpec",
    "FaceParams",
    "OODObject",
    "attribute_index",
    "attribute_vector",
    "clip_params",
    "params_from_attribute_vector",
    "sample_ood_object",
    "sample_params",
]


class AttributeSpec(NamedTuple):
    """One continuous attribute of the world: its ``FaceParams`` field, range and meaning."""

    name: str
    low: float
    high: float
    doc: str


# Order matters: it is the order of `attribute_vector`. Append new attributes at the end only.
ATTRIBUTES: tuple[AttributeSpec, ...] = (
    AttributeSpec("yaw", -30.0, 30.0, "head turn in degrees about the vertical axis; + points the nose to image right"),
    AttributeSpec("face_width", 0.85, 1.15, "head width multiplier (narrow .. wide)"),
    AttributeSpec("face_length", 0.9, 1.1, "chin length multiplier (short .. long lower face)"),
    AttributeSpec("jaw_width", 0.0, 1.0, "jaw shape: 0 = pointed oval chin, 1 = square jaw"),
    AttributeSpec("skin_tone", 0.0, 1.0, "0 = very light .. 1 = very dark skin"),
    AttributeSpec("hair_hue", 0.0, 1.0, "hair hue from red (0) through brown to golden (1)"),
    AttributeSpec("hair_lightness", 0.0, 1.0, "0 = black .. 1 = platinum/grey-white hair"),
    AttributeSpec("hair_length", 0.0, 1.0, "0 = buzz cut, 0.5 = covers the ears, 1 = long hair over the shoulders"),
    AttributeSpec("eye_open", 0.0, 1.0, "0 = closed lids .. 1 = wide open"),
    AttributeSpec("eye_color", 0.0, 1.0, "iris colour: 0 = dark brown, 0.5 = hazel/green, 1 = blue"),
    AttributeSpec("smile", -1.0, 1.0, "mouth curve: -1 = frown, 0 = neutral, 1 = broad smile"),
    AttributeSpec("mouth_open", 0.0, 1.0, "lip opening: 0 = closed .. 1 = wide open (teeth visible)"),
    AttributeSpec("glasses", 0.0, 1.0, "opacity of the glasses (frames and lens tint); 0 = no glasses"),
    AttributeSpec("age", 0.0, 1.0, "strength of age lines: forehead, crow's feet, under-eye and nasolabial folds"),
    AttributeSpec("bg_hue", 0.0, 1.0, "background hue (full colour circle)"),
    AttributeSpec("bg_lightness", 0.0, 1.0, "background lightness (dark .. light)"),
    AttributeSpec("bg_pattern", 0.0, 1.0, "strength of the background pattern (soft blobs and stripes)"),
    AttributeSpec("clothes_hue", 0.0, 1.0, "hue of the shirt at the bottom of the crop"),
    AttributeSpec("light_azimuth", -1.0, 1.0, "key light direction: -1 = 60 deg from image left, +1 = from the right"),
    AttributeSpec("light_intensity", 0.0, 1.0, "directional light strength: 0 = flat ambient .. 1 = strong shading"),
)
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(a.name for a in ATTRIBUTES)
_SPEC = {a.name: a for a in ATTRIBUTES}

# Out-of-domain object kinds, drawn in this order (back to front, after the face and glasses; stickers sit on the skin).
OOD_KINDS: tuple[str, ...] = ("sticker", "earring", "hat", "occluder")


def attribute_index(name: str) -> int:
    """Position of attribute ``name`` in `ATTRIBUTES` (and in `attribute_vector`)."""
    try:
        return ATTRIBUTE_NAMES.index(name)
    except ValueError:
        raise KeyError(f"unknown attribute {name!r}; known: {', '.join(ATTRIBUTE_NAMES)}") from None


@dataclass(frozen=True)
class OODObject:
    """An out-of-domain object drawn over the face (its pixels come back as a mask).

    Attributes:
        kind: One of `OOD_KINDS`: ``"sticker"`` (on the skin, in face coordinates), ``"earring"`` (hangs from an ear
            lobe; hidden when that ear is turned away), ``"hat"`` (on top of the head) or ``"occluder"`` (a bar or a
            hand-like blob entering from outside towards a point of the face).
        params: Kind-specific JSON-able parameters; see `sample_ood_object` for the keys and ranges.
    """

    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in OOD_KINDS:
            raise ValueError(f"unknown OOD object kind {self.kind!r}; known: {', '.join(OOD_KINDS)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form ``{"kind": ..., "params": {...}}``."""
        return {"kind": self.kind, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OODObject:
        """Inverse of `to_dict`."""
        return cls(str(d["kind"]), dict(d.get("params", {})))


@dataclass(frozen=True)
class FaceParams:
    """Everything that determines one rendered face (see `ATTRIBUTES` for the continuous fields and their ranges).

    Values outside an attribute's range are clipped to it when rendering. ``detail_seed`` keys the image-specific
    fine detail (freckles, moles, small marks, skin grain, hair strands, iris texture, hairline waviness, background
    blob layout); the detail lives in face coordinates, so re-rendering with one attribute changed keeps it in place.
    ``detail_strength`` scales the skin/hair/iris detail (0 = the "clean" world). ``ood`` lists out-of-domain objects.
    """

    yaw: float = 0.0
    face_width: float = 1.0
    face_length: float = 1.0
    jaw_width: float = 0.5
    skin_tone: float = 0.3
    hair_hue: float = 0.4
    hair_lightness: float = 0.3
    hair_length: float = 0.4
    eye_open: float = 0.7
    eye_color: float = 0.3
    smile: float = 0.0
    mouth_open: float = 0.0
    glasses: float = 0.0
    age: float = 0.2
    bg_hue: float = 0.6
    bg_lightness: float = 0.6
    bg_pattern: float = 0.3
    clothes_hue: float = 0.6
    light_azimuth: float = -0.3
    light_intensity: float = 0.5
    detail_seed: int = 0
    detail_strength: float = 1.0
    ood: tuple[OODObject, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of all fields (``ood`` as a list of ``{"kind", "params"}``)."""
        d: dict[str, Any] = {a: float(getattr(self, a)) for a in ATTRIBUTE_NAMES}
        d["detail_seed"] = int(self.detail_seed)
        d["detail_strength"] = float(self.detail_strength)
        d["ood"] = [o.to_dict() for o in self.ood]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FaceParams:
        """Inverse of `to_dict`; missing attributes take their defaults, unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown FaceParams fields: {', '.join(sorted(unknown))}")
        kw: dict[str, Any] = {k: float(v) for k, v in d.items() if k in _SPEC}
        if "detail_seed" in d:
            kw["detail_seed"] = int(d["detail_seed"])
        if "detail_strength" in d:
            kw["detail_strength"] = float(d["detail_strength"])
        kw["ood"] = tuple(OODObject.from_dict(o) for o in d.get("ood", ()))
        return cls(**kw)


def clip_params(p: FaceParams) -> FaceParams:
    """``p`` with every attribute clipped to its range (what `render` draws)."""
    kw = {a.name: float(min(max(getattr(p, a.name), a.low), a.high)) for a in ATTRIBUTES}
    return dataclasses.replace(p, **kw, detail_strength=float(max(p.detail_strength, 0.0)))


def attribute_vector(p: FaceParams) -> np.ndarray:
    """Normalised attribute vector: attribute ``i`` mapped linearly from ``[low, high]`` to ``[-1, 1]``.

    So ``smile`` keeps its value, ``yaw`` is divided by 30 and ``glasses = 0`` becomes ``-1``. Values outside the
    ranges map outside ``[-1, 1]`` (not clipped), so edit amounts stay linear.

    Args:
        p: Face parameters.

    Returns:
        ``[len(ATTRIBUTES)]`` float32 array in `ATTRIBUTES` order.
    """
    return np.array([2.0 * (getattr(p, a.name) - a.low) / (a.high - a.low) - 1.0 for a in ATTRIBUTES], np.float32)


def params_from_attribute_vector(
    vec: Sequence[float] | np.ndarray,
    *,
    detail_seed: int = 0,
    detail_strength: float = 1.0,
    ood: Sequence[OODObject] = (),
) -> FaceParams:
    """Inverse of `attribute_vector` (no clipping).

    Args:
        vec: ``[len(ATTRIBUTES)]`` normalised values.
        detail_seed: Seed of the image-specific detail.
        detail_strength: Detail scale.
        ood: Out-of-domain objects.

    Returns:
        The face parameters.
    """
    v = np.asarray(vec, np.float64).reshape(-1)
    if v.shape[0] != len(ATTRIBUTES):
        raise ValueError(f"attribute vector must have {len(ATTRIBUTES)} entries, got {v.shape[0]}")
    kw = {a.name: float(a.low + (x + 1.0) * 0.5 * (a.high - a.low)) for a, x in zip(ATTRIBUTES, v, strict=True)}
    return FaceParams(**kw, detail_seed=int(detail_seed), detail_strength=float(detail_strength), ood=tuple(ood))


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def sample_ood_object(rng: np.random.Generator, kind: str) -> OODObject:
    """Draws one OOD object of ``kind`` with random parameters.

    Keys (head units: interocular distance 1, eye line y = 0, y down, x to image right when frontal):

    - sticker: ``x`` [-0.8, 0.8], ``y`` [-0.9, 1.3] (face position), ``size`` [0.12, 0.28], ``hue`` [0, 1],
      ``shape`` ("circle" | "star" | "square"), ``angle`` degrees.
    - earring: ``side`` (-1 image-left ear, +1 image-right ear), ``size`` [0.06, 0.13], ``hue`` [0, 1],
      ``style`` ("ring" | "drop").
    - hat: ``hue``, ``lightness`` [0.15, 0.8], ``height`` [0.3, 0.9], ``brim`` [0, 1], ``tilt`` degrees [-12, 12],
      ``band_y`` [-1.15, -0.8] (where the hat sits on the forehead).
    - occluder: ``x`` [-1, 1], ``y`` [0.1, 1.5] (the point it reaches, head-screen coordinates), ``angle`` degrees
      (direction it comes from), ``width`` [0.25, 0.5], ``hue``, ``lightness`` [0.2, 0.8], ``shape`` ("bar" | "blob").

    Args:
        rng: Random generator.
        kind: One of `OOD_KINDS`.

    Returns:
        The object.
    """
    if kind == "sticker":
        shape = ("circle", "star", "square")[int(rng.integers(3))]
        prm = {"x": _u(rng, -0.8, 0.8), "y": _u(rng, -0.9, 1.3), "size": _u(rng, 0.12, 0.28), "hue": _u(rng, 0, 1),
               "shape": shape, "angle": _u(rng, 0, 360)}  # fmt: skip
    elif kind == "earring":
        prm = {"side": int(rng.choice([-1, 1])), "size": _u(rng, 0.06, 0.13), "hue": _u(rng, 0, 1),
               "style": ("ring", "drop")[int(rng.integers(2))]}  # fmt: skip
    elif kind == "hat":
        prm = {"hue": _u(rng, 0, 1), "lightness": _u(rng, 0.15, 0.8), "height": _u(rng, 0.3, 0.9),
               "brim": _u(rng, 0, 1), "tilt": _u(rng, -12, 12), "band_y": _u(rng, -1.15, -0.8)}  # fmt: skip
    elif kind == "occluder":
        prm = {"x": _u(rng, -1.0, 1.0), "y": _u(rng, 0.1, 1.5), "angle": _u(rng, 0, 360), "width": _u(rng, 0.25, 0.5),
               "hue": _u(rng, 0, 1), "lightness": _u(rng, 0.2, 0.8)}  # fmt: skip
        prm["shape"] = ("bar", "blob")[int(rng.integers(2))]
    else:
        raise ValueError(f"unknown OOD object kind {kind!r}; known: {', '.join(OOD_KINDS)}")
    return OODObject(kind, prm)


def sample_params(rng: np.random.Generator, ood_prob: float = 0.0, *, detail_strength: float = 1.0) -> FaceParams:
    """Draws a random face (deterministic given the generator's state).

    Most attributes are uniform over their range; ``yaw`` is a normal with sd 12 deg clipped to the range, about
    60% of faces have no glasses, half have a closed mouth (``mouth_open`` < 0.15), ``eye_open`` is mostly open
    (10% below 0.3) and ``smile`` leans positive (frowns reach -0.6).
    With probability ``ood_prob`` the face gets one (70%) or two distinct OOD objects of random kinds.

    Args:
        rng: Random generator (e.g. ``np.random.default_rng(seed)``).
        ood_prob: Probability of having out-of-domain objects.
        detail_strength: Stored in the params (1 = normal detail, 0 = clean world).

    Returns:
        The face parameters.
    """
    kw: dict[str, float] = {}
    for a in ATTRIBUTES:
        kw[a.name] = _u(rng, a.low, a.high)
    kw["yaw"] = float(np.clip(rng.normal(0.0, 12.0), -30.0, 30.0))
    kw["glasses"] = 0.0 if rng.random() < 0.6 else _u(rng, 0.35, 1.0)
    kw["mouth_open"] = _u(rng, 0.0, 0.15) if rng.random() < 0.5 else kw["mouth_open"]
    kw["eye_open"] = _u(rng, 0.0, 0.3) if rng.random() < 0.1 else _u(rng, 0.35, 1.0)
    kw["smile"] = math.copysign(abs(kw["smile"]) ** 1.2, kw["smile"]) * (0.6 if kw["smile"] < 0 else 1.0)
    detail_seed = int(rng.integers(0, 2**31 - 1))
    ood: list[OODObject] = []
    if ood_prob > 0 and rng.random() < ood_prob:
        n = 1 if rng.random() < 0.7 else 2
        kinds = rng.choice(len(OOD_KINDS), size=n, replace=False)
        ood = [sample_ood_object(rng, OOD_KINDS[int(k)]) for k in sorted(kinds)]
    return FaceParams(**kw, detail_seed=detail_seed, detail_strength=float(detail_strength), ood=tuple(ood))

"""World "photos": faces placed rotated, scaled and shifted in a larger canvas, with `gie align` landmarks sidecars."""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from gie_cli.synth.detail import detail_maps
from gie_cli.synth.geometry import points5_from_68
from gie_cli.synth.params import FaceParams, clip_params
from gie_cli.synth.render import background_rgb, masks_from, render_faces, tune_malloc

__all__ = ["PhotoFace", "PhotoResult", "render_photo", "sidecar_dict"]


@dataclass
class PhotoFace:
    """One face of a photo.

    Attributes:
        params: Its parameters (clipped to the attribute ranges).
        landmarks68: ``[68, 2]`` float32 landmarks in canvas pixels.
        points5: ``[5, 2]`` float32 FFHQ points: left eye centre (mean of 36-41), right eye centre (mean of 42-47),
            nose tip (30), left and right mouth corners (48, 54); "left" = image left.
        crop_quad: ``[4, 2]`` float32 canvas pixel coordinates of the corners of the face's aligned crop (top-left,
            bottom-left, bottom-right, top-right, as `gie_cli.synth.geometry.ffhq_quad` orders them, pixel-centre
            convention): cropping this quad gives the face as `render` frames it.
        angle: In-plane rotation of the face in degrees (positive = counter-clockwise on screen).
        crop_size: Side of the aligned crop in canvas pixels.
        masks: bool ``[H, W]`` masks as in `RenderResult.masks`, in canvas pixels.
    """

    params: FaceParams
    landmarks68: np.ndarray
    points5: np.ndarray
    crop_quad: np.ndarray
    angle: float
    crop_size: float
    masks: dict[str, np.ndarray]


@dataclass
class PhotoResult:
    """A rendered photo.

    Attributes:
        image: ``[H, W, 3]`` uint8 RGB.
        faces: The faces in drawing order.
        sidecar: The landmarks sidecar as a JSON-able dict (see `sidecar_dict`).
    """

    image: np.ndarray
    faces: list[PhotoFace]
    sidecar: dict[str, Any]


def sidecar_dict(faces: Sequence[PhotoFace], image_size: tuple[int, int]) -> dict[str, Any]:
    """The ``<stem>.landmarks.json`` content for ``faces``, in the schema `gie_cli.alignment.landmarks` reads.

    ``{"image_size": [W, H], "faces": [{"points": [[x, y], ... 68 iBUG points]}, ...]}`` in pixel-centre
    coordinates, faces in drawing order; the alignment reduces the 68 points to the five FFHQ points exactly as
    `gie_cli.synth.geometry.points5_from_68` does.

    Args:
        faces: The photo's faces.
        image_size: ``(W, H)`` of the photo.

    Returns:
        The JSON-able dict.
    """
    return {
        "image_size": [int(image_size[0]), int(image_size[1])],
        "faces": [{"points": [[round(float(x), 3), round(float(y), 3)] for x, y in f.landmarks68]} for f in faces],
    }


def _scene_background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A smooth random scene: a wall/floor split, a gradient and soft out-of-focus blobs. ``[h, w, 3]`` float32."""
    hue = rng.uniform(0, 1)
    wall = np.array(colorsys.hls_to_rgb(hue, rng.uniform(0.3, 0.8), rng.uniform(0.05, 0.4)), np.float32)
    floor = np.array(colorsys.hls_to_rgb((hue + rng.uniform(-0.2, 0.2)) % 1, rng.uniform(0.2, 0.6), 0.25), np.float32)
    y = (np.arange(h, dtype=np.float32) + 0.5)[:, None] / h
    x = (np.arange(w, dtype=np.float32) + 0.5)[None, :] / w
    split = rng.uniform(0.65, 1.1) + rng.uniform(-0.08, 0.08) * (x - 0.5)
    t = np.clip((y - split) * h / 3.0 + 0.5, 0, 1)
    img = wall * (1.1 - 0.2 * y)[..., None] * (1 - t[..., None]) + floor * t[..., None]
    aspect = w / h
    for _ in range(int(rng.integers(3, 9))):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
        col = rng.normal(0, 0.1, 3).astype(np.float32)
        g = np.exp(-(((x - cx) * aspect) ** 2 + (y - cy) ** 2) / (r * r))
        img = img + g[..., None] * col
    return np.broadcast_to(img, (h, w, 3)).astype(np.float32)


def _placements(
    rng: np.random.Generator, n: int, w: int, h: int, scale: tuple[float, float], max_angle: float
) -> list[tuple[float, float, float, float]]:
    """(cx, cy, side, angle_deg) of ``n`` face crops in side-by-side slots of the canvas."""
    out = []
    slot = w / n
    for k in range(n):
        ang = float(rng.uniform(-max_angle, max_angle))
        ext = abs(math.cos(math.radians(ang))) + abs(math.sin(math.radians(ang)))
        side = float(rng.uniform(*scale)) * min(slot, h) / ext
        half = 0.5 * side * ext * 0.85  # the crop corners may leave the canvas a little
        x_lo, x_hi = k * slot + half, (k + 1) * slot - half
        y_lo, y_hi = half, h - half
        cx = float(rng.uniform(x_lo, x_hi)) if x_hi > x_lo else (k + 0.5) * slot
        cy = float(rng.uniform(y_lo, y_hi)) if y_hi > y_lo else 0.5 * h
        out.append((cx, cy, side, ang))
    return out


def render_photo(
    params: FaceParams,
    canvas_size: tuple[int, int],
    rng: np.random.Generator,
    *,
    others: Sequence[FaceParams] = (),
    background: Literal["scene", "face"] = "scene",
    scale: tuple[float, float] = (0.5, 0.95),
    max_angle: float = 30.0,
    supersample: int | None = None,
) -> PhotoResult:
    """Renders a photo with ``params`` (and ``others``, side by side) placed at random in a ``W x H`` canvas.

    Each face is its aligned crop (as `render` draws it) rotated by up to ``max_angle`` degrees, with a crop side of
    ``scale`` times its slot's shorter side (shrunk so the rotated crop mostly fits), at a random position.
    Everything random comes from ``rng`` (same params and rng state -> identical photo).

    Args:
        params: The main face.
        canvas_size: ``(W, H)`` in pixels.
        rng: Random generator for the placement and the scene.
        others: More faces, placed in slots to the right of the main one (drawn after it).
        background: ``"scene"`` (a random room-like scene) or ``"face"`` (the main face's crop background extended
            over the canvas, so the aligned crop of the photo matches `render` except for resampling).
        scale: Range of the crop side as a fraction of the slot's shorter side.
        max_angle: Largest in-plane rotation in degrees.
        supersample: Samples per pixel side (default from the canvas size).

    Returns:
        The photo, its faces and the sidecar dict.
    """
    w, h = int(canvas_size[0]), int(canvas_size[1])
    if w < 16 or h < 16:
        raise ValueError(f"canvas must be at least 16x16, got {w}x{h}")
    tune_malloc()
    all_params = [clip_params(params)] + [clip_params(o) for o in others]
    places = _placements(rng, len(all_params), w, h, scale, max_angle)
    jobs = []
    quads = []
    for p, (cx, cy, side, ang) in zip(all_params, places, strict=True):
        a = math.radians(ang)
        # canvas edge coords P = c + side * R(-a) @ (u - 0.5, v - 0.5); R(-a) turns counter-clockwise on screen (y down)
        rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
        u2e = np.concatenate([side * rot, (np.array([cx, cy]) - side * rot @ np.array([0.5, 0.5]))[:, None]], axis=1)
        full = np.vstack([u2e, [0.0, 0.0, 1.0]])
        e2u = np.linalg.inv(full)[:2]
        jobs.append((p, e2u))
        corners = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
        quads.append((corners @ u2e[:, :2].T + u2e[:, 2] - 0.5).astype(np.float32))
    if background == "face":
        p0, e2u0 = jobs[0]
        # the background uses only the seed's blob layout and stripes, which do not depend on the texture resolution
        bg = background_rgb(p0, detail_maps(int(p0.detail_seed), 16.0), e2u0, h, w)
    elif background == "scene":
        bg = _scene_background(rng, w, h)
    else:
        raise ValueError(f"background must be 'scene' or 'face', got {background!r}")
    out = render_faces(jobs, w, h, bg, supersample)
    faces = []
    for k, p in enumerate(all_params):
        lm = out.landmarks[k].astype(np.float32)
        masks, _ = masks_from(out.coverage[k], out.object_cov[k], p)
        faces.append(PhotoFace(p, lm, points5_from_68(lm).astype(np.float32), quads[k], places[k][3],
                               places[k][2], masks))  # fmt: skip
    return PhotoResult(out.image, faces, sidecar_dict(faces, (w, h)))

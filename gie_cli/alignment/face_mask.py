"""Face masks for masked editing (StyleFeatureEditor, Bobkov et al., CVPR 2024, supplement §9): landmarks, files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from gie_cli.alignment.ffhq import apply_transform
from gie_cli.alignment.sidecar import POINT_NAMES, AlignRecordError
from gie_cli.errors import GieError, UsageError

__all__ = [
    "face_mask_from_align_record",
    "face_mask_from_landmarks",
    "face_mask_from_points5",
    "load_mask_file",
]

# StyleFeatureEditor zeroes the edit's feature difference outside the face, which the paper gets from a face-parsing
# network. gie has none offline: the region is built from the aligned crop's landmarks (convex hull of the face
# contour, or an ellipse from the 5 FFHQ points) and feathered, or read from a mask image the user drew. Every mask is
# float32 [size, size] in [0, 1], 1 = editable face, 0 = keep the inversion. Coordinates follow
# `gie_cli.alignment.ffhq`: pixel (row i, column j) has its centre at (x, y) = (j, i).

SUPERSAMPLE = 4  # sub-rows per pixel row when rasterising a region (coverage exact across, sampled down)

# 5-point ellipse, in units of the eye distance |e2e| (x, across the face) and the eye-to-mouth distance |e2m| (y,
# down the face) of the face's own frame. Fit on the synthetic world (`gie_cli.synth`, random faces at 128 px, yaw sd
# 12 deg clipped to +-30 deg) by maximising the mean IoU of (mask > 0.5) with the rendered face region: 0.876 over
# 400 faces (5th percentile 0.81), about the same for frontal and turned heads.
ELLIPSE_CENTER_Y = 0.3  # centre below the eye midpoint, x |e2m|
ELLIPSE_SHIFT_X = -1.0  # centre moved against the nose tip's offset from the eye midpoint (turned heads), x offset
ELLIPSE_HALF_WIDTH = 1.05  # semi-axis across the face, x |e2e|
ELLIPSE_HALF_HEIGHT = 1.28  # semi-axis down the face, x |e2m|
_ELLIPSE_VERTICES = 96


# ------------------------------------------------------------------------------------------------ geometry
def _points(points: np.ndarray, n: int) -> np.ndarray:
    """``points`` as float64 ``[n, 2]``; ValueError for another shape or non-finite values."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape != (n, 2):
        raise ValueError(f"expected {n} landmarks of shape [{n}, 2], got shape {list(pts.shape)}")
    if not np.isfinite(pts).all():
        raise ValueError("landmarks must be finite (got NaN or inf)")
    return pts


def _check_size(size: int, feather: float) -> None:
    try:
        ok = int(size) == size and size >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if not (np.isfinite(feather) and feather >= 0):
        raise ValueError(f"feather must be >= 0, got {feather!r}")


def _face_frame(five: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """The face's own axes from the 5 FFHQ points, as the FFHQ recipe orients its crop.

    Args:
        five: ``[5, 2]`` left eye, right eye, nose tip, left and right mouth corner.

    Returns:
        ``(eye_mid [2], x_axis [2], y_axis [2], eye_dist, eye_to_mouth)``: unit axes across the face (image right
        for an upright face) and down it (towards the mouth), and the two distances in pixels.
    """
    eye_mid = 0.5 * (five[0] + five[1])
    e2e = five[1] - five[0]
    e2m = 0.5 * (five[3] + five[4]) - eye_mid
    x = e2e - np.array([-e2m[1], e2m[0]])
    norm = float(np.hypot(*x))
    if norm < 1e-9:
        raise ValueError("degenerate landmarks: eyes and mouth coincide")
    x = x / norm
    y = np.array([-x[1], x[0]])
    return eye_mid, x, y, float(np.hypot(*e2e)), float(np.hypot(*e2m))


def _convex_hull(pts: np.ndarray) -> np.ndarray:
    """Convex hull ``[K, 2]`` (counter-clockwise in image coordinates' math orientation) of ``[N, 2]`` points."""
    p = sorted({(float(a), float(b)) for a, b in pts})
    if len(p) < 3:
        return np.asarray(p, dtype=np.float64).reshape(-1, 2)

    def cross(o: tuple, a: tuple, b: tuple) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple] = []
    upper: list[tuple] = []
    for q in p:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], q) <= 0:
            lower.pop()
        lower.append(q)
    for q in reversed(p):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], q) <= 0:
            upper.pop()
        upper.append(q)
    return np.asarray(lower[:-1] + upper[:-1], dtype=np.float64)


def _rasterise(poly: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased coverage of a convex polygon on the crop's pixel grid.

    Each pixel row is split into `SUPERSAMPLE` sub-rows; on a sub-row (sampled at its centre) the polygon is one
    interval ``[x_left, x_right]`` whose overlap with every pixel's ``[j - 0.5, j + 0.5]`` is exact. No integer
    rounding of the vertices (as PIL's polygon fill does), no bias; points far outside the crop are fine.

    Args:
        poly: ``[K, 2]`` vertices of a convex polygon in crop pixels, in order (either orientation).
        size: Side of the crop.

    Returns:
        ``[size, size]`` float32 coverage in [0, 1].
    """
    ss = SUPERSAMPLE
    ys = (np.arange(size * ss, dtype=np.float64) + 0.5) / ss - 0.5  # sub-row centres
    a, b = poly, np.roll(poly, -1, axis=0)  # edges a -> b
    lo, hi = np.minimum(a[:, 1], b[:, 1]), np.maximum(a[:, 1], b[:, 1])
    crosses = (ys[:, None] >= lo) & (ys[:, None] < hi)  # [R, K]; half-open, horizontal edges never cross
    dy = np.where(hi > lo, b[:, 1] - a[:, 1], 1.0)
    x = a[:, 0] + (ys[:, None] - a[:, 1]) / dy * (b[:, 0] - a[:, 0])
    x_left = np.where(crosses, x, np.inf).min(axis=1)[:, None]  # rows without crossings give an empty interval
    x_right = np.where(crosses, x, -np.inf).max(axis=1)[:, None]
    left_edges = np.arange(size, dtype=np.float64)[None, :] - 0.5
    cover = np.minimum(x_right, left_edges + 1.0) - np.maximum(x_left, left_edges)  # [R, size]
    return np.clip(cover, 0.0, 1.0).reshape(size, ss, size).mean(axis=1).astype(np.float32)


def _diameter(poly: np.ndarray) -> float:
    """Largest distance between two vertices of a polygon ``[K, 2]``."""
    d = poly[:, None, :] - poly[None, :, :]
    return float(np.sqrt((d**2).sum(-1)).max()) if len(poly) else 0.0


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """``[n, n]`` matrix of a 1-D Gaussian blur with edge-replicate borders (``blurred = B @ signal``).

    The kernel is sampled at integer offsets, truncated at 4 sigma and renormalised; the taps falling outside
    ``[0, n - 1]`` are added to the edge sample, so every row sums to 1.
    """
    r = max(1, int(np.ceil(4.0 * sigma)))
    g = np.exp(-0.5 * (np.arange(-r, r + 1, dtype=np.float64) / sigma) ** 2)
    g /= g.sum()
    cdf = np.concatenate([[0.0], np.cumsum(g)])  # cdf[t] = sum of the taps at offsets < t - r
    i = np.arange(n)
    d = i[None, :] - i[:, None]  # tap offset j - i
    m = np.where(np.abs(d) <= r, g[np.clip(d + r, 0, 2 * r)], 0.0)
    m[:, 0] = cdf[np.clip(r + 1 - i, 0, 2 * r + 1)]  # offsets <= -i land on sample 0
    m[:, n - 1] = 1.0 - cdf[np.clip(r + n - 1 - i, 0, 2 * r + 1)]  # offsets >= n - 1 - i land on sample n - 1
    return m


def _feathered(poly: np.ndarray, size: int, feather: float) -> np.ndarray:
    """Rasterised polygon blurred by a Gaussian of sigma = ``feather`` x the polygon's diameter (pixels, capped at
    ``size``: a wider blur is about as flat)."""
    mask = _rasterise(poly, size)
    sigma = min(feather * _diameter(poly), float(size))
    if sigma >= 0.05 and size > 1:  # below ~0.05 px the blur changes nothing visible
        b = _blur_matrix(size, sigma)
        mask = (b @ mask.astype(np.float64) @ b.T).astype(np.float32)
    return np.clip(mask, 0.0, 1.0).astype(np.float32)


def _forehead_points(lm: np.ndarray, forehead: float) -> np.ndarray:
    """The eyebrows (points 17-26) lifted up the face by ``forehead`` x the eye-to-mouth distance (``[10, 2]``)."""
    five = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
    _, _, y, _, eye_to_mouth = _face_frame(five)
    return lm[17:27] - (forehead * eye_to_mouth) * y


# ------------------------------------------------------------------------------------------------ public API
def face_mask_from_landmarks(points: np.ndarray, size: int, feather: float = 0.04, forehead: float = 0.5) -> np.ndarray:
    """Feathered face mask of an aligned crop from its 68 iBUG landmarks.

    Region: the convex hull of the jaw contour (points 0-16), the eyebrows (17-26) and the eyebrows lifted up the
    face by ``forehead`` x the eye-to-mouth distance (the distance from the eye-centre midpoint to the mouth-corner
    midpoint; "up" is the face's vertical axis as the FFHQ recipe orients its crop). The default 0.5 is the best
    fit on the synthetic world (`gie_cli.synth`: mean IoU of ``mask > 0.5`` with its face region 0.927 over 400
    random faces; 0.45 and 0.55 give 0.924 and 0.925); people with a high hairline or a receding one need more
    (about 0.8-1.0 reaches the hairline of a typical adult), a fringe less. Ears and neck are outside the region.
    The hull is rasterised anti-aliased and feathered with a Gaussian blur of sigma = ``feather`` x the face size,
    the face size being the hull's diameter (largest distance between two of its vertices, about the
    forehead-to-chin height; sigma is 4-5 px for a 128 px crop at the default 0.04). Borders replicate the edge
    pixels, so a face cut by the crop edge stays 1 up to that edge.

    Args:
        points: ``[68, 2]`` landmarks ``(x, y)`` in pixels of the ``size`` x ``size`` crop (pixel centres at integer
            coordinates; points may lie outside the crop).
        size: Side of the crop and of the mask, pixels.
        feather: Blur sigma as a fraction of the face size (0 = hard, only anti-aliased edges).
        forehead: Forehead extension above the eyebrows, as a fraction of the eye-to-mouth distance.

    Returns:
        ``[size, size]`` float32 mask in [0, 1] (1 = face).

    Raises:
        ValueError: ``points`` is not ``[68, 2]`` or not finite, ``size`` < 1, or ``feather`` / ``forehead`` < 0.
    """
    lm = _points(points, 68)
    _check_size(size, feather)
    if not (np.isfinite(forehead) and forehead >= 0):
        raise ValueError(f"forehead must be >= 0, got {forehead!r}")
    region = np.concatenate([lm[0:27], _forehead_points(lm, forehead)])
    return _feathered(_convex_hull(region), int(size), float(feather))


def face_mask_from_points5(points: np.ndarray, size: int, feather: float = 0.04) -> np.ndarray:
    """Feathered elliptical face mask from the 5 FFHQ points (for records without 68 landmarks).

    In the face's own frame (x across the face from the left to the right eye, y down it; oriented as the FFHQ
    recipe orients its crop), with eye distance ``d`` and eye-to-mouth distance ``m``, the ellipse has semi-axes
    1.05 ``d`` across and 1.28 ``m`` down the face (`ELLIPSE_HALF_WIDTH`, `ELLIPSE_HALF_HEIGHT`); its centre lies
    0.3 ``m`` below the eye midpoint (`ELLIPSE_CENTER_Y`) and is moved across the face by -1 x the nose tip's
    offset from the eye midpoint (`ELLIPSE_SHIFT_X`: the outline of a turned head is offset from its eyes opposite
    to its nose). These proportions were fit on the synthetic world so that ``mask > 0.5`` matches its face region
    (forehead to chin, cheek to cheek; mean IoU 0.876, against 0.927 for :func:`face_mask_from_landmarks`).
    Feathering as in :func:`face_mask_from_landmarks` (sigma = ``feather`` x the ellipse's major axis).

    Args:
        points: ``[5, 2]`` left eye centre, right eye centre, nose tip, left and right mouth corner (image left
            first), pixels of the ``size`` x ``size`` crop.
        size: Side of the crop and of the mask, pixels.
        feather: Blur sigma as a fraction of the face size.

    Returns:
        ``[size, size]`` float32 mask in [0, 1] (1 = face).

    Raises:
        ValueError: ``points`` is not ``[5, 2]``, not finite or degenerate, ``size`` < 1, or ``feather`` < 0.
    """
    five = _points(points, 5)
    _check_size(size, feather)
    eye_mid, x, y, d, m = _face_frame(five)
    nose_dx = float(np.dot(five[2] - eye_mid, x))
    centre = eye_mid + ELLIPSE_CENTER_Y * m * y + ELLIPSE_SHIFT_X * nose_dx * x
    t = np.linspace(0.0, 2.0 * np.pi, _ELLIPSE_VERTICES, endpoint=False)
    a, b = ELLIPSE_HALF_WIDTH * d, ELLIPSE_HALF_HEIGHT * m
    poly = centre + np.outer(a * np.cos(t), x) + np.outer(b * np.sin(t), y)
    return _feathered(poly, int(size), float(feather))


def _record_points(meta: Mapping, key: str, n: int) -> np.ndarray | None:
    """``meta[key]`` as ``[n, 2]`` float64, or None when absent, None, malformed or not finite."""
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, Mapping):
        if not all(k in value for k in POINT_NAMES):
            return None
        value = [value[k] for k in POINT_NAMES]
    try:
        pts = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return pts if pts.shape == (n, 2) and np.isfinite(pts).all() else None


def face_mask_from_align_record(meta: Mapping, size: int, feather: float = 0.04) -> np.ndarray:
    """Face mask of an aligned crop from its alignment record (``NAME.align.json``, `build_align_meta`).

    Uses ``landmarks_full`` (68 points in photo pixels) mapped through ``transform`` (photo -> crop) when the record
    has them, otherwise the 5 points ``landmarks_aligned`` (crop pixels; or ``landmarks``, photo pixels, mapped
    through ``transform``). Full landmark sets other than 68 points (e.g. mediapipe's 478) use the 5 points. Points
    are rescaled from the record's ``output_size`` to ``size`` with the pixel-centre convention
    ``(p + 0.5) * size / output_size - 0.5``.

    Args:
        meta: The alignment record (a dict as read by `read_align_meta`).
        size: Side of the mask, pixels (the crop being edited; need not equal ``output_size``).
        feather: Blur sigma as a fraction of the face size.

    Returns:
        ``[size, size]`` float32 mask in [0, 1] (1 = face).

    Raises:
        AlignRecordError: The record has no usable ``output_size`` or no usable landmarks.
    """
    name = meta.get("name") or meta.get("image") or "?"
    try:
        out_size = float(meta["output_size"])
    except (KeyError, TypeError, ValueError):
        out_size = float("nan")
    if not (np.isfinite(out_size) and out_size > 0):
        raise AlignRecordError(
            f"alignment record {name}: no valid 'output_size'", hint="re-create the record with `gie align`"
        )
    transform = None
    try:
        tm = np.asarray(meta.get("transform"), dtype=np.float64)
        if tm.shape == (3, 3) and np.isfinite(tm).all():
            transform = tm
    except (TypeError, ValueError):
        pass

    def to_mask_px(pts: np.ndarray) -> np.ndarray:
        return (pts + 0.5) * (size / out_size) - 0.5

    full = _record_points(meta, "landmarks_full", 68)
    if full is not None and transform is not None:
        return face_mask_from_landmarks(to_mask_px(apply_transform(transform, full)), size, feather)
    five = _record_points(meta, "landmarks_aligned", 5)
    if five is None and transform is not None:
        photo5 = _record_points(meta, "landmarks", 5)
        five = None if photo5 is None else apply_transform(transform, photo5)
    if five is not None:
        return face_mask_from_points5(to_mask_px(five), size, feather)
    raise AlignRecordError(
        f"alignment record {name}: no landmarks for a face mask (neither 'landmarks_full' with 'transform' nor "
        "'landmarks_aligned')",
        hint="re-create the record with `gie align`, or give a mask image of the face instead",
    )


def load_mask_file(path: str | Path, size: int) -> np.ndarray:
    """Reads a user-drawn face mask: value 1 (white, opaque) = editable face, 0 (black or transparent) = keep.

    Any image gie reads works (grayscale, RGB, RGBA, palette, 16-bit; EXIF orientation applied; see
    `gie_cli.io.images.load_image`). The mask is the ITU-R 601 luminance ``(0.299 R + 0.587 G + 0.114 B) / 255``
    of the image composited over black, i.e. luminance x alpha, resized to ``size`` x ``size`` with PIL's bilinear
    filter (antialiased when reducing). The file is opened read-only and never modified.

    Args:
        path: Mask image, square (drawn on the aligned crop; any resolution).
        size: Side of the returned mask, pixels.

    Returns:
        ``[size, size]`` float32 mask in [0, 1].

    Raises:
        UsageError: The file is missing, unreadable or not square (the message names the file).
        ValueError: ``size`` < 1.
    """
    from gie_cli.io.images import load_image  # torch-importing module: only when a mask file is used

    _check_size(size, 0.0)
    p = Path(path)
    try:
        rgb = load_image(p, alpha="black")
    except GieError as e:
        reason = getattr(e, "reason", None) or e.message
        raise UsageError(
            f"mask {p}: {reason}",
            hint=e.hint or "pass an existing PNG mask (white = face to edit, black = keep)",
            param="mask",
            value=str(path),
        ) from None
    w, h = rgb.size
    if w != h:
        raise UsageError(
            f"mask {p}: not square ({w}x{h})",
            hint="draw the mask on the aligned face crop (square), or crop/pad it to a square of the same framing",
            param="mask",
            value=str(path),
        )
    lum = np.asarray(rgb, dtype=np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32) / 255.0
    img = Image.fromarray(np.ascontiguousarray(lum, dtype=np.float32))
    if w != size:
        img = img.resize((int(size), int(size)), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)

"""FFHQ face alignment as a pure function of landmarks (FFHQ: Karras et al. 2019, "A Style-Based Generator ...").

Coordinates: every point and transform here uses pixel-centre coordinates of the upright photo (EXIF orientation
applied): pixel ``(i, j)`` (column ``i``, row ``j``) has its centre at ``(i, j)``; the image spans
``[-0.5, W - 0.5] x [-0.5, H - 0.5]``. dlib and face-alignment report landmarks this way.

The recipe (the FFHQ dataset's ``recreate_aligned_images``): eye centres and mouth corners give an oriented square
quad; large faces are first shrunk by an integer factor, the photo is cropped around the quad with a border,
reflect-padded (with a blurred border and a fade to the median colour) where the quad leaves the photo, the quad is
resampled to ``supersample * size`` pixels with bilinear interpolation, then reduced to ``size`` with Lanczos.
Deviation: the border blur uses PIL's 8-bit Gaussian blur (three box passes) instead of ``scipy.ndimage``; only
padded/border pixels are affected, by at most a few grey levels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

__all__ = [
    "FFHQ_TEMPLATE_1024",
    "AlignResult",
    "FfhqQuad",
    "align_face",
    "apply_transform",
    "ffhq_points",
    "ffhq_quad",
    "ffhq_template",
]

log = logging.getLogger(__name__)

# Landmarks (left eye centre, right eye centre, nose tip, left and right mouth corner; "left" = image left) of a face
# whose FFHQ quad is exactly the 1024x1024 frame: eyes 256 px apart, eye-to-mouth 270 px (close to what mediapipe
# measures on FFHQ images), quad centre at (511.5, 511.5). The nose is not used by the recipe.
FFHQ_TEMPLATE_1024 = np.array(
    [[383.5, 484.5], [639.5, 484.5], [477.8, 646.0], [398.5, 754.5], [624.5, 754.5]], dtype=np.float64
)


def ffhq_template(size: int = 1024) -> np.ndarray:
    """The 5 template landmarks of :data:`FFHQ_TEMPLATE_1024` scaled to a ``size`` x ``size`` crop.

    Returns:
        Array [5, 2] in pixel-centre coordinates of the crop.
    """
    return (FFHQ_TEMPLATE_1024 + 0.5) * (size / 1024.0) - 0.5


def ffhq_points(landmarks: np.ndarray) -> np.ndarray:
    """Reduce 68-point (iBUG 300-W order) landmarks to the 5 FFHQ points; 5-point input is returned as float.

    The eye centres are the means of the six eye-contour points (36-41, 42-47), the nose is point 30 and the mouth
    corners are points 48 and 54, as in the FFHQ recipe.

    Args:
        landmarks: [5, 2] (left eye, right eye, nose, left mouth corner, right mouth corner) or [68, 2].

    Returns:
        Array [5, 2] float64.

    Raises:
        ValueError: any other shape, or non-finite values.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[1] != 2 or lm.shape[0] not in (5, 68):
        raise ValueError(f"landmarks must be [5, 2] or [68, 2], got shape {lm.shape}")
    if not np.isfinite(lm).all():
        raise ValueError("landmarks contain NaN or infinite values")
    if lm.shape[0] == 5:
        return lm.copy()
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


@dataclass(frozen=True)
class FfhqQuad:
    """The FFHQ crop square in photo coordinates.

    Attributes:
        quad: [4, 2] corners in the order PIL's QUAD transform takes them: upper-left, lower-left, lower-right,
            upper-right (of the aligned image).
        center: [2] quad centre ``c``.
        x: [2] half-side vector pointing to the aligned image's right.
        y: [2] half-side vector pointing down the aligned image.
        qsize: side length of the quad (``2 * |x|``).
    """

    quad: np.ndarray
    center: np.ndarray
    x: np.ndarray
    y: np.ndarray
    qsize: float


def ffhq_quad(points: np.ndarray) -> FfhqQuad:
    """The FFHQ quad of one face.

    ``x = eye_to_eye - rot90(eye_to_mouth)``, normalised and scaled to ``max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)``;
    ``y = rot90(x)``; centre ``c = eye_avg + 0.1 eye_to_mouth``; corners ``c -x -y, c -x +y, c +x +y, c +x -y``,
    where ``rot90((a, b)) = (-b, a)``.

    Args:
        points: [5, 2] or [68, 2] landmarks (see :func:`ffhq_points`).

    Returns:
        The quad.

    Raises:
        ValueError: bad landmarks, or a degenerate face (coincident eyes and mouth).
    """
    p = ffhq_points(points)
    eye_left, eye_right, _, mouth_left, mouth_right = p
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (mouth_left + mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - _rot90(eye_to_mouth)
    norm = float(np.hypot(*x))
    scale = max(float(np.hypot(*eye_to_eye)) * 2.0, float(np.hypot(*eye_to_mouth)) * 1.8)
    if norm < 1e-6 or scale < 1e-6:
        raise ValueError("degenerate landmarks: eyes and mouth coincide")
    x = x / norm * scale
    y = _rot90(x)
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return FfhqQuad(quad=quad, center=c, x=x, y=y, qsize=float(np.hypot(*x)) * 2.0)


def _rot90(v: np.ndarray) -> np.ndarray:
    return np.array([-v[1], v[0]], dtype=np.float64)


@dataclass
class AlignResult:
    """An aligned face and the transform that produced it.

    Attributes:
        image: RGB aligned crop, ``size`` x ``size``.
        transform: [3, 3] map from photo to aligned pixel-centre coordinates (homogeneous, affine here).
        inverse: [3, 3] map from aligned to photo coordinates.
        quad: the nominal FFHQ quad in photo coordinates (see :class:`FfhqQuad`).
        points: [5, 2] the FFHQ points used, photo coordinates.
        size: output side length.
        shrink: integer shrink factor applied first (1 = none).
        padded: whether the reflect-padding step ran.
    """

    image: Image.Image
    transform: np.ndarray
    inverse: np.ndarray
    quad: np.ndarray
    points: np.ndarray
    size: int
    shrink: int
    padded: bool

    @property
    def face_size(self) -> float:
        """Side of the FFHQ quad in photo pixels: how many photo pixels the ``size`` px crop is drawn from."""
        return float(np.hypot(*(self.quad[3] - self.quad[0])))

    @property
    def upscale(self) -> float:
        """Magnification of the face from photo to crop (``size / face_size``; above 1 the crop is upsampled and its
        detail is interpolated, not photographed)."""
        return float(self.size) / max(self.face_size, 1e-6)


def _translate(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _scale(sx: float, sy: float) -> np.ndarray:
    return np.diag([sx, sy, 1.0])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 3x3 homography to points.

    Args:
        matrix: [3, 3].
        points: [N, 2] (or [2]).

    Returns:
        [N, 2] (or [2]) transformed points.
    """
    pts = np.asarray(points, dtype=np.float64)
    flat = pts.reshape(-1, 2)
    h = np.concatenate([flat, np.ones((len(flat), 1))], axis=1) @ np.asarray(matrix, dtype=np.float64).T
    return (h[:, :2] / h[:, 2:3]).reshape(pts.shape)


def align_face(
    image: Image.Image,
    points: np.ndarray,
    size: int = 1024,
    supersample: int = 4,
    enable_padding: bool = True,
) -> AlignResult:
    """Crop and align one face the way the FFHQ dataset was made.

    Args:
        image: the photo (converted to RGB if needed), upright.
        points: [5, 2] or [68, 2] landmarks of one face in photo pixel-centre coordinates.
        size: output side length (1024 as FFHQ; 256 for the pSp/e4e encoders).
        supersample: the quad is first resampled to ``supersample * size`` pixels (FFHQ: 4096 for 1024) and then
            reduced with Lanczos, which antialiases the bilinear warp.
        enable_padding: reflect-pad (with blurred border and fade) where the quad leaves the photo; False fills
            those pixels with black.

    Returns:
        The aligned image with its forward/inverse transform.

    Raises:
        ValueError: bad landmarks or arguments.
    """
    if size < 8 or supersample < 1:
        raise ValueError(f"size must be >= 8 and supersample >= 1, got {size}, {supersample}")
    img = image if image.mode == "RGB" else image.convert("RGB")
    pts = ffhq_points(points)
    fq = ffhq_quad(pts)
    quad = fq.quad.copy()
    qsize = fq.qsize
    width, height = img.size
    transform_size = size * supersample

    # Shrink very large faces: keep at most ~2x the output resolution (integer factor, as FFHQ).
    shrink = int(np.floor(qsize / size * 0.5))
    sx = sy = 1.0  # shrunk image size / photo size, per axis
    if shrink > 1:
        rsize = (max(1, int(np.rint(width / shrink))), max(1, int(np.rint(height / shrink))))
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        sx, sy = rsize[0] / width, rsize[1] / height
        quad /= shrink
        qsize /= shrink
    else:
        shrink = 1

    # Crop around the quad with a border.
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (
        int(np.floor(quad[:, 0].min())),
        int(np.floor(quad[:, 1].min())),
        int(np.ceil(quad[:, 0].max())),
        int(np.ceil(quad[:, 1].max())),
    )
    crop = (
        max(crop[0] - border, 0),
        max(crop[1] - border, 0),
        min(crop[2] + border, img.size[0]),
        min(crop[3] + border, img.size[1]),
    )
    offset = np.zeros(2)  # quad coordinates of the working image = shrunk-photo coordinates - offset
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        if crop[2] <= crop[0] or crop[3] <= crop[1]:
            crop = (0, 0, img.size[0], img.size[1])  # quad entirely outside the photo: keep it whole
        img = img.crop(crop)
        quad -= crop[0:2]
        offset += crop[0:2]

    # Pad (reflect) where the quad leaves the photo, blur the padded border and fade it to the median colour.
    pad = (
        int(np.floor(quad[:, 0].min())),
        int(np.floor(quad[:, 1].min())),
        int(np.ceil(quad[:, 0].max())),
        int(np.ceil(quad[:, 1].max())),
    )
    pad = (
        max(-pad[0] + border, 0),
        max(-pad[1] + border, 0),
        max(pad[2] - img.size[0] + border, 0),
        max(pad[3] - img.size[1] + border, 0),
    )
    padded = False
    if enable_padding and max(pad) > border - 4:
        pad = tuple(int(v) for v in np.maximum(pad, int(np.rint(qsize * 0.3))))
        img = _pad_blur_fade(img, pad, qsize)
        quad += pad[:2]
        offset -= pad[:2]
        padded = True

    # Resample the quad; PIL's QUAD takes continuous coordinates (pixel centres at +0.5).
    out = img.transform(
        (transform_size, transform_size),
        Image.Transform.QUAD,
        tuple((quad + 0.5).flatten()),
        Image.Resampling.BILINEAR,
    )
    if size < transform_size:
        out = out.resize((size, size), Image.Resampling.LANCZOS)

    # Aligned index coords (u, v) -> working-image continuous coords: nw' + e (u + .5)/S + f (v + .5)/S.
    nw = quad[0] + 0.5
    e = (quad[3] - quad[0]) / size
    f = (quad[1] - quad[0]) / size
    lin = np.array([[e[0], f[0], nw[0]], [e[1], f[1], nw[1]], [0.0, 0.0, 1.0]])
    to_work = lin @ _translate(0.5, 0.5)
    # working continuous -> shrunk-photo continuous -> photo continuous -> photo index coords
    inverse = _translate(-0.5, -0.5) @ _scale(1.0 / sx, 1.0 / sy) @ _translate(*offset) @ to_work
    transform = np.linalg.inv(inverse)
    log.debug("aligned face: qsize %.1f, shrink %d, padded %s", fq.qsize, shrink, padded)
    return AlignResult(
        image=out,
        transform=transform,
        inverse=inverse,
        quad=fq.quad,
        points=pts,
        size=size,
        shrink=shrink,
        padded=padded,
    )


def _pad_blur_fade(img: Image.Image, pad: tuple[int, int, int, int], qsize: float) -> Image.Image:
    """FFHQ padding: reflect-pad by ``pad`` (left, top, right, bottom), blur towards the edges, fade to the median.

    Args:
        img: RGB working image [H, W].
        pad: pixels added on each side.
        qsize: quad side in working-image pixels (sets blur radius).

    Returns:
        RGB image [H + top + bottom, W + left + right].
    """
    arr = np.asarray(img, dtype=np.uint8)
    arr = np.pad(arr, ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), mode="reflect")
    h, w, _ = arr.shape
    yy, xx = np.ogrid[:h, :w]
    xx = xx.astype(np.float32)
    yy = yy.astype(np.float32)
    mask_x = 1.0 - np.minimum(xx / max(pad[0], 1), (w - 1 - xx) / max(pad[2], 1))
    mask_y = 1.0 - np.minimum(yy / max(pad[1], 1), (h - 1 - yy) / max(pad[3], 1))
    mask = np.maximum(mask_x, mask_y)[..., None]  # [H, W, 1]
    blur_radius = qsize * 0.02
    blurred = np.asarray(Image.fromarray(arr).filter(ImageFilter.GaussianBlur(blur_radius)), dtype=np.float32)
    out = arr.astype(np.float32)
    out += (blurred - out) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    out += (np.median(out, axis=(0, 1)) - out) * np.clip(mask, 0.0, 1.0)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")

"""Paste an edited FFHQ-aligned face back into its photo (FFHQ: Karras et al. 2019) with a feathered face mask.

Only photo pixels under the (warped) mask change; every pixel where the mask is 0 keeps its exact original value.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
from PIL import Image

from gie_cli.alignment.ffhq import apply_transform
from gie_cli.errors import GieError

__all__ = ["face_mask", "paste_back", "PasteError"]

log = logging.getLogger(__name__)

# Face ellipse in aligned-crop units (fractions of the side): centre and radii. It covers forehead to chin and cheek
# to cheek of an FFHQ crop and stays inside the crop, away from its (possibly padded and blurred) borders.
MASK_CENTER = (0.5, 0.55)
MASK_RADII = (0.36, 0.43)


class PasteError(GieError):
    """The aligned image, its alignment record and the photo do not fit together."""


def face_mask(size: int, feather: float = 0.15) -> np.ndarray:
    """Feathered elliptical face mask of an FFHQ-aligned crop.

    Args:
        size: crop side S.
        feather: width of the soft edge as a fraction of the ellipse radius (0 = hard edge).

    Returns:
        Array [S, S] float32 in [0, 1]: 1 inside the ellipse shrunk by ``feather``, 0 outside the ellipse, a
        smoothstep in between.
    """
    if not 0.0 <= feather < 1.0:
        raise ValueError(f"feather must be in [0, 1), got {feather}")
    c = (np.arange(size, dtype=np.float64) + 0.5) / size
    u = (c[None, :] - MASK_CENTER[0]) / MASK_RADII[0]
    v = (c[:, None] - MASK_CENTER[1]) / MASK_RADII[1]
    r = np.sqrt(u * u + v * v)
    if feather == 0.0:
        return (r <= 1.0).astype(np.float32)
    t = np.clip((1.0 - r) / feather, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def _matrix(meta: Mapping, key: str) -> np.ndarray:
    try:
        m = np.asarray(meta[key], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise PasteError(f"alignment record has no valid {key!r} matrix") from None
    if m.shape != (3, 3) or not np.isfinite(m).all():
        raise PasteError(f"alignment record: {key!r} must be a finite 3x3 matrix, got shape {m.shape}")
    return m


def paste_back(
    aligned_edit: Image.Image,
    align_meta: Mapping,
    photo: Image.Image,
    mask: np.ndarray | Image.Image | None = None,
    feather: float = 0.15,
) -> Image.Image:
    """Warp an edited aligned face into the photo it was aligned from.

    Args:
        aligned_edit: the edited (or reconstructed) aligned face, square; any size (the recorded transform is
            rescaled when it differs from the alignment's ``output_size``).
        align_meta: the alignment record (``NAME.align.json``): needs ``transform`` (photo -> aligned, 3x3) and
            ``output_size``; ``source_size`` is checked against the photo when present.
        photo: the original upright photo (RGB), or an earlier composite of it.
        mask: optional face mask in aligned-crop space ([h, w] floats in [0, 1] or an "L"/"F" image of any size);
            default :func:`face_mask`.
        feather: soft-edge width of the default mask.

    Returns:
        A new RGB image of the photo's size: ``photo * (1 - m) + warped_edit * m`` with the warped mask ``m``; pixels
        with ``m == 0`` are bit-identical to the photo.

    Raises:
        PasteError: inconsistent inputs (size mismatch, bad matrices).
    """
    photo_rgb = photo if photo.mode == "RGB" else photo.convert("RGB")
    src_size = align_meta.get("source_size")
    if src_size is not None and tuple(int(v) for v in src_size) != photo_rgb.size:
        raise PasteError(
            f"photo is {photo_rgb.size[0]}x{photo_rgb.size[1]} but the face was aligned from a "
            f"{int(src_size[0])}x{int(src_size[1])} image",
            hint="pass the original photo (the alignment record's 'source')",
        )
    ew, eh = aligned_edit.size
    if ew != eh:
        raise PasteError(f"aligned image must be square, got {ew}x{eh}")
    try:
        out_size = int(align_meta["output_size"])
    except (KeyError, TypeError, ValueError):
        raise PasteError("alignment record has no 'output_size'") from None
    fwd = _matrix(align_meta, "transform")
    # photo -> alignment frame -> edit frame (continuous coordinates scale by ew / out_size)
    fwd = _rescale(ew / out_size) @ fwd

    edit = aligned_edit if aligned_edit.mode == "RGB" else aligned_edit.convert("RGB")
    if mask is None:
        m_img = Image.fromarray(face_mask(ew, feather), "F")
    else:
        m_img = (
            mask.convert("F") if isinstance(mask, Image.Image) else Image.fromarray(np.asarray(mask, np.float32), "F")
        )
        if m_img.size != (ew, ew):
            m_img = m_img.resize((ew, ew), Image.Resampling.BILINEAR)

    # Aligned pixels per photo pixel; reduce the edit first when it is finer than the photo (antialiasing).
    scale = float(np.sqrt(abs(np.linalg.det(fwd[:2, :2]))))
    if scale > 1.0:
        small = max(8, int(round(ew / scale)))
        edit = edit.resize((small, small), Image.Resampling.LANCZOS)
        m_img = m_img.resize((small, small), Image.Resampling.BILINEAR)
        fwd = _rescale(small / ew) @ fwd
        ew = small

    # Photo region covered by the crop (mapped corners), clipped to the photo.
    inv = np.linalg.inv(fwd)
    corners = apply_transform(inv, np.array([[-0.5, -0.5], [ew - 0.5, -0.5], [ew - 0.5, ew - 0.5], [-0.5, ew - 0.5]]))
    pw, ph = photo_rgb.size
    x0 = max(int(np.floor(corners[:, 0].min())) - 1, 0)
    y0 = max(int(np.floor(corners[:, 1].min())) - 1, 0)
    x1 = min(int(np.ceil(corners[:, 0].max())) + 2, pw)
    y1 = min(int(np.ceil(corners[:, 1].max())) + 2, ph)
    if x1 <= x0 or y1 <= y0:
        log.warning("the aligned face lies outside the photo; nothing pasted")
        return photo_rgb.copy()

    # Region output pixel (continuous) -> photo index -> edit index -> edit continuous, for PIL.
    to_edit = _translate(0.5, 0.5) @ fwd @ _translate(x0 - 0.5, y0 - 0.5)
    to_edit = to_edit / to_edit[2, 2]
    box = (x1 - x0, y1 - y0)
    if np.allclose(to_edit[2, :2], 0.0, atol=1e-12):
        method, data = Image.Transform.AFFINE, tuple(to_edit[:2].flatten())
    else:
        method, data = Image.Transform.PERSPECTIVE, tuple(to_edit.flatten()[:8])
    warped = np.asarray(edit.transform(box, method, data, Image.Resampling.BICUBIC), dtype=np.float32)
    m = np.asarray(m_img.transform(box, method, data, Image.Resampling.BILINEAR), dtype=np.float32)
    m = np.clip(m, 0.0, 1.0)[..., None]

    out = np.array(photo_rgb, dtype=np.uint8)
    region = out[y0:y1, x0:x1].astype(np.float32)
    blended = np.clip(np.rint(region + (warped - region) * m), 0, 255).astype(np.uint8)
    keep = m[..., 0] <= 0.0
    blended[keep] = out[y0:y1, x0:x1][keep]
    out[y0:y1, x0:x1] = blended
    return Image.fromarray(out, "RGB")


def _translate(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _rescale(k: float) -> np.ndarray:
    """Pixel-centre coordinates of an image resized by ``k``: ``(p + 0.5) * k - 0.5``."""
    return _translate(-0.5, -0.5) @ np.diag([k, k, 1.0]) @ _translate(0.5, 0.5)

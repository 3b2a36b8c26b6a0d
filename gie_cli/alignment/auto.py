"""Automatic FFHQ alignment of raw photos for `gie invert` (FFHQ: Karras et al. 2019, "A Style-Based Generator")."""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

from gie_cli.alignment.ffhq import align_face
from gie_cli.alignment.landmarks import LandmarkBackend, select_faces
from gie_cli.alignment.sidecar import ALIGN_SUFFIX, build_align_meta
from gie_cli.errors import GieError

__all__ = ["NoFaceError", "align_for_inversion", "needs_alignment", "own_sidecar"]

log = logging.getLogger(__name__)


class NoFaceError(GieError):
    """The landmark backend found no face in a photo."""


def own_sidecar(path: str | Path) -> Path | None:
    """``dir/NAME.align.json`` for an input ``dir/NAME.<ext>`` (the record `gie align` writes beside its crops)."""
    p = Path(path)
    cand = p.with_name(p.stem + ALIGN_SUFFIX)
    return cand if cand.is_file() else None


def needs_alignment(path: str | Path, align: bool | None) -> bool:
    """Whether `gie invert` should align an input before inverting it.

    Args:
        path: the input image.
        align: True (always), False (never), None (auto).

    Returns:
        With ``align=None``: False for inputs with a ``NAME.align.json`` beside them (crops from `gie align`) and for
        square images (taken as aligned crops, the pre-alignment behaviour); True for every other (non-square)
        image. Unreadable files return False and fail later with the usual load error.
    """
    if align is not None:
        return align
    if own_sidecar(path) is not None:
        return False
    try:
        with Image.open(path) as im:  # header only; EXIF rotation keeps squareness, so no transpose needed
            w, h = im.size
    except Exception:  # noqa: BLE001 - the loader reports unreadable files with its own message
        return False
    return w != h


def align_for_inversion(
    photo: Image.Image,
    backend: LandmarkBackend,
    size: int,
    source: Path,
    source_sha256: str | None,
    name: str,
    image_name: str,
) -> tuple[Image.Image, dict]:
    """Align the largest face of a photo for an encoder.

    Args:
        photo: upright RGB photo.
        backend: landmark backend.
        size: crop side (the method's input size).
        source: the photo file.
        source_sha256: its hash (recorded).
        name: the item's output name.
        image_name: file name of the reconstruction the record accompanies.

    Returns:
        ``(aligned crop, alignment record)``.

    Raises:
        NoFaceError: no face found.
    """
    found = backend.detect(photo, source)
    chosen = select_faces(found, "largest")
    if not chosen:
        raise NoFaceError(f"no face found in {source}")
    if len(found) > 1:
        log.info("%s: %d faces found, inverting the largest", source, len(found))
    face = chosen[0]
    res = align_face(photo, face.points, size)
    meta = build_align_meta(
        res,
        face,
        source=source,
        source_size=photo.size,
        backend=getattr(backend, "name", type(backend).__name__),
        name=name,
        image=image_name,
        faces_found=len(found),
        source_sha256=source_sha256,
    )
    return res.image, meta

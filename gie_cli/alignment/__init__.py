"""Face alignment for gie: the FFHQ recipe (Karras et al. 2019), landmark backends, alignment records, paste-back."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from gie_cli.alignment.ffhq import (
    FFHQ_TEMPLATE_1024,
    AlignResult,
    FfhqQuad,
    align_face,
    apply_transform,
    ffhq_points,
    ffhq_quad,
    ffhq_template,
)
from gie_cli.alignment.landmarks import (
    BACKENDS,
    DEFAULT_BACKEND,
    Face,
    LandmarkBackend,
    LandmarksFileError,
    MultipleFacesError,
    create_backend,
    select_faces,
)
from gie_cli.alignment.paste import PasteError, face_mask, paste_back
from gie_cli.alignment.sidecar import (
    ALIGN_SUFFIX,
    AlignRecordError,
    build_align_meta,
    find_align_sidecar,
    read_align_meta,
)

__all__ = [
    "ALIGN_SUFFIX",
    "BACKENDS",
    "DEFAULT_BACKEND",
    "FACE_POLICIES",
    "FFHQ_TEMPLATE_1024",
    "AlignRecordError",
    "AlignResult",
    "AlignedFace",
    "Face",
    "FfhqQuad",
    "LandmarkBackend",
    "LandmarksFileError",
    "MultipleFacesError",
    "PasteError",
    "align_face",
    "align_photo",
    "apply_transform",
    "build_align_meta",
    "create_backend",
    "face_mask",
    "ffhq_points",
    "ffhq_quad",
    "ffhq_template",
    "find_align_sidecar",
    "paste_back",
    "read_align_meta",
    "select_faces",
]

log = logging.getLogger(__name__)

FACE_POLICIES: tuple[str, ...] = ("largest", "all", "error")


@dataclass
class AlignedFace:
    """One aligned face of a photo.

    Attributes:
        index: 1-based rank among the aligned faces (largest first).
        face: the detection.
        result: the alignment (image and transforms).
    """

    index: int
    face: Face
    result: AlignResult


def align_photo(
    photo: Image.Image,
    backend: LandmarkBackend,
    size: int = 1024,
    faces: str = "largest",
    source: Path | None = None,
) -> tuple[list[Face], list[AlignedFace]]:
    """Detect, choose (multi-face policy) and align the faces of one photo.

    Args:
        photo: upright RGB photo.
        backend: landmark backend.
        size: aligned crop side.
        faces: ``largest`` | ``all`` | ``error`` (see :func:`select_faces`).
        source: the photo's file (the file backend finds its landmarks through it).

    Returns:
        ``(detections, aligned)``; ``aligned`` is empty when no face was found.

    Raises:
        MultipleFacesError: ``faces="error"`` and several faces.
        LandmarksFileError: the file backend has no usable landmarks for the photo.
    """
    found = backend.detect(photo, source)
    chosen = select_faces(found, faces)
    if len(found) > 1 and faces == "largest":
        log.info("%s: %d faces found, aligning the largest", source or "image", len(found))
    out = [AlignedFace(i + 1, f, align_face(photo, f.points, size)) for i, f in enumerate(chosen)]
    return found, out

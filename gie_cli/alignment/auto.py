"""Automatic FFHQ alignment of raw photos for `gie invert` (FFHQ: Karras et al. 2019, "A Style-Based Generator")."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from gie_cli.alignment.ffhq import align_face, ffhq_points, ffhq_template
from gie_cli.alignment.landmarks import LANDMARKS_SUFFIX, LandmarkBackend, parse_landmarks, select_faces
from gie_cli.alignment.sidecar import ALIGN_SUFFIX, build_align_meta
from gie_cli.errors import GieError
from gie_cli.io.images import image_size

__all__ = [
    "TEMPLATE_TOLERANCE",
    "NoFaceError",
    "align_for_inversion",
    "alignment_evidence",
    "landmarks_at_template",
    "needs_alignment",
    "own_sidecar",
    "synth_faces_world",
    "synthetic_world_input",
]

log = logging.getLogger(__name__)


class NoFaceError(GieError):
    """The landmark backend found no face in a photo."""


def own_sidecar(path: str | Path) -> Path | None:
    """``dir/NAME.align.json`` for an input ``dir/NAME.<ext>`` (the record `gie align` writes beside its crops)."""
    p = Path(path)
    cand = p.with_name(p.stem + ALIGN_SUFFIX)
    return cand if cand.is_file() else None


TEMPLATE_TOLERANCE = 0.04
"""Largest distance of a landmark from its FFHQ template position, as a fraction of the image side, for a square
image to count as an FFHQ-aligned crop (landmarks of `gie align` crops sit within about 1% of it)."""


def synth_faces_world(path: str | Path) -> bool:
    """True when ``path`` lies in a folder written by ``gie synth --faces`` (``world.json`` of kind ``aligned``):
    the synthetic world's aligned face crops, aligned by construction."""
    return _synth_world_kind(Path(path)) == "aligned"


def synthetic_world_input(path: str | Path) -> bool:
    """True when ``path`` is a render of gie's synthetic face world, by its records (never by its pixels).

    Evidence: ``world.json`` of ``gie synth`` beside it (``generator = "gie_cli.synth"``), or its alignment record
    (``NAME.align.json`` of `gie align`) naming a source photo that has one. Such inputs are what the embedded demo
    models were trained on; every other input is treated as a real photo.
    """
    p = Path(path)
    if _synth_world_kind(p) is not None:
        return True
    record = own_sidecar(p)
    if record is None:
        return False
    try:
        source = json.loads(record.read_text(encoding="utf-8")).get("source")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False
    return isinstance(source, str) and _synth_world_kind(Path(source)) is not None


def _synth_world_kind(path: Path) -> str | None:
    """The ``kind`` of the ``gie synth`` world.json beside ``path`` (``photo`` or ``aligned``), or None."""
    try:
        meta = json.loads(path.with_name("world.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("generator") != "gie_cli.synth":
        return None
    return str(meta.get("kind", ""))


def landmarks_at_template(points: np.ndarray, size: int, tolerance: float = TEMPLATE_TOLERANCE) -> bool:
    """Whether 5 FFHQ points (or 68 landmarks) of a ``size`` x ``size`` image sit at the FFHQ template positions.

    Args:
        points: [5, 2] or [68, 2] landmarks in pixel-centre coordinates.
        size: side of the square image.
        tolerance: largest allowed distance from the template, as a fraction of ``size``.

    Returns:
        True when every point is within ``tolerance * size`` of its template position.
    """
    pts = ffhq_points(points)
    dist = np.linalg.norm(pts - ffhq_template(size), axis=1)
    return bool(np.all(dist <= tolerance * size))


def alignment_evidence(path: str | Path) -> str | None:
    """Why a square image counts as an FFHQ-aligned crop, or None when nothing says so.

    ``"record"``: a ``NAME.align.json`` of `gie align` beside it; ``"synth-faces"``: a crop of ``gie synth --faces``;
    ``"landmarks"``: its ``NAME.landmarks.json`` points sit at the FFHQ template (see :func:`landmarks_at_template`).
    """
    if own_sidecar(path) is not None:
        return "record"
    if synth_faces_world(path):
        return "synth-faces"
    size = image_size(path)
    side = Path(path).with_name(Path(path).stem + LANDMARKS_SUFFIX)
    if size is None or size[0] != size[1] or not side.is_file():
        return None
    try:
        faces = parse_landmarks(json.loads(side.read_text(encoding="utf-8")), str(side))
    except Exception:  # noqa: BLE001 - an unusable sidecar is no evidence; alignment reports it if it is used
        return None
    if len(faces) == 1 and landmarks_at_template(faces[0].points, size[0]):
        return "landmarks"
    return None


def needs_alignment(path: str | Path, align: bool | None) -> bool:
    """Whether `gie invert` should align an input before inverting it.

    Args:
        path: the input image.
        align: True (always), False (never), None (auto).

    Returns:
        With ``align=None`` (auto), decided by evidence, not by shape: False for images that count as aligned crops
        (:func:`alignment_evidence`: an align record of `gie align`, a ``gie synth --faces`` crop, or landmarks at
        the FFHQ template); True for every other image, square or not (a square photo is not a crop). Unreadable
        files return False and fail later with the usual load error.
    """
    if align is not None:
        return align
    if alignment_evidence(path) is not None:
        return False
    return image_size(path) is not None


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

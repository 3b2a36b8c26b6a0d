"""Alignment records (``NAME.align.json``): landmarks, FFHQ transform and source of one aligned face.

FFHQ alignment: Karras et al. 2019, "A Style-Based Generator Architecture for Generative Adversarial Networks".
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from gie_cli.alignment.ffhq import AlignResult, apply_transform
from gie_cli.alignment.landmarks import Face
from gie_cli.errors import GieError

__all__ = ["ALIGN_FORMAT", "ALIGN_SUFFIX", "build_align_meta", "find_align_sidecar", "read_align_meta"]

ALIGN_FORMAT = "gie-align/1"
ALIGN_SUFFIX = ".align.json"
POINT_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def _r(a: np.ndarray, nd: int = 4) -> list:
    return np.round(np.asarray(a, dtype=np.float64), nd).tolist()


def build_align_meta(
    result: AlignResult,
    face: Face,
    *,
    source: str | Path,
    source_size: tuple[int, int],
    backend: str,
    name: str,
    image: str,
    face_index: int = 1,
    faces_aligned: int = 1,
    faces_found: int = 1,
    source_sha256: str | None = None,
) -> dict:
    """The JSON record written next to an aligned crop.

    Args:
        result: the alignment.
        face: the detection it came from.
        source: the photo file.
        source_size: ``(W, H)`` of the upright photo.
        backend: landmark backend name.
        name: the item's output name (``NAME`` of ``NAME.png`` / ``NAME_face2.png``).
        image: file name of the aligned crop (relative to the record's folder).
        face_index: 1-based index of this face among the aligned ones (largest first).
        faces_aligned: how many faces of this photo were aligned.
        faces_found: how many faces the backend found.
        source_sha256: hash of the photo file.

    Returns:
        A JSON-serialisable dict (format ``gie-align/1``).
    """
    from gie_cli import __version__

    return {
        "format": ALIGN_FORMAT,
        "name": name,
        "image": image,
        "source": str(Path(source).resolve()),
        "source_sha256": source_sha256,
        "source_size": [int(source_size[0]), int(source_size[1])],
        "output_size": int(result.size),
        "coordinates": "pixel centres at integer coordinates, upright photo (EXIF orientation applied)",
        "backend": backend,
        "face_index": int(face_index),
        "faces_aligned": int(faces_aligned),
        "faces_found": int(faces_found),
        "score": None if face.score is None else round(float(face.score), 5),
        "bbox": _r(face.bbox, 2),
        "landmarks": {k: _r(p) for k, p in zip(POINT_NAMES, result.points, strict=True)},
        "landmarks_aligned": {
            k: _r(p) for k, p in zip(POINT_NAMES, apply_transform(result.transform, result.points), strict=True)
        },
        "landmarks_full": None if face.landmarks is None else _r(face.landmarks, 2),
        "quad": _r(result.quad),
        "transform": _r(result.transform, 10),
        "inverse": _r(result.inverse, 10),
        "recipe": {"method": "ffhq", "shrink": result.shrink, "padded": result.padded},
        "gie_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


class AlignRecordError(GieError):
    """An alignment record is missing or unreadable."""


__all__ += ["AlignRecordError"]


def read_align_meta(path: str | Path) -> dict:
    """Read and check an alignment record.

    Raises:
        AlignRecordError: unreadable, not JSON, or not a ``gie-align`` record.
    """
    p = Path(path)
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AlignRecordError(f"alignment record {p}: {e}") from None
    if not isinstance(meta, dict) or not str(meta.get("format", "")).startswith("gie-align/"):
        raise AlignRecordError(f"{p} is not a gie alignment record", hint="pass the NAME.align.json of `gie align`")
    for key in ("transform", "output_size", "source_size"):
        if key not in meta:
            raise AlignRecordError(f"alignment record {p} lacks {key!r}")
    return meta


def find_align_sidecar(image: str | Path) -> Path | None:
    """The alignment record belonging to an image file, if any.

    For ``dir/A.B.C.png`` the candidates are ``dir/A.B.C.align.json``, ``dir/A.B.align.json``, ``dir/A.align.json``
    (so ``NAME.recon.png`` or an edit's ``NAME.<edit>.png`` find ``NAME.align.json``).
    """
    p = Path(image)
    parts = p.stem.split(".")
    for k in range(len(parts), 0, -1):
        cand = p.with_name(".".join(parts[:k]) + ALIGN_SUFFIX)
        if cand.is_file():
            return cand
    return None

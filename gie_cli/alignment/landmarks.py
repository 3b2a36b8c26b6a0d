"""Landmark backends for FFHQ alignment (FFHQ: Karras et al. 2019): face-alignment (FAN), mediapipe, JSON files.

Every backend returns :class:`Face` objects with the 5 FFHQ points (left eye centre, right eye centre, nose tip,
left mouth corner, right mouth corner; "left" = image left) in pixel-centre coordinates of the upright photo.

Landmarks-file schema (``<stem>.landmarks.json`` next to the image, or in the ``--landmarks`` folder)::

    {"image_size": [W, H],                       # optional; checked against the upright image when present
     "faces": [                                   # [] = no face in this image
        {"points": [[x, y], ...],                 # 5 points (order above) or 68 points (iBUG 300-W order)
         "score": 0.99,                           # optional detector confidence
         "bbox": [x0, y0, x1, y1]}]}              # optional face box

A bare list of faces is accepted instead of the object, and a face may be a bare list of points.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from gie_cli.alignment.ffhq import ffhq_points, ffhq_quad
from gie_cli.errors import GieError, UsageError, WeightsUnavailableError

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "Face",
    "FaceAlignmentBackend",
    "LandmarkBackend",
    "LandmarksFileBackend",
    "LandmarksFileError",
    "MediapipeBackend",
    "create_backend",
    "FACE_ALIGNMENT_ENTRIES",
    "face_alignment_weight_files",
    "parse_landmarks",
]

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("auto", "face-alignment", "mediapipe", "file")
DEFAULT_BACKEND = "face-alignment"
LANDMARKS_SUFFIX = ".landmarks.json"

# face-alignment 1.5 (2D FAN-4 + S3FD): file name -> official URL. Looked up in $GIE_CACHE_DIR/torch/ and in
# torch.hub.get_dir()/checkpoints/ (where face-alignment itself would download them).
FACE_ALIGNMENT_FILES: dict[str, str] = {
    "2DFAN4-11f355bf06.pth.tar": "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar",
    "s3fd-619a316812.pth": "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
}

_INSTALL = {
    "face-alignment": "pip install face-alignment  (add torch==<your installed torch version> on the same line)",
    "mediapipe": 'pip install "gie[mediapipe]"  or  pip install mediapipe==0.10.14 (plus your torch pin)',
}


@dataclass
class Face:
    """One detected face.

    Attributes:
        points: [5, 2] FFHQ points (left eye, right eye, nose, left mouth corner, right mouth corner).
        score: detector confidence, None when the backend gives none.
        bbox: ``(x0, y0, x1, y1)`` face box; derived from the landmarks when the backend gives none.
        landmarks: the backend's full landmark set ([68, 2] for face-alignment, [478, 2] for mediapipe), if any.
    """

    points: np.ndarray
    score: float | None = None
    bbox: tuple[float, float, float, float] | None = None
    landmarks: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.points = ffhq_points(self.points)
        if self.bbox is None:
            src = self.landmarks if self.landmarks is not None else self.points
            lo, hi = np.min(src, axis=0), np.max(src, axis=0)
            self.bbox = (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))
        else:
            self.bbox = tuple(float(v) for v in self.bbox)  # type: ignore[assignment]

    @property
    def size(self) -> float:
        """Side of the face's FFHQ quad in photo pixels (the ``largest`` policy compares this)."""
        return ffhq_quad(self.points).qsize


class LandmarkBackend(Protocol):
    """A face landmark detector."""

    name: str

    def detect(self, image: Image.Image, source: Path | None = None) -> list[Face]:
        """Find the faces of ``image`` (RGB, upright); ``source`` is its file (used by the file backend)."""
        ...


class LandmarksFileError(GieError):
    """A landmarks JSON file is missing or malformed (an item failure, not a usage error)."""


# ----------------------------------------------------------------------------------------------- file backend


def parse_landmarks(data: object, where: str = "landmarks") -> list[Face]:
    """Parse the landmarks-file schema (see the module docstring).

    Args:
        data: the decoded JSON.
        where: name used in error messages.

    Returns:
        The faces, in file order.

    Raises:
        LandmarksFileError: the structure does not follow the schema.
    """
    faces_raw = data.get("faces") if isinstance(data, dict) else data
    if not isinstance(faces_raw, list):
        raise LandmarksFileError(f"{where}: expected a list of faces or an object with a 'faces' list")
    faces = []
    for i, raw in enumerate(faces_raw):
        entry = raw if isinstance(raw, dict) else {"points": raw}
        try:
            pts = np.asarray(entry.get("points"), dtype=np.float64)
            score = entry.get("score")
            bbox = entry.get("bbox")
            if bbox is not None and len(bbox) != 4:
                raise ValueError("bbox must be [x0, y0, x1, y1]")
            faces.append(Face(pts, None if score is None else float(score), None if bbox is None else tuple(bbox)))
        except (TypeError, ValueError) as e:
            raise LandmarksFileError(
                f"{where}: face {i + 1}: {e}", hint="each face needs 5 or 68 [x, y] points"
            ) from None
    return faces


class LandmarksFileBackend:
    """Landmarks from JSON files: ``<stem>.landmarks.json`` next to each image, in a folder, or one given file.

    Args:
        path: None (sidecars next to the images), a folder holding ``<stem>.landmarks.json`` files, or one JSON
            file used for every image.
    """

    name = "file"

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else None
        if self.path is not None and not self.path.exists():
            raise UsageError(
                f"landmarks {self.path} not found",
                hint="pass a landmarks JSON file or a folder",
                param="landmarks",
                value=self.path,
            )

    def file_for(self, source: Path) -> Path:
        """The landmarks file used for image ``source``."""
        if self.path is None:
            return source.with_name(source.stem + LANDMARKS_SUFFIX)
        if self.path.is_dir():
            return self.path / (source.stem + LANDMARKS_SUFFIX)
        return self.path

    def detect(self, image: Image.Image, source: Path | None = None) -> list[Face]:
        """Read the faces of ``source`` from its landmarks file.

        Raises:
            LandmarksFileError: no file, unreadable JSON, bad schema, or a mismatching ``image_size``.
        """
        if source is None and (self.path is None or self.path.is_dir()):
            raise LandmarksFileError("the file backend needs the image path to find its landmarks file")
        f = self.file_for(Path(source)) if source is not None else self.path
        assert f is not None
        if not f.is_file():
            raise LandmarksFileError(
                f"no landmarks file {f}", hint="write one (schema: gie align --help) or use another landmark backend"
            )
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LandmarksFileError(f"landmarks file {f}: {e}") from None
        size = data.get("image_size") if isinstance(data, dict) else None
        if size is not None and [int(v) for v in size] != list(image.size):
            raise LandmarksFileError(
                f"landmarks file {f} is for a {size[0]}x{size[1]} image, the (upright) image is "
                f"{image.size[0]}x{image.size[1]}",
                hint="landmarks refer to the image with its EXIF orientation applied",
            )
        return parse_landmarks(data, str(f))


# ----------------------------------------------------------------------------------------------- mediapipe


class MediapipeBackend:
    """mediapipe 0.10.14 face mesh (478 points, models inside the wheel, offline): iris centres 468/473 as the eye
    centres, 1 as the nose tip, 61/291 as the mouth corners. Gives no detection score.

    Args:
        max_faces: most faces reported per image.
        min_confidence: face detection confidence threshold.
    """

    name = "mediapipe"

    def __init__(self, max_faces: int = 16, min_confidence: float = 0.5) -> None:
        try:
            from mediapipe.python.solutions import face_mesh
        except ImportError as e:
            raise UsageError(f"landmark backend mediapipe is not installed ({e})", hint=_INSTALL["mediapipe"]) from None
        self._mesh = face_mesh.FaceMesh(
            static_image_mode=True,
            max_num_faces=max_faces,
            refine_landmarks=True,
            min_detection_confidence=min_confidence,
        )

    def detect(self, image: Image.Image, source: Path | None = None) -> list[Face]:
        arr = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
        h, w = arr.shape[:2]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*GetPrototype.*", category=UserWarning)
            result = self._mesh.process(arr)
        faces = []
        for lms in result.multi_face_landmarks or []:
            # normalised [0, 1] image coordinates -> pixel-centre coordinates
            pts = np.array([[p.x * w - 0.5, p.y * h - 0.5] for p in lms.landmark], dtype=np.float64)
            five = pts[[468, 473, 1, 61, 291]]
            faces.append(Face(five, None, None, pts))
        return faces

    def close(self) -> None:
        self._mesh.close()


# ----------------------------------------------------------------------------------------------- face-alignment


def face_alignment_weight_files() -> dict[str, list[Path]]:
    """Where the face-alignment weights are looked for: file name -> candidate paths in lookup order.

    ``<gie cache>/torch/<file>`` (where `gie weights download face_alignment.fan4 face_alignment.s3fd` puts them),
    then ``torch.hub.get_dir()/checkpoints/<file>`` (``$TORCH_HOME/hub/checkpoints``, default
    ``~/.cache/torch/hub/checkpoints``).
    """
    import torch

    from gie_cli.weights import cache_dir

    return {
        name: [cache_dir() / "torch" / name, Path(torch.hub.get_dir()) / "checkpoints" / name]
        for name in FACE_ALIGNMENT_FILES
    }


FACE_ALIGNMENT_ENTRIES: dict[str, str] = {
    "2DFAN4-11f355bf06.pth.tar": "face_alignment.fan4",
    "s3fd-619a316812.pth": "face_alignment.s3fd",
}
"""face-alignment file name -> its weights-registry entry (downloaded, verified, into ``<gie cache>/torch/``)."""


def _find_face_alignment_weights(offline: bool | None = None) -> dict[str, Path]:
    """Resolve both face-alignment files, downloading missing ones through the weights registry.

    A file already in gie's cache is verified against the registry (a bad one is downloaded again when online); a
    copy face-alignment itself downloaded (torch hub folder) is used as it is. Missing files are downloaded on first
    use into ``<gie cache>/torch/`` (progress on stderr, verified before use; the registry has no upstream sha256
    for them, so the hash seen at the first download is recorded and checked from then on). Offline
    (``GIE_OFFLINE=1``) nothing is downloaded and a missing file is one clear error.

    Args:
        offline: Force offline mode (None: ``GIE_OFFLINE``).

    Raises:
        WeightsUnavailableError: offline and a file is missing: names every missing file with its expected path and
            URL (one line).
        DownloadError: online and a download failed or did not verify.
    """
    from gie_cli.weights import ensure, is_offline, load_registry

    found: dict[str, Path] = {}
    missing: list[tuple[str, list[Path]]] = []
    for name, cands in face_alignment_weight_files().items():
        ours, hub = cands[0], cands[-1]
        if hub.is_file() and not ours.is_file():
            found[name] = hub
        elif ours.is_file() or not is_offline(offline):
            found[name] = ours  # resolved through the registry below
        else:
            missing.append((name, cands))
    if missing:
        name, cands = missing[0]
        others = "; ".join(f"also missing {n}: save {FACE_ALIGNMENT_FILES[n]} as {c[-1]}" for n, c in missing[1:])
        hint = (others + "; " if others else "") + "or use --backend mediapipe (offline) or --backend file"
        raise WeightsUnavailableError(name, cands[-1], [FACE_ALIGNMENT_FILES[name]], cands, hint=hint)
    reg = None
    for name, path in found.items():
        if path == face_alignment_weight_files()[name][0]:
            reg = reg or load_registry()
            if not path.is_file():
                log.info("downloading the face-alignment model %s (first use of the face-alignment backend)", name)
            found[name] = ensure(reg.get(FACE_ALIGNMENT_ENTRIES[name]), reg, offline=offline)
    return found


class FaceAlignmentBackend:
    """face-alignment (Bulat & Tzimiropoulos 2017, FAN) 68-point landmarks on S3FD detections; gie's default backend.

    The weights (``2DFAN4-11f355bf06.pth.tar``, ``s3fd-619a316812.pth``) are downloaded on first use through gie's
    weights registry (``face_alignment.fan4``, ``face_alignment.s3fd``; verified, offline: one clear error), never by
    face-alignment itself (see :func:`face_alignment_weight_files`). Faces are detected on a copy of the photo
    downscaled to ``detect_max_side`` (S3FD's cost grows with the pixel count); landmarks are computed on the full
    photo.

    Args:
        device: torch device string.
        detect_max_side: longest side of the detection copy.
        flip_input: also run FAN on the mirrored crop and average (2x slower, slightly steadier).
    """

    name = "face-alignment"

    def __init__(self, device: str = "cpu", detect_max_side: int = 1024, flip_input: bool = False) -> None:
        try:
            import face_alignment
            import face_alignment.api as fa_api
        except ImportError as e:
            raise UsageError(
                f"landmark backend face-alignment is not installed ({e})", hint=_INSTALL["face-alignment"]
            ) from None
        import torch

        files = _find_face_alignment_weights()
        fan_file = files["2DFAN4-11f355bf06.pth.tar"]

        class _LocalFAN(face_alignment.FaceAlignment):
            def _load_native(self, network_name, network_size, device, dtype):  # never download
                net = fa_api.FAN(network_size)
                net.load_state_dict(torch.load(fan_file, map_location=device, weights_only=True))
                return net.to(device, dtype=dtype).eval()

        self.detect_max_side = detect_max_side
        self._fa = _LocalFAN(
            face_alignment.LandmarksType.TWO_D,
            device=str(device),
            flip_input=flip_input,
            face_detector="sfd",
            face_detector_kwargs={"path_to_detector": str(files["s3fd-619a316812.pth"])},
            compile=False,
        )
        log.debug("face-alignment backend: FAN %s, S3FD %s", fan_file, files["s3fd-619a316812.pth"])

    def detect(self, image: Image.Image, source: Path | None = None) -> list[Face]:
        arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
        scale = min(1.0, self.detect_max_side / max(image.size))
        small = arr
        if scale < 1.0:
            small_size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
            small = np.asarray(image.convert("RGB").resize(small_size, Image.Resampling.BILINEAR), dtype=np.uint8)
        boxes = self._fa.face_detector.detect_from_image(small.copy())  # RGB; S3FD flips to BGR itself
        if len(boxes) == 0:
            return []
        boxes = [np.concatenate([np.asarray(b[:4], np.float64) / scale, np.asarray(b[4:], np.float64)]) for b in boxes]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lms, _, dets = self._fa.get_landmarks_from_image(arr, detected_faces=boxes, return_bboxes=True)
        faces = []
        for lm, det in zip(lms or [], dets or [], strict=False):
            lm = np.asarray(lm, dtype=np.float64)[:, :2]
            score = float(det[4]) if len(det) > 4 else None
            faces.append(Face(lm, score, tuple(float(v) for v in det[:4]), lm))
        return faces


# ----------------------------------------------------------------------------------------------- factory


class AutoBackend:
    """An image's ``<stem>.landmarks.json`` sidecar when it has one, else face-alignment (built on first need, so a
    folder of photos with sidecars aligns offline without the detector's weights).

    Args:
        device: torch device for face-alignment.
    """

    name = "auto"

    def __init__(self, device: str = "cpu") -> None:
        self.file = LandmarksFileBackend(None)
        self.device = device
        self._detector: FaceAlignmentBackend | None = None

    def detect(self, image: Image.Image, source: Path | None = None) -> list[Face]:
        if source is not None and self.file.file_for(Path(source)).is_file():
            return self.file.detect(image, source)
        if self._detector is None:
            self._detector = FaceAlignmentBackend(device=self.device)  # WeightsUnavailableError names the files
        return self._detector.detect(image, source)


def create_backend(name: str, landmarks: str | Path | None = None, device: str = "cpu") -> LandmarkBackend:
    """Build a landmark backend by name.

    Args:
        name: one of :data:`BACKENDS` (``auto``: sidecar landmarks when present, else face-alignment).
        landmarks: landmarks file or folder (file backend only).
        device: torch device (face-alignment only).

    Raises:
        UsageError: unknown backend, or its package is not installed (the message says how to install it).
        WeightsUnavailableError: face-alignment weights are missing.
    """
    if name not in BACKENDS:
        raise UsageError(
            f"unknown landmark backend {name!r}", hint=f"choose one of: {', '.join(BACKENDS)}", param="backend"
        )
    if landmarks is not None and name != "file":
        raise UsageError("a landmarks file or folder only applies to the file backend", param="landmarks")
    if name == "file":
        return LandmarksFileBackend(landmarks)
    if name == "mediapipe":
        return MediapipeBackend()
    if name == "auto":
        return AutoBackend(device=device)
    return FaceAlignmentBackend(device=device)


def select_faces(faces: Sequence[Face], policy: str) -> list[Face]:
    """Apply the multi-face policy to detected faces.

    Args:
        faces: detections.
        policy: ``largest`` (the face with the largest FFHQ quad), ``all`` (every face, largest first) or
            ``error`` (exactly one face expected).

    Returns:
        The faces to align (empty when there are none).

    Raises:
        MultipleFacesError: ``error`` policy and more than one face.
    """
    ordered = sorted(faces, key=lambda f: -f.size)
    if policy == "largest":
        return ordered[:1]
    if policy == "all":
        return ordered
    if policy == "error":
        if len(ordered) > 1:
            raise MultipleFacesError(f"{len(ordered)} faces found (the face policy 'error' expects one)")
        return ordered
    raise UsageError(f"unknown face policy {policy!r}", hint="use largest, all or error", param="faces")


class MultipleFacesError(GieError):
    """More than one face where exactly one was required."""


__all__ += ["MultipleFacesError", "select_faces"]

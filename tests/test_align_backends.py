"""Landmark backends for FFHQ alignment (Karras et al. 2019): JSON files, face policy, face-alignment, mediapipe."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import slow
from PIL import Image
from typer.testing import CliRunner

from gie_cli.alignment import (
    Face,
    LandmarksFileError,
    MultipleFacesError,
    align_face,
    apply_transform,
    create_backend,
    ffhq_template,
    select_faces,
)
from gie_cli.alignment.landmarks import FACE_ALIGNMENT_FILES, LandmarksFileBackend, parse_landmarks
from gie_cli.cli import app
from gie_cli.errors import UsageError, WeightsUnavailableError

IMAGES = Path(__file__).parent / "fixtures" / "images"
FIVE = [[40, 50], [60, 50], [50, 65], [42, 80], [58, 80]]


def _has_mediapipe() -> bool:
    try:
        return importlib.util.find_spec("mediapipe") is not None
    except (ImportError, ValueError):  # ValueError: a None placeholder in sys.modules
        return False


HAS_MEDIAPIPE = _has_mediapipe()


def test_landmarks_schema_variants_and_errors(tmp_path):
    lm68 = np.zeros((68, 2))
    lm68[36:42], lm68[42:48], lm68[30], lm68[48], lm68[54] = FIVE[0], FIVE[1], FIVE[2], FIVE[3], FIVE[4]
    faces = parse_landmarks({"faces": [{"points": FIVE, "score": 0.5, "bbox": [1, 2, 3, 4]}, lm68.tolist()]})
    assert len(faces) == 2 and faces[0].score == 0.5 and faces[0].bbox == (1, 2, 3, 4)
    np.testing.assert_allclose(faces[1].points, FIVE)
    assert faces[1].bbox == (40, 50, 60, 80)  # derived from the points
    assert parse_landmarks([FIVE])[0].points.shape == (5, 2) and parse_landmarks({"faces": []}) == []
    for bad, needle in [
        ({"faces": 3}, "list of faces"),
        ([[[1, 2]] * 4], "face 1"),
        ([{"points": FIVE, "bbox": [1]}], "bbox"),
    ]:
        with pytest.raises(LandmarksFileError, match=needle):
            parse_landmarks(bad)

    img = Image.new("RGB", (100, 120))
    photo = tmp_path / "p.jpg"
    (tmp_path / "p.landmarks.json").write_text(json.dumps({"image_size": [100, 120], "faces": [FIVE]}))
    assert len(LandmarksFileBackend().detect(img, photo)) == 1
    folder = tmp_path / "lms"
    folder.mkdir()
    (folder / "p.landmarks.json").write_text(json.dumps({"image_size": [120, 100], "faces": [FIVE]}))
    with pytest.raises(LandmarksFileError, match="EXIF"):
        LandmarksFileBackend(folder).detect(img, photo)
    with pytest.raises(LandmarksFileError, match="no landmarks file"):
        LandmarksFileBackend().detect(img, tmp_path / "q.jpg")
    (folder / "p.landmarks.json").write_text("{nope")
    with pytest.raises(LandmarksFileError, match="p.landmarks.json"):
        LandmarksFileBackend(folder).detect(img, photo)
    with pytest.raises(UsageError, match="not found"):
        LandmarksFileBackend(tmp_path / "missing")
    with pytest.raises(UsageError, match="unknown landmark backend"):
        create_backend("dlib")


def test_multi_face_policy_orders_by_ffhq_quad_size():
    small = Face(np.array(FIVE, float))
    big = Face(np.array(FIVE, float) * 3)
    assert select_faces([small, big], "largest") == [big]
    assert select_faces([small, big], "all") == [big, small]
    assert select_faces([small], "error") == [small] and select_faces([], "largest") == []
    with pytest.raises(MultipleFacesError, match="2 faces"):
        select_faces([small, big], "error")


@pytest.fixture()
def no_weights(tmp_path, monkeypatch) -> Path:
    """An empty torch hub and no GIE cache, offline (GIE_OFFLINE=1: gie downloads the face-alignment models through
    its registry on first use when online); any download attempt fails the test."""
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("GIE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("GIE_OFFLINE", "1")

    def no_download(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_face_alignment_without_weights_is_one_clear_error(no_weights, tmp_path):
    with pytest.raises(WeightsUnavailableError) as exc:
        create_backend("face-alignment")
    msg = str(exc.value)
    for name, url in FACE_ALIGNMENT_FILES.items():
        assert name in msg and url in msg
    assert str(no_weights / "2DFAN4-11f355bf06.pth.tar") in msg and "--backend mediapipe" in msg
    photo = tmp_path / "p.png"
    Image.new("RGB", (64, 48)).save(photo)
    res = CliRunner().invoke(app, ["align", str(photo), "-o", str(tmp_path / "out"), "--backend", "face-alignment"])
    assert res.exit_code == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: weights file 2DFAN4") and "s3fd" in errors[0]
    assert not no_weights.exists() or not any(no_weights.iterdir())


@pytest.fixture()
def fake_fa_weights(no_weights) -> dict:
    """Random FAN/S3FD state dicts saved (fp16) where face-alignment's files are expected."""
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    no_weights.mkdir(parents=True)
    torch.manual_seed(0)
    fan = {k: v.half() for k, v in FAN(4).state_dict().items()}
    torch.save(fan, no_weights / "2DFAN4-11f355bf06.pth.tar")
    torch.save({k: v.half() for k, v in s3fd().state_dict().items()}, no_weights / "s3fd-619a316812.pth")
    return fan


def test_face_alignment_backend_builds_from_local_files(fake_fa_weights):
    import torch

    backend = create_backend("face-alignment", device="cpu")
    net = backend._fa.face_alignment_net
    assert not hasattr(net, "_orig_mod")  # compile=False: a plain module, not an OptimizedModule
    key = next(iter(fake_fa_weights))
    assert torch.equal(net.state_dict()[key], fake_fa_weights[key].float())


@slow
def test_face_alignment_backend_runs_from_local_files(fake_fa_weights, monkeypatch):
    """Random weights: maps detection boxes back to the photo and reduces 68 points (numba JIT: 10-20 s)."""
    backend = create_backend("face-alignment", device="cpu")
    backend.detect_max_side = 128
    seen = []

    def one_box(img):
        seen.append(img.shape)
        return [np.array([40.0, 30.0, 90.0, 100.0, 0.9])]

    monkeypatch.setattr(backend._fa.face_detector, "detect_from_image", one_box)
    faces = backend.detect(Image.new("RGB", (256, 200), (120, 90, 80)))
    assert seen == [(100, 128, 3)]  # detection ran on the downscaled copy
    assert len(faces) == 1 and faces[0].bbox == (80.0, 60.0, 180.0, 200.0) and faces[0].score == pytest.approx(0.9)
    assert faces[0].landmarks.shape == (68, 2) and faces[0].points.shape == (5, 2)
    monkeypatch.setattr(backend._fa.face_detector, "detect_from_image", lambda img: [])
    assert backend.detect(Image.new("RGB", (64, 64))) == []


def _hide_package(monkeypatch, package: str) -> None:
    """Make ``package`` unimportable, its submodules too (an earlier test may have imported them)."""
    for name in [package, *(m for m in sys.modules if m.startswith(package + "."))]:
        monkeypatch.setitem(sys.modules, name, None)


def test_missing_backend_package_says_how_to_install(monkeypatch):
    _hide_package(monkeypatch, "mediapipe")
    with pytest.raises(UsageError) as exc:
        create_backend("mediapipe")
    assert "pip install" in str(exc.value) and "mediapipe==0.10.14" in str(exc.value)
    _hide_package(monkeypatch, "face_alignment")
    with pytest.raises(UsageError, match="pip install face-alignment"):
        create_backend("face-alignment")


@pytest.mark.skipif(not HAS_MEDIAPIPE, reason='mediapipe not installed (pip install "gie[mediapipe]")')
def test_mediapipe_detects_and_aligns_the_astronaut():
    from skimage import data

    backend = create_backend("mediapipe")
    photo = Image.fromarray(data.astronaut())
    faces = backend.detect(photo)
    assert len(faces) == 1
    # environment.md's cross-check: mediapipe eyes (203.5, 101.1) / (246.6, 103.5), MTCNN within 1.5 px of them
    np.testing.assert_allclose(faces[0].points[:2], [[203.5, 101.1], [246.6, 103.5]], atol=1.5)
    res = align_face(photo, faces[0].points, 256)
    again = backend.detect(res.image)
    assert len(again) == 1
    predicted = apply_transform(res.transform, faces[0].points)
    # measured: re-detected eyes 0.4-0.6 px from the prediction, 1.5 px from the FFHQ template (256 px crop)
    assert np.abs(again[0].points[:2] - predicted[:2]).max() < 2.0
    assert np.linalg.norm(again[0].points[:2] - ffhq_template(256)[:2], axis=1).max() < 3.0
    rng = np.random.default_rng(0)
    assert backend.detect(Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))) == []

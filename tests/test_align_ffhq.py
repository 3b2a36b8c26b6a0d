"""FFHQ alignment recipe (Karras et al. 2019): hand-computed quads, transforms, aligned-photo identity, paste-back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from gie_cli.alignment import (
    FFHQ_TEMPLATE_1024,
    PasteError,
    align_face,
    apply_transform,
    face_mask,
    ffhq_points,
    ffhq_quad,
    ffhq_template,
    paste_back,
)

IMAGES = Path(__file__).parent / "fixtures" / "images"


def psnr(a, b, mask: np.ndarray | None = None) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d = (a - b) ** 2
    mse = d[mask].mean() if mask is not None else d.mean()
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _points(eye_l, eye_r, mouth_l, mouth_r, nose=None) -> np.ndarray:
    nose = nose if nose is not None else np.mean([eye_l, eye_r, mouth_l, mouth_r], axis=0)
    return np.array([eye_l, eye_r, nose, mouth_l, mouth_r], dtype=np.float64)


def _astronaut() -> tuple[Image.Image, np.ndarray]:
    from skimage import data

    lms = json.loads((IMAGES / "astronaut.landmarks.json").read_text())
    return Image.fromarray(data.astronaut()), np.array(lms["faces"][0]["points"])


# ----------------------------------------------------------------------------------------------- the quad


def test_quad_mouth_dominated_hand_computed():
    # eye_avg (50, 50), eye_to_eye (20, 0), eye_to_mouth (0, 30): x = (20, 0) - (-30, 0) = (50, 0) -> unit (1, 0),
    # scaled by max(2 * 20, 1.8 * 30) = 54; y = (0, 54); c = (50, 50) + 0.1 * (0, 30) = (50, 53).
    q = ffhq_quad(_points((40, 50), (60, 50), (42, 80), (58, 80)))
    np.testing.assert_allclose(q.center, [50, 53])
    np.testing.assert_allclose(q.x, [54, 0])
    np.testing.assert_allclose(q.y, [0, 54])
    np.testing.assert_allclose(q.quad, [[-4, -1], [-4, 107], [104, 107], [104, -1]])
    assert q.qsize == pytest.approx(108)


def test_quad_eye_dominated_hand_computed():
    # eye_to_eye (100, 0), eye_to_mouth (0, 80): x = (180, 0) -> (1, 0) * max(200, 144) = (200, 0); c = (50, 8).
    q = ffhq_quad(_points((0, 0), (100, 0), (40, 80), (60, 80)))
    np.testing.assert_allclose(q.quad, [[-150, -192], [-150, 208], [250, 208], [250, -192]])
    assert q.qsize == pytest.approx(400)


def test_quad_tilted_face_hand_computed():
    # eye_to_eye (30, 40) (|50|), eye_to_mouth (-24, 18) (|30|, perpendicular): x = (30, 40) - (-18, -24) = (48, 64)
    # -> unit (0.6, 0.8) * max(100, 54) = (60, 80); y = (-80, 60); eye_avg (15, 20), c = (12.6, 21.8).
    eye_avg, e2m = np.array([15.0, 20.0]), np.array([-24.0, 18.0])
    pts = _points((0, 0), (30, 40), eye_avg + e2m + [-7, 0], eye_avg + e2m + [7, 0])
    q = ffhq_quad(pts)
    np.testing.assert_allclose(q.x, [60, 80], atol=1e-9)
    np.testing.assert_allclose(q.y, [-80, 60], atol=1e-9)
    np.testing.assert_allclose(q.center, [12.6, 21.8], atol=1e-9)
    np.testing.assert_allclose(q.quad[0], [12.6 - 60 + 80, 21.8 - 80 - 60], atol=1e-9)
    assert q.qsize == pytest.approx(200)


def test_68_point_landmarks_reduce_to_the_ffhq_points():
    five = _points((40, 50), (60, 50), (42, 80), (58, 80), nose=(50, 65))
    lm = np.zeros((68, 2))
    ring = np.array([[-3, 0], [-1.5, -1], [1.5, -1], [3, 0], [1.5, 1], [-1.5, 1]])
    lm[36:42] = five[0] + ring
    lm[42:48] = five[1] + ring
    lm[30], lm[48], lm[54] = five[2], five[3], five[4]
    np.testing.assert_allclose(ffhq_points(lm), five)
    np.testing.assert_allclose(ffhq_quad(lm).quad, ffhq_quad(five).quad)
    for bad in (np.zeros((4, 2)), np.full((5, 2), np.nan)):
        with pytest.raises(ValueError):
            ffhq_points(bad)
    with pytest.raises(ValueError, match="degenerate"):
        ffhq_quad(np.zeros((5, 2)))


# ----------------------------------------------------------------------------------------------- transforms


def _dot_photo(w: int, h: int, dots: np.ndarray) -> Image.Image:
    arr = np.zeros((h, w, 3), np.uint8)
    for x, y in dots.astype(int):
        arr[y - 1 : y + 2, x - 1 : x + 2] = 255
    return Image.fromarray(arr)


def _centroid(img: Image.Image, near: np.ndarray, r: int = 5) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)[..., 0]
    x0, y0 = np.rint(near).astype(int)
    win = a[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1]
    yy, xx = np.mgrid[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1]
    return np.array([(win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()])


@pytest.mark.parametrize(
    "case,size,expect_shrink,expect_pad",
    [
        ("plain", 128, 1, False),  # face well inside the photo
        ("shrink", 64, 3, None),  # qsize 459 >= 6 * 64: photo shrunk by 3 first
        ("padded", 128, 1, True),  # quad leaves the photo: reflect padding
    ],
)
def test_transform_maps_photo_points_onto_the_crop(case, size, expect_shrink, expect_pad):
    pts = np.array([[300, 250], [400, 270], [350, 320], [310, 380], [390, 395]], float)
    w, h = 900, 700
    if case == "padded":
        pts -= [220, 190]
    dots = pts[[0, 1, 2]] + [[0, 0], [0, 0], [0, 0]]
    photo = _dot_photo(w, h, np.rint(dots))
    res = align_face(photo, pts, size, supersample=2)
    assert res.image.size == (size, size) and res.shrink == expect_shrink
    assert expect_pad is None or res.padded == expect_pad
    np.testing.assert_allclose(res.transform @ res.inverse, np.eye(3), atol=1e-9)
    lin = res.transform[:2, :2]
    # a similarity; with a shrink, the photo size is rounded per axis (FFHQ's resize), which the transform records
    np.testing.assert_allclose(lin @ lin.T / np.linalg.det(lin), np.eye(2), atol=1e-6 if res.shrink == 1 else 3e-3)
    if case != "shrink":  # dots of 3 px vanish in a 3x reduction; checked through the quad corners instead
        for d in np.rint(dots):
            want = apply_transform(res.transform, d)
            got = _centroid(res.image, want, 4 if size >= 64 else 2)
            assert np.abs(got - want).max() < 0.2, (case, want, got)
    # the nominal quad maps onto the crop's corners (up to the shrink's rounding of the photo size)
    corners = apply_transform(res.transform, res.quad)
    tol = 0.05 if res.shrink == 1 else 0.3
    np.testing.assert_allclose(
        corners, [[-0.5, -0.5], [-0.5, size - 0.5], [size - 0.5] * 2, [size - 0.5, -0.5]], atol=tol
    )


def test_eye_dominated_face_lands_on_template_geometry():
    pts = _points((200, 300), (264, 300), (215, 370), (249, 370))  # eye_to_mouth 70 < eye_to_eye 64 * 2 / 1.8
    res = align_face(_dot_photo(500, 600, np.zeros((0, 2))), pts, 256, supersample=1)
    out = apply_transform(res.transform, res.points)
    np.testing.assert_allclose(out[1] - out[0], [64, 0], atol=1e-9)  # eyes level, S / 4 apart
    np.testing.assert_allclose((out[0] + out[1]) / 2, [127.5, 127.5 - 0.1 * 70], atol=1e-9)


# ----------------------------------------------------------------------------------------------- real photos


def test_aligning_an_ffhq_aligned_photo_returns_it():
    photo = Image.open(IMAGES / "e4e_input_img.jpg").convert("RGB")
    lms = json.loads((IMAGES / "e4e_input_img.landmarks.json").read_text())
    assert photo.size == (1024, 1024)
    pts = np.array(lms["faces"][0]["points"])
    np.testing.assert_allclose(pts, FFHQ_TEMPLATE_1024)
    np.testing.assert_allclose(ffhq_template(256), (FFHQ_TEMPLATE_1024 + 0.5) / 4 - 0.5)
    # mediapipe's measurement on this photo gives a quad within ~10 px of the frame: the template fits the face
    measured = ffhq_quad(np.array(lms["mediapipe_0_10_14"])).quad
    assert np.abs(measured - ffhq_quad(pts).quad).max() < 12
    res = align_face(photo, pts, 1024)
    np.testing.assert_allclose(res.transform, np.eye(3), atol=1e-9)
    # Inside, the only change is the 4x bilinear supersampling + Lanczos reduction (measured 50.6 dB); FFHQ's padding
    # blurs a band of pad / 3 (~102 px) inside the frame when the quad touches the border (full image: 36.7 dB).
    assert psnr(photo, res.image) > 34.0
    inner = np.zeros((1024, 1024), bool)
    inner[110:-110, 110:-110] = True
    assert psnr(photo, res.image, inner) > 47.0


def test_paste_back_of_an_unedited_crop_reproduces_the_photo():
    photo, pts = _astronaut()
    res = align_face(photo, pts, 256)
    meta = {"transform": res.transform.tolist(), "output_size": 256, "source_size": list(photo.size)}
    out = paste_back(res.image, meta, photo)
    assert out.size == photo.size and out.mode == "RGB"
    a, b = np.asarray(photo), np.asarray(out)
    changed = (a != b).any(-1)
    # measured: 50.1 dB over the photo, 37.1 dB over the changed (face) pixels; nothing outside the face moves
    assert psnr(a, b) >= 40.0
    assert psnr(a, b, changed) >= 34.0
    ys, xs = np.nonzero(changed)
    assert xs.min() > 150 and xs.max() < 300 and ys.min() > 30 and ys.max() < 200, (xs.min(), xs.max(), ys.min())
    # a 1024 crop of the same alignment (different size than the record) pastes the same way
    big = align_face(photo, pts, 1024).image
    assert psnr(a, np.asarray(paste_back(big, meta, photo))) >= 40.0


def test_paste_back_changes_only_the_masked_face():
    photo, pts = _astronaut()
    res = align_face(photo, pts, 128)
    meta = {"transform": res.transform.tolist(), "output_size": 128, "source_size": list(photo.size)}
    edit = Image.fromarray(255 - np.asarray(res.image))
    out = np.asarray(paste_back(edit, meta, photo, feather=0.2)).astype(int)
    a = np.asarray(photo).astype(int)
    m = np.asarray(
        Image.fromarray(face_mask(128, 0.2), "F").transform(
            photo.size, Image.Transform.AFFINE, tuple((_cont(res.transform))[:2].flatten()), Image.Resampling.NEAREST
        )
    )
    support = np.asarray(Image.fromarray(((m > 0) * 255).astype(np.uint8)).filter(ImageFilter.MaxFilter(7))) > 0
    assert np.array_equal(out[~support], a[~support])  # bit-identical outside the (3 px dilated) mask support
    core = m > 0.999
    assert core.sum() > 3000 and np.abs(out[core] - a[core]).mean() > 40  # the edit replaced the face


def _cont(fwd: np.ndarray) -> np.ndarray:
    t = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]])
    return t @ fwd @ np.linalg.inv(t)


def test_face_mask_and_paste_errors():
    m = face_mask(64)
    assert m.shape == (64, 64) and m.max() == 1.0 and m.min() == 0.0
    assert m[0].max() == 0 and m[:, 0].max() == 0 and m[35, 32] == 1.0
    photo, pts = _astronaut()
    res = align_face(photo, pts, 64)
    meta = {"transform": res.transform.tolist(), "output_size": 64, "source_size": [100, 100]}
    with pytest.raises(PasteError, match="aligned from a 100x100"):
        paste_back(res.image, meta, photo)
    with pytest.raises(PasteError, match="square"):
        paste_back(res.image.crop((0, 0, 64, 32)), {**meta, "source_size": [512, 512]}, photo)
    with pytest.raises(PasteError, match="transform"):
        paste_back(res.image, {"output_size": 64}, photo)

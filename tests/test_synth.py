"""gie_cli.synth: determinism, landmarks on the drawn features, OOD masks, edit locality, photos, datasets."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from gie_cli.synth import (
    ATTRIBUTE_NAMES,
    ATTRIBUTES,
    OOD_KINDS,
    FaceParams,
    OODObject,
    attribute_index,
    attribute_vector,
    ffhq_quad,
    params_from_attribute_vector,
    points5_from_68,
    render,
    render_photo,
    sample_params,
    write_dataset,
)

# A frontal, neutral face with dark hair and open eyes: features contrast with the skin.
BASE = FaceParams(skin_tone=0.15, hair_lightness=0.1, hair_length=0.2, eye_open=1.0, eye_color=0.0, age=0.0,
                  bg_pattern=0.0, detail_seed=7, light_intensity=0.3)  # fmt: skip
UNIQUE_OBJECTS = {
    "sticker": OODObject("sticker", {"x": 0.45, "y": 0.55, "size": 0.2, "hue": 0.6, "shape": "star", "angle": 10.0}),
    "earring": OODObject("earring", {"side": 1, "size": 0.1, "hue": 0.12, "style": "ring"}),
    "hat": OODObject("hat", {"hue": 0.0, "lightness": 0.4, "height": 0.5, "brim": 0.7, "tilt": 5.0, "band_y": -1.0}),
    "occluder": OODObject(
        "occluder", {"x": -0.3, "y": 1.0, "angle": 150.0, "width": 0.35, "hue": 0.3, "lightness": 0.5, "shape": "blob"}
    ),  # fmt: skip
}


def _lum(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0


def _at(arr: np.ndarray, xy: np.ndarray) -> np.ndarray:
    x, y = int(round(float(xy[0]))), int(round(float(xy[1])))
    return arr[y, x]


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.any(a != b, axis=-1)


# ---------------------------------------------------------------------------------------------- params
def test_attribute_vector_round_trip() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = sample_params(rng, ood_prob=0.5)
        v = attribute_vector(p)
        assert v.shape == (len(ATTRIBUTES),) and v.dtype == np.float32
        assert np.all(v >= -1.0 - 1e-6) and np.all(v <= 1.0 + 1e-6)
        q = params_from_attribute_vector(v, detail_seed=p.detail_seed, ood=p.ood)
        for name in ATTRIBUTE_NAMES:
            assert getattr(q, name) == pytest.approx(getattr(p, name), abs=1e-4)
        assert FaceParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    lo = FaceParams(**{a.name: a.low for a in ATTRIBUTES})
    hi = FaceParams(**{a.name: a.high for a in ATTRIBUTES})
    np.testing.assert_allclose(attribute_vector(lo), -1.0)
    np.testing.assert_allclose(attribute_vector(hi), 1.0)
    assert attribute_vector(FaceParams(smile=0.5))[attribute_index("smile")] == pytest.approx(0.5)
    assert attribute_vector(FaceParams(yaw=15.0))[attribute_index("yaw")] == pytest.approx(0.5)
    for name in ("smile", "age", "yaw", "glasses", "hair_length", "mouth_open", "eye_open", "skin_tone"):
        assert name in ATTRIBUTE_NAMES
    with pytest.raises(ValueError):
        FaceParams.from_dict({"nonsense": 1})


def test_sample_params_deterministic_and_ood() -> None:
    a = sample_params(np.random.default_rng(3), ood_prob=1.0)
    b = sample_params(np.random.default_rng(3), ood_prob=1.0)
    assert a == b and len(a.ood) >= 1 and all(o.kind in OOD_KINDS for o in a.ood)
    assert sample_params(np.random.default_rng(3)).ood == ()
    assert sample_params(np.random.default_rng(4)) != a


# ---------------------------------------------------------------------------------------------- rendering
def test_render_is_deterministic_and_seed_keyed() -> None:
    p = sample_params(np.random.default_rng(11), ood_prob=1.0)
    r1, r2 = render(p, 64), render(p, 64)
    assert r1.image.shape == (64, 64, 3) and r1.image.dtype == np.uint8
    assert r1.image.tobytes() == r2.image.tobytes()
    np.testing.assert_array_equal(r1.landmarks68, r2.landmarks68)
    for k in r1.masks:
        np.testing.assert_array_equal(r1.masks[k], r2.masks[k])
    other = render(replace(p, detail_seed=p.detail_seed + 1), 64)
    assert other.image.tobytes() != r1.image.tobytes()
    # the seed's detail lives on the face and hair only
    clean = render(replace(BASE, detail_strength=0.0), 96)
    full = render(BASE, 96)
    diff = _changed(clean.image, full.image)
    assert diff.any() and full.detail_mask.any()
    assert not (diff & ~ndimage.binary_dilation(full.masks["face"] | full.masks["hair"], iterations=2)).any()
    assert render(BASE, 40).image.shape == (40, 40, 3)


def test_ffhq_alignment_of_render() -> None:
    s = 256
    for yaw in (0.0, 25.0, -18.0):
        r = render(replace(BASE, yaw=yaw, face_width=1.1), s)
        quad = ffhq_quad(r.landmarks68 + 0.5)  # edge coordinates, as the FFHQ script crops
        np.testing.assert_allclose(quad, [[0, 0], [0, s], [s, s], [s, 0]], atol=0.02)
    r = render(BASE, s)
    p5 = points5_from_68(r.landmarks68) + 0.5
    np.testing.assert_allclose(p5[0], [0.375 * s, 0.4736 * s], atol=0.01 * s)
    np.testing.assert_allclose(p5[1], [0.625 * s, 0.4736 * s], atol=0.01 * s)
    assert p5[3, 1] == pytest.approx(0.7374 * s, abs=0.01 * s)
    assert r.landmarks68.shape == (68, 2) and r.landmarks68.dtype == np.float32


def test_landmarks_land_on_drawn_features() -> None:
    s = 128
    r = render(BASE, s)
    lum = _lum(r.image)
    lm = r.landmarks68
    skin = np.median(lum[r.masks["face"]])
    for eye in (lm[36:42].mean(0), lm[42:48].mean(0)):  # pupils
        assert _at(lum, eye) < 0.35 * skin
        assert _at(r.masks["eyes"], eye)
    mouth = ndimage.binary_dilation(r.coverage["mouth"] > 0.05, iterations=1)
    for k in list(range(48, 60)):
        assert _at(mouth, lm[k]), f"landmark {k} is off the mouth"
    brows = lm[17:27]
    assert np.mean([_at(lum, b) for b in brows]) < 0.6 * skin
    assert _at(r.masks["face"], lm[30]) and _at(r.masks["face"], lm[33])
    # jaw points lie on the outline of the face
    face = r.coverage["face"] > 0.5
    edge = face ^ ndimage.binary_erosion(face)
    dist = ndimage.distance_transform_edt(~edge)
    for k in range(2, 15):
        assert _at(dist, lm[k]) <= 2.0, f"jaw landmark {k} is {_at(dist, lm[k]):.1f} px off the outline"
    # closed eyes: the lid covers the iris (the eye centre keeps only the dark lash line)
    closed = render(replace(BASE, eye_open=0.0), s)
    assert closed.masks["eyes"].sum() < 0.1 * r.masks["eyes"].sum()
    eyes = r.masks["eyes"]
    assert _lum(closed.image)[eyes].mean() > lum[eyes].mean() + 0.1


def test_landmarks_move_with_yaw() -> None:
    s = 128
    lms = {yaw: render(replace(BASE, yaw=yaw), s).landmarks68 for yaw in (-25.0, 0.0, 25.0)}
    # the eye distance is foreshortened: relative to the eye-to-mouth distance it shrinks (the FFHQ crop rescales)
    eye_dist = {y: float(np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0))) for y, lm in lms.items()}
    e2m = {y: float(lm[[48, 54], 1].mean() - lm[36:48, 1].mean()) for y, lm in lms.items()}
    ratio = {y: eye_dist[y] / e2m[y] for y in lms}
    assert eye_dist[0.0] == pytest.approx(0.25 * s, abs=0.01)
    assert ratio[25.0] < 0.95 * ratio[0.0] and ratio[-25.0] < 0.95 * ratio[0.0]
    nose_off = {y: float(lm[30, 0] - lm[36:48, 0].mean()) for y, lm in lms.items()}
    assert nose_off[25.0] > nose_off[0.0] + 2.0 > nose_off[-25.0] + 4.0
    # the nose tip follows the drawn nose: yaw right shows more of the face's left cheek
    jaw_l = {y: float(lm[3, 0]) for y, lm in lms.items()}
    assert jaw_l[25.0] < jaw_l[0.0] < jaw_l[-25.0]
    assert abs(lms[0.0][30, 0] - (s - 1) / 2) < 0.5


def test_ood_masks_cover_the_drawn_objects() -> None:
    s = 96
    base = render(BASE, s)
    for kind, obj in UNIQUE_OBJECTS.items():
        r = render(replace(BASE, ood=(obj,)), s)
        diff = _changed(r.image, base.image)
        m = r.masks[kind]
        assert m.any(), kind
        np.testing.assert_array_equal(m, r.object_masks[0])
        np.testing.assert_array_equal(m, r.masks["ood"])
        assert not (diff & ~m).any(), f"{kind}: pixels outside the mask changed"
        core = r.coverage[kind] >= 0.5
        assert core.sum() > 10 and diff[core].mean() > 0.95, kind
        assert diff[m].mean() > 0.6, kind
        for key in ("face", "eyes", "mouth", "hair"):  # coverages are weights after occlusion: they add up to <= 1
            assert (r.coverage[key] + r.coverage[kind]).max() <= 1.0 + 1e-5
    # occlusion order: an occluder over a sticker takes its pixels out of the sticker's mask
    st, oc = UNIQUE_OBJECTS["sticker"], OODObject("occluder", {"x": 0.45, "y": 0.55, "angle": 0.0, "width": 0.3})
    both = render(replace(BASE, ood=(st, oc)), s)
    alone = render(replace(BASE, ood=(st,)), s)
    assert both.masks["sticker"].sum() < alone.masks["sticker"].sum()
    assert not (both.coverage["occluder"] > 0.999)[both.masks["sticker"]].any()
    # a turned-away ear hides its earring
    hidden = render(replace(BASE, yaw=28.0, ood=(UNIQUE_OBJECTS["earring"],)), s)  # right ear turned away
    assert not hidden.masks["earring"].any()


@pytest.mark.parametrize(
    ("attr", "value", "region"),
    [("smile", 0.9, "mouth"), ("mouth_open", 0.8, "mouth"), ("eye_open", 0.2, "eyes"), ("glasses", 1.0, "eyes")],
)
def test_ground_truth_edits_are_local(attr: str, value: float, region: str) -> None:
    s = 128
    p = replace(BASE, age=0.5, bg_pattern=0.8, ood=(UNIQUE_OBJECTS["hat"],))
    a = render(p, s)
    b = render(replace(p, **{attr: value}), s)
    diff = _changed(a.image, b.image)
    assert diff.sum() > 20
    lm = a.landmarks68
    pts = lm[48:68] if region == "mouth" else np.concatenate([lm[36:48], lm[17:27]])
    pad = 0.09 * s if region == "mouth" else 0.14 * s
    x0, y0 = pts.min(0) - pad
    x1, y1 = pts.max(0) + pad
    ys, xs = np.nonzero(diff)
    assert xs.min() >= x0 and xs.max() <= x1 and ys.min() >= y0 and ys.max() <= y1, (attr, xs.min(), xs.max())
    # objects, background and detail stay put; only the edited feature's landmarks move
    np.testing.assert_array_equal(a.masks["hat"], b.masks["hat"])
    moved = np.any(a.landmarks68 != b.landmarks68, axis=1)
    allowed = np.zeros(68, bool)
    allowed[48:68] = attr in ("smile", "mouth_open")
    allowed[36:48] = attr == "eye_open"
    assert not (moved & ~allowed).any()
    assert moved.any() == (attr != "glasses")


def test_frontal_face_is_mirror_symmetric() -> None:
    s = 96
    p = replace(BASE, light_azimuth=0.0, detail_strength=0.0, hair_length=0.1)
    r = render(p, s)
    lm = r.landmarks68
    np.testing.assert_allclose(lm[:17, 0] + lm[16::-1, 0], s - 1, atol=1e-3)  # jaw pairs
    np.testing.assert_allclose(lm[:17, 1], lm[16::-1, 1], atol=1e-3)
    np.testing.assert_allclose(lm[36:42].mean(0)[0] + lm[42:48].mean(0)[0], s - 1, atol=1e-3)
    assert abs(lm[30, 0] - (s - 1) / 2) < 1e-3
    img = r.image.astype(float)
    assert np.abs(img - img[:, ::-1]).mean() < 2.0  # only the hairline's waviness and the catchlights differ
    for key in ("face", "eyes", "mouth"):
        m = r.masks[key]
        assert (m ^ m[:, ::-1]).sum() <= 0.03 * m.sum() + 2, key


def test_age_and_hair_edits_stay_in_their_regions() -> None:
    s = 96
    a = render(BASE, s)
    old = render(replace(BASE, age=1.0), s)
    diff = _changed(a.image, old.image)
    assert diff.sum() > 30 and not (diff & ~ndimage.binary_dilation(a.masks["face"], iterations=2)).any()
    dyed = render(replace(BASE, hair_hue=0.9, hair_lightness=0.8), s)
    diff = _changed(a.image, dyed.image)
    hair_or_brows = ndimage.binary_dilation(a.coverage["hair"] > 0, iterations=1)
    brows = np.zeros_like(diff)
    x0, y0 = a.landmarks68[17:27].min(0) - 4
    x1, y1 = a.landmarks68[17:27].max(0) + 4
    brows[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] = True
    assert not (diff & ~(hair_or_brows | brows)).any()


# ---------------------------------------------------------------------------------------------- photos
def _similarity_from_quad(quad: np.ndarray, size: int) -> np.ndarray:
    """[2, 3] map from crop pixel coordinates (pixel-centre convention) to photo pixels, from the crop quad."""
    tl, bl, tr = quad[0], quad[1], quad[3]
    ex, ey = (tr - tl) / size, (bl - tl) / size
    return np.stack([ex, ey, tl + 0.5 * (ex + ey)], axis=1)


def test_photo_placement_and_sidecar() -> None:
    s = 96
    p = replace(BASE, yaw=12.0, smile=0.4)
    ph = render_photo(p, (200, 150), np.random.default_rng(5), background="face", max_angle=35.0)
    assert ph.image.shape == (150, 200, 3)
    (face,) = ph.faces
    crop = render(p, s)
    m = _similarity_from_quad(face.crop_quad, s)
    expect = crop.landmarks68 @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(face.landmarks68, expect, atol=1e-3)
    # the FFHQ eye centres and mouth corners are the rotated/scaled canonical positions
    p5 = points5_from_68(face.landmarks68)
    np.testing.assert_allclose(p5, points5_from_68(crop.landmarks68) @ m[:, :2].T + m[:, 2], atol=1e-3)
    side = float(np.linalg.norm(face.crop_quad[3] - face.crop_quad[0]))
    assert side == pytest.approx(face.crop_size, rel=1e-4)
    eye_vec = p5[1] - p5[0]
    assert np.degrees(np.arctan2(-eye_vec[1], eye_vec[0])) == pytest.approx(face.angle, abs=0.5)
    # cropping the photo along the quad gives back the aligned render (up to resampling)
    quad_edges = (face.crop_quad + 0.5).ravel().tolist()
    back = np.asarray(Image.fromarray(ph.image).transform((s, s), Image.Transform.QUAD, quad_edges,
                                                          Image.Resampling.BILINEAR))  # fmt: skip
    inner = ndimage.binary_erosion(crop.masks["face"], iterations=2)
    err = np.abs(back.astype(float) - crop.image.astype(float))[inner].mean()
    assert err < 10.0, err
    # sidecar
    sc = json.loads(json.dumps(ph.sidecar))
    assert sc["image_size"] == [200, 150] and len(sc["faces"]) == 1
    np.testing.assert_allclose(sc["faces"][0]["points"], face.landmarks68, atol=2e-3)


def test_sidecar_feeds_gie_align() -> None:
    landmarks = pytest.importorskip("gie_cli.alignment.landmarks")
    ffhq = pytest.importorskip("gie_cli.alignment.ffhq")
    s = 64
    p = replace(BASE, yaw=-10.0, ood=(UNIQUE_OBJECTS["sticker"],))
    ph = render_photo(p, (160, 120), np.random.default_rng(2), background="face")
    (face,) = landmarks.parse_landmarks(json.loads(json.dumps(ph.sidecar)))
    np.testing.assert_allclose(face.points, ph.faces[0].points5, atol=2e-3)
    aligned = ffhq.align_face(Image.fromarray(ph.image), face.points, size=s)
    crop = render(p, s)
    inner = ndimage.binary_erosion(crop.masks["face"], iterations=2)
    err = np.abs(np.asarray(aligned.image, float) - crop.image.astype(float))[inner].mean()
    assert err < 12.0, err


def test_photo_with_two_faces_is_deterministic() -> None:
    p, q = sample_params(np.random.default_rng(1)), sample_params(np.random.default_rng(2))
    a = render_photo(p, (240, 120), np.random.default_rng(9), others=[q])
    b = render_photo(p, (240, 120), np.random.default_rng(9), others=[q])
    assert a.image.tobytes() == b.image.tobytes()
    assert len(a.faces) == 2 and len(a.sidecar["faces"]) == 2
    left, right = (f.points5[:, 0].mean() for f in a.faces)
    assert left < 120 < right
    for f in a.faces:
        assert f.masks["face"].any()


# ---------------------------------------------------------------------------------------------- datasets
def test_write_dataset_aligned_and_photos(tmp_path) -> None:  # noqa: ANN001
    write_dataset(tmp_path / "a", n=3, seed=4, size=32, photos=False, ood_prob=0.5)
    recs = [json.loads(x) for x in (tmp_path / "a" / "params.jsonl").read_text().splitlines()]
    assert [r["file"] for r in recs] == ["000000.png", "000001.png", "000002.png"]
    for rec in recs:
        img = np.asarray(Image.open(tmp_path / "a" / rec["file"]))
        again = render(FaceParams.from_dict(rec["params"]), 32)
        np.testing.assert_array_equal(img, again.image)
        np.testing.assert_allclose(rec["attributes"], attribute_vector(again.params), atol=1e-5)
        np.testing.assert_allclose(rec["landmarks68"], again.landmarks68, atol=1e-3)
    world = json.loads((tmp_path / "a" / "world.json").read_text())
    assert world["n"] == 3 and [a["name"] for a in world["attributes"]] == list(ATTRIBUTE_NAMES)
    write_dataset(tmp_path / "b", n=2, seed=4, size=48, photos=True, multi_face_prob=1.0)
    recs = [json.loads(x) for x in (tmp_path / "b" / "params.jsonl").read_text().splitlines()]
    for rec in recs:
        stem = rec["file"][:-4]
        side = json.loads((tmp_path / "b" / f"{stem}.landmarks.json").read_text())
        assert len(side["faces"]) == len(rec["faces"]) == 2
        assert Image.open(tmp_path / "b" / rec["file"]).size == (72, 48)
        np.testing.assert_allclose(side["faces"][0]["points"], rec["faces"][0]["landmarks68"], atol=2e-3)
    assert not list((tmp_path / "b").glob("*.tmp-*"))

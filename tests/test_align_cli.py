"""`gie align`, `gie paste` and `gie invert --align` end to end with the landmarks-file backend (FFHQ recipe)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from gie_cli.alignment import align_face, apply_transform
from gie_cli.cli import app
from gie_cli.io.latents import load_latent

IMAGES = Path(__file__).parent / "fixtures" / "images"
runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _lines(res) -> dict[str, dict]:
    return {Path(r["input"]).name: r for r in map(json.loads, res.stdout.splitlines())}


def _psnr(a, b) -> float:
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    return 10 * np.log10(255.0**2 / d.mean())


def _astronaut() -> tuple[Image.Image, np.ndarray]:
    from skimage import data

    pts = json.loads((IMAGES / "astronaut.landmarks.json").read_text())["faces"][0]["points"]
    return Image.fromarray(data.astronaut()), np.array(pts)


def _write_lms(path: Path, faces: list, size: tuple[int, int] | None = None) -> None:
    data: dict = {"faces": [{"points": np.asarray(f).tolist()} for f in faces]}
    if size is not None:
        data["image_size"] = list(size)
    path.write_text(json.dumps(data))


@pytest.fixture()
def photos(tmp_path) -> Path:
    """astro.png (one face), two.png (two faces, the small one listed first), noface.png, rotated.jpg (EXIF 6)."""
    d = tmp_path / "photos"
    d.mkdir()
    astro, pts = _astronaut()
    astro.save(d / "astro.png")
    _write_lms(d / "astro.landmarks.json", [pts], astro.size)
    two = Image.new("RGB", (900, 520), (40, 60, 80))
    two.paste(astro, (0, 0))
    two.paste(astro.resize((256, 256), Image.Resampling.LANCZOS), (600, 200))
    small = (pts + 0.5) * 0.5 - 0.5 + [600, 200]
    two.save(d / "two.png")
    _write_lms(d / "two.landmarks.json", [small, pts], two.size)
    Image.new("RGB", (300, 200), (90, 90, 90)).save(d / "noface.png")
    _write_lms(d / "noface.landmarks.json", [])
    up = astro.resize((256, 256), Image.Resampling.LANCZOS)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated 90 degrees; displayed upright
    up.transpose(Image.Transpose.ROTATE_90).save(d / "rotated.jpg", exif=exif, quality=98)
    _write_lms(d / "rotated.landmarks.json", [(pts + 0.5) * 0.5 - 0.5], up.size)
    return d


def test_align_batch_with_landmark_files(photos, tmp_path):
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    res = _invoke("align", photos, "-o", out, "--backend", "file", "--size", "128", "--json")
    assert res.exit_code == 0, res.output  # no_face is not a failure
    recs = _lines(res)
    assert {k: v["status"] for k, v in recs.items()} == {
        "astro.png": "ok",
        "two.png": "ok",
        "noface.png": "no_face",
        "rotated.jpg": "ok",
    }
    assert recs["noface.png"]["reason"] == "no face found" and recs["noface.png"]["outputs"] == {}
    assert recs["two.png"]["info"]["faces_found"] == 2 and recs["two.png"]["info"]["faces_aligned"] == 1
    assert "no face: " in res.stderr and "noface.png" in res.stderr and "1 no_face" in res.stderr
    assert sorted(p.name for p in out.iterdir() if p.name != ".gie") == sorted(  # .gie: the engine's done records
        [f"{n}{s}" for n in ("astro", "two", "rotated") for s in (".png", ".align.json")] + ["manifest.jsonl"]
    )
    # the crop is exactly the library's alignment; the record holds the transform of that alignment
    astro, pts = _astronaut()
    ref = align_face(astro, pts, 128)
    assert np.array_equal(np.asarray(Image.open(out / "astro.png")), np.asarray(ref.image))
    meta = json.loads((out / "astro.align.json").read_text())
    assert meta["format"] == "gie-align/1" and meta["source"] == str((photos / "astro.png").resolve())
    assert meta["source_size"] == [512, 512] and meta["output_size"] == 128 and meta["backend"] == "file"
    assert len(meta["source_sha256"]) == 64 and meta["face_index"] == 1 and meta["image"] == "astro.png"
    fwd, inv = np.array(meta["transform"]), np.array(meta["inverse"])
    np.testing.assert_allclose(fwd, ref.transform, atol=1e-8)
    np.testing.assert_allclose(fwd @ inv, np.eye(3), atol=1e-7)
    np.testing.assert_allclose(meta["landmarks"]["left_eye"], pts[0], atol=1e-4)
    np.testing.assert_allclose(meta["landmarks_aligned"]["right_eye"], apply_transform(fwd, pts[1]), atol=1e-3)
    # largest policy: the big face of two.png, not the first listed one
    np.testing.assert_allclose(json.loads((out / "two.align.json").read_text())["landmarks"]["left_eye"], pts[0])
    # EXIF: landmarks refer to the upright image; the crop matches the upright photo's
    rot = np.asarray(Image.open(out / "rotated.png"), np.float64)
    up = align_face(astro.resize((256, 256), Image.Resampling.LANCZOS), (pts + 0.5) * 0.5 - 0.5, 128).image
    assert _psnr(rot, up) > 35  # JPEG round trip only
    # inputs untouched, no temp files; a re-run skips the done items and exits 0
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before
    assert not list(out.glob("*.tmp-*"))
    again = _invoke("align", photos, "-o", out, "--backend", "file", "--size", "128", "--json")
    assert again.exit_code == 0
    assert [r["status"] for r in _lines(again).values()].count("skipped") == 3
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 8


def test_faces_all_and_error_policies(photos, tmp_path):
    two = photos / "two.png"
    out = tmp_path / "all"
    res = _invoke("align", two, "-o", out, "--backend", "file", "--faces", "all", "--size", "64", "--json")
    assert res.exit_code == 0, res.output
    rec = _lines(res)["two.png"]
    assert rec["outputs"] == {
        "image": str(out / "two_face1.png"),
        "meta": str(out / "two_face1.align.json"),
        "face2.image": str(out / "two_face2.png"),
        "face2.meta": str(out / "two_face2.align.json"),
    }
    m1, m2 = (json.loads((out / f"two_face{k}.align.json").read_text()) for k in (1, 2))
    assert (m1["face_index"], m2["face_index"], m1["faces_aligned"], m2["name"]) == (1, 2, 2, "two")
    assert m1["bbox"][2] - m1["bbox"][0] > m2["bbox"][2] - m2["bbox"][0]  # largest first
    again = _invoke("align", two, "-o", out, "--backend", "file", "--faces", "all", "--size", "64", "--json")
    assert _lines(again)["two.png"]["status"] == "skipped"
    (out / "two_face2.png").unlink()
    again = _invoke("align", two, "-o", out, "--backend", "file", "--faces", "all", "--size", "64", "--json")
    assert _lines(again)["two.png"]["status"] == "ok" and (out / "two_face2.png").exists()

    err = _invoke("align", two, photos / "astro.png", "-o", tmp_path / "e", "--backend", "file", "--faces", "error")
    assert err.exit_code == 1
    assert "2 faces found" in err.stderr and (tmp_path / "e" / "astro.png").exists()
    assert not (tmp_path / "e" / "two.png").exists()


def test_align_usage_errors_and_failures(photos, tmp_path):
    base = ["align", photos / "astro.png", "-o", tmp_path / "o"]
    for extra, needle in [
        (["--backend", "dlib"], "unknown --backend"),
        (["--faces", "some"], "--faces"),
        (["--landmarks", photos], "--backend file"),
        (["--on-existing", "maybe"], "--on-existing"),
    ]:
        res = _invoke(*base, *extra)
        assert res.exit_code == 2 and needle in res.stderr, (extra, res.output)
    res = _invoke("align", photos, "-o", photos, "--backend", "file")
    assert res.exit_code == 2 and "input folder" in res.stderr
    dry = _invoke("align", photos, "-o", tmp_path / "dry", "--backend", "file", "--dry-run")
    assert dry.exit_code == 0 and dry.stdout.count("todo") == 4 and not (tmp_path / "dry").exists()
    # a landmarks folder; an image without a landmarks file fails (exit 1), the others go on
    lms = tmp_path / "lms"
    lms.mkdir()
    (photos / "astro.landmarks.json").rename(lms / "astro.landmarks.json")
    res = _invoke(
        "align", photos / "astro.png", photos / "two.png", "-o", tmp_path / "o", "--backend", "file", "--landmarks", lms
    )
    assert res.exit_code == 1
    assert "no landmarks file" in res.stderr and "two.landmarks.json" in res.stderr
    assert (tmp_path / "o" / "astro.png").exists()


def test_paste_puts_the_crop_back(photos, tmp_path):
    out = tmp_path / "out"
    assert _invoke("align", photos / "astro.png", "-o", out, "--backend", "file", "--size", "256").exit_code == 0
    res = _invoke("paste", out / "astro.png", "-o", tmp_path / "final", "--json")
    assert res.exit_code == 0, res.output
    composite = Image.open(tmp_path / "final" / "astro.png")
    astro, _ = _astronaut()
    assert composite.size == astro.size and _psnr(composite, astro) >= 40.0  # measured 50.1 dB
    # never overwrite the photo; inputs without a record fail with a clear reason
    before = (photos / "astro.png").read_bytes()
    clash = _invoke("paste", out / "astro.png", "-o", photos, "--json")
    assert clash.exit_code == 1 and "would overwrite the photo" in clash.stderr
    assert (photos / "astro.png").read_bytes() == before
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    Image.new("RGB", (64, 64)).save(orphan / "x.png")
    res = _invoke("paste", orphan / "x.png", "-o", tmp_path / "f2")
    assert res.exit_code == 1 and "no alignment record" in res.stderr


# ----------------------------------------------------------------------------------------------- gie invert --align


@pytest.fixture(scope="module")
def weights(tiny_e4e_weights) -> Path:
    return tiny_e4e_weights


def test_invert_aligns_raw_photos(tmp_path, weights):
    d = tmp_path / "raw"
    d.mkdir()
    astro, pts = _astronaut()
    astro.crop((0, 0, 512, 400)).save(d / "portrait.jpg", quality=95)  # non-square raw photo
    _write_lms(d / "portrait.landmarks.json", [pts])
    Image.new("RGB", (120, 90), (20, 20, 20)).save(d / "empty.png")
    _write_lms(d / "empty.landmarks.json", [])
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(d / "crop.png")
    out = tmp_path / "inv"
    res = _invoke("invert", d, "-o", out, "--weights", weights, "--align-backend", "file", "--json")
    assert res.exit_code == 1, res.output  # issue 15: a square image is not an aligned crop without evidence
    recs = _lines(res)
    expected = {"portrait.jpg": "ok", "empty.png": "no_face", "crop.png": "failed"}
    assert {k: v["status"] for k, v in recs.items()} == expected
    assert recs["portrait.jpg"]["info"]["aligned"] == "invert" and "aligned" not in recs["crop.png"]["info"]
    assert "no landmarks file" in recs["crop.png"]["reason"]  # it was sent to alignment, which had nothing to use
    assert recs["portrait.jpg"]["outputs"]["align"] == str(out / "portrait.align.json")
    assert not (out / "crop.align.json").exists()
    meta = json.loads((out / "portrait.align.json").read_text())
    assert meta["output_size"] == 64 and meta["source_size"] == [512, 400] and meta["image"] == "portrait.recon.png"
    _, _, lat = load_latent(out / "portrait.latent.safetensors")
    assert lat["alignment"] == "portrait.align.json" and lat["source"].endswith("portrait.jpg")
    # the 32 px reconstruction goes back into the 512x400 photo through the record
    res = _invoke("paste", out / "portrait.recon.png", "-o", tmp_path / "final")
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "final" / "portrait.recon.png").size == (512, 400)
    # --no-align keeps the old behaviour: non-square inputs fail
    res = _invoke("invert", d / "portrait.jpg", "-o", tmp_path / "na", "--weights", weights, "--no-align")
    assert res.exit_code == 1 and "not a square" in res.stderr
    # --align forces square inputs through the detector too (here: no landmarks file -> failed)
    res = _invoke(
        "invert", d / "crop.png", "-o", tmp_path / "fa", "--weights", weights, "--align", "--align-backend", "file"
    )
    assert res.exit_code == 1 and "no landmarks file" in res.stderr


def test_invert_carries_the_record_of_gie_align(tmp_path, weights):
    d = tmp_path / "raw"
    d.mkdir()
    astro, pts = _astronaut()
    astro.save(d / "a.png")
    _write_lms(d / "a.landmarks.json", [pts])
    al = tmp_path / "aligned"
    assert _invoke("align", d, "-o", al, "--backend", "file", "--size", "64").exit_code == 0
    res = _invoke("invert", al, "-o", tmp_path / "inv", "--weights", weights, "--json")
    assert res.exit_code == 0, res.output
    rec = _lines(res)["a.png"]
    assert rec["info"]["aligned"] == "record" and rec["outputs"]["align"] == str(tmp_path / "inv" / "a.align.json")
    assert json.loads((tmp_path / "inv" / "a.align.json").read_text()) == json.loads((al / "a.align.json").read_text())


def test_invert_auto_alignment_without_detector_weights(tmp_path, weights, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # face-alignment weights absent
    monkeypatch.delenv("GIE_CACHE_DIR", raising=False)
    d = tmp_path / "raw"
    d.mkdir()
    Image.new("RGB", (120, 90)).save(d / "wide.png")
    Image.new("RGB", (64, 64)).save(d / "square.png")
    res = _invoke("invert", d, "-o", tmp_path / "inv", "--weights", weights, "--json")
    assert res.exit_code == 1  # auto: both need the detector (the square one has no evidence of alignment)
    recs = _lines(res)
    assert recs["square.png"]["status"] == "failed" and recs["wide.png"]["status"] == "failed"
    for name in ("wide.png", "square.png"):
        assert "2DFAN4-11f355bf06.pth.tar" in recs[name]["reason"]  # the missing detector file, by name
    res = _invoke(
        "invert",
        d / "square.png",
        "-o",
        tmp_path / "inv2",
        "--weights",
        weights,
        "--align",
        "--align-backend",
        "face-alignment",
    )
    assert res.exit_code == 1 and "error: weights file 2DFAN4" in res.stderr  # explicit detector: run-level error


def test_auto_backend_uses_sidecars_and_reports_missing_detector(tmp_path, monkeypatch):
    from gie_cli.synth import write_dataset

    monkeypatch.setenv("GIE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    photos = tmp_path / "photos"
    write_dataset(photos, 2, seed=3, size=96, photos=True)
    (photos / "000001.landmarks.json").unlink()  # this one needs the detector, whose weights are not on disk
    res = CliRunner().invoke(app, ["align", str(photos), "-o", str(tmp_path / "out"), "--size", "64", "--json"])
    assert res.exit_code == 1
    recs = {Path(r["input"]).name: r for r in map(json.loads, res.stdout.splitlines())}
    assert recs["000000.png"]["status"] == "ok"
    assert recs["000001.png"]["status"] == "failed" and "2DFAN4" in recs["000001.png"]["reason"]

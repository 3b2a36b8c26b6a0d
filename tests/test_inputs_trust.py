"""Issue 15, findings 8 and 9: honest `gie weights import`, truthful messages, and real photos never inverted by a
demo model or unaligned without saying so."""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_face
from PIL import Image
from typer.testing import CliRunner

from gie_cli.cli import app
from gie_cli.errors import CheckpointError, ImageLoadError, WeightsUnavailableError

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture()
def offline_cache(tmp_path, monkeypatch) -> Path:
    """An empty gie cache and torch hub, offline."""
    monkeypatch.setenv("GIE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("GIE_OFFLINE", "1")
    return tmp_path / "cache"


def _registry_file(tmp_path: Path, fmt: str = "pt") -> Path:
    reg = tmp_path / "reg.toml"
    reg.write_text(
        '[[weight]]\nname = "test.model"\nfilename = "model.pt"\nurls = ["https://example.invalid/model.pt"]\n'
        f'sha256 = "unknown"\nsize = "unknown"\nformat = "{fmt}"\n'
    )
    return reg


# ----------------------------------------------------------------------------------------------- finding 8: import


def test_weights_import_never_replaces_without_force_and_records_sha(offline_cache, tmp_path):
    reg = _registry_file(tmp_path)
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"w": torch.zeros(3)}, a)
    torch.save({"w": torch.ones(3)}, b)
    res = _invoke("weights", "import", a, "--name", "test.model", "--registry", reg, "--json")
    assert res.exit_code == 0, res.output
    dest = Path(json.loads(res.stdout)["path"])
    sha_a = hashlib.sha256(a.read_bytes()).hexdigest()
    meta = json.loads(dest.with_name(dest.name + ".meta.json").read_text())
    assert meta["sha256"] == sha_a and meta["registry_sha256"] == "unknown"  # the hash it saw, recorded
    res = _invoke("weights", "import", b, "--name", "test.model", "--registry", reg)
    assert res.exit_code == 2, res.output  # refused: a usage matter (--force), not a silent replacement
    assert "--force" in res.stderr and "already in the cache" in res.stderr
    assert dest.read_bytes() == a.read_bytes()
    res = _invoke("weights", "import", b, "--name", "test.model", "--registry", reg, "--force")
    assert res.exit_code == 0, res.output
    assert dest.read_bytes() == b.read_bytes()
    assert (
        json.loads(dest.with_name(dest.name + ".meta.json").read_text())["sha256"]
        == hashlib.sha256(b.read_bytes()).hexdigest()
    )


def test_weights_import_refuses_a_pickle_for_a_non_pickle_entry(offline_cache, tmp_path):
    reg = _registry_file(tmp_path)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(("os", "system", "echo pwned"), protocol=4))  # a small plain pickle
    res = _invoke("weights", "import", evil, "--name", "test.model", "--registry", reg)
    assert res.exit_code == 1, res.output
    assert "pickle" in res.stderr and not (offline_cache / "test.model" / "model.pt").exists()
    nvidia = tmp_path / "ffhq.pkl"
    nvidia.write_bytes(evil.read_bytes())
    res = _invoke("weights", "import", nvidia, "--name", "test.model", "--registry", reg)
    assert res.exit_code == 1 and "gie weights import --convert" in res.stderr
    # zip and legacy torch.save files are not plain pickles
    for legacy in (False, True):
        good = tmp_path / f"good{legacy}.pt"
        torch.save({"w": torch.zeros(2)}, good, _use_new_zipfile_serialization=not legacy)
        res = _invoke("weights", "import", good, "--name", "test.model", "--registry", reg, "--force")
        assert res.exit_code == 0, res.output


# ----------------------------------------------------------------------------------------------- finding 8: messages


def test_decompression_bomb_message_states_the_real_limit_and_no_raw_warning(tmp_path, monkeypatch):
    from gie_cli.alignment.auto import needs_alignment
    from gie_cli.io.images import load_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    big, ok = tmp_path / "big.png", tmp_path / "ok.png"
    Image.new("RGB", (40, 40)).save(big)  # 1600 px: between 1x and 2x the limit (PIL only warns there)
    Image.new("RGB", (31, 31)).save(ok)  # 961 px: below the limit, loads as the message says
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageLoadError) as ei:
            load_image(big)
        assert load_image(ok).size == (31, 31)
        needs_alignment(big, None)  # the auto-align probe reads the header only: no raw PIL warning either
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    msg = str(ei.value) + " " + (ei.value.hint or "")
    assert "1,000 pixels" in msg and "50 megapixels" not in msg and "MAX_IMAGE_PIXELS" in msg


def test_truncated_latent_says_rerun_invert_not_download(tmp_path):
    from gie_cli.io.latents import load_latent, save_latent

    path = tmp_path / "a.latent.safetensors"
    save_latent(path, torch.zeros(4, 8), {"method": "e4e"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])
    with pytest.raises(CheckpointError) as ei:
        load_latent(path)
    text = str(ei.value) + " " + (ei.value.hint or "")
    assert "truncated or corrupt" in text and "gie invert" in text and "download" not in text.replace("downloaded", "")


def test_nvidia_pickle_hint_points_to_convert(tmp_path, monkeypatch):
    from gie_cli.io.checkpoint import read_checkpoint

    mod = types.ModuleType("torch_utils.persistence")
    cls = type("Persistent", (), {"__module__": "torch_utils.persistence"})
    mod.Persistent = cls
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", mod)
    pkl = tmp_path / "ffhq.pkl"
    pkl.write_bytes(pickle.dumps({"G_ema": cls()}, protocol=2))
    with pytest.raises(CheckpointError) as ei:
        read_checkpoint(pkl)
    hint = ei.value.hint or ""
    assert "gie weights import --convert" in hint and "weights_only=False" not in hint


def test_any_unreadable_pkl_points_to_convert_and_torch_warnings_stay_inside(tmp_path, capfd):
    from gie_cli.io.checkpoint import read_checkpoint

    pkl = tmp_path / "network-snapshot.pkl"
    pkl.write_bytes(pickle.dumps({"G_ema": [1, 2]}, protocol=4))  # protocol 4: the weights-only reader refuses it
    with pytest.raises(CheckpointError) as ei:
        read_checkpoint(pkl)
    assert "gie weights import --convert" in (ei.value.hint or "") and "download" not in (ei.value.hint or "")
    assert "pickle protocol" not in capfd.readouterr().err  # torch's own UserWarning does not reach the user


def test_weights_import_of_an_unverified_pickle_entry_needs_a_network(offline_cache, tmp_path):
    reg = _registry_file(tmp_path, fmt="pkl")  # no sha256, no size: only the content can be checked
    tiny = tmp_path / "ffhq.pkl"
    tiny.write_bytes(pickle.dumps({"G_ema": None, "note": "not a network"}))
    res = _invoke("weights", "import", tiny, "--name", "test.model", "--registry", reg)
    assert res.exit_code == 1 and "G_ema" in res.stderr, res.output
    assert not (offline_cache / "test.model").exists()


# ----------------------------------------------------------------------------------------------- finding 9: demo model


def test_real_photo_with_demo_model_warns_under_quiet_and_is_recorded(offline_cache, tmp_path):
    from gie_cli.io.latents import load_latent

    d = tmp_path / "crops"
    d.mkdir()
    make_face(1, 64).save(d / "me.png")  # not a `gie synth` render: a real photo as far as gie can tell
    res = _invoke("invert", d, "-o", tmp_path / "out", "--no-align", "--json", "-q")
    assert res.exit_code == 0, res.output
    err = " ".join(res.stderr.split())  # rich wraps long log lines
    assert "WARNING" in err and "DEMO model world.e4e" in err and "real photo" in err and "e4e.ffhq" in err
    rec = json.loads(res.stdout.splitlines()[0])
    assert rec["status"] == "ok" and rec["info"]["demo_model"] is True and rec["info"]["input_kind"] == "photo"
    manifest = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert manifest[-1]["info"]["demo_model"] is True
    _, _, meta = load_latent(rec["outputs"]["latent"])
    assert meta["demo_model"] is True and meta["demo_model_name"] == "world.e4e"


def test_synthetic_world_faces_use_the_demo_model_quietly(offline_cache, tmp_path):
    assert _invoke("synth", "-o", tmp_path / "faces", "-n", "1", "--faces").exit_code == 0
    res = _invoke("invert", tmp_path / "faces", "-o", tmp_path / "out", "--json", "-q")
    assert res.exit_code == 0, res.output
    assert "DEMO model" not in res.stderr and "real photo" not in res.stderr
    rec = json.loads(res.stdout.splitlines()[0])
    assert rec["status"] == "ok" and rec["info"]["demo_model"] is True
    assert rec["info"]["input_kind"] == "synthetic-world" and "aligned" not in rec["info"]  # taken as crops


# ----------------------------------------------------------------------------------------------- finding 9: auto-align


def _landmarks_sidecar(path: Path, points: np.ndarray, size: int) -> None:
    path.with_name(path.stem + ".landmarks.json").write_text(
        json.dumps({"image_size": [size, size], "faces": [{"points": np.asarray(points).tolist()}]})
    )


def test_square_image_counts_as_aligned_only_by_evidence(tmp_path):
    from gie_cli.alignment import ffhq_template
    from gie_cli.alignment.auto import needs_alignment

    size = 128
    crop, photo, bare = tmp_path / "crop.png", tmp_path / "photo.png", tmp_path / "bare.png"
    for p in (crop, photo, bare):
        make_face(3, size).save(p)
    _landmarks_sidecar(crop, ffhq_template(size) + 1.5, size)  # at the template, within tolerance
    _landmarks_sidecar(photo, ffhq_template(size) * 0.5 + 50, size)  # a smaller face, off-centre: not aligned
    assert needs_alignment(crop, None) is False
    assert needs_alignment(photo, None) is True
    assert needs_alignment(bare, None) is True  # square, no record, no landmarks: not taken as a crop
    assert needs_alignment(bare, False) is False and needs_alignment(crop, True) is True


def test_square_non_aligned_photo_is_never_inverted_unaligned_as_ok(offline_cache, tmp_path, tiny_e4e_weights):
    d = tmp_path / "photos"
    d.mkdir()
    make_face(4, 96).save(d / "square.png")  # square, no align record, no landmarks; face-alignment is offline
    res = _invoke("invert", d, "-o", tmp_path / "out", "--weights", tiny_e4e_weights, "--json")
    rec = json.loads(res.stdout.splitlines()[0])
    assert rec["status"] != "ok" and res.exit_code == 1
    assert "square" in rec["reason"] and "align" in rec["reason"]


def test_square_photo_with_offcentre_landmarks_is_aligned(offline_cache, tmp_path, tiny_e4e_weights):
    from gie_cli.alignment import ffhq_template

    d = tmp_path / "photos"
    d.mkdir()
    make_face(5, 128).save(d / "square.png")
    _landmarks_sidecar(d / "square.png", ffhq_template(128) * 0.5 + 40, 128)
    res = _invoke("invert", d, "-o", tmp_path / "out", "--weights", tiny_e4e_weights, "--json")
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout.splitlines()[0])
    assert rec["status"] == "ok" and rec["info"]["aligned"] == "invert"


# ------------------------------------------------------------------------------------------- finding 9: align models


def test_face_alignment_models_download_through_the_registry(tmp_path, monkeypatch):
    from gie_cli.alignment import landmarks
    from gie_cli.weights import store

    monkeypatch.setenv("GIE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("GIE_OFFLINE", raising=False)
    fetched = []

    def fake_download(entry, dest, options=None, progress=None, force=False):
        fetched.append(entry.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"\x00weights")

    monkeypatch.setattr(store, "download_entry", fake_download)
    files = landmarks._find_face_alignment_weights()
    assert sorted(fetched) == ["face_alignment.fan4", "face_alignment.s3fd"]
    assert all(p.parent == tmp_path / "cache" / "torch" and p.is_file() for p in files.values())
    # offline and missing: the one clear error, no download
    monkeypatch.setenv("GIE_OFFLINE", "1")
    for p in files.values():
        p.unlink()
    fetched.clear()
    with pytest.raises(WeightsUnavailableError, match="--backend mediapipe"):
        landmarks._find_face_alignment_weights()
    assert fetched == []


def test_dependencies_are_declared_honestly():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split(";")[0].strip().lower(): d for d in deps}
    assert ">=1.5" in names["face-alignment"] and "scipy" in names
    uses_tqdm = any("tqdm" in p.read_text() for p in (ROOT / "gie_cli").rglob("*.py"))
    assert ("tqdm" in names) == uses_tqdm

"""`gie invert` output control (issue 21): --save roles and skip semantics, --size, --image-format/--quality,
--pack-latents (exact W+, input order, shards) and `gie edit` on a packed file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_e4e, write_cli_inputs
from PIL import Image
from typer.testing import CliRunner, Result

from gie_cli.cli import app
from gie_cli.cli.batch import shard_number
from gie_cli.io.latents import load_latent, load_packed_latents, unpack_latents
from gie_cli.methods import Inversion, register_method
from gie_cli.methods.e4e import EncoderMethod
from gie_cli.methods.registry import REGISTRY

runner = CliRunner()
N = 8
"""Inputs per test (enough that both halves of --shard I/2 get some)."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_e4e_weights) -> dict:
    """``N`` random 32 px crops ``in/f<i>.png`` and a direction ``up`` for the tiny e4e (``weights``)."""
    root = tmp_path_factory.mktemp("outputs")
    inputs = write_cli_inputs(root, make_tiny_e4e().generator, n=N)
    return {"root": root, "inputs": inputs, "weights": tiny_e4e_weights, "direction": root / "up.direction.safetensors"}


def _invert(setup: dict, out: Path, *args: object, inputs: object = None) -> Result:
    """``gie invert INPUTS -o OUT -w tiny ARGS --no-align --json`` (the crops carry no evidence of being aligned)."""
    argv = ["invert", str(inputs or setup["inputs"]), "-o", str(out), "-w", str(setup["weights"]), "--no-align"]
    return runner.invoke(app, [*argv, "--json", *(str(a) for a in args)])


def _statuses(res: Result) -> list[str]:
    return [json.loads(line)["status"] for line in res.stdout.splitlines()]


def _files(out: Path) -> set[str]:
    """Names of the files in ``out`` and its sub-folders, without the engine's own ``.gie`` folder."""
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and ".gie" not in p.parts}


def _names() -> list[str]:
    return [f"f{i}" for i in range(N)]


def test_save_latent_writes_only_latents_encodes_no_image_and_reruns_skip(setup, tmp_path, monkeypatch):
    import gie_cli.io.atomic
    import gie_cli.io.images

    def no_encoding(*args, **kwargs):
        raise AssertionError("--save latent encoded an image")

    monkeypatch.setattr(gie_cli.io.images, "tensor_to_image", no_encoding)
    monkeypatch.setattr(gie_cli.io.atomic, "atomic_save_image", no_encoding)
    out = tmp_path / "out"
    res = _invert(setup, out, "--save", "latent")
    assert res.exit_code == 0, res.output
    assert _statuses(res) == ["ok"] * N
    assert _files(out) == {f"{n}.latent.safetensors" for n in _names()} | {"manifest.jsonl"}
    again = _invert(setup, out, "--save", "latent")
    assert again.exit_code == 0 and _statuses(again) == ["skipped"] * N


def test_save_recon_writes_only_images(setup, tmp_path):
    out = tmp_path / "out"
    res = _invert(setup, out, "--save", "recon")
    assert res.exit_code == 0 and _statuses(res) == ["ok"] * N, res.output
    assert _files(out) == {f"{n}.recon.png" for n in _names()} | {"manifest.jsonl"}
    assert all(set(json.loads(x)["outputs"]) == {"image"} for x in res.stdout.splitlines())


def test_default_save_keeps_the_skip_records_of_earlier_runs(setup, tmp_path):
    out = tmp_path / "out"
    assert _invert(setup, out).exit_code == 0
    again = _invert(setup, out, "--save", "recon,latent,align", "--quality", "50")  # the default; png ignores Q
    assert again.exit_code == 0 and _statuses(again) == ["skipped"] * N


@pytest.mark.parametrize("spec", ["", "recon,mask", "latents", ","])
def test_bad_save_is_a_one_line_usage_error(setup, tmp_path, spec):
    res = _invert(setup, tmp_path / "out", "--save", spec)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--save" in lines[0] and "recon, latent, align" in lines[0], res.stderr
    assert not (tmp_path / "out").exists()


def test_pack_latents_without_latent_in_save_is_a_usage_error(setup, tmp_path):
    res = _invert(setup, tmp_path / "out", "--save", "recon", "--pack-latents")
    assert res.exit_code == 2 and "--pack-latents" in res.stderr and "--save" in res.stderr


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64)


def test_size_writes_the_area_downsampled_reconstruction(setup, tmp_path):
    full, small, big = tmp_path / "full", tmp_path / "small", tmp_path / "big"
    assert _invert(setup, full, "--save", "recon").exit_code == 0
    assert _invert(setup, small, "--save", "recon", "--size", "16").exit_code == 0
    assert _invert(setup, big, "--save", "recon", "--size", "48", inputs=setup["inputs"] / "f0.png").exit_code == 0
    for n in _names():
        ref = _pixels(full / f"{n}.recon.png")
        assert ref.shape == (32, 32, 3)
        got = _pixels(small / f"{n}.recon.png")
        assert got.shape == (16, 16, 3)
        pooled = ref.reshape(16, 2, 16, 2, 3).mean(axis=(1, 3))  # 2 x 2 area average
        assert np.abs(got - pooled).max() <= 1.0  # rounding before vs after the average
    with Image.open(big / "f0.recon.png") as im:
        assert im.size == (48, 48)


def test_size_is_part_of_the_request(setup, tmp_path):
    out = tmp_path / "out"
    assert _invert(setup, out, "--save", "recon").exit_code == 0
    res = _invert(setup, out, "--save", "recon", "--size", "16")
    assert res.exit_code == 0 and _statuses(res) == ["ok"] * N  # redone at the new size
    with Image.open(out / "f0.recon.png") as im:
        assert im.size == (16, 16)


def test_jpeg_quality_changes_the_files_and_redoes_items(setup, tmp_path):
    low, high = tmp_path / "q50", tmp_path / "q95"
    assert _invert(setup, low, "--image-format", "jpg", "--quality", "50").exit_code == 0
    assert _invert(setup, high, "--ext", "jpg").exit_code == 0  # --quality 95 by default
    size = {d: sum((d / f"{n}.recon.jpg").stat().st_size for n in _names()) for d in (low, high)}
    assert size[low] < size[high]
    for n in _names():
        with Image.open(low / f"{n}.recon.jpg") as im:
            assert im.format == "JPEG" and im.size == (32, 32)
    again = _invert(setup, low, "--image-format", "jpg", "--quality", "50")
    assert _statuses(again) == ["skipped"] * N
    other = _invert(setup, low, "--image-format", "jpg", "--quality", "70")
    assert other.exit_code == 0 and _statuses(other) == ["ok"] * N  # another quality: redone


def test_webp_quality(setup, tmp_path):
    out = tmp_path / "out"
    res = _invert(setup, out, "--image-format", "webp", "--quality", "40", inputs=setup["inputs"] / "f1.png")
    assert res.exit_code == 0, res.output
    with Image.open(out / "f1.recon.webp") as im:
        assert im.format == "WEBP"


def _check_pack(pack: Path, out: Path, names: list[str]) -> None:
    """``pack`` holds exactly the latent files ``out/NAME.latent.safetensors`` of ``names``, in that order."""
    packed = load_packed_latents(pack)
    assert packed.names == names
    assert packed.wplus.shape[0] == len(names)
    for i, name in enumerate(names):
        wplus, _, meta = load_latent(out / f"{name}.latent.safetensors")
        assert torch.equal(packed.wplus[i], wplus[0])  # bit-exact
        assert packed.records[i] == meta
        assert packed.sources[i] == meta["source"] and packed.source_sha256[i] == meta["source_sha256"]


def test_pack_latents_is_exact_in_input_order_and_survives_reruns(setup, tmp_path):
    out = tmp_path / "out"
    res = _invert(setup, out, "--save", "latent", "--pack-latents")
    assert res.exit_code == 0, res.output
    _check_pack(out / "latents.safetensors", out, _names())
    (out / "latents.safetensors").unlink()
    again = _invert(setup, out, "--save", "latent", "--pack-latents")  # every item skipped: packed all the same
    assert _statuses(again) == ["skipped"] * N
    _check_pack(out / "latents.safetensors", out, _names())
    # unpacking gives back the latent files `gie invert` wrote: the same tensors and records
    files = unpack_latents(out / "latents.safetensors", tmp_path / "unpacked")
    assert [f.name for f in files] == [f"{n}.latent.safetensors" for n in _names()]
    for f in files:
        (w, extras, meta), (w0, extras0, meta0) = load_latent(f), load_latent(out / f.name)
        assert torch.equal(w, w0) and meta == meta0 and extras.keys() == extras0.keys()
        assert all(torch.equal(extras[k], extras0[k]) for k in extras)


def test_pack_latents_leaves_out_failed_items(setup, tmp_path):
    bad = tmp_path / "in"
    bad.mkdir()
    for n in ("f0", "f1"):
        (bad / f"{n}.png").write_bytes((setup["inputs"] / f"{n}.png").read_bytes())
    (bad / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    res = _invert(setup, out, "--pack-latents", inputs=bad)
    assert res.exit_code == 1 and sorted(_statuses(res)) == ["failed", "ok", "ok"]
    _check_pack(out / "latents.safetensors", out, ["f0", "f1"])


def test_pack_latents_per_shard(setup, tmp_path):
    out = tmp_path / "out"
    inputs = sorted(setup["inputs"].glob("*.png"))
    for i in (0, 1):
        assert _invert(setup, out, "--save", "latent", "--pack-latents", "--shard", f"{i}/2").exit_code == 0
    shards = {i: [p.stem for p in inputs if shard_number(p, 2) == i] for i in (0, 1)}
    assert shards[0] and shards[1], "the inputs' paths put every input into one shard"
    packs = {i: load_packed_latents(out / f"latents.shard-{i}-of-2.safetensors").names for i in (0, 1)}
    assert packs == shards  # input order within each shard
    assert not set(packs[0]) & set(packs[1]) and set(packs[0]) | set(packs[1]) == set(_names())
    for i in (0, 1):
        _check_pack(out / f"latents.shard-{i}-of-2.safetensors", out, packs[i])
    assert not (out / "latents.safetensors").exists()


def test_edit_on_a_pack_matches_edit_on_the_latent_files(setup, tmp_path):
    inv = tmp_path / "inv"
    assert _invert(setup, inv, "--pack-latents").exit_code == 0
    edit = ["edit", "-d", str(setup["direction"]), "-p", "-2", "-p", "2", "--json"]
    dry = runner.invoke(app, [*edit, str(inv / "latents.safetensors"), "-o", str(tmp_path / "e_pack"), "--dry-run"])
    assert dry.exit_code == 0 and dry.stdout.count("todo") == N and not (tmp_path / "e_pack").exists()
    res_files = runner.invoke(app, [*edit, str(inv), "-o", str(tmp_path / "e_files")])
    assert res_files.exit_code == 0, res_files.output
    res_pack = runner.invoke(app, [*edit, str(inv / "latents.safetensors"), "-o", str(tmp_path / "e_pack")])
    assert res_pack.exit_code == 0, res_pack.output
    assert _statuses(res_pack) == ["ok"] * N
    assert [json.loads(x)["info"]["pack"]["name"] for x in res_pack.stdout.splitlines()] == _names()
    files, packed = _files(tmp_path / "e_files"), _files(tmp_path / "e_pack")
    assert files == packed and len([f for f in files if f.endswith(".png")]) == 2 * N
    for f in files - {"manifest.jsonl"}:
        assert np.array_equal(_pixels(tmp_path / "e_files" / f), _pixels(tmp_path / "e_pack" / f)), f
    again = runner.invoke(app, [*edit, str(inv / "latents.safetensors"), "-o", str(tmp_path / "e_pack")])
    assert again.exit_code == 0 and _statuses(again) == ["skipped"] * N


MASKED = "masked_e4e_outputs_test"


class _MaskedE4E(EncoderMethod):
    """The tiny e4e with a known blending mask: the left half keeps the photo (1), the right half does not (0)."""

    def mask_of(self, inv: Inversion) -> torch.Tensor:
        s = self.generator.size
        m = torch.zeros(inv.wplus.shape[0], 1, s, s)
        m[..., : s // 2] = 1.0
        return m


def _masked_method(weights: str | None = None, **options: object) -> _MaskedE4E:
    model = make_tiny_e4e()
    model.__class__ = _MaskedE4E
    return model


def test_size_applies_to_masks(setup, tmp_path):
    register_method(MASKED, "tiny e4e with a known blending mask (test double)")(_masked_method)
    try:
        out = tmp_path / "out"
        res = runner.invoke(
            app,
            ["invert", str(setup["inputs"] / "f0.png"), "-o", str(out), "-m", MASKED, "--no-align", "--save-mask",
             "--size", "16"],
        )  # fmt: skip
    finally:
        REGISTRY.plugins.pop(MASKED, None)
    assert res.exit_code == 0, res.output
    with Image.open(out / "f0.recon_mask.png") as im:
        mask = np.asarray(im)
    assert mask.shape == (16, 16) and (mask[:, :8] == 255).all() and (mask[:, 8:] == 0).all()
    with Image.open(out / "f0.recon.png") as im:
        assert im.size == (16, 16)


@pytest.fixture()
def recorded(setup, tmp_path) -> Path:
    """Two crops ``f0``, ``f1`` with the alignment records of `gie align` beside them (the 32 px crop covers photo
    pixels 20..84 x 8..72 of a 96 x 80 photo)."""
    d = tmp_path / "crops"
    d.mkdir()
    photo = tmp_path / "photo.png"
    Image.new("RGB", (96, 80), (10, 200, 30)).save(photo)
    record = {
        "format": "gie-align/1",
        "transform": [[0.5, 0.0, -10.0], [0.0, 0.5, -4.0], [0.0, 0.0, 1.0]],
        "output_size": 32,
        "source_size": [96, 80],
        "source": str(photo),
    }
    for n in ("f0", "f1"):
        (d / f"{n}.png").write_bytes((setup["inputs"] / f"{n}.png").read_bytes())
        (d / f"{n}.align.json").write_text(json.dumps(record))
    return d


def _invert_auto(setup: dict, inputs: Path, out: Path, *args: object) -> Result:
    """``gie invert`` with automatic alignment (inputs with a record are taken as aligned crops)."""
    argv = ["invert", str(inputs), "-o", str(out), "-w", str(setup["weights"]), "--json"]
    return runner.invoke(app, [*argv, *(str(a) for a in args)])


def test_save_without_align_writes_no_alignment_record(setup, recorded, tmp_path):
    out = tmp_path / "out"
    res = _invert_auto(setup, recorded, out, "--save", "recon,latent")
    assert res.exit_code == 0, res.output
    assert _files(out) == {"f0.recon.png", "f0.latent.safetensors", "f1.recon.png", "f1.latent.safetensors",
                           "manifest.jsonl"}  # fmt: skip
    assert all(set(json.loads(x)["outputs"]) == {"image", "latent"} for x in res.stdout.splitlines())
    full = tmp_path / "full"
    assert _invert_auto(setup, recorded, full).exit_code == 0
    assert (full / "f0.align.json").is_file() and (full / "f1.align.json").is_file()


def test_edit_pastes_back_from_a_pack(setup, recorded, tmp_path):
    inv = tmp_path / "inv"
    assert _invert_auto(setup, recorded, inv, "--pack-latents").exit_code == 0
    for record in recorded.glob("*.align.json"):
        record.unlink()  # only the copies `gie invert` wrote beside the latents are left
    edit = ["edit", "-d", str(setup["direction"]), "-p", "2", "--paste-back", "--json"]
    res_files = runner.invoke(app, [*edit, str(inv), "-o", str(tmp_path / "e_files")])
    res_pack = runner.invoke(app, [*edit, str(inv / "latents.safetensors"), "-o", str(tmp_path / "e_pack")])
    assert res_files.exit_code == 0 and res_pack.exit_code == 0, res_pack.output
    for n in ("f0", "f1"):
        a, b = tmp_path / "e_files" / f"{n}.up+2.paste.png", tmp_path / "e_pack" / f"{n}.up+2.paste.png"
        assert np.array_equal(_pixels(a), _pixels(b))
        assert _pixels(b).shape == (80, 96, 3)
    info = [json.loads(x)["info"] for x in res_pack.stdout.splitlines()]
    assert all("/.gie/unpacked/" in i["align_record"] for i in info)  # the record unpacked with the latent

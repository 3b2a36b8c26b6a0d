"""Issue 15, findings 3, 4, 5 and 7 (options): a wrong result is never ``ok``.

NaN/Inf in weights, latents, edits or optimiser results fail the item with the cause; powers far outside a
direction's range warn; faces too small to invert fail; `gie align` records and warns about upscaling; a latent's
record fully determines its method and weights; ``--set`` values are range-checked before any item runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_face, make_tiny_e4e
from PIL import Image
from typer.testing import CliRunner

from gie_cli.cli import app
from gie_cli.errors import UsageError
from gie_cli.io.latents import load_latent, save_latent

runner = CliRunner()


def _invoke(*args: object, input: str | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def aligned(tmp_path_factory) -> Path:
    """One 64 px aligned crop."""
    root = tmp_path_factory.mktemp("trust_aligned")
    make_face(3, 64).save(root / "face.png")
    return root


@pytest.fixture(scope="module")
def demo_latents(tmp_path_factory, aligned) -> Path:
    """The crop inverted by the embedded demo e4e (the model `gie edit` falls back to)."""
    out = tmp_path_factory.mktemp("trust_inv")
    res = _invoke("invert", aligned, "-o", out, "--no-align")
    assert res.exit_code == 0, res.output
    return out


# --------------------------------------------------------------------------------------------------- finding 7
@pytest.mark.parametrize(
    "args,needle",
    [
        (["-m", "optim", "--set", "lr=nan"], "not a finite number"),
        (["-m", "optim", "--set", "lr=inf"], "not a finite number"),
        (["-m", "optim", "--set", "lr=0"], "out of range"),
        (["-m", "optim", "--set", "lr=-1"], "out of range"),
        (["-m", "optim", "--set", "steps=0"], "steps"),
        (["-m", "optim", "--set", "noise_ramp=0"], "out of range"),
        (["-m", "e4e", "--set", "lr=1"], "no settings"),
        (["--alpha", "purple"], "--alpha"),
    ],
)
def test_bad_options_are_usage_errors_before_any_item_runs(aligned, tmp_path, args, needle):
    out = tmp_path / "o"
    res = _invoke("invert", aligned, "-o", out, "--no-align", *args)
    assert res.exit_code == 2, res.output
    assert needle in res.stderr
    assert not (out / "manifest.jsonl").exists()  # no item ran


def test_settings_parser_rejects_non_finite_and_out_of_range_values():
    from gie_cli.methods.optim.method import OptimConfig

    for bad in ({"lr": "nan"}, {"lr": "1e400"}, {"lr": "0"}, {"l2_weight": "-1"}, {"lr": float("nan")}):
        with pytest.raises(UsageError):
            OptimConfig.from_options(bad)
    assert OptimConfig.from_options({"lr": "1e30"}).lr == 1e30  # finite: the result check names it if it diverges


# --------------------------------------------------------------------------------------------------- finding 3
def test_weights_holding_nan_fail_every_item_naming_the_weights(aligned, tmp_path):
    m = make_tiny_e4e()
    with torch.no_grad():
        m.generator.convs[0].conv.weight[0, 0, 0, 0, 0] = float("nan")
    weights = tmp_path / "broken.safetensors"
    m.save(weights)
    out = tmp_path / "o"
    res = _invoke("invert", aligned, "-o", out, "--no-align", "-w", weights)
    assert res.exit_code == 1, res.output
    (rec,) = _records(out)
    assert rec["status"] == "failed"
    assert "NaN" in rec["reason"] and "broken.safetensors" in rec["reason"] and "convs.0" in rec["reason"]
    assert not (out / "face.latent.safetensors").exists() and not (out / "face.recon.png").exists()


def test_optim_diverging_with_a_huge_lr_fails_naming_the_setting(aligned, tmp_path):
    weights = tmp_path / "tiny.safetensors"
    make_tiny_e4e().save(weights)
    out = tmp_path / "o"
    args = ["--set", "lr=1e30", "--set", "steps=3", "--set", "loss=l2"]
    res = _invoke("invert", aligned, "-o", out, "--no-align", "-m", "optim", "-w", weights, *args)
    assert res.exit_code == 1, res.output
    (rec,) = _records(out)
    assert rec["status"] == "failed" and "lr=1e+30" in rec["reason"] and "NaN" in rec["reason"]


def test_edit_with_an_overflowing_power_fails_and_a_far_power_warns(demo_latents, tmp_path):
    latent = demo_latents / "face.latent.safetensors"
    out = tmp_path / "e"
    res = _invoke("edit", latent, "-d", "smile", "--power=-2,1e39", "-o", out)
    assert res.exit_code == 1, res.output
    (rec,) = _records(out)
    assert rec["status"] == "failed" and "power 1e+39" in rec["reason"] and "[-2, 2]" in rec["reason"]
    assert not list(out.glob("*.png"))
    res = _invoke("edit", latent, "-d", "smile", "-d", "age", "--power=1e9,-1e9", "-o", tmp_path / "f")
    assert res.exit_code == 0, res.output
    assert res.stderr.count("far outside") == 2  # once per direction, not per power or item
    assert "smile" in res.stderr and "age" in res.stderr
    res = _invoke("edit", latent, "-d", "smile", "--power=-2,2", "-o", tmp_path / "g")
    assert res.exit_code == 0 and "far outside" not in res.stderr


def test_edit_of_a_latent_holding_nan_fails(demo_latents, tmp_path):
    wplus, extras, meta = load_latent(demo_latents / "face.latent.safetensors")
    wplus = wplus.clone()
    wplus[0, 0, 0] = float("nan")
    bad = tmp_path / "bad.latent.safetensors"
    save_latent(bad, wplus, meta, extras)
    out = tmp_path / "e"
    res = _invoke("edit", bad, "-d", "smile", "-p", "1", "-o", out)
    assert res.exit_code == 1, res.output
    (rec,) = _records(out)
    assert rec["status"] == "failed" and "NaN" in rec["reason"] and "W+" in rec["reason"]


# --------------------------------------------------------------------------------------------------- finding 4
def test_images_below_the_minimum_face_size_fail(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (1, 1), (120, 100, 90)).save(src / "one.png")
    make_face(1, 20).save(src / "small.png")
    out = tmp_path / "o"
    res = _invoke("invert", src, "-o", out, "--no-align")
    assert res.exit_code == 1, res.output
    recs = {Path(r["input"]).name: r for r in _records(out)}
    assert recs["one.png"]["status"] == "failed" and "--min-size" in recs["one.png"]["reason"]
    assert "1x1" in recs["one.png"]["reason"]
    assert recs["small.png"]["status"] == "failed"
    assert not (out / "one.recon.png").exists()
    res = _invoke("invert", src / "small.png", "-o", tmp_path / "p", "--no-align", "--min-size", "16")
    assert res.exit_code == 0, res.output


def test_align_records_the_upscale_factor_and_warns_above_4x(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # short relative paths: the log handler wraps long ones
    photos = Path("photos")
    assert _invoke("synth", "-o", photos, "-n", "1").exit_code == 0
    photo = next(photos.glob("*.png"))
    out = tmp_path / "big"
    res = _invoke("align", photo, "-o", out, "--size", "1024")
    assert res.exit_code == 0, res.output
    (rec,) = _records(out)
    up = rec["info"]["faces"][0]["upscale"]
    assert up > 4
    record = json.loads(next(out.glob("*.align.json")).read_text())
    assert record["upscale"] == pytest.approx(up)
    assert "upscaled" in res.stderr and photo.name in res.stderr
    res = _invoke("align", photo, "-o", tmp_path / "small", "--size", "128")
    assert res.exit_code == 0 and "upscaled" not in res.stderr
    assert _records(tmp_path / "small")[0]["info"]["faces"][0]["upscale"] == pytest.approx(up / 8, rel=1e-2)


# --------------------------------------------------------------------------------------------------- finding 5
def test_edit_never_falls_back_to_the_demo_model_for_unresolvable_weights(demo_latents, tmp_path):
    wplus, extras, meta = load_latent(demo_latents / "face.latent.safetensors")
    # the record names other weights (by id) and no file: the demo model must not stand in for them
    meta_other = {**meta, "weights": "my-gradstyle.safetensors@0123456789ab", "weights_path": ""}
    other = tmp_path / "other.latent.safetensors"
    save_latent(other, wplus, meta_other, extras)
    out = tmp_path / "e"
    res = _invoke("edit", other, "-d", "smile", "-p", "1", "-o", out)
    assert res.exit_code == 1, res.output
    (rec,) = _records(out)
    assert rec["status"] == "failed" and "my-gradstyle.safetensors@0123456789ab" in rec["reason"]
    assert "--weights" in rec["reason"] and not list(out.glob("*.png"))
    # no path, but the recorded weights are the embedded default: resolved, edited
    same = tmp_path / "same.latent.safetensors"
    save_latent(same, wplus, {**meta, "weights_path": ""}, extras)
    res = _invoke("edit", same, "-d", "smile", "-p", "1", "-o", tmp_path / "f")
    assert res.exit_code == 0, res.output

"""`gie invert` end to end on tiny models: outputs, latents, resume, bad inputs, exit codes, stdin, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_face, make_tiny_e4e
from PIL import Image
from typer.testing import CliRunner

from gie_cli.cli import app
from gie_cli.io.images import load_image
from gie_cli.io.latents import load_latent
from gie_cli.methods import Inversion, create_method

runner = CliRunner()


@pytest.fixture(scope="module")
def weights(tiny_e4e_weights) -> Path:
    return tiny_e4e_weights


def _exif_rotated(img: Image.Image, path: Path) -> None:
    """Store ``img`` rotated so that applying EXIF orientation 6 (rotate 270 on display) restores it."""
    stored = img.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, exif=exif)


@pytest.fixture()
def photos(tmp_path) -> Path:
    d = tmp_path / "aligned"
    d.mkdir()
    make_face(1).save(d / "a.png")
    make_face(2).save(d / "b.jpg", quality=95)
    make_face(3).convert("L").save(d / "gray.png")
    rgba = make_face(4).convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 128))
    rgba.save(d / "rgba.png")
    _exif_rotated(make_face(5), d / "rotated.png")
    make_face(5).save(d / "upright.png")
    (d / "sub").mkdir()
    make_face(6).save(d / "sub" / "c.png")
    return d


def _bad_inputs(d: Path) -> None:
    buf = (d / "a.png").read_bytes()
    (d / "corrupt.png").write_bytes(buf[: len(buf) // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.png").write_text("this is not an image\n")
    make_face(7, 80).crop((0, 0, 80, 60)).save(d / "wide.png")


def _invoke(*args, input=None):
    """``gie ARGS``; an invert of this file's prepared crops says they are aligned (``--no-align``): auto alignment
    takes a square image as an aligned crop only with evidence (issue 15), and these crops carry none."""
    args = [str(a) for a in args]
    if args[0] == "invert" and not {"--align", "--no-align"} & set(args):
        args.append("--no-align")
    return runner.invoke(app, args, input=input)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_invert_writes_outputs_and_latents_rerender(photos, weights, tmp_path):
    out = tmp_path / "out"
    res = _invoke("invert", photos, "-o", out, "--weights", weights, "--recursive", "--json", "-b", "3")
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(lines) == 7 and all(x["status"] == "ok" for x in lines)
    assert (out / "sub" / "c.recon.png").exists() and (out / "sub" / "c.latent.safetensors").exists()
    method = create_method("e4e", str(weights))
    for name in ("a", "gray", "sub/c"):
        wplus, extras, meta = load_latent(out / f"{name}.latent.safetensors")
        assert wplus.shape == (1, method.generator.n_latent, 32)
        assert meta["method"] == "e4e" and meta["image_size"] == 32 and len(meta["source_sha256"]) == 64
        assert meta["source"].endswith(f"{name}.png")
        with torch.no_grad():
            img = method.render(Inversion(wplus, extras))[0]
        saved = torch.from_numpy(np.array(load_image(out / f"{name}.recon.png"))).permute(2, 0, 1).float()
        rerendered = ((img.clamp(-1, 1) + 1) * 127.5).round()
        assert (rerendered - saved).abs().max() <= 1.0
    # EXIF orientation is applied: the rotated file inverts exactly like its upright twin
    w_rot = load_latent(out / "rotated.latent.safetensors")[0]
    w_up = load_latent(out / "upright.latent.safetensors")[0]
    assert torch.allclose(w_rot, w_up, atol=1e-5)
    # inputs are untouched, outputs are complete files only
    assert not list(out.rglob("*.tmp-*"))


def test_rerun_skips_and_bad_inputs_fail_without_stopping(photos, weights, tmp_path):
    out = tmp_path / "out"
    _bad_inputs(photos)
    before = {p: p.read_bytes() for p in photos.iterdir() if p.is_file()}
    res = _invoke("invert", photos, "-o", out, "--weights", weights, "--json")
    assert res.exit_code == 1
    status = {Path(r["input"]).name: r for r in map(json.loads, res.stdout.splitlines())}
    assert {k for k, v in status.items() if v["status"] == "ok"} == {
        "a.png",
        "b.jpg",
        "gray.png",
        "rgba.png",
        "rotated.png",
        "upright.png",
    }
    for bad, why in [("corrupt.png", ""), ("empty.jpg", "empty"), ("notes.png", ""), ("wide.png", "square")]:
        assert status[bad]["status"] == "failed" and why in status[bad]["reason"] and status[bad]["reason"]
        assert not (out / f"{Path(bad).stem}.latent.safetensors").exists()
    assert "failed" in res.stderr and "corrupt.png" in res.stderr
    assert {p: p.read_bytes() for p in photos.iterdir() if p.is_file()} == before  # inputs never modified
    res2 = _invoke("invert", photos, "-o", out, "--weights", weights, "--json")
    assert res2.exit_code == 1  # the bad files still fail
    st2 = [json.loads(x) for x in res2.stdout.splitlines()]
    assert sum(r["status"] == "skipped" for r in st2) == 6 and sum(r["status"] == "failed" for r in st2) == 4
    # only good inputs: a re-run skips everything and exits 0; manifest keeps both runs
    for bad in ("corrupt.png", "empty.jpg", "notes.png", "wide.png"):
        (photos / bad).unlink()
    res3 = _invoke("invert", photos, "-o", out, "--weights", weights)
    assert res3.exit_code == 0 and res3.stdout == ""
    assert "6 skipped" in res3.stderr
    assert len(_records(out)) == 10 + 10 + 6


def test_on_existing_overwrite_and_error(photos, weights, tmp_path):
    out = tmp_path / "out"
    src = photos / "a.png"
    assert _invoke("invert", src, "-o", out, "--weights", weights).exit_code == 0
    mtime = (out / "a.latent.safetensors").stat().st_mtime_ns
    assert _invoke("invert", src, "-o", out, "--weights", weights, "--on-existing", "overwrite").exit_code == 0
    assert (out / "a.latent.safetensors").stat().st_mtime_ns != mtime
    res = _invoke("invert", src, "-o", out, "--weights", weights, "--on-existing", "error")
    assert res.exit_code == 1 and "outputs exist" in res.stderr


def test_stdin_paths_and_dry_run(photos, weights, tmp_path):
    out = tmp_path / "out"
    paths = f"{photos / 'a.png'}\n{photos / 'gray.png'}\n"
    dry = _invoke("invert", "-", "-o", out, "--weights", weights, "--dry-run", input=paths)
    assert dry.exit_code == 0 and dry.stdout.count("todo") == 2 and not out.exists()
    res = _invoke("invert", "-", "-o", out, "--weights", weights, "--json", input=paths)
    assert res.exit_code == 0
    assert [Path(json.loads(x)["input"]).name for x in res.stdout.splitlines()] == ["a.png", "gray.png"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--method", "nope"], "unknown method"),
        (["--on-existing", "maybe"], "--on-existing"),
        (["--device", "cuda:7"], "cuda"),
        (["--dtype", "fp16"], "fp16"),
    ],
)
def test_usage_errors_exit_2(photos, weights, tmp_path, args, needle):
    if needle == "cuda" and torch.cuda.device_count() > 7:
        pytest.skip("machine has 8+ GPUs")
    res = _invoke("invert", photos / "a.png", "-o", tmp_path / "o", "--weights", weights, *args)
    assert res.exit_code == 2, res.output
    assert needle in res.stderr


def test_output_folder_is_input_folder_and_missing_input(photos, weights, tmp_path, monkeypatch):
    res = _invoke("invert", photos, "-o", photos, "--weights", weights)
    assert res.exit_code == 2 and "input folder" in res.stderr
    # issue 15: a missing explicit input is a failed item (exit 1, a manifest line), like other bad items
    res = _invoke("invert", tmp_path / "missing.png", "-o", tmp_path / "o", "--weights", weights)
    assert res.exit_code == 1 and "not found" in res.stderr
    # no --weights and a registry without an embedded default for e4e (tests/test_weights_embedded.py: with one)
    reg = tmp_path / "weights.toml"
    reg.write_text(
        '[[weight]]\nname = "x.e4e"\nfilename = "x.pt"\nurls = ["http://127.0.0.1:9/x"]\nsha256 = "unknown"\n'
        'size = "unknown"\nformat = "pt"\nmethod = ["e4e"]\n'
    )
    monkeypatch.setenv("GIE_WEIGHTS_TOML", str(reg))
    res = _invoke("invert", photos, "-o", tmp_path / "o")
    assert res.exit_code == 2 and "--weights" in res.stderr


def test_official_format_checkpoint_loads_through_the_same_path(tmp_path, photos):
    m = make_tiny_e4e("psp")
    sd = {f"encoder.{k}": v for k, v in m.encoder.state_dict().items()}
    sd.update({f"decoder.{k}": v for k, v in m.generator.state_dict().items()})
    ckpt = tmp_path / "psp_tiny_encode.pt"
    torch.save(
        {
            "state_dict": sd,
            "opts": {"encoder_type": "GradualStyleEncoder", "start_from_latent_avg": True, "output_size": 32},
            "latent_avg": m.latent_avg.clone(),
        },
        ckpt,
    )
    loaded = create_method("psp", str(ckpt))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(loaded.invert(x).wplus, m.invert(x).wplus, atol=1e-6)
    res = _invoke("invert", photos / "a.png", "-o", tmp_path / "o", "--method", "psp", "--weights", ckpt)
    assert res.exit_code == 0, res.output


def test_optim_method_runs_and_improves(photos, weights, tmp_path):
    out = tmp_path / "o"
    res = _invoke(
        "invert",
        photos / "a.png",
        "-o",
        out,
        "--method",
        "optim",
        "--weights",
        weights,
        "--set",
        "steps=25",
        "--set",
        "loss=l2",
        "--set",
        "optimize_noise=true",
        "--json",
    )
    assert res.exit_code == 0, res.output
    wplus, extras, meta = load_latent(out / "a.latent.safetensors")
    assert meta["method"] == "optim" and meta["optim"]["steps"] == 25 and "noise_0" in extras
    res = _invoke(
        "invert",
        photos / "a.png",
        "-o",
        out,
        "--method",
        "optim",
        "--weights",
        weights,
        "--set",
        "stepz=3",
        "--on-existing",
        "overwrite",
    )
    assert res.exit_code == 2 and "stepz" in res.stderr


def test_out_of_memory_halves_the_batch(photos, weights, tmp_path, monkeypatch):
    import gie_cli.cli.invert as inv_cli

    real = inv_cli._invert_batch
    sizes = []

    def flaky(model, xs, dev, dt):
        sizes.append(len(xs))
        if len(xs) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, xs, dev, dt)

    monkeypatch.setattr(inv_cli, "_invert_batch", flaky)
    out = tmp_path / "o"
    res = _invoke("invert", photos, "-o", out, "--weights", weights, "-b", "4", "--json")
    assert res.exit_code == 0, res.output
    assert sizes[:3] == [4, 2, 1] and set(sizes[3:]) == {1}
    assert sum(json.loads(x)["status"] == "ok" for x in res.stdout.splitlines()) == 6
    assert "batch size reduced to 2" in res.stderr


def test_optim_initialised_from_encoder(photos, weights, tmp_path):
    out = tmp_path / "o"
    res = _invoke(
        "invert",
        photos / "a.png",
        "-o",
        out,
        "--method",
        "optim",
        "--set",
        f"init={weights}",
        "--set",
        "steps=2",
        "--set",
        "loss=l2",
        "--set",
        "lr=0.001",
    )
    assert res.exit_code == 0, res.output
    w_optim = load_latent(out / "a.latent.safetensors")[0]
    res = _invoke("invert", photos / "a.png", "-o", tmp_path / "e", "--weights", weights)
    w_e4e = load_latent(tmp_path / "e" / "a.latent.safetensors")[0]
    # two tiny steps from the e4e codes stay within lr of them; a mean-latent start would be much farther away
    w_avg = create_method("e4e", str(weights)).generator.w_avg
    assert 0 < (w_optim - w_e4e).abs().max() <= 0.0011
    assert (w_e4e - w_avg).abs().mean() > 0.01

"""HFGI (Wang et al., CVPR 2022) as a gie method: the official inference recipe, the official ``ckpt.pt`` through the
user's path, latents that edit without the photo or the encoder, and the trainer (ADA learns to undo warps)."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    _fixture_weights,
    assert_parity,
    assert_parity_io,
    first_items,
    load_parity,
    make_tiny_e4e_world,
    slow,
)
from safetensors import safe_open
from typer.testing import CliRunner

from gie_cli.cli import app
from gie_cli.editing import Direction, apply, render_edit
from gie_cli.errors import CheckpointError, StateDictMismatchError, UsageError
from gie_cli.io.images import image_to_tensor, load_image
from gie_cli.io.latents import load_latent
from gie_cli.methods import Inversion, create_method
from gie_cli.methods.e4e import EncoderMethod
from gie_cli.methods.hfgi import CONDITION_LAYER, ResidualAligner, ResidualEncoder, condition_hook
from gie_cli.methods.hfgi.method import HFGIMethod, residual_size_image
from gie_cli.methods.hfgi.train import HFGITrainer, condition_layer_for
from gie_cli.metrics.alignment import relative_l1
from gie_cli.models.encoders import create_encoder
from gie_cli.models.stylegan2 import Generator
from gie_cli.ops.warp import random_perspective, warp_features
from gie_cli.weights import load_registry

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _tiny_hfgi(base: EncoderMethod, layer: int, zero: bool = False, use_ada: bool = True) -> HFGIMethod:
    """HFGI on ``base`` with random ADA / consultation encoder (smaller conditions than at init; 0 with ``zero``)."""
    g = base.generator
    torch.manual_seed(1)
    residue = ResidualEncoder(g.layer_channels(layer), g.layer_resolution(layer))
    with torch.no_grad():
        for head in (residue.condition_scale3, residue.condition_shift3):
            head[2].weight.mul_(0.0 if zero else 0.5)
    return HFGIMethod(
        g, base.encoder, base.latent_avg, base.encoder_config, ResidualAligner(), residue, layer, use_ada=use_ada
    ).eval()


def _tiny64_e4e() -> EncoderMethod:
    """A tiny e4e on a 64 px generator, so the official 64 px condition layer (``CONDITION_LAYER``) exists."""
    torch.manual_seed(0)
    g = Generator(64, style_dim=32, n_mlp=2, channel_max=32)
    g.mean_latent(256)
    cfg = {"mode": "ir_se", "unit_counts": [1, 1, 1, 1], "widths": [8, 16, 24, 32], "n_styles": g.n_latent,
           "style_dim": 32, "input_size": 64}  # fmt: skip
    enc = create_encoder("e4e", **cfg)
    return EncoderMethod(g, enc, g.broadcast(g.w_avg[None])[0].clone(), "e4e", cfg, True, "tiny64").eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A tiny e4e checkpoint (32 px generator, untrained encoder) and 8 images its generator drew."""
    return make_tiny_e4e_world(tmp_path_factory.mktemp("hfgi"))


# --------------------------------------------------------------------------------------------------- the recipe
def test_render_is_the_official_recipe_and_needs_no_encoder(world, monkeypatch):
    e4e = world["e4e"]
    layer = condition_layer_for(e4e.generator)
    assert layer == 3 and e4e.generator.layer_resolution(layer) == 16  # 32 px generator: half its size
    m = _tiny_hfgi(e4e, layer)
    x = world["images"][:3]
    g = e4e.generator
    with torch.no_grad():
        inv = m.invert(x)
        res = inv.extras["residual"]
        assert res.dtype == torch.float16 and res.shape == (3, 3, 64, 64)  # at the encoder's input size
        w = e4e.encode(x)
        rec = F.interpolate(g(w).clamp(-1, 1), size=(64, 64), mode="bilinear", align_corners=False)
        torch.testing.assert_close(inv.wplus, w)
        torch.testing.assert_close(res.float(), m.prepare(x) - rec, atol=2e-3, rtol=0)  # x - resize(clamp(G(w)))
        monkeypatch.setattr(m.encoder, "forward", None)  # rendering and editing never touch the encoder
        delta = torch.randn(1, g.n_latent, 32, generator=torch.Generator().manual_seed(2)) * 0.5
        for d in (None, delta):
            we = w if d is None else w + d
            edited = F.interpolate(g(we).clamp(-1, 1), size=(64, 64), mode="bilinear", align_corners=False)
            scale, shift = m.residue(m.grid_align(torch.cat([res.float(), edited], 1)))
            ref = g(we, noise_mode="const", hooks=[condition_hook(scale, shift, layer)])
            torch.testing.assert_close(m.render(inv, d), ref)  # inversion = the same path with w_edit = w
        out = m.render(inv)
        assert out.shape == (3, 3, 32, 32)  # the generator's full size
        assert (out - g(w)).abs().mean() > 1e-3  # the conditions act
        # batched: each item renders as it does alone
        torch.testing.assert_close(m.render(inv.item(1))[0], out[1], atol=1e-5, rtol=0)
        monkeypatch.undo()
        # invert then render draws G(w) once for both (2 syntheses); any other inversion is drawn in full (2 in render)
        calls: list[int] = []
        hook = g.register_forward_pre_hook(lambda *_: calls.append(1))
        inv2 = m.invert(x)
        torch.testing.assert_close(m.render(inv2), out, atol=0, rtol=0)
        assert len(calls) == 2
        copy = Inversion(inv2.wplus.clone(), dict(inv2.extras))
        torch.testing.assert_close(m.render(copy), out, atol=0, rtol=0)
        assert len(calls) == 4
        inv2.wplus.add_(0.5)  # changed in place: the remembered render is stale
        torch.testing.assert_close(m.render(inv2), m.render(Inversion(inv2.wplus.clone(), inv2.extras)))
        hook.remove()


def test_zero_conditions_draw_the_plain_e4e_image_and_without_ada_the_residual_goes_in_unaligned(world):
    e4e = world["e4e"]
    x = world["images"][:2]
    with torch.no_grad():
        zero = _tiny_hfgi(e4e, 3, zero=True)
        inv = zero.invert(x)
        torch.testing.assert_close(zero.render(inv), e4e.generator(inv.wplus), atol=1e-6, rtol=0)
        plain = _tiny_hfgi(e4e, 3, use_ada=False)
        seen: list[torch.Tensor] = []
        hook = plain.residue.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
        plain.render(inv)
        hook.remove()
        assert torch.equal(seen[0], inv.extras["residual"].float())  # no ADA: Ec gets the stored residual
        ada = _tiny_hfgi(e4e, 3)
        assert (ada.render(inv) - plain.render(inv)).abs().mean() > 1e-4


def test_probe_measures_ada_against_the_unwarped_residual(world):
    e4e = world["e4e"]
    m = _tiny_hfgi(e4e, 3)
    x = world["images"][:3]
    ident = random_perspective(3, 0.0, torch.Generator().manual_seed(0))
    warp = random_perspective(3, 0.15, torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = m.probe_alignment(x, *ident)
        moved = m.probe_alignment(x, *warp)
        res = m.invert(x).extras["residual"].float()
        off = _tiny_hfgi(e4e, 3, use_ada=False).probe_alignment(x, *warp)
    assert list(moved.stages) == ["residual (64 px)"] and moved.zero_edit is None  # one path: nothing to compare
    e = moved.stages["residual (64 px)"]
    torch.testing.assert_close(e["unaligned"], relative_l1(warp_features(res, *warp), res))
    assert float(same.stages["residual (64 px)"]["unaligned"].max()) < 1e-3 and float(e["unaligned"].min()) > 0.05
    torch.testing.assert_close(off.stages["residual (64 px)"]["aligned"], e["unaligned"])


# --------------------------------------------------------------------------------------------------- loading
def _official_dict(base: EncoderMethod, m: HFGIMethod) -> dict:
    sd = {f"encoder.{k}": v for k, v in base.encoder.state_dict().items()}
    sd |= {f"decoder.{k}": v for k, v in base.generator.state_dict().items()}
    sd |= {f"grid_align.{k}": v for k, v in m.grid_align.state_dict().items()}
    sd |= {f"residue.{k}": v for k, v in m.residue.state_dict().items()}
    opts = {"encoder_type": "Encoder4Editing", "start_from_latent_avg": True, "dataset_type": "ffhq_encode"}
    return {"state_dict": sd, "opts": opts, "latent_avg": base.latent_avg.clone()}


def _registry_with(tmp_path: Path, monkeypatch, name: str, filename: str) -> None:
    """The real registry plus nothing: ``hfgi.ffhq`` as shipped, the cache in ``tmp_path``; or a test entry."""
    monkeypatch.setenv("GIE_CACHE_DIR", str(tmp_path / "cache"))
    if name != "hfgi.ffhq":
        reg = tmp_path / "weights.toml"
        reg.write_text(
            f'[[weight]]\nname = "{name}"\nfilename = "{filename}"\nurls = ["http://127.0.0.1:9/x"]\n'
            'sha256 = "unknown"\nsize = "unknown"\nformat = "pt"\nmethod = ["hfgi"]\n'
        )
        monkeypatch.setenv("GIE_WEIGHTS_TOML", str(reg))


def test_the_registry_entry_is_the_official_checkpoint():
    e = load_registry().get("hfgi.ffhq")
    assert e.filename == "ckpt.pt" and "hfgi" in e.method
    assert any("19y6pxOiJWB0NoG3fAZO9Eab66zkN9XIL" in u for u in e.urls)  # anchors.md §1: the "Face Editing" file


def test_an_official_format_ckpt_loads_through_the_users_path(tmp_path, monkeypatch):
    base = _tiny64_e4e()
    m = _tiny_hfgi(base, CONDITION_LAYER)
    path = tmp_path / "dl" / "ckpt.pt"
    path.parent.mkdir()
    torch.save(_official_dict(base, m), path)
    _registry_with(tmp_path, monkeypatch, "hfgi.tiny", "ckpt.pt")
    res = _invoke("weights", "import", path, "--name", "hfgi.tiny")
    assert res.exit_code == 0, res.output
    loaded = create_method("hfgi", "hfgi.tiny")
    assert isinstance(loaded, HFGIMethod) and loaded.condition_layer == CONDITION_LAYER
    assert Path(loaded.weights_path).parent.parent == tmp_path / "cache"
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        a, b = loaded.invert(x), m.invert(x)
        torch.testing.assert_close(a.wplus, b.wplus)
        torch.testing.assert_close(loaded.render(a), m.render(b))
    # gie's own save has the same prefixes and loads the same
    m.save(tmp_path / "gie.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(create_method("hfgi", str(tmp_path / "gie.safetensors")).render(a), m.render(b))


def test_checkpoints_that_are_not_hfgi_are_refused_with_the_reason(world, tmp_path):
    with pytest.raises(CheckpointError, match=r"grid_align\.\*, residue\.\* missing"):
        create_method("hfgi", str(world["weights"]))
    base = _tiny64_e4e()
    ckpt = _official_dict(base, _tiny_hfgi(base, CONDITION_LAYER))
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if k != "residue.conv_layer1.0.weight"}
    torch.save(ckpt, tmp_path / "cut.pt")
    with pytest.raises(StateDictMismatchError, match=r"cut.pt \[residue.\*\].*missing key\(s\): conv_layer1.0.weight"):
        create_method("hfgi", str(tmp_path / "cut.pt"))
    # a 32 px generator has no 64 px block: the official condition layer does not exist
    tiny = world["e4e"]
    torch.save(_official_dict(tiny, _tiny_hfgi(tiny, 3)), tmp_path / "small.pt")
    with pytest.raises(CheckpointError, match="condition layer 7"):
        create_method("hfgi", str(tmp_path / "small.pt"))
    with pytest.raises(UsageError, match="use_ada"):
        create_method("hfgi", str(tmp_path / "small.pt"), nope="1")


# --------------------------------------------------------------------------------------------------- CLI
def test_invert_then_edit_without_the_photo(world, tmp_path):
    e4e = world["e4e"]
    m = _tiny_hfgi(e4e, 3)
    m.save(tmp_path / "hfgi.safetensors")
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted(world["data"].glob("*.png"))[:3]:
        (photos / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "inv"
    res = _invoke("invert", photos, "-o", out, "--method", "hfgi", "-w", tmp_path / "hfgi.safetensors", "--json",
                  "--no-align", "-b", 2)  # fmt: skip
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(recs) == 3 and all(r["status"] == "ok" for r in recs)
    latent = Path(recs[0]["outputs"]["latent"])
    wplus, extras, meta = load_latent(latent)
    with safe_open(str(latent), "pt") as f:  # stored as float16, at the encoder's input size
        assert f.get_slice("extra.residual").get_dtype() == "F16" and tuple(extras["residual"].shape) == (1, 3, 64, 64)
    for p in photos.iterdir():  # the edit needs neither the photo nor the encoder
        p.unlink()
    vec = F.normalize(torch.randn(32, generator=torch.Generator().manual_seed(3)), dim=0)
    direction = Direction("tilt", "w", {"vector": vec}, list(range(e4e.generator.n_latent)), 1.0, (-3.0, 3.0))
    dfile = direction.save(tmp_path / "dirs")
    res = _invoke("edit", latent, "-d", dfile, "-p", "0", "-p", "2", "-o", tmp_path / "edits", "--json")
    assert res.exit_code == 0, res.output
    outs = json.loads(res.stdout.splitlines()[0])["outputs"]
    inv = Inversion(wplus, extras)
    with torch.no_grad():
        ours = render_edit(m, inv, apply(direction, 2.0, wplus))
    got = image_to_tensor(load_image(Path(outs["tilt+2"])), size=32)
    assert (got - ours.clamp(-1, 1)).abs().max() <= 2 / 255 + 1e-6  # the CLI drew the HFGI edit, 8-bit rounding
    zero = image_to_tensor(load_image(Path(outs["tilt+0"])), size=32)
    recon = image_to_tensor(load_image(Path(recs[0]["outputs"]["image"])), size=32)
    assert (zero - recon).abs().max() <= 2 / 255 + 1e-6  # power 0 = the reconstruction


# --------------------------------------------------------------------------------------------------- training
def _trainer(world: dict, **settings: str) -> HFGITrainer:
    base = {"perceptual": "msssim", "id_lambda": "0", "lr": "0.003"}
    return HFGITrainer(str(world["data"]), str(world["weights"]), "cpu", 4, 0, **(base | settings))


def test_train_steps_touch_only_ada_and_the_consultation_encoder(world):
    t = _trainer(world)
    m = t.method
    assert m.condition_layer == 3
    for head in (m.residue.condition_scale3, m.residue.condition_shift3):  # zero_init: training starts at e4e
        assert not head[2].weight.any() and not head[2].bias.any()
    frozen = {k: v.clone() for k, v in [*m.encoder.state_dict().items(), *m.generator.state_dict().items()]}
    before = {k: v.clone() for k, v in [*m.grid_align.state_dict().items(), *m.residue.state_dict().items()]}
    batches = t.batches()
    for step in range(3):
        metrics = t.train_step(next(batches), step)
    assert {"l2_hfgi", "perceptual_hfgi", "adv_hfgi", "l_align", "d_loss"} <= set(metrics)
    after = {k: v for k, v in [*m.encoder.state_dict().items(), *m.generator.state_dict().items()]}
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)
    now = {k: v for k, v in [*m.grid_align.state_dict().items(), *m.residue.state_dict().items()]}
    moved = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], now[k])]
    assert any(k.startswith("conv_layer1") for k in moved) and any("condition_scale3.0" in k for k in moved)
    assert any("dconv_layer3" in k for k in moved)


def test_aug_rate_decides_which_residuals_ada_gets_warped(world):
    for rate, warped in (("0", False), ("1", True)):
        t = _trainer(world, aug_rate=rate)
        seen: list[torch.Tensor] = []
        hook = t.method.grid_align.register_forward_pre_hook(lambda _m, a, seen=seen: seen.append(a[0].detach()))
        batch = next(t.batches())
        with torch.no_grad():
            _, residual, rec = t.method.invert_parts(batch)
        t.train_step(batch, 0)
        hook.remove()
        torch.testing.assert_close(seen[0][:, 3:], rec)  # ADA sees the render the residual belongs to
        diff = (seen[0][:, :3] - residual).abs().flatten(1).amax(1)
        assert bool((diff > 0.01).all()) if warped else float(diff.max()) < 1e-4, (rate, diff)
    with pytest.raises(UsageError, match="align_loss"):
        _trainer(world, align_loss="l3")
    with pytest.raises(UsageError, match="condition_resolution=48"):
        _trainer(world, condition_resolution="48")


def test_train_run_folder_resume_and_export(world, tmp_path):
    runs = tmp_path / "runs"
    args = ["train", "--method", "hfgi", "--data", world["data"], "-w", world["weights"], "-b", 2, "--run-dir", runs,
            "--set", "perceptual=msssim", "--set", "id_lambda=0", "--snapshot-every", 2]  # fmt: skip
    res = _invoke(*args, "--steps", 2)
    assert res.exit_code == 0, res.output
    run = runs / "00000-hfgi"
    opts = json.loads((run / "options.json").read_text())
    assert opts["trainer"]["align_loss"] == "relative" and opts["hfgi"] == {"condition_layer": 3, "channels": 32}
    res = _invoke(*args, "--steps", 3, "--resume", "latest")  # modules, Lookahead and the discriminator come back
    assert res.exit_code == 0, res.output
    assert not (runs / "00001-hfgi").exists()
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    m = create_method("hfgi", res.stdout.strip())
    assert isinstance(m, HFGIMethod) and m.condition_layer == 3


@slow  # a training run
def test_training_learns_the_alignment_and_the_residual_beats_e4e(world, tmp_path):
    runs = tmp_path / "runs"
    res = _invoke("train", "--method", "hfgi", "--data", world["data"], "-w", world["weights"], "-b", 4,
                  "--run-dir", runs, "--steps", 150, "--set", "lr=0.002", "--set", "perceptual=msssim",
                  "--set", "id_lambda=0")  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (runs / "00000-hfgi" / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0]["l_align"], sum(r["l_align"] for r in rows[-3:]) / 3  # logged every 10 steps
    assert rows[0]["step"] == 1 and last < 0.2 * first, (first, last)  # ADA's output: from noise to near the residual
    m = create_method("hfgi", res.stdout.strip())
    x = world["images"]
    with torch.no_grad():
        inv = m.invert(x)
        hf = F.mse_loss(m.render(inv), x)
        e4e = F.mse_loss(m.generator(inv.wplus), x)
    assert float(hf) < 0.7 * float(e4e)  # the residual's details come back


# --------------------------------------------------------------------------------------------------- official
@slow  # 1024 px generator + ir_se50 encoder
def test_official_ckpt_from_the_fixtures_reproduces_every_recorded_output(tmp_path, monkeypatch):
    enc_sd, enc_io, _ = load_parity("e4e_encoder_ir_se50")
    dec_sd, dec_io, _ = load_parity("stylegan2_g1024")
    al_sd, al_io, al_cfg = load_parity("hfgi_ffhq/grid_align")
    re_sd, re_io, re_cfg = load_parity("hfgi_ffhq/residue")
    _, c_io, c_cfg = load_parity("hfgi_conditioned_g1024")
    sd = {f"encoder.{k}": v for k, v in enc_sd.items()} | {f"decoder.{k}": v for k, v in dec_sd.items()}
    sd |= {f"grid_align.{k}": v for k, v in al_sd.items()} | {f"residue.{k}": v for k, v in re_sd.items()}
    avg = torch.randn(512, generator=torch.Generator().manual_seed(3)) * 0.1
    opts = {"encoder_type": "Encoder4Editing", "stylegan_size": 1024, "start_from_latent_avg": True,
            "dataset_type": "ffhq_encode", "is_train": False}  # fmt: skip
    path = tmp_path / "dl" / "ckpt.pt"
    path.parent.mkdir()
    torch.save({"state_dict": sd, "opts": opts, "latent_avg": avg.repeat(18, 1)}, path)
    del sd, enc_sd, dec_sd, al_sd, re_sd
    gc.collect()
    _registry_with(tmp_path, monkeypatch, "hfgi.ffhq", "ckpt.pt")  # the shipped entry, as a user imports it
    res = _invoke("weights", "import", path, "--name", "hfgi.ffhq")
    assert res.exit_code == 0, res.output
    m = create_method("hfgi", "hfgi.ffhq")
    assert m.output_size == 1024 and m.residual_size == 256 and m.condition_layer == CONDITION_LAYER
    fw = _fixture_weights()
    gen = {k: fw.make_tensor(k, s, {}) for cfg in (al_cfg, re_cfg, c_cfg) for k, s in cfg["generated_inputs"].items()}
    with torch.no_grad():
        inv = m.invert(enc_io["img"])
        assert_parity(inv.wplus, enc_io["codes"] + avg)
        aligned = m.grid_align(torch.cat([gen["residual"], gen["edited_image"]], 1))
        assert_parity_io(aligned, al_io, "aligned", rel=True)
        scale, shift = m.residue(first_items(gen["aligned_residual"], len(re_io["x_fingerprint"])))
        for name, out in (("scale", scale), ("shift", shift)):
            assert_parity_io(out, re_io, name, rel=True)
        img = m.generator(c_io["wplus"], noise_mode="const",
                          hooks=[condition_hook(gen["cond_scale"], gen["cond_shift"], m.condition_layer)])  # fmt: skip
        assert_parity_io(img, c_io, "img", rel=True)
        # the whole recipe, from the photo: residual at 256 against the clamped, resized 1024 px render
        rec = residual_size_image(m.generator(inv.wplus), 256)
        torch.testing.assert_close(inv.extras["residual"].float(), enc_io["img"] - rec, atol=2e-3, rtol=0)
        out = m.render(inv)
        assert out.shape == (len(enc_io["img"]), 3, 1024, 1024) and bool(torch.isfinite(out).all())


@slow  # 1024 px generator
def test_conditioned_g1024_fixture():
    gsd, _, _ = load_parity("stylegan2_g1024")
    _, io, cfg = load_parity("hfgi_conditioned_g1024")
    g = Generator(1024).eval()
    g.load_state_dict(gsd, strict=True)
    fw = _fixture_weights()
    gen = {k: fw.make_tensor(k, s, {}) for k, s in cfg["generated_inputs"].items()}
    assert torch.equal(gen["cond_scale"][:, :4, :4, :4], io["cond_scale_fp"])
    with torch.no_grad():
        img = g(io["wplus"], noise_mode="const", hooks=[condition_hook(gen["cond_scale"], gen["cond_shift"])])
    assert_parity_io(img, io, "img", rel=True)

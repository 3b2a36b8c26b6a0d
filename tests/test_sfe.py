"""StyleFeatureEditor as a gie method (Bobkov et al., CVPR 2024): the predicted feature replaces the generator's at
the right point, edits go through the Feature Editor with the e4e codes' feature difference, and the official light
checkpoints load strictly with the generator and e4e of their own files."""

from __future__ import annotations

import gc
import json

import pytest
import torch
from conftest import assert_parity, load_parity, make_tiny_e4e, make_tiny_sfe, slow, write_cli_inputs
from torch import nn

from gie_cli.errors import CheckpointError, UsageError
from gie_cli.methods import EDIT_MASK_KEY, Inversion, create_method
from gie_cli.methods.e4e import EncoderMethod
from gie_cli.methods.sfe.method import E4E_KEY, FEATURE_KEY, SFEMethod, feature_layer_for, feature_mask
from gie_cli.models.stylegan2 import NEXT_INPUT, Hook


def _tiny(editor: nn.Module | None = None) -> SFEMethod:
    return make_tiny_sfe(editor)


class _Difference(nn.Module):
    """A stand-in Feature Editor: ``cat(F, Δ) -> F - Δ``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1] // 2
        return x[:, :c] - x[:, c:]


def test_feature_layer_is_the_second_conv_of_the_feature_block():
    g = make_tiny_e4e().generator  # 32 px: layers 1-2 at 8 px, 3-4 at 16 px, 5-6 at 32 px
    assert feature_layer_for(g, 8) == 2 and feature_layer_for(g, 16) == 4
    assert g.layer_resolution(feature_layer_for(g, 16)) == 16
    with pytest.raises(ValueError, match="no 32 px block before its last"):
        feature_layer_for(g, 32)


@torch.no_grad()
def test_the_generators_own_feature_in_place_of_f_k_redraws_g_of_w():
    """The feature replaces the input of the next block only: with F_k = F_w the image is exactly G(w) (the stand-in
    editor returns F - Δ, and the reconstruction's Δ is 0)."""
    m = _tiny(_Difference())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    inv = m.invert(x)
    assert inv.extras[FEATURE_KEY].dtype == torch.float16 and inv.extras[FEATURE_KEY].shape == (2, 32, 8, 8)
    torch.testing.assert_close(inv.extras[E4E_KEY], m._e4e().encode(x))
    own = Inversion(inv.wplus, {**inv.extras, FEATURE_KEY: m.generator_feature(inv.wplus)})
    torch.testing.assert_close(m.render(own), m.generator(inv.wplus, noise_mode="const"), rtol=0, atol=1e-6)
    assert not torch.allclose(m.render(inv), m.generator(inv.wplus, noise_mode="const"), atol=1e-3)  # F_k is used
    torch.testing.assert_close(m.render(inv, torch.zeros_like(inv.wplus)), m.render(inv))  # power 0 = reconstruction


@torch.no_grad()
def test_edits_add_the_e4e_codes_feature_difference_through_the_feature_editor():
    """With an editor that returns F - Δ, F_k = F_w(w) and e4e codes = w, an edit by d draws exactly G(w + d):
    Δ = F(w_e4e) - F(w_e4e + d) is taken from the e4e codes with the official sign, and the edit renders w + d."""
    m = _tiny(_Difference())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    inv = m.invert(x)
    w = inv.wplus
    same = Inversion(w, {E4E_KEY: w.clone(), FEATURE_KEY: m.generator_feature(w)})
    d = torch.randn(1, *w.shape[1:], generator=torch.Generator().manual_seed(3)) * 0.5
    torch.testing.assert_close(m.render(same, d), m.generator(w + d, noise_mode="const"), rtol=0, atol=1e-5)
    offsets = {3: torch.randn(1, m.generator.style_channels(3)) * 0.5}
    want = m.generator(w, noise_mode="const", style_offsets=offsets)
    torch.testing.assert_close(m.render(same, None, offsets), want, rtol=0, atol=1e-5)


def test_an_inverter_only_model_inverts_and_refuses_edits_with_the_fix():
    e4e = make_tiny_e4e()
    m = _tiny()
    bare = SFEMethod(m.generator, EncoderMethod(m.generator, e4e.encoder, e4e.latent_avg, "e4e", e4e.encoder_config),
                     m.inverter, None, m.latent_avg)  # fmt: skip
    with torch.no_grad():
        inv = bare.invert(torch.zeros(1, 3, 32, 32))
        bare.render(inv)
        with pytest.raises(UsageError, match="no Feature Editor") as e:
            bare.render(inv, torch.zeros_like(inv.wplus))
    assert "sfe.editor_light" in str(e.value.hint)
    with pytest.raises(UsageError, match="no SFE feature"):
        m.render(Inversion(inv.wplus, {}))


# --------------------------------------------------------------------------------------------------- official
@slow  # 1024 px generator + IR-SE50 e4e + iresnet50 Inverter
def test_official_light_checkpoints_from_the_fixtures_load_through_the_users_path(tmp_path):
    enc_sd, enc_io, _ = load_parity("e4e_encoder_ir_se50")
    dec_sd, _, _ = load_parity("stylegan2_g1024")
    inv_sd, inv_io, _ = load_parity("sfe_inverter")
    ed_sd, _, _ = load_parity("sfe_editor")
    avg = torch.randn(512, generator=torch.Generator().manual_seed(3)) * 0.1
    e4e_path = tmp_path / "e4e_ffhq_encode.pt"
    sd = {f"encoder.{k}": v for k, v in enc_sd.items()} | {f"decoder.{k}": v for k, v in dec_sd.items()}
    opts = {"encoder_type": "Encoder4Editing", "stylegan_size": 1024, "start_from_latent_avg": True}
    torch.save({"state_dict": sd, "opts": opts, "latent_avg": avg.repeat(18, 1)}, e4e_path)
    light = {f"inverter.{k}": v for k, v in inv_sd.items()} | {f"encoder.{k}": v for k, v in ed_sd.items()}
    torch.save({"state_dict": light}, tmp_path / "sfe_editor_light.pt")
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in inv_sd.items()}}, tmp_path / "sfe_inverter_light.pt")
    del sd, enc_sd, dec_sd, light
    gc.collect()
    m = create_method("sfe", str(tmp_path / "sfe_editor_light.pt"), generator=str(e4e_path), e4e=str(e4e_path))
    assert m.feature_layer == 8 and m.generator.layer_resolution(8) == 64 and m.editor is not None
    x = inv_io["img"]
    with torch.no_grad():
        codes, _ = m.inverter(x)
        assert_parity(codes, inv_io["w_recon"], 1e-4 * float(inv_io["w_recon"].abs().max()))
        inv = m.invert(x[:1])
        torch.testing.assert_close(inv.wplus, codes[:1] + avg, rtol=0, atol=1e-5)
        img = m.render(inv, torch.zeros_like(inv.wplus))
    assert img.shape == (1, 3, 1024, 1024) and torch.isfinite(img).all()
    # the user's path: gie invert writes W+, the e4e codes and F_k (fp16); gie edit rebuilds SFE from the record
    from typer.testing import CliRunner

    from gie_cli.cli import app
    from gie_cli.editing import Direction, generator_binding
    from gie_cli.io.images import image_to_tensor, load_image, tensor_to_image
    from gie_cli.io.latents import load_latent

    (tmp_path / "in").mkdir()
    tensor_to_image(x[0].clamp(-1, 1)).save(tmp_path / "in" / "face.png")
    vec = torch.randn(512, generator=torch.Generator().manual_seed(5))
    Direction("up", "w", {"vector": vec / vec.norm()}, list(range(18)), power_range=(-3.0, 3.0),
              generator=generator_binding(m.generator, "fixture")).save(tmp_path)  # fmt: skip
    sets = ["--set", f"generator={e4e_path}", "--set", f"e4e={e4e_path}"]
    cli = CliRunner()
    res = cli.invoke(app, ["invert", str(tmp_path / "in"), "-m", "sfe", "-w", str(tmp_path / "sfe_editor_light.pt"),
                           *sets, "--no-align", "-o", str(tmp_path / "inv")])  # fmt: skip
    assert res.exit_code == 0, res.output
    wplus, extras, _ = load_latent(tmp_path / "inv" / "face.latent.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "inv" / "face.latent.safetensors"), "pt") as f:
        assert f.get_slice("extra.feature").get_dtype() == "F16"  # 4 MiB per face instead of 8
    assert tuple(extras["feature"].shape[-3:]) == (512, 64, 64) and tuple(extras["wplus_e4e"].shape) == (1, 18, 512)
    res = cli.invoke(app, ["edit", str(tmp_path / "inv"), "-d", str(tmp_path / "up.direction.safetensors"), "-p", "2",
                           "-o", str(tmp_path / "ed")])  # fmt: skip
    assert res.exit_code == 0, res.output
    with torch.no_grad():
        want = m.render(Inversion(wplus, extras), 2 * (vec / vec.norm()).expand(1, 18, 512))
    got = image_to_tensor(load_image(tmp_path / "ed" / "face.up+2.png"))
    assert (got - want[0].clamp(-1, 1)).abs().mean() < 0.01  # the same edit, up to 8-bit rounding
    bare = create_method("sfe", str(tmp_path / "sfe_inverter_light.pt"), generator=str(e4e_path), e4e=str(e4e_path))
    assert bare.editor is None
    torch.save({"state_dict": enc_io}, tmp_path / "not_sfe.pt")
    with pytest.raises(CheckpointError, match="no SFE Inverter"):
        create_method("sfe", str(tmp_path / "not_sfe.pt"), generator=str(e4e_path), e4e=str(e4e_path))


# --------------------------------------------------------------------------------------------------- masked editing
@torch.no_grad()
def test_the_mask_zeroes_the_feature_difference_outside_the_face():
    """Supplement §9: the mask, scaled to the feature's size, multiplies Δ; with the stand-in editor F - Δ the fed
    feature is F_w(w) - m·(F_w(w) - F_w(w + d)): all of the edit inside the mask, none of it outside."""
    m = _tiny(_Difference())
    w = m.invert(torch.rand(2, 3, 32, 32) * 2 - 1).wplus
    same = {E4E_KEY: w.clone(), FEATURE_KEY: m.generator_feature(w)}
    d = torch.randn(1, *w.shape[1:], generator=torch.Generator().manual_seed(3)) * 0.5
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, :, :16] = 1.0  # the left half of the image: the left half of the 8 px feature
    f0, f1 = m.generator_feature(w), m.generator_feature(w + d)
    m8 = torch.zeros(1, 1, 8, 8)
    m8[..., :4] = 1.0
    fed = f0 - m8 * (f0 - f1)
    want = m.generator(w + d, noise_mode="const", hooks=[Hook(m.feature_layer, lambda _x, _l: fed, NEXT_INPUT)])
    got = m.render(Inversion(w, {**same, EDIT_MASK_KEY: mask}), d)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    ones = Inversion(w, {**same, EDIT_MASK_KEY: torch.ones(1, 1, 32, 32)})
    torch.testing.assert_close(m.render(ones, d), m.render(Inversion(w, same), d), rtol=0, atol=0)  # all face: unmasked
    torch.testing.assert_close(m.render(ones), m.render(Inversion(w, same)), rtol=0, atol=0)  # never the reconstruction


def test_feature_mask_area_averages_to_the_feature_size():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :32, :] = 1.0
    small = feature_mask(mask, 8)
    assert small.shape == (1, 1, 8, 8) and torch.equal(small[..., :4, :], torch.ones(1, 1, 4, 8))
    assert torch.equal(small[..., 4:, :], torch.zeros(1, 1, 4, 8))
    assert feature_mask(mask[:, 0], 8).shape == (1, 1, 8, 8)  # [B, H, W] too


def test_gie_edit_mask_from_files_folders_and_landmarks(tmp_path):
    """`gie edit --mask`: a white mask is the unmasked edit, a black one keeps the feature unedited; a folder gives each
    latent its NAME.mask.png; landmarks need an alignment record; methods without masked editing are refused."""
    from PIL import Image
    from typer.testing import CliRunner

    from gie_cli.cli import app
    from gie_cli.io.images import image_to_tensor, load_image

    m = _tiny()
    m.save(tmp_path / "sfe.safetensors")
    write_cli_inputs(tmp_path, m.generator)
    cli = CliRunner()

    def run(*args: str):
        return cli.invoke(app, [str(a) for a in args])

    res = run("invert", tmp_path / "in", "-m", "sfe", "-w", tmp_path / "sfe.safetensors", "--no-align", "-o",
              tmp_path / "inv")  # fmt: skip
    assert res.exit_code == 0, res.output
    Image.new("L", (32, 32), 255).save(tmp_path / "white.png")
    (tmp_path / "masks").mkdir()
    for i in range(2):
        Image.new("L", (32, 32), 0).save(tmp_path / "masks" / f"f{i}.mask.png")
    edit = ["edit", tmp_path / "inv", "-d", tmp_path / "up.direction.safetensors", "-p", "3"]
    outs = {}
    for name, extra in (("plain", []), ("white", ["--mask", tmp_path / "white.png"]),
                        ("black", ["--mask", tmp_path / "masks"])):  # fmt: skip
        res = run(*edit, *extra, "-o", tmp_path / name)
        assert res.exit_code == 0, res.output
        outs[name] = image_to_tensor(load_image(tmp_path / name / "f0.up+3.png"))
    assert torch.equal(outs["white"], outs["plain"])
    assert not torch.equal(outs["black"], outs["plain"])
    record = json.loads((tmp_path / "black" / "manifest.jsonl").read_text().splitlines()[0])
    assert record["info"]["mask"] == str(tmp_path / "masks" / "f0.mask.png")
    res = run(*edit, "--mask", "landmarks", "-o", tmp_path / "lm")
    assert res.exit_code == 1 and "no alignment record" in res.output
    res = run(*edit, "--mask", tmp_path / "nothing.png", "-o", tmp_path / "x")
    assert res.exit_code == 2 and "no such file" in res.output
    m._e4e().save(tmp_path / "e4e.safetensors")
    res = run("invert", tmp_path / "in", "-m", "e4e", "-w", tmp_path / "e4e.safetensors", "--no-align", "-o",
              tmp_path / "inv_e4e")  # fmt: skip
    assert res.exit_code == 0, res.output
    res = run("edit", tmp_path / "inv_e4e", "-d", tmp_path / "up.direction.safetensors", "-p", "3", "--mask",
              tmp_path / "white.png", "-o", tmp_path / "e4e_ed")  # fmt: skip
    assert res.exit_code == 1 and "no masked editing" in res.output

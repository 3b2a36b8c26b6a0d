"""HFGI's official modules (Wang et al., CVPR 2022) against the parity fixtures: the ADA ``grid_align``, the
consultation encoder ``residue`` and the conditioned 64x64 block, loaded strictly with the official keys."""

from __future__ import annotations

import torch
from conftest import _fixture_weights, assert_parity, assert_parity_io, first_items, load_parity, manifest_keys

from gie_cli.io.checkpoint import load_state_dict_strict
from gie_cli.methods.hfgi import CONDITION_LAYER, ResidualAligner, ResidualEncoder, condition_hook
from gie_cli.models import create_model


def _generated(cfg: dict) -> dict[str, torch.Tensor]:
    fw = _fixture_weights()
    return {k: fw.make_tensor(k, spec, {}) for k, spec in cfg.get("generated_inputs", {}).items()}


def test_grid_align_has_the_official_keys_and_reproduces_the_recorded_output():
    sd, io, cfg = load_parity("hfgi_ffhq/grid_align")
    net = ResidualAligner().eval()
    assert [(k, list(v.shape)) for k, v in net.state_dict().items()] == manifest_keys("hfgi_ffhq/grid_align")
    load_state_dict_strict(net, sd, "hfgi grid_align fixture")
    gen = _generated(cfg)
    x = torch.cat([gen["residual"], gen["edited_image"]], dim=1)
    assert torch.equal(x[:, :, :4, :4], io["x_fingerprint"])
    with torch.no_grad():
        out = net(x)
    assert_parity_io(out, io, "aligned", rel=True)


def test_residue_has_the_official_keys_and_reproduces_the_recorded_conditions():
    sd, io, cfg = load_parity("hfgi_ffhq/residue")
    net = ResidualEncoder().eval()
    assert [(k, list(v.shape)) for k, v in net.state_dict().items()] == manifest_keys("hfgi_ffhq/residue")
    load_state_dict_strict(net, sd, "hfgi residue fixture")
    x = first_items(_generated(cfg)["aligned_residual"], len(io["x_fingerprint"]))  # slim.json first_item
    assert torch.equal(x[:, :, :4, :4], io["x_fingerprint"])
    with torch.no_grad():
        scale, shift = net(x)
    for name, out in (("scale", scale), ("shift", shift)):
        assert_parity_io(out, io, name, rel=True)


def test_the_conditioned_64_block_is_a_hook_of_the_one_generator():
    gsd, _, _ = load_parity("stylegan2_g64")
    _, io, cfg = load_parity("hfgi_conditioned_g64")
    g = create_model("stylegan2", size=64, style_dim=512, n_mlp=8, channel_multiplier=2).eval()
    load_state_dict_strict(g, gsd, "stylegan2_g64 fixture")
    gen = _generated(cfg)
    assert torch.equal(gen["cond_scale"][:, :4, :4, :4], io["cond_scale_fp"])
    with torch.no_grad():
        hook = condition_hook(gen["cond_scale"], gen["cond_shift"])
        img = g(io["wplus"], noise_mode="const", hooks=[hook])
        plain = g(io["wplus"], noise_mode="const")
    assert hook.layer == CONDITION_LAYER and g.layer_resolution(CONDITION_LAYER) == 64
    assert_parity(img, io["img"], 1e-4 * float(io["img"].abs().max()))
    assert_parity(plain, io["img_uncond"], 1e-4 * float(io["img_uncond"].abs().max()))

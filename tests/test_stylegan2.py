"""StyleGAN2 generator/discriminator: official layout, parity with recorded rosinality outputs, hooks."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_parity, assert_parity_io, load_parity, manifest_keys, slow

from gie_cli.models import Discriminator, Generator, create_model
from gie_cli.models.stylegan2 import (
    MODCONV_IMPLS,
    ModulatedConv2d,
    discriminator_config_from_state_dict,
    generator_config_from_state_dict,
)

GEN_FIXTURES = {"stylegan2_g64": 64, "stylegan2_g256": 256, "stylegan2_g1024": 1024}


def _official_generator(name: str) -> tuple[Generator, dict]:
    sd, io, cfg = load_parity(name)
    g = Generator(cfg["size"], cfg["style_dim"], cfg["n_mlp"], cfg["channel_multiplier"]).eval()
    g.load_state_dict(sd, strict=True)
    return g, io


@pytest.mark.parametrize("name", list(GEN_FIXTURES))
def test_generator_state_dict_layout(name):
    size = GEN_FIXTURES[name]
    g = Generator(size)
    ours = [(k, list(v.shape)) for k, v in g.state_dict().items()]
    assert ours == manifest_keys(name)  # same keys, same shapes, same order (w_avg is not persistent)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=slow) if size == 1024 else n for n, size in GEN_FIXTURES.items()]
)  # 1024 px: 6-8 s each, slow; 64 and 256 px run by default
@pytest.mark.parametrize("modconv", MODCONV_IMPLS)
def test_generator_parity(name, modconv, monkeypatch):
    monkeypatch.setattr(ModulatedConv2d, "modconv", modconv)
    g, io = _official_generator(name)
    with torch.no_grad():
        w = g.mapping(io["z"])
        assert_parity(w, io["w_of_z"])
        img_z = g(g.broadcast(w), noise_mode="const")
        img_wp = g(io["wplus"], noise_mode="const")
    assert_parity_io(img_z, io, "img_from_z")
    assert_parity_io(img_wp, io, "img_from_wplus")


def test_discriminator_parity():
    sd, io, cfg = load_parity("stylegan2_d256")
    d = Discriminator(cfg["size"], cfg["channel_multiplier"]).eval()
    assert [(k, list(v.shape)) for k, v in d.state_dict().items()] == manifest_keys("stylegan2_d256")
    d.load_state_dict(sd, strict=True)
    with torch.no_grad():
        assert_parity(d(io["img"]), io["logits"])


def test_config_inference_from_state_dict():
    sd, _, _ = load_parity("stylegan2_g256")
    assert generator_config_from_state_dict(sd) == {
        "size": 256,
        "style_dim": 512,
        "n_mlp": 8,
        "channels": {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128},
    }
    dsd, _, _ = load_parity("stylegan2_d256")
    dcfg = discriminator_config_from_state_dict(dsd)
    assert dcfg["size"] == 256 and dcfg["channels"][256] == 128 and dcfg["channels"][4] == 512
    assert Discriminator(**dcfg).load_state_dict(dsd, strict=True) is not None


def test_tiny_config_keeps_key_names():
    full = Generator(64, style_dim=64, n_mlp=2)
    tiny = create_model("stylegan2-tiny64")
    assert list(full.state_dict()) == list(tiny.state_dict())
    assert tiny.conv1.conv.weight.shape == (1, 64, 64, 3, 3)
    assert Generator(32, style_dim=8, n_mlp=1, channels={4: 16, 8: 8, 16: 8, 32: 4}).channels[32] == 4


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Generator(32, style_dim=16, n_mlp=2, channel_max=16).eval()


def test_mapping_truncation(tiny):
    z = torch.randn(3, 16)
    w = tiny.mapping(z)
    avg = tiny.mean_latent(256)
    assert torch.allclose(tiny.w_avg, avg)
    wt = tiny.mapping(z, truncation=0.5)
    assert torch.allclose(wt, avg + 0.5 * (w - avg), atol=1e-6)
    assert torch.allclose(tiny.mapping(z, truncation=0.0), avg.expand(3, -1), atol=1e-6)


def test_noise_modes(tiny):
    wp = tiny.broadcast(torch.randn(2, 16))
    with torch.no_grad():
        a, b = tiny(wp, noise_mode="const"), tiny(wp, noise_mode="const")
        assert torch.equal(a, b)
        for layer in range(tiny.num_layers):  # make noise matter
            (tiny.convs[layer - 1] if layer else tiny.conv1).noise.weight.fill_(0.5)
        c, d = tiny(wp, noise_mode="random"), tiny(wp, noise_mode="random")
        assert not torch.allclose(c, d)
        zero = [torch.zeros(1, 1, tiny.layer_resolution(i), tiny.layer_resolution(i)) for i in range(tiny.num_layers)]
        assert torch.allclose(tiny(wp, noise_mode="none"), tiny(wp, noise=zero), atol=1e-6)
        with pytest.raises(ValueError):
            tiny(wp, noise_mode="bogus")
        for layer in range(tiny.num_layers):
            (tiny.convs[layer - 1] if layer else tiny.conv1).noise.weight.zero_()


def test_wplus_shape_assert(tiny):
    with pytest.raises(AssertionError, match="W\\+ must be"):
        tiny(torch.randn(2, 5, 16))


def test_feature_hooks_read_modify_stop(tiny):
    wp = tiny.broadcast(torch.randn(2, 16))
    with torch.no_grad():
        base = tiny.synthesis(wp, return_features=True)
        assert sorted(base.features) == list(range(tiny.num_layers))
        for layer, f in base.features.items():
            assert f.shape == (
                2,
                tiny.layer_channels(layer),
                tiny.layer_resolution(layer),
                tiny.layer_resolution(layer),
            )
        # identity hook changes nothing; a modifying hook (HFGI-style scale/shift at one layer) changes the image
        same = tiny.synthesis(wp, feature_hooks={3: lambda f, layer: f}).image
        assert torch.equal(same, base.image)
        seen = []

        def hook(f, layer):
            seen.append(layer)
            return f * 1.5 + 0.1

        mod = tiny.synthesis(wp, feature_hooks={3: hook}, return_features=[3, 4])
        assert seen == [3]
        assert torch.allclose(mod.features[3], base.features[3] * 1.5 + 0.1)
        assert not torch.allclose(mod.image, base.image)
        # layers before the hook are untouched; replacing a layer with its recorded value reproduces the image
        rep = tiny.synthesis(wp, feature_hooks={4: lambda f, layer: base.features[4]}).image
        assert torch.allclose(rep, base.image, atol=1e-6)
        early = tiny.synthesis(wp, return_features=[2], stop_at_layer=2)
        assert early.image is None and torch.equal(early.features[2], base.features[2])


def test_generator_backward_reaches_latent(tiny):
    wp = tiny.broadcast(torch.randn(1, 16)).clone().requires_grad_(True)
    tiny(wp).square().mean().backward()
    assert wp.grad is not None and wp.grad.abs().sum() > 0

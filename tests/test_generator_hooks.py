"""The generator's insertion points (post-activation, next-input, pre-activation) and explicit StyleSpace offsets."""

from __future__ import annotations

import pytest
import torch

from gie_cli.models import create_model
from gie_cli.models.stylegan2 import NEXT_INPUT, POST_ACTIVATION, PRE_ACTIVATION, PRE_NOISE, Generator, Hook


@pytest.fixture(scope="module")
def g() -> Generator:
    torch.manual_seed(0)
    gen = create_model("stylegan2", size=32, style_dim=16, n_mlp=1, channels={4: 16, 8: 12, 16: 8, 32: 6}).eval()
    with torch.no_grad():  # non-zero noise strengths, so the noise input matters
        for conv in [gen.conv1, *gen.convs]:
            conv.noise.weight.fill_(0.3)
    return gen


@pytest.fixture(scope="module")
def w(g: Generator) -> torch.Tensor:
    return torch.randn(2, g.n_latent, g.style_dim, generator=torch.Generator().manual_seed(1))


def _reference(g: Generator, w: torch.Tensor, replace_after_rgb: dict | None = None) -> torch.Tensor:
    """The synthesis loop written out by hand (the executable spec of SFE's ``insert_feature``): the map of layer
    ``l`` is replaced by ``replace_after_rgb[l](x)`` only as the input of layer ``l + 1``, after its block's ToRGB."""
    rep = replace_after_rgb or {}
    noise = [getattr(g.noises, f"noise_{i}") for i in range(g.num_layers)]
    x = g.conv1(g.input(w.shape[0]), w[:, 0], noise[0])
    skip = g.to_rgb1(x, w[:, 1])
    x = rep[0](x) if 0 in rep else x
    i = 1
    for k, rgb in enumerate(g.to_rgbs):
        x = g.convs[2 * k](x, w[:, i], noise[2 * k + 1])
        x = rep[2 * k + 1](x) if 2 * k + 1 in rep else x
        x = g.convs[2 * k + 1](x, w[:, i + 1], noise[2 * k + 2])
        skip = rgb(x, w[:, i + 2], skip)
        x = rep[2 * k + 2](x) if 2 * k + 2 in rep else x
        i += 2
    return skip


@torch.no_grad()
def test_the_plain_loop_matches_the_reference(g, w):
    torch.testing.assert_close(g(w), _reference(g, w), rtol=0, atol=0)


@torch.no_grad()
def test_next_input_replaces_only_the_next_layers_input(g, w):
    def scale(x, layer=None):
        return 0.5 * x

    out = g(w, hooks=[Hook(4, scale, NEXT_INPUT)])
    torch.testing.assert_close(out, _reference(g, w, {4: scale}), rtol=0, atol=1e-6)
    # the post-activation hook also changes the ToRGB of layer 4's block: a different image
    post = g(w, hooks=[Hook(4, scale, POST_ACTIVATION)])
    assert (post - out).abs().max() > 1e-3
    # at the last layer the next input feeds nothing
    torch.testing.assert_close(g(w, hooks=[Hook(g.num_layers - 1, scale, NEXT_INPUT)]), g(w), rtol=0, atol=0)
    assert (g(w, hooks=[Hook(g.num_layers - 1, scale)]) - g(w)).abs().max() > 1e-3


@torch.no_grad()
def test_next_input_at_the_first_conv_of_a_block_equals_post_activation(g, w):
    def f(x, layer):
        return x.flip(-1)

    torch.testing.assert_close(g(w, hooks=[Hook(3, f, NEXT_INPUT)]), g(w, feature_hooks={3: f}), rtol=0, atol=0)


@torch.no_grad()
def test_pre_activation_sees_the_style_and_injects_like_the_noise_input(g, w):
    layer = 3
    conv = g.convs[layer - 1]
    inject = torch.randn(2, 1, g.layer_resolution(layer), g.layer_resolution(layer))
    seen = {}

    def hook(x, lyr, style):
        seen["style"], seen["layer"] = style, lyr
        return x + conv.noise.weight * inject

    noise_off = [None] * g.num_layers
    noise_off[layer] = torch.zeros(1, 1, 1, 1)  # this layer's own noise off: the hook injects instead
    out = g(w, noise=noise_off, hooks=[Hook(layer, hook, PRE_ACTIVATION)])
    noise_in = [None] * g.num_layers
    noise_in[layer] = inject
    torch.testing.assert_close(out, g(w, noise=noise_in), rtol=1e-5, atol=1e-5)
    assert seen["layer"] == layer
    torch.testing.assert_close(seen["style"], conv.conv.modulation(w[:, layer]))
    assert seen["style"].shape == (2, g.style_channels(layer))


@torch.no_grad()
def test_pre_noise_sees_the_conv_output_before_its_noise(g, w):
    """OOD's injection point: the hook gets the modulated conv's output without the layer's noise, and what it returns
    still gets that noise, bias and activation."""
    layer = 3
    seen = {}

    def grab(x, lyr, style):
        seen["pre_noise"] = x
        return x

    def grab_pre(x, lyr, style):
        seen["pre_activation"] = x
        return x

    out = g(w, hooks=[Hook(layer, grab, PRE_NOISE), Hook(layer, grab_pre, PRE_ACTIVATION)])
    torch.testing.assert_close(out, g(w), rtol=1e-5, atol=1e-5)
    conv = g.convs[layer - 1]
    noise = getattr(g.noises, f"noise_{layer}")
    torch.testing.assert_close(seen["pre_activation"], seen["pre_noise"] + conv.noise.weight * noise)
    shifted = g(w, hooks=[Hook(layer, lambda x, lyr, style: x + 0.5, PRE_NOISE)])
    torch.testing.assert_close(shifted, g(w, hooks=[Hook(layer, lambda x, lyr, style: x + 0.5, PRE_ACTIVATION)]))


@torch.no_grad()
def test_hooks_on_one_layer_compose_in_order(g, w):
    def add(x, layer):
        return x + 1.0

    def double(x, layer):
        return 2.0 * x

    composed = g(w, feature_hooks={2: add}, hooks=[Hook(2, double)])
    torch.testing.assert_close(composed, g(w, feature_hooks={2: lambda x, layer: 2.0 * (x + 1.0)}), rtol=0, atol=0)
    assert (composed - g(w, feature_hooks={2: lambda x, layer: 2.0 * x + 1.0})).abs().max() > 1e-3


@torch.no_grad()
def test_style_offsets_add_to_the_style_vectors(g, w):
    layer = 2
    mod = g.convs[layer - 1].conv.modulation
    off = torch.randn(2, g.style_channels(layer))
    handle = mod.register_forward_hook(lambda _m, _i, out: out + off)  # the definition: s_l + offset
    try:
        expected = g(w)
    finally:
        handle.remove()
    torch.testing.assert_close(g(w, style_offsets={layer: off}), expected, rtol=1e-6, atol=1e-6)
    zero = torch.zeros(1, g.style_channels(layer))
    torch.testing.assert_close(g(w, style_offsets={layer: zero}), g(w), rtol=0, atol=1e-7)


def test_bad_hooks_and_offsets_are_refused(g, w):
    with pytest.raises(ValueError, match="hook point"):
        Hook(0, lambda x, layer: x, "after_everything")
    with pytest.raises(ValueError, match="layers 0.."):
        g(w, hooks=[Hook(g.num_layers, lambda x, layer: x)])
    with pytest.raises(ValueError, match="style offset of layer 1"):
        g(w, style_offsets={1: torch.zeros(1, 5)})
    with pytest.raises(ValueError, match="style offset for conv layer 99"):
        g(w, style_offsets={99: torch.zeros(1, 4)})


def test_device_and_style_channels(g):
    assert g.device == torch.device("cpu") and g.dtype == torch.float32
    widths = [c.conv.modulation.weight.shape[0] for c in [g.conv1, *g.convs]]
    assert [g.style_channels(layer) for layer in range(g.num_layers)] == widths

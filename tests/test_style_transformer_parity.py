"""Style Transformer's inversion encoder (Hu et al., CVPR 2022) against its parity fixture: the official
``encoder.module.*`` keys load strictly and the recorded queries and codes are reproduced, with the queries made by
gie's generator's mapping MLP (fixture weights of the 1024 px generator's ``style.*``)."""

from __future__ import annotations

import torch
from conftest import assert_parity, load_parity, manifest_keys

from gie_cli.io.checkpoint import load_state_dict_strict
from gie_cli.methods.style_transformer import StyleTransformerEncoder
from gie_cli.models.stylegan2 import Generator


def test_style_transformer_encoder_has_the_official_keys_and_reproduces_queries_and_codes():
    sd, io, _ = load_parity("style_transformer_ffhq")
    gsd, _, _ = load_parity("stylegan2_g1024")
    with torch.device("meta"):
        enc = StyleTransformerEncoder()
    assert [(k, list(v.shape)) for k, v in enc.state_dict().items()] == manifest_keys("style_transformer_ffhq")
    load_state_dict_strict(enc, sd, "style transformer fixture", assign=True)
    enc.eval()
    with torch.device("meta"):
        g = Generator(1024)
    mapping = {k.removeprefix("style."): v for k, v in gsd.items() if k.startswith("style.")}
    load_state_dict_strict(g.style, mapping, "stylegan2_g1024 fixture [style.*]", assign=True)
    with torch.no_grad():
        query = enc.queries(g.style, len(io["img"]))
        assert_parity(query, io["query"], 1e-4 * float(io["query"].abs().max()))
        codes = enc(io["img"], g.style)
    assert_parity(codes, io["codes"], 1e-4 * float(io["codes"].abs().max()))


def test_tiny_configs_take_the_generators_row_count_and_width():
    torch.manual_seed(0)
    g = Generator(64, style_dim=32, n_mlp=2, channel_max=32)
    enc = StyleTransformerEncoder(n_styles=g.n_latent, style_dim=32, unit_counts=[1, 1, 1, 1], widths=[8, 16, 24, 32],
                                  dim_feedforward=64, input_size=64).eval()  # fmt: skip
    assert enc.z.shape == (1, g.n_latent, 32)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        codes = enc(x, g.style)
        assert codes.shape == (3, g.n_latent, 32)
        torch.testing.assert_close(enc(x[1:2], g.style)[0], codes[1], atol=1e-5, rtol=0)  # items are independent
        q = enc.queries(g.style, 1)[0]
        torch.testing.assert_close(q, g.style(enc.z[0]))  # queries = the mapping MLP applied to each z row

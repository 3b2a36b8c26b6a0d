"""Style Transformer as a gie method: the official checkpoint layout (DataParallel ``.module.`` prefixes) loads
through the user's path, its own fine-tuned mapping makes the queries, and FFHQ directions still bind to it."""

from __future__ import annotations

import gc

import pytest
import torch
from conftest import assert_parity, load_parity, make_tiny_e4e, slow

from gie_cli.editing.binding import generator_fingerprint
from gie_cli.errors import CheckpointError
from gie_cli.methods import create_method
from gie_cli.methods.style_transformer import StyleTransformerEncoder
from gie_cli.models.stylegan2 import Generator


def _tiny() -> tuple[StyleTransformerEncoder, Generator, torch.Tensor]:
    torch.manual_seed(0)
    g = Generator(64, style_dim=32, n_mlp=2, channel_max=32)
    enc = StyleTransformerEncoder(n_styles=g.n_latent, style_dim=32, unit_counts=[1, 1, 1, 1], widths=[8, 16, 24, 32],
                                  dim_feedforward=64, input_size=64).eval()  # fmt: skip
    return enc, g, torch.randn(32) * 0.1


def _official(path, enc, g, avg) -> None:
    sd = {f"encoder.module.{k}": v for k, v in enc.state_dict().items()}
    sd |= {f"decoder.module.{k}": v for k, v in g.state_dict().items()}
    opts = {"encoder_type": "GradualStyleEncoder", "start_from_latent_avg": True, "dataset_type": "ffhq_encode"}
    torch.save({"state_dict": sd, "opts": opts, "latent_avg": avg}, path)


def test_official_layout_loads_and_uses_its_own_mapping(tmp_path):
    enc, g, avg = _tiny()
    _official(tmp_path / "st.pt", enc, g, avg)
    m = create_method("style_transformer", str(tmp_path / "st.pt"))
    assert m.input_size == 256  # official files carry no input size: the official 256
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(m.invert(x).wplus, enc(x, g.style) + avg)
    # a fine-tuned mapping in the checkpoint (as Style Transformer's) makes other queries, hence other codes ...
    tuned = Generator(64, style_dim=32, n_mlp=2, channel_max=32)
    tuned.load_state_dict(g.state_dict())
    with torch.no_grad():
        tuned.style[1].weight.mul_(1.5)
    _official(tmp_path / "tuned.pt", enc, tuned, avg)
    m2 = create_method("style_transformer", str(tmp_path / "tuned.pt"))
    with torch.no_grad():
        torch.testing.assert_close(m2.invert(x).wplus, enc(x, tuned.style) + avg)
        assert (m2.invert(x).wplus - m.invert(x).wplus).abs().max() > 1e-3
    # ... while the synthesis network, which directions are bound to, is the same
    assert generator_fingerprint(m2.generator) == generator_fingerprint(m.generator)
    # gie's own save reloads the same
    m2.save(tmp_path / "st.safetensors")
    with torch.no_grad():
        again = create_method("style_transformer", str(tmp_path / "st.safetensors")).invert(x).wplus
    torch.testing.assert_close(again, m2.invert(x).wplus)


def test_an_e4e_checkpoint_is_not_a_style_transformer(tmp_path):
    e4e = make_tiny_e4e()
    e4e.save(tmp_path / "e4e.safetensors")
    with pytest.raises(CheckpointError, match="no learned queries 'z'"):
        create_method("style_transformer", str(tmp_path / "e4e.safetensors"))


@slow  # ir_se50 encoder + 1024 px generator
def test_official_checkpoint_from_the_fixtures_reproduces_the_recorded_codes(tmp_path):
    sd, io, _ = load_parity("style_transformer_ffhq")
    gsd, _, _ = load_parity("stylegan2_g1024")
    full = {f"encoder.module.{k}": v for k, v in sd.items()} | {f"decoder.module.{k}": v for k, v in gsd.items()}
    avg = torch.randn(512, generator=torch.Generator().manual_seed(3)) * 0.1
    path = tmp_path / "style-transformer-ffhq.pt"
    torch.save({"state_dict": full, "opts": {"start_from_latent_avg": True}, "latent_avg": avg}, path)
    del full, sd, gsd
    gc.collect()
    m = create_method("style_transformer", str(path))
    assert m.generator.size == 1024 and m.encoder.n_styles == 18
    with torch.no_grad():
        codes = m.invert(io["img"]).wplus
    assert_parity(codes, io["codes"] + avg, 1e-4 * float(io["codes"].abs().max()))

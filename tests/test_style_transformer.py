"""Style Transformer as a gie method: the official checkpoint layout (DataParallel ``.module.`` prefixes) loads
through the user's path, its own fine-tuned mapping makes the queries, and FFHQ directions still bind to it."""

from __future__ import annotations

import gc
import json

import pytest
import torch
from conftest import assert_parity, load_parity, make_tiny_e4e, make_tiny_e4e_world, slow
from typer.testing import CliRunner

from gie_cli.cli import app
from gie_cli.editing.binding import generator_fingerprint
from gie_cli.errors import CheckpointError, UsageError
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


# --------------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_tiny_e4e_world(tmp_path_factory.mktemp("st_world"))


def _trainer(world: dict, **settings: str):
    from gie_cli.methods.style_transformer.train import StyleTransformerTrainer

    base = {"encoder": "tiny", "perceptual": "msssim", "id_lambda": "0", "lr": "0.001"}
    return StyleTransformerTrainer(str(world["data"]), str(world["weights"]), "cpu", 8, 0, **(base | settings))


def _recon_l2(method, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((method.generator(method.encode(x), noise_mode="const") - x).square().mean())


def test_training_fits_the_encoder_and_mapping_with_the_synthesis_frozen(world):
    t = _trainer(world)
    m, g = t.method, t.method.generator
    assert m.encoder.widths[-1] == g.style_dim and m.encoder.n_styles == g.n_latent  # sized for the generator
    synthesis = {k: v.clone() for k, v in g.state_dict().items() if not k.startswith("style.")}
    mapping = {k: v.clone() for k, v in g.style.state_dict().items()}
    x = world["images"]
    m.eval()
    before = _recon_l2(m, x)
    m.encoder.train()
    batches = t.batches()
    for step in range(40):
        metrics = t.train_step(next(batches), step)
    assert {"l2_rec", "perceptual_rec", "loss"} <= set(metrics) and "adv_rec" not in metrics  # pSp's losses, no D
    m.eval()
    after = _recon_l2(m, x)
    assert after < 0.7 * before, (before, after)  # it learns to reconstruct its training images
    now = g.state_dict()
    assert all(torch.equal(v, now[k]) for k, v in synthesis.items())  # synthesis frozen
    assert any(not torch.equal(v, g.style.state_dict()[k]) for k, v in mapping.items())  # mapping trained
    with pytest.raises(UsageError, match="optimizer"):
        _trainer(world, optimizer="sgd")


def test_train_cli_exports_a_checkpoint_the_method_loads_and_body_from_copies_the_backbone(world, tmp_path):
    runs = tmp_path / "runs"
    args = [
        "train",
        "--method",
        "style_transformer",
        "--data",
        world["data"],
        "-w",
        world["weights"],
        "-b",
        4,
        "--run-dir",
        runs,
        "--set",
        "encoder=tiny",
        "--set",
        "perceptual=msssim",
        "--set",
        "id_lambda=0",
    ]
    res = CliRunner().invoke(app, [str(a) for a in [*args, "--steps", 2]])
    assert res.exit_code == 0, res.output
    opts = json.loads((runs / "00000-style_transformer" / "options.json").read_text())
    assert opts["trainer"]["optimizer"] == "ranger" and opts["trainer"]["train_mapping"] is True
    exported = res.stdout.strip()
    m = create_method("style_transformer", exported)
    x = world["images"][:2]
    ref = _trainer(world, init=exported).method.eval()  # init= fine-tunes the exported model: same codes
    with torch.no_grad():
        torch.testing.assert_close(m.encode(x), ref.encode(x))
    body = _trainer(world, body_from=exported).method.encoder.state_dict()
    src = m.encoder.state_dict()
    assert all(torch.equal(body[k], src[k]) for k in src if k.startswith(("input_layer.", "body.")))
    assert not torch.equal(body["z"], src["z"])  # only the backbone is copied
    with pytest.raises(UsageError, match="backbone does not match"):
        _trainer(world, body_from=str(world["weights"]))  # the tiny e4e's backbone has other widths
    arcface = {k: v for k, v in src.items() if k.startswith(("input_layer.", "body."))}
    arcface["output_layer.weight"] = torch.zeros(2)  # ArcFace's head is ignored
    torch.save(arcface, tmp_path / "model_ir_se50.pth")  # the ArcFace layout: no encoder. prefix
    body = _trainer(world, body_from=str(tmp_path / "model_ir_se50.pth")).method.encoder.state_dict()
    assert all(torch.equal(body[k], v) for k, v in arcface.items() if not k.startswith("output_layer"))


def test_stored_on_base_keeps_only_the_mapping_of_the_generator(world, tmp_path):
    from safetensors import safe_open

    from gie_cli.models.loading import save_on_base
    from gie_cli.synth.zoo import ZOO_BASES

    t = _trainer(world)
    t.train_step(next(t.batches()), 0)  # the mapping moves, the synthesis does not
    full = tmp_path / "st.safetensors"
    t.export(full)
    parts = ZOO_BASES["style_transformer"][1]
    slim = save_on_base(tmp_path / "slim.safetensors", full, str(world["weights"]), parts)
    with safe_open(str(slim), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("decoder.style.") for k in keys) and any(k.startswith("encoder.") for k in keys)
    assert not any(k.startswith("decoder.") and not k.startswith("decoder.style.") for k in keys)
    x = world["images"][:2]
    a, b = create_method("style_transformer", str(full)), create_method("style_transformer", str(slim))
    with torch.no_grad():
        torch.testing.assert_close(b.encode(x), a.encode(x), rtol=0, atol=0)
        torch.testing.assert_close(b.render(b.invert(x)), a.render(a.invert(x)), rtol=0, atol=0)
    with torch.no_grad():
        t.method.generator.convs[0].conv.weight.add_(0.01)  # a synthesis that is not the base's is refused
    t.export(full)
    with pytest.raises(CheckpointError, match="decoder.convs.0.conv.weight' differs from the base"):
        save_on_base(tmp_path / "bad.safetensors", full, str(world["weights"]), parts)

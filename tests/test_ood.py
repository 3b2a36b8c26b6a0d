"""OOD GAN inversion (Yin et al., ICCV 2023) as a gie method on tiny models: the merges of Algorithms 1-2, the warp,
the blend, the injection point, editing from stored flows and masks, and gie's and the official checkpoint formats."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_e4e, write_cli_inputs

from gie_cli.errors import CheckpointError, UsageError
from gie_cli.methods import create_method
from gie_cli.methods.ood.method import (
    SOURCE_KEY,
    OODMethod,
    align_key,
    level_layer,
    load_ood,
    samm_config_from_state_dict,
)
from gie_cli.methods.ood.modules import SAMMBlock, blend, gather_masks, merge_masks, warp_feature
from gie_cli.methods.ood.train import default_levels, mask_loss, new_samm, quiet_init
from gie_cli.models.stylegan2 import Generator


def make_tiny_ood(mask_logit: float | None = None, seed: int = 0) -> OODMethod:
    """OOD on :func:`make_tiny_e4e` (32 px generator, e4e at 64 px): levels 32, 16, 8 px. ``mask_logit`` sets every
    level's flow to zero and its mask to ``sigmoid(mask_logit)``; None keeps random weights."""
    e4e = make_tiny_e4e()
    torch.manual_seed(seed)
    samm = new_samm(e4e, "tiny", default_levels(e4e), 2, 0.08)
    if mask_logit is not None:
        quiet_init(samm, mask_logit)
    return OODMethod(e4e.generator, e4e, samm, weights_id="tiny").eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(2, 3, 32, 32) * 2 - 1


def test_levels_align_the_upsampling_convs_as_the_official_cond_layers():
    g = Generator(1024, style_dim=16, n_mlp=1, channel_max=16)
    assert [level_layer(g, r) for r in (32, 64, 128, 256)] == [5, 7, 9, 11]
    with pytest.raises(ValueError):
        level_layer(g, 48)


def test_merge_masks_is_new_times_prev_plus_prev_times_one_minus_prev():
    prev, new = torch.full((1, 1, 4, 4), 0.5), torch.full((1, 1, 4, 4), 0.2)
    torch.testing.assert_close(merge_masks(prev, new), torch.full((1, 1, 4, 4), 0.2 * 0.5 + 0.25))
    # a mask of 0 (in-domain) stays 0 whatever comes next; a mask of 1 takes the new value
    assert merge_masks(torch.zeros(1, 1, 2, 2), torch.rand(1, 1, 4, 4)).abs().max() == 0
    new = torch.rand(1, 1, 4, 4)
    torch.testing.assert_close(merge_masks(torch.ones(1, 1, 2, 2), new), new)


def test_gather_masks_keeps_only_consistently_high_areas():
    a = torch.zeros(1, 1, 4, 4)
    a[..., :, :2] = 1.0  # coarse level: left half OOD
    b = torch.ones(1, 1, 8, 8)
    b[..., :4, :] = 0.0  # fine level: bottom half OOD
    m = gather_masks([a, b], 8)
    assert m.shape == (1, 1, 8, 8)
    assert m[0, 0, 6, 0] == 1.0  # left and bottom: kept
    assert m[0, 0, 1, 0] == 0.0  # left, top: the fine level says in-domain
    assert m[0, 0, 6, 7] == 0.0  # right: the coarse level says in-domain


def test_blend_is_eq_4():
    x, x_in = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
    m = torch.zeros(1, 1, 4, 4)
    m[..., :2] = 1.0
    m[..., 3] = 0.25
    out = blend(x, x_in, m)
    assert torch.equal(out[..., :2], x[..., :2]) and torch.equal(out[..., 2], x_in[..., 2])
    torch.testing.assert_close(out[..., 3], 0.25 * x[..., 3] + 0.75 * x_in[..., 3])


def test_warp_with_mask_zero_is_the_feature_and_flow_moves_content():
    f = torch.zeros(1, 2, 9, 9)
    f[:, :, :, 4] = 1.0  # a vertical line in column 4
    align = torch.zeros(1, 3, 9, 9)
    assert torch.equal(warp_feature(f, align), f)  # M = 0: g itself, bit-exact
    align[:, 2] = 1.0
    align[:, 0] = 0.25  # sample 1 column to the right (grid step 2/8): the line moves left
    out = warp_feature(f, align)
    assert out[0, 0, 4].argmax() < 4


def test_samm_block_learns_to_align_a_shifted_feature():
    """The property SAMM is for: fitted on (encoder feature, generator feature) = (F shifted, F), its aligned feature is
    closer to the encoder's than the generator's own is."""
    torch.manual_seed(0)
    base = torch.nn.functional.avg_pool2d(torch.randn(1, 4, 20, 20), 3, 1, 1)[..., 2:18, 2:18]
    gen = base  # [1, 4, 16, 16]
    enc = torch.roll(gen, shifts=1, dims=-1)
    block = SAMMBlock(4, scale=0.2, iterations=2, hidden=8)
    opt = torch.optim.Adam(block.parameters(), lr=3e-3)
    before = (gen - enc)[..., 2:-2, 2:-2].square().mean()
    for _ in range(150):
        out, _ = block(enc, gen)
        loss = (out - enc)[..., 2:-2, 2:-2].square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out, align = block(enc, gen)
    after = (out - enc)[..., 2:-2, 2:-2].square().mean()
    assert after < 0.5 * before, (float(after), float(before))
    assert float(align[:, 0, 4:-4, 4:-4].mean()) < 0  # content moved right: sampled from the left


def test_masks_of_zero_make_ood_exactly_e4e(images):
    m = make_tiny_ood(mask_logit=-60.0)
    with torch.no_grad():
        out, inverted, mask, _, w = m.forward_blend(images)
        ref = m.e4e.generator(m.e4e.encode(images), noise_mode="const")
    assert mask.max() < 1e-12
    torch.testing.assert_close(inverted, ref, rtol=0, atol=1e-5)  # float rounding of the hooked conv path
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_masks_of_one_give_back_the_input(images):
    m = make_tiny_ood(mask_logit=60.0)
    with torch.no_grad():
        out, *_ = m.forward_blend(images)
    inner = (..., slice(8, -8), slice(8, -8))  # the masks' blur pads with zeros: the border is not fully kept
    torch.testing.assert_close(out[inner], images[inner], rtol=0, atol=1e-3)


def test_samm_is_injected_before_the_layers_noise_as_the_official_noise_input(images):
    """The official callback returns ``(aligned - g + noise·w) / w`` as the noise, i.e. the layer's output becomes
    ``aligned + w·noise``: a level whose aligned feature is ``g + c`` shifts the pre-activation by exactly ``c``."""
    m = make_tiny_ood(mask_logit=-60.0)
    layer = m.layers[-1]  # the 8 px level
    seen = {}

    def hook(x, lyr, style):
        seen[lyr] = x
        return x

    from gie_cli.models.stylegan2 import PRE_NOISE, Hook

    with torch.no_grad():
        w = m.e4e.encode(images)
        m.generator(w, noise_mode="const", hooks=[Hook(layer, hook, PRE_NOISE)])
    conv = m.generator.convs[layer - 1]
    noise = getattr(m.generator.noises, f"noise_{layer}")
    with torch.no_grad():
        style = conv.conv.modulation(w[:, layer])
    # the pre-noise value is the modulated conv's output, without the noise
    x_in = m.generator.synthesis(w, noise_mode="const", stop_at_layer=layer - 1, return_features=[layer - 1])
    expect = conv.conv.modulated(x_in.features[layer - 1], style)
    torch.testing.assert_close(seen[layer], expect, rtol=1e-5, atol=1e-5)
    assert noise.abs().sum() > 0


def test_render_replays_the_inversion_and_edits_keep_the_ood_region(images):
    m = make_tiny_ood(seed=3)
    with torch.no_grad():
        x_hat, *_ = m.forward_blend(images)
        inv = m.invert(images)
        rec = m.render(inv)
    assert inv.extras[SOURCE_KEY].dtype == torch.uint8
    assert set(inv.extras) == {SOURCE_KEY, *(align_key(r) for r in (32, 16, 8))}
    torch.testing.assert_close(rec, x_hat, rtol=0, atol=2e-2)  # uint8 source, float16 aligns
    # an edit keeps the photo where the mask is 1 and draws the edited codes elsewhere
    for r in (32, 16, 8):
        a = inv.extras[align_key(r)]
        a[:, 2] = 0.0
        a[:, 2, :, : r // 2] = 1.0  # left half out of domain at every level
        a[:, :2] = 0.0
    delta = torch.zeros_like(inv.wplus)
    delta[:, :, 0] = 2.0
    with torch.no_grad():
        edited = m.render(inv, delta)
        plain = m.generator(inv.wplus + delta, noise_mode="const")
        mask = m.mask_of(inv)
    src = inv.extras[SOURCE_KEY].float() / 127.5 - 1
    assert bool((mask[..., :12] == 1).all()) and bool((mask[..., 20:] == 0).all())
    torch.testing.assert_close(edited[..., :12], src[..., :12], rtol=0, atol=1e-6)
    assert (edited[..., 20:] - m.render(inv)[..., 20:]).abs().max() > 1e-3  # the edit changed the in-domain part
    for r in (32, 16, 8):  # with no mask anywhere, the edit is the generator's edit of the codes
        inv.extras[align_key(r)][:, 2] = 0.0
    with torch.no_grad():
        torch.testing.assert_close(m.render(inv, delta), plain, rtol=0, atol=1e-5)


def test_latent_from_other_weights_is_refused(images):
    m = make_tiny_ood()
    with torch.no_grad():
        inv = m.invert(images)
    inv.extras.pop(align_key(16))
    with pytest.raises(UsageError, match="OOD"):
        m.render(inv)


def test_gie_checkpoint_round_trip_and_options(tmp_path, images):
    m = make_tiny_ood(seed=4)
    p = tmp_path / "ood.safetensors"
    m.save(p)
    back = load_ood(str(p))
    with torch.no_grad():
        torch.testing.assert_close(back.render(back.invert(images)), m.render(m.invert(images)), rtol=0, atol=0)
    one = create_method("ood", str(p), iterations="1", skip_align="true")
    assert one.iterations == 1 and one.skip_align
    with pytest.raises(UsageError):
        create_method("ood", str(p), iterations="0")
    with pytest.raises(UsageError):
        create_method("ood", str(p), mask="1")


def _official_params(m: OODMethod) -> dict[str, torch.Tensor]:
    sd = {f"encoder.{k}": v for k, v in m.e4e.encoder.state_dict().items()}
    sd.update({f"generator.{k}": v for k, v in m.generator.state_dict().items()})
    sd.update(m.samm.state_dict())
    sd["avg_latent"] = m.e4e.latent_avg[:1].clone()
    sd["delta_latent"] = torch.zeros(1, m.generator.n_latent, m.generator.style_dim)
    return sd


def make_tiny_ood64() -> OODMethod:
    """OOD in the official convention (level ``i`` at e4e's map ``i``, the stem first): a 64 px generator and e4e at
    64 px, levels 64, 32, 16, 8."""
    from gie_cli.methods.e4e import EncoderMethod
    from gie_cli.models.encoders import create_encoder

    torch.manual_seed(5)
    g = Generator(64, style_dim=32, n_mlp=2, channel_max=32)
    g.mean_latent(256)
    cfg = {"mode": "ir_se", "unit_counts": [1, 1, 1, 1], "widths": [8, 16, 24, 32], "n_styles": g.n_latent,
           "style_dim": 32, "input_size": 64}  # fmt: skip
    e4e = EncoderMethod(g, create_encoder("e4e", **cfg), g.broadcast(g.w_avg[None])[0].clone(), "e4e", cfg, True)
    samm = new_samm(e4e, "tiny", default_levels(e4e), 2, 0.08)
    assert samm.resolutions == (64, 32, 16, 8)
    return OODMethod(g, e4e, samm).eval()


def test_official_basicsr_checkpoint_loads_strictly_and_names_what_is_wrong(tmp_path):
    m = make_tiny_ood64()
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    sd = _official_params(m)
    p = tmp_path / "net_g_410000.pth"
    torch.save({"params": sd, "params_ema": sd}, p)
    back = load_ood(str(p))
    assert back.samm.config == m.samm.config
    with torch.no_grad():
        torch.testing.assert_close(back.render(back.invert(images)), m.render(m.invert(images)), rtol=0, atol=1e-6)
    bad = dict(sd)
    bad.pop("modulation.1.alignment.body.body.0.res_layer.1.weight")
    torch.save({"params_ema": bad}, p)
    with pytest.raises(CheckpointError, match="res_layer.1.weight"):
        load_ood(str(p))
    bad = dict(sd, extra_head=torch.zeros(1))
    torch.save({"params_ema": bad}, p)
    with pytest.raises(CheckpointError, match="extra_head"):
        load_ood(str(p))
    bad = dict(sd, delta_latent=torch.ones_like(sd["delta_latent"]))
    torch.save({"params_ema": bad}, p)
    with pytest.raises(CheckpointError, match="delta_latent"):
        load_ood(str(p))


def test_official_layout_config_is_inferred_from_shapes():
    e4e_in = 256
    samm = {}
    for i, (ce, cg) in enumerate([(64, 128), (64, 256), (128, 512), (256, 512)]):
        samm[f"feats_conv.{i}.weight"] = torch.zeros(cg, ce, 1, 1)
        samm[f"modulation.{i}.alignment.body.body.0.res_layer.1.weight"] = torch.zeros(2 * cg, 2 * cg, 3, 3)
    cfg = samm_config_from_state_dict(samm, e4e_in)
    assert cfg == {"resolutions": [256, 128, 64, 32], "encoder_channels": [64, 64, 128, 256],
                   "generator_channels": [128, 256, 512, 512], "hidden": None}  # fmt: skip


def test_mask_loss_is_the_binary_and_the_area_excess():
    a = torch.zeros(1, 3, 4, 4)
    a[:, 2] = 0.5  # every pixel undecided: binary 0.5, area 0.5
    b = torch.zeros(1, 3, 2, 2)
    b[:, 2, 0] = 1.0  # half the pixels OOD: binary 0, area 0.5
    loss, parts = mask_loss({4: a, 2: b}, {4: 0.25, 2: 0.6}, 0.1)
    assert parts == pytest.approx({"mask_bin": 0.5, "mask_area": 0.25})
    assert float(loss) == pytest.approx(0.1 * 0.5 + 0.25)


def test_quiet_init_starts_with_no_flow_and_a_small_mask():
    m = make_tiny_ood(mask_logit=-3.0)
    g = torch.randn(2, 32, 16, 16)
    with torch.no_grad():
        _, align = m.samm.modulation[1](torch.randn(2, 32, 16, 16), g)
    assert align[:, :2].abs().max() == 0
    inner = align[:, 2, 2:-2, 2:-2]  # the blur pads with zeros: the border is lower
    torch.testing.assert_close(inner, torch.full_like(inner, torch.sigmoid(torch.tensor(-3.0)).item()))


def test_invert_save_mask_and_edit_through_the_cli_keep_the_object(tmp_path):
    """``gie invert -m ood --save-mask`` writes the blend mask beside the reconstruction, and ``gie edit`` on the
    latent (no photo, no encoder) keeps the photo where that mask is 1."""
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from gie_cli.cli import app
    from gie_cli.io.images import image_to_tensor, load_image

    m = make_tiny_ood(mask_logit=60.0)  # mask 1 inside; the masks' zero-padded blur leaves the border in-domain
    m.save(tmp_path / "ood.safetensors")
    write_cli_inputs(tmp_path, m.generator)

    def run(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    res = run("invert", tmp_path / "in", "-m", "ood", "-w", tmp_path / "ood.safetensors", "--no-align", "--save-mask",
              "-o", tmp_path / "inv")  # fmt: skip
    assert res.exit_code == 0, res.output
    mask_png = tmp_path / "inv" / "f0.recon_mask.png"
    record = json.loads((tmp_path / "inv" / "manifest.jsonl").read_text().splitlines()[0])
    assert record["outputs"]["mask"] == str(mask_png)
    mask = torch.from_numpy(__import__("numpy").array(Image.open(mask_png))).float() / 255
    with torch.no_grad():
        x0 = image_to_tensor(load_image(tmp_path / "in" / "f0.png"))[None]
        want = m.mask_of(m.invert(x0))[0, 0]
    assert (mask - want).abs().max() <= 1 / 255 + 1e-6
    res = run("edit", tmp_path / "inv", "-d", tmp_path / "up.direction.safetensors", "-p", "3", "-o", tmp_path / "ed")
    assert res.exit_code == 0, res.output
    edited = image_to_tensor(load_image(tmp_path / "ed" / "f0.up+3.png"))
    recon = image_to_tensor(load_image(tmp_path / "inv" / "f0.recon.png"))
    keep = want > 0.999
    assert 0.3 < float(keep.float().mean()) < 0.9
    change = (edited - recon).abs().amax(0)
    assert change[want < 0.5].max() > 4 / 255  # the edit moved the in-domain part
    assert change[keep].max() <= 2 / 255 + 1e-6  # where the mask keeps the photo, so does the edit (8-bit rounding)

"""GradStyle (Li et al., AAAI 2024): Selective Attention, gates, warps, frozen parts, Lookahead, and a tiny
`gie train` -> `gie invert` -> `gie edit` run whose residuals beat the bare e4e and whose edits use the GAM."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_e4e_world
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from gie_cli.cli import app
from gie_cli.editing import Direction, Edit, apply, render_edit
from gie_cli.editing.fit import stylespace_direction
from gie_cli.errors import CheckpointError
from gie_cli.io.images import image_to_tensor, load_image, tensor_to_image
from gie_cli.io.latents import load_latent
from gie_cli.methods import Inversion, create_method
from gie_cli.methods.gradstyle import (
    GradStyleNet,
    SelectiveAttention,
    random_perspective,
    stage_specs,
    warp_perspective,
)
from gie_cli.methods.gradstyle.modules import keep_count
from gie_cli.methods.gradstyle.train import GradStyleTrainer
from gie_cli.models.encoders import create_encoder
from gie_cli.models.stylegan2 import Generator
from gie_cli.ops.warp import warp_features
from gie_cli.training.optim import Lookahead

runner = CliRunner()
STEPS = 25


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# --------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A tiny e4e checkpoint (32 px generator, untrained encoder) and 8 images its generator drew."""
    return make_tiny_e4e_world(tmp_path_factory.mktemp("gradstyle"))


def _train_args(world: dict, runs: Path, *extra: str) -> list:
    return [
        "train",
        "--method",
        "gradstyle",
        "--data",
        world["data"],
        "-w",
        world["weights"],
        "--batch-size",
        "4",
        "--run-dir",
        runs,
        "--set",
        "lr=0.003",
        "--set",
        "perceptual=msssim",
        "--set",
        "id_lambda=0",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(world) -> dict:
    """`gie train --method gradstyle` for STEPS steps, then `gie invert` of the training images with the export."""
    runs = world["root"] / "runs"
    res = _invoke(*_train_args(world, runs, "--steps", STEPS, "--snapshot-every", 1000))
    assert res.exit_code == 0, res.output
    exported = Path(res.stdout.strip())
    out = world["root"] / "inv"
    # the generator's own renders are aligned crops by construction: say so (auto alignment needs evidence)
    res = _invoke("invert", world["data"], "-o", out, "--method", "gradstyle", "-w", exported, "--json", "--no-align")
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in res.stdout.splitlines()]
    return {"run": runs / "00000-gradstyle", "exported": exported, "inv": out, "records": recs}


def _images(folder: Path, size: int) -> torch.Tensor:
    return torch.stack([image_to_tensor(load_image(p), size=size) for p in sorted(folder.glob("*.png"))])


# --------------------------------------------------------------------------------------------------- modules
def test_selective_attention_keeps_exactly_the_top_mu_percent_per_query():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 10, 16), torch.randn(2, 20, 16), torch.randn(2, 20, 16)
    for mu, keep in ((25.0, 5), (50.0, 10), (100.0, 20), (1.0, 1), (33.0, 7)):
        att = SelectiveAttention(16, 16, 16, heads=2, mu=mu, d_k=8)
        assert keep_count(20, mu) == keep
        out, w = att(q, k, v, return_weights=True)
        assert out.shape == (2, 10, 16) and w.shape == (2, 2, 10, 20)
        kept = w > 0
        assert (kept.sum(-1) == keep).all()  # exactly ceil(mu% of 20) keys per query and head
        top = att.scores(q, k).topk(keep, dim=-1).indices
        assert torch.equal(kept, torch.zeros_like(kept).scatter_(-1, top, True))  # ... and they are the top scores
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 10))
        s = att.scores(q, k)  # kept weights are the softmax over the kept scores only
        ref = torch.where(kept, s, torch.full_like(s, -math.inf)).softmax(-1)
        torch.testing.assert_close(w, ref)
        vh = att.to_v(v).reshape(2, 20, 2, 8).transpose(1, 2)
        torch.testing.assert_close(out, (w @ vh).transpose(1, 2).reshape(2, 10, 16))
    with pytest.raises(ValueError, match="mu"):
        SelectiveAttention(16, 16, 16, heads=1, mu=0.0)


def test_stages_follow_the_paper_and_gates_lie_in_0_1_with_the_stage_shapes(tiny_e4e):
    with torch.device("meta"):  # the 1024 px setting: 3rd, 6th, 8th blocks = layers 1, 4, 6 (8/16/32 px)
        g1024 = Generator(1024)
        enc = create_encoder("e4e", "ir_se50")
    paper = stage_specs(g1024, enc)
    assert [(s.layer, s.resolution, s.channels, s.level) for s in paper] == [
        (1, 8, 512, "c3"),
        (4, 16, 512, "p2"),
        (6, 32, 512, "p1"),
    ]
    with torch.device("meta"):  # the demo world: 64 px generator, e4e "world" preset
        gw = Generator(64, style_dim=128, channels={4: 128, 8: 128, 16: 128, 32: 96, 64: 48})
        encw = create_encoder("e4e", "world")
    assert [(s.layer, s.resolution, s.channels, s.level) for s in stage_specs(gw, encw)] == [
        (1, 8, 128, "c3"),
        (4, 16, 128, "p2"),
        (6, 32, 96, "p1"),
    ]
    e4e = tiny_e4e
    specs = stage_specs(e4e.generator, e4e.encoder, [1, 3, 6])
    net = GradStyleNet(specs, e4e.encoder.feature_dim).eval()
    for grm in net.grm.values():  # give the (zero-initialised) residual heads some output
        torch.nn.init.normal_(grm.head.weight, std=0.05)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        wplus, pyramid = e4e.encode(x, return_features=True)
        plain = e4e.generator.synthesis(wplus, return_features=[1])
        record: dict = {}
        out = e4e.generator.synthesis(
            wplus, feature_hooks=net.reconstruction_hooks(pyramid, record), return_features=[1, 3, 6]
        )
    for s in specs:
        g, r = record["gate"][s.layer], record["residual"][s.layer]
        assert g.shape == r.shape == (2, s.channels, s.resolution, s.resolution)
        assert (g > 0).all() and (g < 1).all()
        assert r.abs().max() > 0
        torch.testing.assert_close(record["fused"][s.layer], g * r)
    # the first refined map is the plain generator's plus g * F
    torch.testing.assert_close(out.features[1], plain.features[1] + record["fused"][1])
    assert not torch.allclose(out.image, plain.image)


def test_perspective_warp_identity_shape_and_a_known_corner():
    x = torch.randn(2, 3, 8, 12)
    src, dst = random_perspective(2, 0.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(warp_features(x, src, dst), x, atol=1e-5, rtol=0)
    src, dst = random_perspective(2, 0.15, torch.Generator().manual_seed(0))
    assert ((dst - src).abs() <= 0.075 + 1e-7).all() and (dst != src).any()
    warped = warp_features(x, src, dst)
    assert warped.shape == x.shape and not torch.allclose(warped, x)
    # coordinate maps (x + 1, y + 1): the content at the top-left corner moves from (0, 0) to (2, 3)
    ys, xs = torch.meshgrid(torch.arange(9.0), torch.arange(9.0), indexing="ij")
    coords = torch.stack([xs + 1, ys + 1])[None]
    src = torch.tensor([[[0.0, 0.0], [8.0, 0.0], [8.0, 8.0], [0.0, 8.0]]])
    dst = torch.tensor([[[2.0, 3.0], [8.0, 0.0], [8.0, 8.0], [0.0, 8.0]]])
    out = warp_perspective(coords, src, dst)
    torch.testing.assert_close(out[0, :, 3, 2], torch.tensor([1.0, 1.0]), atol=1e-4, rtol=0)  # from (0, 0)
    for px, py in ((8, 0), (8, 8), (0, 8)):  # the other corners stay
        torch.testing.assert_close(out[0, :, py, px], torch.tensor([px + 1.0, py + 1.0]), atol=1e-4, rtol=0)
    assert out[0, :, 0, 0].abs().max() == 0  # what was left of the moved corner comes from outside: zeros


def test_lookahead_interpolates_every_k_steps_and_round_trips():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = Lookahead(torch.optim.SGD([p], lr=0.1), k=5, alpha=0.5)
    for i in range(5):
        p.grad = torch.ones(3)
        opt.step()
        if i < 4:
            torch.testing.assert_close(p.detach(), torch.full((3,), -0.1 * (i + 1)))
    torch.testing.assert_close(p.detach(), torch.full((3,), -0.25))  # slow 0 + 0.5 * (-0.5 - 0)
    state = opt.state_dict()
    q = torch.nn.Parameter(torch.zeros(3))
    other = Lookahead(torch.optim.SGD([q], lr=0.1), k=5, alpha=0.5)
    other.load_state_dict(state)
    assert other.steps == 5 and torch.equal(other.slow[0], opt.slow[0])


# --------------------------------------------------------------------------------------------------- training
def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict, module: torch.nn.Module, prefix: str) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items() if k.startswith(prefix))


def test_train_steps_leave_encoder_and_generator_untouched_and_train_every_stage(world):
    t = GradStyleTrainer(
        data=str(world["data"]), weights=str(world["weights"]), device="cpu", batch_size=2, seed=0,
        lr="0.01", perceptual="none", id_lambda="0",
    )  # fmt: skip
    enc0, gen0, net0 = _snapshot(t.method.encoder), _snapshot(t.generator), _snapshot(t.net)
    d0 = _snapshot(t.losses.disc)
    batches = t.batches()
    for step in range(2):
        m = t.train_step(next(batches), step)
    assert {"l2_rec", "l2_edi", "l_f", "l_aligner", "adv_rec", "adv_edi", "d_loss"} <= set(m)
    for k, v in t.method.encoder.state_dict().items():
        assert torch.equal(v, enc0[k]), k
    for k, v in t.generator.state_dict().items():
        assert torch.equal(v, gen0[k]), k
    assert all(p.grad is None for p in [*t.method.encoder.parameters(), *t.generator.parameters()])
    for layer in t.net.layers:
        for part in ("grm", "gate", "gam"):
            assert _changed(net0, t.net, f"{part}.{layer}."), f"{part}.{layer} did not change"
    assert _changed(d0, t.losses.disc, "")


def test_editing_stream_gradients_reach_only_the_aligners(world):
    e4e = world["e4e"]
    net = GradStyleNet(stage_specs(e4e.generator, e4e.encoder), e4e.encoder.feature_dim)
    res = {s.layer: torch.randn(2, s.channels, s.resolution, s.resolution) for s in net.stages}
    src, dst = random_perspective(2, 0.15, torch.Generator().manual_seed(0))
    warped = {k: warp_features(v, src, dst) for k, v in res.items()}
    sources = {k: torch.randn_like(v) for k, v in warped.items()}
    w = e4e.latent_avg[None].expand(2, -1, -1)
    img = e4e.generator(w, feature_hooks=net.editing_hooks(warped, sources, None, True))
    img.square().mean().backward()
    assert all(p.grad is None for p in [*net.grm.parameters(), *net.gate.parameters()])
    assert all(p.grad is not None for p in net.gam.parameters())


def test_progressive_training_trains_one_stage_at_a_time(world):
    t = GradStyleTrainer(
        data=str(world["data"]), weights=str(world["weights"]), device="cpu", batch_size=2, seed=0,
        lr="0.01", perceptual="none", id_lambda="0", adv_lambda="0", progressive_every="1",
    )  # fmt: skip
    assert t.active_layers(0) == ([1], [1]) and t.active_layers(1) == ([1, 4], [4])
    assert t.active_layers(9) == ([1, 4, 6], [6])
    with torch.no_grad():  # residuals that are not zero yet (an all-zero residual gives the Aligner nothing to align)
        for grm in t.net.grm.values():
            grm.head.weight.normal_(std=0.05)
    net0 = _snapshot(t.net)
    t.train_step(next(t.batches()), 0)
    assert _changed(net0, t.net, "grm.1.") and _changed(net0, t.net, "gam.1.")
    assert not any(_changed(net0, t.net, f"{p}.{k}.") for p in ("grm", "gate", "gam") for k in (4, 6))


def test_ablation_settings_shape_the_net(world, tmp_path):
    kw = {"data": str(world["data"]), "weights": str(world["weights"]), "device": "cpu", "batch_size": 2, "seed": 0}
    no_gam = GradStyleTrainer(**kw, use_gam="false", stages="6", adv_lambda="0", perceptual="none", id_lambda="0")
    assert no_gam.net.layers == (6,) and len(no_gam.net.gam) == 0
    assert "l_aligner" not in no_gam.train_step(next(no_gam.batches()), 0)
    no_gam.export(tmp_path / "nogam.safetensors")
    m = create_method("gradstyle", str(tmp_path / "nogam.safetensors"))
    x = _images(world["data"], 64)[:1]
    with torch.no_grad():
        inv = m.invert(x)
        delta = torch.zeros_like(inv.wplus)
        delta[:, :4] = 0.5
        assert set(inv.extras) == {"residual_6"}
        # without a GAM an edit injects the stored residual as it is: f_edi + g(f_edi, F) F
        res = {6: inv.extras["residual_6"]}
        want = m.generator(inv.wplus + delta, noise_mode="const", feature_hooks=m.net.fusion_hooks(res))
        torch.testing.assert_close(m.render(inv, delta), want)
        assert not torch.allclose(want, m.generator(inv.wplus + delta, noise_mode="const"))  # F is not zero
    no_grm = GradStyleTrainer(**kw, use_grm="false", stages="1", adv_lambda="0")
    assert no_grm.net.layers == (1,) and not no_grm.net.grm["1"].use_feature
    assert not any(k.startswith("proj_f") for k in no_grm.net.grm["1"].state_dict())


def test_gradstyle_refuses_a_checkpoint_without_its_modules(world):
    with pytest.raises(CheckpointError, match="GradStyle modules"):
        create_method("gradstyle", str(world["weights"]))


# --------------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow  # uses the `trained` fixture: a training run
def test_train_lowers_the_loss_and_the_export_inverts_end_to_end(world, trained):
    rows = [json.loads(x) for x in (trained["run"] / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == STEPS
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-2:]) / 2
    assert last < 0.8 * first, (first, last)
    opts = json.loads((trained["run"] / "options.json").read_text())
    assert opts["perceptual_loss"] == "msssim" and opts["gradstyle"]["mu"] == 50.0
    assert [s["layer"] for s in opts["gradstyle"]["stages"]] == [1, 4, 6]
    recs = trained["records"]
    assert len(recs) == 8 and all(r["status"] == "ok" for r in recs)
    latent = Path(recs[0]["outputs"]["latent"])
    with safe_open(str(latent), "pt") as f:
        shapes = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    assert shapes == {
        "wplus": ((8, 32), "F32"),
        "extra.residual_1": ((32, 8, 8), "F16"),
        "extra.residual_4": ((32, 16, 16), "F16"),
        "extra.residual_6": ((32, 32, 32), "F16"),
    }
    wplus, extras, meta = load_latent(latent)
    assert meta["method"] == "gradstyle" and meta["gradstyle"]["layers"] == [1, 4, 6]
    method = create_method("gradstyle", str(trained["exported"]))
    with torch.no_grad():
        again = method.render(Inversion(wplus, extras))[0]
    saved = np.asarray(Image.open(recs[0]["outputs"]["image"]), np.int16)
    assert np.abs(np.asarray(tensor_to_image(again), np.int16) - saved).max() <= 1  # the file renders its recon
    # encoder and generator in the export are the frozen e4e's
    e4e = create_method("e4e", str(world["weights"]))
    for a, b in ((method.encoder, e4e.encoder), (method.generator, e4e.generator)):
        sb = b.state_dict()
        assert all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


@pytest.mark.slow  # uses the `trained` fixture: a training run
def test_trained_residuals_reconstruct_better_than_the_bare_e4e(world, trained):
    with torch.no_grad():  # held-out images: the generator's renders of other codes than the training set's
        z = torch.randn(8, 32, generator=torch.Generator().manual_seed(11))
        target = world["e4e"].generator.generate(z, truncation=0.7).clamp(-1, 1)
    x = torch.nn.functional.interpolate(target, size=(64, 64), mode="bilinear", align_corners=False)
    method = create_method("gradstyle", str(trained["exported"]))
    e4e = create_method("e4e", str(world["weights"]))
    with torch.no_grad():
        inv = method.invert(x)
        ours = (method.render(inv) - target).square().mean()
        bare = (e4e.render(e4e.invert(x)) - target).square().mean()
        torch.testing.assert_close(inv.wplus, e4e.invert(x).wplus)  # same codes: the gain is the residuals'
    assert ours < 0.7 * bare, (float(ours), float(bare))


@pytest.mark.slow  # uses the `trained` fixture: a training run
def test_edit_runs_the_editing_stream(world, trained, tmp_path):
    method = create_method("gradstyle", str(trained["exported"]))
    g = method.generator
    vec = torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(3)), dim=0)
    direction = Direction("tilt", "w", {"vector": vec}, list(range(g.n_latent)), 1.0, (-3.0, 3.0))
    dfile = direction.save(tmp_path / "dirs")
    latent = Path(trained["records"][0]["outputs"]["latent"])
    res = _invoke("edit", latent, "-d", dfile, "-p", "0", "-p", "3", "-o", tmp_path / "edits", "--json")
    assert res.exit_code == 0, res.output
    outs = json.loads(res.stdout.splitlines()[0])["outputs"]
    edited = np.asarray(Image.open(outs["tilt+3"]), np.int16)
    zero = np.asarray(Image.open(outs["tilt+0"]), np.int16)
    recon = np.asarray(Image.open(trained["records"][0]["outputs"]["image"]), np.int16)
    assert np.abs(zero - recon).max() <= 1  # power 0: the Reconstruction Stream

    wplus, extras, _ = load_latent(latent)
    inv = Inversion(wplus, extras)
    calls: list[int] = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in method.net.gam.values()]
    with torch.no_grad():
        ours = render_edit(method, inv, apply(direction, 3.0, wplus))
        assert len(calls) == 3  # every stage's Aligner ran
        calls.clear()
        render_edit(method, inv, apply(direction, 0.0, wplus))
        assert not calls
        chan = stylespace_direction("chan", g, 3, 5, 2.0, {}, {"method": "test"})
        both = Edit.cat([apply(chan, 0.0, wplus), apply(chan, 2.0, wplus)])  # StyleSpace: zero W+ delta
        pair = render_edit(method, Inversion.stack([inv, inv]), both)
        assert len(calls) == 3  # only the edited item took the Editing Stream
        torch.testing.assert_close(pair[0], method.render(inv)[0])
    for h in hooks:
        h.remove()
    assert np.abs(np.asarray(tensor_to_image(ours[0]), np.int16) - edited).max() <= 1  # the CLI drew exactly this
    delta = apply(direction, 3.0, wplus).delta
    with torch.no_grad():
        plain = g(wplus + delta)  # W+ edit alone through the plain generator
        unaligned = create_method("gradstyle", str(trained["exported"]), use_gam="false").render(inv, delta)
    assert (ours - plain).abs().mean() > 0.01  # the edit carries the residual details
    assert (ours - unaligned).abs().mean() > 1e-3  # ... aligned by the GAM, not injected as they are


@pytest.mark.slow  # uses the `trained` fixture: a training run
def test_a_checkpoint_stored_on_its_base_loads_the_same_and_checks_the_base(world, trained, tmp_path):
    from gie_cli.models.loading import read_components, save_on_base

    base = tmp_path / "base" / "e4e.safetensors"
    base.parent.mkdir()
    shutil.copy(world["weights"], base)
    parts = ["encoder", "decoder", "latent_avg"]
    slim = save_on_base(tmp_path / "gs.safetensors", trained["exported"], str(base), parts)
    comp = read_components(slim)
    assert comp.config["base"]["weights"] == "base/e4e.safetensors"  # stored relative to the file
    assert slim.stat().st_size < 0.7 * Path(trained["exported"]).stat().st_size
    full, light = create_method("gradstyle", str(trained["exported"])), create_method("gradstyle", str(slim))
    x = _images(world["data"], 64)[:2]
    with torch.no_grad():
        assert torch.equal(full.render(full.invert(x)), light.render(light.invert(x)))
    # a base that changed since is refused, naming both hashes
    e4e = create_method("e4e", str(world["weights"]))
    with torch.no_grad():
        e4e.generator.style[1].bias.add_(1.0)
    e4e.save(base)
    with pytest.raises(CheckpointError, match="was made on"):
        create_method("gradstyle", str(slim))
    # and a checkpoint that was not made on the base is not stored on it
    with pytest.raises(CheckpointError, match="differs from the base"):
        save_on_base(tmp_path / "bad.safetensors", trained["exported"], str(base), ["decoder"])


# ----------------------------------------------------------------------------------------------- feature alignment
def test_an_untrained_aligner_returns_its_input_and_a_zero_residual_gives_zero():
    from gie_cli.methods.gradstyle import Aligner

    torch.manual_seed(0)
    for keys in ("source", "residual"):
        al = Aligner(32, 50.0, 2, keys)
        res, src, feat = torch.randn(2, 32, 8, 8), torch.randn(2, 32, 8, 8), torch.randn(2, 32, 8, 8)
        torch.testing.assert_close(al(res, src, feat), res)  # starts at "no alignment", not at noise
        with torch.no_grad():  # whatever it learns, nothing on the value path has a bias: zero in, zero out
            for p in al.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        out = al(torch.zeros_like(res), src, feat)
        assert torch.equal(out, torch.zeros_like(out))
        assert not torch.allclose(al(res, src, feat), res)  # ... and the perturbed one does change a residual
    tied = Aligner(32, 50.0, 2, "source").attn[0]
    assert torch.equal(tied.to_q.weight, tied.to_k.weight)  # source keys: queries and keys start in one space
    with pytest.raises(ValueError, match="aligner keys"):
        Aligner(32, 50.0, 2, "pixels")


def test_the_editing_stream_leaves_the_gate_batchnorm_statistics_alone(world):
    e4e = world["e4e"]
    net = GradStyleNet(stage_specs(e4e.generator, e4e.encoder), e4e.encoder.feature_dim).train()
    res = {s.layer: torch.randn(2, s.channels, s.resolution, s.resolution) for s in net.stages}
    before = {k: v.clone() for k, v in net.gate.state_dict().items()}
    w = e4e.latent_avg[None].expand(2, -1, -1)
    for detach in (True, False):
        e4e.generator(w, feature_hooks=net.editing_hooks(res, res, None, detach))
    assert all(torch.equal(v, before[k]) for k, v in net.gate.state_dict().items())
    e4e.generator(w, feature_hooks=net.fusion_hooks(res))  # the Reconstruction Stream's use does update them
    assert any(not torch.equal(v, before[k]) for k, v in net.gate.state_dict().items() if "running_mean" in k)


def test_only_hierarchical_levels_and_the_aligner_learning_rate(world):
    e4e = world["e4e"]
    default = [s.level for s in stage_specs(e4e.generator, e4e.encoder)]
    assert default == ["c3", "p2", "p1"]  # each stage reads the level that predicts its W+ row
    for level in ("c3", "p2", "p1"):
        assert {s.level for s in stage_specs(e4e.generator, e4e.encoder, None, level)} == {level}
    with pytest.raises(ValueError, match="unknown encoder level"):
        stage_specs(e4e.generator, e4e.encoder, None, "p9")
    kw = {"data": str(world["data"]), "weights": str(world["weights"]), "device": "cpu", "batch_size": 2, "seed": 0}
    t = GradStyleTrainer(**kw, level="p2", aligner_lr="0.002", adv_lambda="0", perceptual="none", id_lambda="0")
    assert [s.level for s in t.net.stages] == ["p2"] * 3 and t.options()["gradstyle"]["stages"][0]["level"] == "p2"
    groups = t.opt.param_groups
    assert [g["lr"] for g in groups] == [1e-4, 0.002]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in t.net.gam.parameters()}
    with pytest.raises(Exception, match="warp_p"):
        GradStyleTrainer(**kw, warp_p="1.5", adv_lambda="0", perceptual="none", id_lambda="0")


def test_l_aligner_is_relative_to_the_residual_and_unwarped_items_cost_nothing_untrained(world):
    kw = {"data": str(world["data"]), "weights": str(world["weights"]), "device": "cpu", "batch_size": 4, "seed": 0}
    common = {"adv_lambda": "0", "perceptual": "none", "id_lambda": "0", "lr": "0", "aligner_lr": "0", "stages": "4"}
    losses = {}
    for scale in (1.0, 100.0):
        for p in ("0", "1"):
            t = GradStyleTrainer(**kw, warp_p=p, **common)
            with torch.no_grad():
                for grm in t.net.grm.values():
                    torch.manual_seed(1)
                    grm.head.weight.normal_(std=0.05 * scale)
                    grm.head.bias.zero_()
            losses[scale, p] = t.train_step(next(t.batches()), 0)["l_aligner"]
    assert losses[1.0, "0"] < 1e-5 and losses[100.0, "0"] < 1e-5  # no warp: the identity Aligner is exact
    assert 0.05 < losses[1.0, "1"] < 3.0
    assert losses[100.0, "1"] == pytest.approx(
        losses[1.0, "1"], rel=0.05
    )  # scale-free (one stage: F is linear in the head)


def test_probe_alignment_measures_each_stage_against_the_unwarped_residual(world):
    from gie_cli.methods.gradstyle.method import GradStyleMethod
    from gie_cli.ops.warp import random_perspective

    e4e = world["e4e"]
    net = GradStyleNet(stage_specs(e4e.generator, e4e.encoder), e4e.encoder.feature_dim)
    with torch.no_grad():
        for grm in net.grm.values():
            grm.head.weight.normal_(std=0.05)
    m = GradStyleMethod(e4e.generator, e4e.encoder, e4e.latent_avg, e4e.encoder_config, net).eval()
    x = _images(world["data"], 64)[:3]
    ident = random_perspective(3, 0.0, torch.Generator().manual_seed(0))
    warp = random_perspective(3, 0.15, torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = m.probe_alignment(x, *ident)
        moved = m.probe_alignment(x, *warp)
        recon = m.render(m.invert(x))
    assert list(same.stages) == ["layer 1 (8 px)", "layer 4 (16 px)", "layer 6 (32 px)"]
    for stage, e in same.stages.items():
        assert e["aligned"].shape == (3,) and float(e["unaligned"].max()) < 1e-3, stage  # no warp, no error
        assert float(e["aligned"].max()) < 1e-3, stage  # untrained Aligner = identity
    for e in moved.stages.values():
        assert float(e["unaligned"].min()) > 0.01 and torch.allclose(e["aligned"], e["unaligned"], atol=1e-4)
    torch.testing.assert_close(same.zero_edit, recon, atol=1e-4, rtol=0)  # identity Aligner: zero edit = recon


def test_benchmark_reports_per_stage_alignment_for_feature_methods_only(world, tmp_path, monkeypatch):
    from gie_cli.methods.gradstyle.method import GradStyleMethod

    monkeypatch.setenv("GIE_CACHE_DIR", str(tmp_path / "cache"))
    e4e = world["e4e"]
    net = GradStyleNet(stage_specs(e4e.generator, e4e.encoder), e4e.encoder.feature_dim)
    with torch.no_grad():
        for grm in net.grm.values():
            grm.head.weight.normal_(std=0.05)
    GradStyleMethod(e4e.generator, e4e.encoder, e4e.latent_avg, e4e.encoder_config, net).save(
        tmp_path / "gs.safetensors"
    )
    out = tmp_path / "out"
    res = _invoke(
        "benchmark", "--methods", "e4e,gradstyle", "--data", world["data"], "--size", 32, "--metrics", "mse,psnr",
        "--weights", f"e4e={world['weights']}", "--weights", f"gradstyle={tmp_path / 'gs.safetensors'}", "-b", 4,
        "--sheet", 0, "-o", out,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "benchmark.json").read_text())
    rows = {r["method"]: r for r in doc["results"]}
    assert "alignment" not in rows["e4e"] and not (out / "contact_sheet.png").exists()
    al = rows["gradstyle"]["alignment"]
    assert list(al["stages"]) == ["layer 1 (8 px)", "layer 4 (16 px)", "layer 6 (32 px)"]
    for e in al["stages"].values():  # an untrained Aligner passes the warped residual through
        assert 0.01 < e["unaligned"] < 2 and e["aligned"] == pytest.approx(e["unaligned"], abs=1e-3)
    assert al["zero_edit_psnr"] == pytest.approx(rows["gradstyle"]["metrics"]["psnr"], abs=0.01)
    md = (out / "benchmark.md").read_text()
    assert "## Feature alignment" in md and "| gradstyle | layer 6 (32 px) |" in md
    # the zero-edit PSNR does not depend on the metrics asked for
    res = _invoke(
        "benchmark", "--methods", "gradstyle", "--data", world["data"], "--size", 32, "--metrics", "mse", "--n", 4,
        "--weights", f"gradstyle={tmp_path / 'gs.safetensors'}", "-b", 4, "--sheet", 0, "-o", tmp_path / "out2",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    row = json.loads((tmp_path / "out2" / "benchmark.json").read_text())["results"][0]
    assert row["status"] == "ok" and "psnr" not in row["metrics"] and row["alignment"]["zero_edit_psnr"] > 10

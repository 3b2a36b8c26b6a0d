"""Training StyleFeatureEditor (supplement §7): phase 1 trains only the Inverter on both reconstructions, phase 2
only the Feature Editor on synthesized edit pairs; gie's own checkpoints round-trip through the user's path."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_e4e_world, slow
from typer.testing import CliRunner

from gie_cli.cli import app
from gie_cli.editing import Direction, generator_binding
from gie_cli.errors import CheckpointError, UsageError
from gie_cli.methods import create_method
from gie_cli.methods.sfe import ContentLayerDeepFast
from gie_cli.methods.sfe.method import FEATURE_KEY, SFEMethod, load_sfe
from gie_cli.methods.sfe.train import SFETrainer, zero_init_feature_net

BASE = {"perceptual": "msssim", "id_lambda": "0", "preset": "tiny"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """The tiny e4e world plus two W directions bound to its generator (phase 2's training set)."""
    w = make_tiny_e4e_world(tmp_path_factory.mktemp("sfe"))
    g = w["e4e"].generator
    dirs = w["root"] / "directions"
    dirs.mkdir()
    for i, name in enumerate(("up", "left")):
        v = torch.randn(g.style_dim, generator=torch.Generator().manual_seed(10 + i))
        Direction(name, "w", {"vector": v / v.norm()}, list(range(g.n_latent)), power_range=(-2.0, 2.0),
                  generator=generator_binding(g, "tiny")).save(dirs)  # fmt: skip
    w["directions"] = ",".join(str(dirs / f"{n}.direction.safetensors") for n in ("up", "left"))
    return w


def _trainer(world: dict, **settings: str) -> SFETrainer:
    return SFETrainer(str(world["data"]), str(world["weights"]), "cpu", 4, 0, **(BASE | settings))


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _state(*modules: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v.clone() for i, m in enumerate(modules) for k, v in m.state_dict().items()}


def _moved(before: dict, *modules: torch.nn.Module) -> list[str]:
    now = _state(*modules)
    return [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], now[k])]


def test_zero_init_makes_the_feature_networks_exact_linear_blends():
    net = ContentLayerDeepFast(3, 8, 4)
    zero_init_feature_net(net, (1.0, -1.0))
    net.eval()
    x, y = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(net(torch.cat([x, y], 1)), x - y, rtol=0, atol=1e-6)  # the editor: F_k - Δ
        zero_init_feature_net(net, (0.0, 1.0))
        torch.testing.assert_close(net(torch.cat([x, y], 1)), y, rtol=0, atol=1e-6)  # the fuser: F_w


def test_a_fresh_phase1_model_starts_at_the_generators_own_feature(world):
    """zero_init: F_k = F_w, so before training the reconstruction is exactly G(w) of the Inverter's codes."""
    m = _trainer(world).method.eval()
    x = world["images"][:2]
    with torch.no_grad():
        inv = m.invert(x)
        torch.testing.assert_close(inv.extras[FEATURE_KEY].float(), m.generator_feature(inv.wplus), atol=2e-3, rtol=0)
        torch.testing.assert_close(m.render(inv), m.generator(inv.wplus, noise_mode="const"), atol=5e-3, rtol=0)


def test_phase1_trains_the_inverter_only_with_adversarial_from_adv_start(world):
    t = _trainer(world, adv_start="2")
    m = t.method
    assert m.editor is None and m.feature_resolution == 16 and m.input_size == 64  # half the 32 px output, 4x input
    frozen = _state(m.generator, m.e4e_encoder)
    before = _state(m.inverter)
    batches = t.batches()
    seen = [t.train_step(next(batches), step) for step in range(3)]
    assert "adv_rec" not in seen[0] and "d_loss" not in seen[1]  # the supplement: D only from step 14k (here 2)
    assert {"l2_rec", "l2_w", "perceptual_rec", "perceptual_w", "reg", "adv_rec", "adv_w", "d_loss"} <= set(seen[2])
    assert not _moved(frozen, m.generator, m.e4e_encoder)
    moved = _moved(before, m.inverter)
    assert any(k.startswith("0.fs_backbone.styles") for k in moved) and any(".fuser.conv" in k for k in moved)
    assert any(".fs_backbone.content_layer" in k for k in moved)


def test_phase2_trains_the_editor_only_on_the_fixed_direction_set(world, tmp_path):
    t1 = _trainer(world)
    t1.export(tmp_path / "p1.safetensors")
    t = SFETrainer(str(world["data"]), str(tmp_path / "p1.safetensors"), "cpu", 4, 0,
                   **(BASE | {"phase": "2", "directions": world["directions"]}))  # fmt: skip
    m = t.method
    assert m.editor is not None and sorted(d.name for d, _ in t.edits) == ["left", "up"]
    assert t.edits[0][1] == [-2.0, -1.0, 1.0, 2.0]  # the range's ends and halves
    w = torch.zeros(6, m.generator.n_latent, m.generator.style_dim)
    deltas = t._sample_edits(w)
    vectors = {d.name: d.tensors["vector"] for d, _ in t.edits}
    for delta in deltas:  # each item: one of the set's directions at one of its powers, on every layer
        row = delta[0]
        assert torch.allclose(delta, row.expand_as(delta))
        fits = [p for v in vectors.values() for p in (-2.0, -1.0, 1.0, 2.0) if torch.allclose(row, p * v, atol=1e-6)]
        assert len(fits) == 1
    frozen = _state(m.generator, m.e4e_encoder, m.inverter)
    before = _state(m.editor)
    batches = t.batches()
    metrics = [t.train_step(next(batches), s) for s in range(2)][-1]
    assert {"l2_edit", "perceptual_edit", "l2_rec", "adv_rec", "d_loss"} <= set(metrics) and "adv_edit" not in metrics
    assert not _moved(frozen, m.generator, m.e4e_encoder, m.inverter)
    assert _moved(before, m.editor)
    with pytest.raises(UsageError, match="phase-1 checkpoint"):
        SFETrainer(str(world["data"]), None, "cpu", 4, 0, **(BASE | {"phase": "2"}))
    with pytest.raises(UsageError, match="no direction is bound"):
        SFETrainer(str(world["data"]), str(tmp_path / "p1.safetensors"), "cpu", 4, 0, **(BASE | {"phase": "2"}))


def test_gie_checkpoints_round_trip_and_refuse_foreign_parts(world, tmp_path):
    t = _trainer(world)
    t.method.editor = ContentLayerDeepFast(2, 64, 32)
    zero_init_feature_net(t.method.editor, (1.0, -1.0))
    for p in t.method.editor.parameters():  # not a blend any more: the round trip must carry real weights
        p.data.add_(torch.randn_like(p) * 0.01)
    m = t.method.eval()
    m.latent_avg += 0.05  # an Inverter latent_avg of its own is stored beside e4e's
    path = tmp_path / "sfe.safetensors"
    m.save(path)
    back = load_sfe(str(path))
    assert isinstance(back, SFEMethod) and back.config == m.config
    x = world["images"][:2]
    d = torch.randn(1, m.generator.n_latent, m.generator.style_dim, generator=torch.Generator().manual_seed(4)) * 0.3
    with torch.no_grad():
        a, b = m.invert(x), back.invert(x)
        for k in (FEATURE_KEY, "wplus_e4e"):
            assert torch.equal(a.extras[k], b.extras[k])
        assert torch.equal(a.wplus, b.wplus)
        assert torch.equal(m.render(a, d), back.render(b, d))
    with pytest.raises(UsageError, match="own generator and e4e"):
        load_sfe(str(path), generator="stylegan2.ffhq")
    with pytest.raises(CheckpointError, match="not a gie SFE checkpoint"):
        load_sfe(str(world["weights"]))


def test_train_cli_two_phases_run_folders_resume_and_export(world, tmp_path):
    runs = tmp_path / "runs"
    sets = ["--set", "perceptual=msssim", "--set", "id_lambda=0", "--set", "preset=tiny", "--set", "adv_start=1"]
    args = ["train", "--method", "sfe", "--data", world["data"], "-w", world["weights"], "-b", 2, "--run-dir", runs,
            *sets, "--snapshot-every", 2]  # fmt: skip
    res = _invoke(*args, "--steps", 2)
    assert res.exit_code == 0, res.output
    run = runs / "00000-sfe"
    opts = json.loads((run / "options.json").read_text())
    assert opts["trainer"]["phase"] == 1 and opts["sfe"]["editor_length"] is None
    res = _invoke(*args, "--steps", 3, "--resume", "latest")  # the Inverter, Ranger and the discriminator come back
    assert res.exit_code == 0, res.output
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    phase1 = res.stdout.strip()
    m = create_method("sfe", phase1)
    assert m.editor is None
    res = _invoke("train", "--method", "sfe", "--data", world["data"], "-w", phase1, "-b", 2, "--run-dir", runs,
                  *sets, "--set", "phase=2", "--set", f"directions={world['directions']}", "--steps", 2)  # fmt: skip
    assert res.exit_code == 0, res.output
    m2 = create_method("sfe", res.stdout.strip())
    assert m2.editor is not None
    assert torch.equal(m2.inverter.fs_backbone.styles[0].weight, m.inverter.fs_backbone.styles[0].weight)


@slow  # a training run
def test_phase1_learns_a_feature_that_reconstructs_better_than_its_own_codes(world, tmp_path):
    t = _trainer(world, lr="0.003", adv_lambda="0", reg_lambda="0")
    batches = t.batches()
    rows = [t.train_step(next(batches), s) for s in range(80)]
    first, last = rows[0]["l2_rec"], sum(r["l2_rec"] for r in rows[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    m = t.method.eval()
    x = world["images"]
    with torch.no_grad():
        inv = m.invert(x)
        sfe = (m.render(inv) - x).square().mean()
        w_only = (m.generator(inv.wplus, noise_mode="const") - x).square().mean()
    assert sfe < 0.9 * w_only, (float(sfe), float(w_only))  # F_k carries what the codes miss


def test_world_pairs_are_true_single_attribute_edits_and_train_the_editor(world, tmp_path):
    """``world_pairs``: each pair is one random world face and the same face with one attribute of the edit set moved
    by the renderer (within ``pair_change``), drawn from the seed and step alone; the pair loss trains the editor."""
    from gie_cli.synth.params import ATTRIBUTE_NAMES, ATTRIBUTES, attribute_index

    t1 = _trainer(world)
    t1.export(tmp_path / "p1.safetensors")
    g = t1.method.generator
    dirs = tmp_path / "dirs"
    dirs.mkdir()
    for i, name in enumerate(("smile", "age")):
        v = torch.randn(g.style_dim, generator=torch.Generator().manual_seed(20 + i))
        Direction(name, "w", {"vector": v / v.norm()}, list(range(g.n_latent)), power_range=(-2.0, 2.0),
                  generator=generator_binding(g, "tiny")).save(dirs)  # fmt: skip
    names = ",".join(str(dirs / f"{n}.direction.safetensors") for n in ("smile", "age"))
    settings = {"phase": "2", "directions": names, "world_pairs": "1", "pair_change": "0.4"}
    t = SFETrainer(str(world["data"]), str(tmp_path / "p1.safetensors"), "cpu", 4, 3, **(BASE | settings))
    assert t.pair_attributes == ["age", "smile"]
    pairs = t.pair_params(5, 12)
    moved = set()
    for p, q in pairs:
        changed = [a for a in ATTRIBUTE_NAMES if getattr(p, a) != getattr(q, a)]
        assert len(changed) == 1 and changed[0] in ("age", "smile")
        spec = ATTRIBUTES[attribute_index(changed[0])]
        change = (getattr(q, changed[0]) - getattr(p, changed[0])) / ((spec.high - spec.low) / 2)
        assert 0.05 <= abs(change) <= 0.4 + 1e-9
        assert not p.ood and not q.ood
        moved.add(changed[0])
    assert moved == {"age", "smile"}
    assert [p for p, _ in t.pair_params(5, 12)] == [p for p, _ in pairs]  # the seed and step alone decide
    assert [p for p, _ in t.pair_params(6, 12)] != [p for p, _ in pairs]
    x, x_edit = t.world_pairs(5, 3)
    assert x.shape == x_edit.shape == (3, 3, g.size, g.size) and not torch.equal(x, x_edit)
    m = t.method
    frozen, before = _state(m.generator, m.e4e_encoder, m.inverter), _state(m.editor)
    metrics = t.train_step(next(t.batches()), 0)
    assert {"l2_pairs", "perceptual_pairs", "l2_edit", "l2_rec"} <= set(metrics)
    assert not _moved(frozen, m.generator, m.e4e_encoder, m.inverter) and _moved(before, m.editor)
    with pytest.raises(UsageError, match="named after a world attribute"):
        SFETrainer(str(world["data"]), str(tmp_path / "p1.safetensors"), "cpu", 4, 0,
                   **(BASE | {"phase": "2", "directions": world["directions"], "world_pairs": "1"}))  # fmt: skip
    with pytest.raises(UsageError, match="pair_change"):
        SFETrainer(str(world["data"]), str(tmp_path / "p1.safetensors"), "cpu", 4, 0,
                   **(BASE | settings | {"pair_change": "3"}))  # fmt: skip

"""Training OOD inversion's SAMM (Section 3.4): only SAMM moves, the loss holds the reconstruction, adversarial and
mask terms, and the run folder resumes and exports a checkpoint the user's path loads."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_e4e_world, slow
from typer.testing import CliRunner

from gie_cli.cli import app
from gie_cli.errors import UsageError
from gie_cli.methods import create_method
from gie_cli.methods.ood.train import OODTrainer

BASE = {"perceptual": "msssim", "id_lambda": "0", "preset": "tiny", "lr": "1e-3"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    return make_tiny_e4e_world(tmp_path_factory.mktemp("ood"))


def _trainer(world: dict, **settings: str) -> OODTrainer:
    return OODTrainer(str(world["data"]), str(world["weights"]), "cpu", 4, 0, **(BASE | settings))


def _state(*modules: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v.clone() for i, m in enumerate(modules) for k, v in m.state_dict().items()}


def test_a_step_trains_samm_only_with_every_term(world):
    t = _trainer(world, adv_start="0")
    frozen = _state(t.method.e4e.encoder, t.generator)
    samm = _state(t.method.samm)
    batches = t.batches()
    metrics = t.train_step(next(batches), 0)
    t.train_step(next(batches), 1)  # quiet_init's zero norm weights pass gradients on from the second step
    assert {"l2_rec", "perceptual_rec", "adv_rec", "mask_bin", "mask_area", "aoa", "d_loss"} <= set(metrics)
    now = _state(t.method.e4e.encoder, t.generator)
    assert all(torch.equal(v, now[k]) for k, v in frozen.items())
    after = _state(t.method.samm)
    moved = [k for k, v in samm.items() if not torch.equal(v, after[k])]
    assert any(".feats_conv." in k for k in moved) and any(".modulation." in k for k in moved)
    frozen_unused = [k for k in samm if k.endswith(".noiseInj.weight") or (".modulation." in k and k.count(".") == 3)]
    assert len(frozen_unused) == 6 and not set(frozen_unused) & set(moved)  # official, unused in forward


def test_area_defaults_follow_the_paper_and_bad_settings_are_refused(world):
    t = _trainer(world)
    assert t.areas == {32: 0.25, 16: 0.25, 8: 0.3}  # the two finest levels 0.25, the coarser 0.3
    assert _trainer(world, areas="0.1,0.2,0.3").areas == {32: 0.1, 16: 0.2, 8: 0.3}
    with pytest.raises(UsageError):
        _trainer(world, areas="0.1,0.2")
    with pytest.raises(UsageError):
        _trainer(world, levels="64,32")  # no 64 px block in the 32 px generator
    with pytest.raises(UsageError):
        _trainer(world, iterations="0")


def test_train_cli_run_folder_resume_and_export(world, tmp_path):
    runs = tmp_path / "runs"
    sets = [a for k, v in BASE.items() for a in ("--set", f"{k}={v}")]
    args = ["train", "--method", "ood", "--data", world["data"], "-w", world["weights"], "-b", 2, "--run-dir", runs,
            *sets, "--snapshot-every", 2]  # fmt: skip
    res = CliRunner().invoke(app, [str(a) for a in (*args, "--steps", 2)])
    assert res.exit_code == 0, res.output
    run = runs / "00000-ood"
    opts = json.loads((run / "options.json").read_text())
    assert opts["ood"]["resolutions"] == [32, 16, 8] and opts["areas"] == {"32": 0.25, "16": 0.25, "8": 0.3}
    res = CliRunner().invoke(app, [str(a) for a in (*args, "--steps", 3, "--resume", "latest")])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    m = create_method("ood", res.stdout.strip())
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert m.render(m.invert(images)).shape == (2, 3, 32, 32)
    # continuing from the exported file trains the same SAMM further
    t = OODTrainer(str(world["data"]), res.stdout.strip(), "cpu", 2, 0, **BASE)
    assert torch.equal(t.method.samm.feats_conv[0].weight, m.samm.feats_conv[0].weight)


@slow  # a training run
def test_training_puts_the_mask_on_what_the_generator_cannot_draw(world, tmp_path):
    """Photos with a square the tiny generator never draws: after training, the blend mask is higher on the square
    than elsewhere, and the blended output reconstructs the square better than e4e."""
    from gie_cli.io.images import image_to_tensor, load_image, tensor_to_image

    def read(p):
        return image_to_tensor(load_image(p))

    data = tmp_path / "data"
    data.mkdir()
    boxes = []
    for i, p in enumerate(sorted(world["data"].iterdir())):
        x = read(p)
        r, c = 4 + (i * 5) % 16, 4 + (i * 7) % 16
        x[:, r : r + 10, c : c + 10] = torch.tensor([1.0, -1.0, 1.0])[:, None, None]
        tensor_to_image(x).save(data / p.name)
        boxes.append((r, c))
    t = OODTrainer(str(data), str(world["weights"]), "cpu", 8, 0, **(BASE | {"adv_lambda": "0", "lr": "3e-3"}))
    for step, batch in zip(range(300), t.batches(), strict=False):
        t.train_step(batch, step)
    t.method.eval()
    x = torch.stack([read(p) for p in sorted(data.iterdir())])
    box = torch.zeros(len(boxes), 1, 32, 32, dtype=torch.bool)
    for i, (r, c) in enumerate(boxes):
        box[i, :, r : r + 10, c : c + 10] = True
    with torch.no_grad():
        out, inverted, m, _, _ = t.method.forward_blend(x)
    inside, outside = m[box].mean(), m[~box].mean()
    assert inside > 2 * outside, (float(inside), float(outside))
    err_ood = (out - x).square()[box.expand_as(x)].mean()
    err_e4e = (inverted - x).square()[box.expand_as(x)].mean()
    assert err_ood < 0.5 * err_e4e, (float(err_ood), float(err_e4e))

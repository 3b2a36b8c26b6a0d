"""`gie train`: run folder, metrics, snapshots, resume, export loadable by `gie invert`, loss goes down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gie_cli.cli import app
from gie_cli.io.images import tensor_to_image
from gie_cli.methods import create_method
from gie_cli.models.loading import save_components
from gie_cli.models.stylegan2 import Generator

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny generator file and a folder of images it rendered (so they are invertible)."""
    root = tmp_path_factory.mktemp("world")
    torch.manual_seed(0)
    g = Generator(32, style_dim=32, n_mlp=2, channel_max=32).eval()
    g.mean_latent(512)
    gen_path = root / "gen.safetensors"
    save_components(gen_path, {"decoder": g}, {"generator": g.config}, g.w_avg)
    data = root / "data"
    data.mkdir()
    with torch.no_grad():
        imgs = g.generate(torch.randn(12, 32), truncation=0.7).clamp(-1, 1)
    for i, im in enumerate(imgs):
        tensor_to_image(im).save(data / f"{i:03d}.png")
    return gen_path, data


def _train(gen, data, runs, *extra):
    args = [
        "train",
        "--method",
        "e4e",
        "--data",
        data,
        "--weights",
        gen,
        "--batch-size",
        "4",
        "--run-dir",
        runs,
        "--set",
        "encoder=tiny",
        "--set",
        "input_size=32",
        "--set",
        "lr=0.002",
        "--set",
        "lpips_lambda=0",
        *extra,
    ]
    return runner.invoke(app, [str(a) for a in args])


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # a training run
def test_train_e4e_run_folder_resume_and_export(world, tmp_path):
    gen, data = world
    runs = tmp_path / "runs"
    res = _train(gen, data, runs, "--steps", "40", "--snapshot-every", "20")
    assert res.exit_code == 0, res.output
    run = runs / "00000-e4e"
    exported = Path(res.stdout.strip())
    assert exported == run / "e4e.safetensors" and exported.exists()
    opts = json.loads((run / "options.json").read_text())
    assert opts["method"] == "e4e" and opts["trainer"]["lr"] == 0.002 and opts["batch_size"] == 4
    assert (run / "snapshot-0000020.pt").exists() and (run / "snapshot-0000040.pt").exists()
    assert (run / "log.txt").exists()
    m = _metrics(run)
    assert m[-1]["step"] == 40 and all("l2" in r and "delta" in r for r in m)
    first, last = m[0]["l2"], sum(r["l2"] for r in m[-2:]) / 2
    assert last < first, (first, last)  # training lowers the reconstruction loss
    # resume continues the same run from its last snapshot
    res = _train(gen, data, runs, "--steps", "50", "--resume", "latest")
    assert res.exit_code == 0, res.output
    assert not (runs / "00001-e4e").exists()
    assert _metrics(run)[-1]["step"] == 50 and (run / "snapshot-0000050.pt").exists()
    # the export is a regular e4e checkpoint
    method = create_method("e4e", str(exported))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert method.invert(x).wplus.shape == (2, method.generator.n_latent, 32)


def test_train_usage_errors(world, tmp_path):
    gen, data = world
    res = _train(gen, data, tmp_path / "r", "--steps", "2", "--set", "bogus=1")
    assert res.exit_code == 2 and "bogus" in res.stderr
    res = runner.invoke(app, ["train", "--method", "nope", "--data", str(data)])
    assert res.exit_code == 2 and "no trainer" in res.stderr
    res = _train(gen, tmp_path / "missing", tmp_path / "r", "--steps", "2")
    assert res.exit_code == 2 and "not a folder" in res.stderr
    res = _train(gen, data, tmp_path / "r2", "--steps", "2", "--resume", "latest")
    assert res.exit_code == 2 and "no snapshot" in res.stderr


@pytest.mark.slow  # a training run
def test_world_generator_regression_lowers_loss(tmp_path):
    runs = tmp_path / "runs"
    args = [
        "train",
        "--method",
        "generator",
        "--data",
        "synthface",
        "--steps",
        "25",
        "--batch-size",
        "8",
        "--run-dir",
        runs,
        "--set",
        "pool=32",
        "--set",
        "size=32",
        "--set",
        "channels=32,32,24",
        "--set",
        "style_dim=32",
        "--set",
        "n_mlp=2",
        "--set",
        "lr=0.005",
    ]
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    m = _metrics(runs / "00000-generator")
    assert m[-1]["loss"] < 0.7 * m[0]["loss"], (m[0], m[-1])
    from gie_cli.models.loading import build_generator, read_components

    comp = read_components(Path(res.stdout.strip()))
    g = build_generator(comp)
    assert g.size == 32 and comp.config["world"]["z_attributes"][0] == "yaw"
    res = runner.invoke(app, ["train", "--method", "generator", "--data", str(tmp_path), "--steps", "1"])
    assert res.exit_code == 2 and "synthface" in res.stderr


def test_world_latent_passes_pixel_norm_unchanged_and_carries_the_attributes():
    from gie_cli.models.stylegan2 import PixelNorm
    from gie_cli.synth.latent import attribute_z, world_latent, z_attributes
    from gie_cli.synth.train import parse_channels

    attrs = (torch.rand(5, 20, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 0.99  # inside the clip
    z = world_latent(attrs, 64)
    assert z.shape == (5, 64)
    torch.testing.assert_close(z.square().sum(1), torch.full((5,), 64.0))
    torch.testing.assert_close(PixelNorm()(z), z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z_attributes(z[:, :20]), attrs, atol=1e-5, rtol=1e-5)
    assert torch.equal(z[:, :20], attribute_z(attrs))
    assert parse_channels("128,96", 32) == {4: 128, 8: 96, 16: 96, 32: 96} and parse_channels("", 32) is None


def test_world_generator_starts_blind_to_the_noise_dims():
    from gie_cli.synth.train import WorldGeneratorTrainer

    kw = {"pool": "2", "size": "16", "channels": "16", "style_dim": "32", "n_mlp": "2"}
    t = WorldGeneratorTrainer(data="synthface", weights=None, device="cpu", batch_size=2, seed=0, **kw)
    w = t.g.style[1].weight
    assert (w[:, 20:] == 0).all() and (w[:, :20] != 0).any()
    off = WorldGeneratorTrainer(
        data="synthface", weights=None, device="cpu", batch_size=2, seed=0, quiet_noise_dims="false", **kw
    )
    assert (off.g.style[1].weight[:, 20:] != 0).any()


@pytest.mark.slow  # a training run
def test_attribute_estimator_learns(tmp_path):
    runs = tmp_path / "runs"
    args = [
        "train",
        "--method",
        "attributes",
        "--data",
        "synthface",
        "--steps",
        "30",
        "--batch-size",
        "16",
        "--run-dir",
        runs,
        "--set",
        "pool=64",
        "--set",
        "size=32",
        "--set",
        "width=8",
        "--set",
        "lr=0.005",
    ]
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    m = _metrics(runs / "00000-attributes")
    assert sum(r["mse"] for r in m[-2:]) / 2 < m[0]["mse"], (m[0], m[-1])
    from gie_cli.synth.estimator import AttributeEstimator

    est = AttributeEstimator.load(Path(res.stdout.strip()))
    with torch.no_grad():
        assert est(torch.zeros(2, 3, 48, 48)).shape == (2, est.config["n_attributes"])

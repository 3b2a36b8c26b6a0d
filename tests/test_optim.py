"""Latent optimization: schedule, noise regularization, and that it actually fits a target."""

from __future__ import annotations

import math

import pytest
import torch

from gie_cli.errors import UsageError
from gie_cli.methods.optim import LatentOptimization, OptimConfig, lr_schedule, noise_regularization
from gie_cli.models.stylegan2 import Generator


def test_lr_schedule_shape():
    assert lr_schedule(0.0, 0.1, 0.05, 0.25) == 0.0
    assert math.isclose(lr_schedule(0.5, 0.1, 0.05, 0.25), 0.1)
    assert lr_schedule(0.9, 0.1, 0.05, 0.25) < 0.1
    assert math.isclose(lr_schedule(1.0, 0.1, 0.05, 0.25), 0.0, abs_tol=1e-12)


def test_noise_regularization_penalises_correlated_noise():
    torch.manual_seed(0)
    white = [torch.randn(2, 1, 16, 16)]
    smooth = [torch.ones(2, 1, 16, 16)]
    assert (noise_regularization(smooth) > 100 * noise_regularization(white)).all()


def test_config_from_options_coerces_and_rejects():
    cfg = OptimConfig.from_options({"steps": "7", "optimize_noise": "yes", "lr": "0.05", "space": "w"})
    assert cfg.steps == 7 and cfg.optimize_noise is True and cfg.lr == 0.05 and cfg.space == "w"
    for bad in ({"steps": "x"}, {"space": "z"}, {"nope": "1"}, {"optimize_noise": "maybe"}):
        with pytest.raises(UsageError):
            OptimConfig.from_options(bad)


@pytest.mark.parametrize("space", ["w", "wplus"])
def test_optimization_fits_a_generated_target(space):
    torch.manual_seed(0)
    g = Generator(32, style_dim=32, n_mlp=2, channel_max=32).eval()
    g.mean_latent(512)
    with torch.no_grad():
        target = g(g.broadcast(g.mapping(torch.randn(2, 32)))).clamp(-1, 1)

    def fit(steps: int) -> float:
        m = LatentOptimization(g, OptimConfig(steps=steps, loss="l2", space=space, lr=0.05))
        inv = m.invert(target)
        assert inv.wplus.shape == (2, g.n_latent, 32)
        if space == "w":  # W codes are broadcast: all rows equal
            assert torch.allclose(inv.wplus[:, 0], inv.wplus[:, -1])
        with torch.no_grad():
            return float((m.render(inv) - target).square().mean())

    start, fitted = fit(1), fit(60)
    assert fitted < 0.5 * start, (start, fitted)
    assert not any(p.requires_grad for p in g.parameters())  # the generator stays frozen

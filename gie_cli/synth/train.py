"""Training a StyleGAN2 generator on the synthetic face world by regression (``gie train --method generator``).

Each training face is rendered from sampled attributes; its latent ``z`` holds the attribute vector (scaled to unit
variance) in the first dimensions and Gaussian noise in the rest, so ``z ~ N(0, I)`` samples the world's attribute
prior and ``G(mapping(z))`` is fitted to the render with L1 + L2 losses. This converges far faster on a CPU than
adversarial training and gives a W space organised by the world's attributes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn

from gie_cli.methods.loading import build_generator, read_components, require_weights, save_components
from gie_cli.models.stylegan2 import Generator
from gie_cli.synth.params import ATTRIBUTES, attribute_vector, sample_params
from gie_cli.synth.render import render
from gie_cli.training.base import Trainer, register_trainer
from gie_cli.training.data import index_batches

log = logging.getLogger(__name__)

Z_SCALE = math.sqrt(3.0)  # attribute vectors are ~uniform on [-1, 1]: sqrt(3) gives unit variance


@dataclass
class WorldGeneratorConfig:
    """Settings (``--set key=value``).

    Attributes:
        size: output resolution.
        style_dim, n_mlp, channel_max: architecture (official layout, reduced widths).
        lr_mlp: mapping-network learning-rate multiplier. StyleGAN2 uses 0.01, which all but freezes the mapping;
            regression from attributes needs the mapping to learn to separate them from the noise dimensions.
        lr: Adam learning rate (betas 0, 0.99 as StyleGAN2).
        pool: number of pre-rendered faces cycled through (fresh random noise dims every step).
        detail_strength: 0 renders the clean world (no image-specific detail), as the generator cannot model it.
        l1, l2: loss weights.
    """

    size: int = 64
    style_dim: int = 128
    n_mlp: int = 4
    channel_max: int = 128
    lr_mlp: float = 1.0
    lr: float = 2e-3
    pool: int = 4096
    detail_strength: float = 0.0
    l1: float = 1.0
    l2: float = 1.0


def world_latent(attrs: Tensor, style_dim: int, noise: Tensor | None = None) -> Tensor:
    """``z [B, style_dim]`` from attribute vectors ``[B, A]`` in [-1, 1] (+ noise for the remaining dims)."""
    b, a = attrs.shape
    if noise is None:
        noise = torch.randn(b, style_dim - a, device=attrs.device)
    return torch.cat([attrs * Z_SCALE, noise], dim=1)


class WorldGeneratorTrainer(Trainer):
    """Fits a generator to renders of sampled world faces (see module docstring)."""

    name = "generator"

    def __init__(self, data: str, weights: str | None, device, batch_size: int, seed: int, **settings) -> None:
        from gie_cli.methods.psp_e4e import _config_from_settings

        self.cfg = _config_from_settings(WorldGeneratorConfig, settings, "generator")
        if data != "synthface":
            from gie_cli.errors import UsageError

            raise UsageError(f"--data {data}: the generator trainer renders its data", hint="pass --data synthface")
        self.device = torch.device(device)
        c = self.cfg
        if weights:
            self.g = build_generator(read_components(require_weights(weights, "generator", "a generator checkpoint")))
        else:
            self.g = Generator(c.size, style_dim=c.style_dim, n_mlp=c.n_mlp, channel_max=c.channel_max, lr_mlp=c.lr_mlp)
        self.g = self.g.to(self.device).train()
        self.opt = torch.optim.Adam(self.g.parameters(), lr=c.lr, betas=(0.0, 0.99))
        self.batch_size, self.seed = batch_size, seed
        self.images, self.attrs = self._render_pool(c.pool, seed)

    def _render_pool(self, n: int, seed: int) -> tuple[Tensor, Tensor]:
        rng = np.random.default_rng(seed)
        imgs = np.empty((n, self.g.size, self.g.size, 3), np.uint8)
        attrs = np.empty((n, len(ATTRIBUTES)), np.float32)
        for i in range(n):
            p = sample_params(rng, 0.0, detail_strength=self.cfg.detail_strength)
            imgs[i] = render(p, size=self.g.size).image
            attrs[i] = attribute_vector(p)
        log.info("rendered %d world faces at %dpx", n, self.g.size)
        return torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(attrs)

    def batches(self) -> Iterator[Tensor]:
        return index_batches(len(self.images), self.batch_size, self.seed)

    def train_step(self, batch: Tensor, step: int) -> dict[str, float]:
        c = self.cfg
        target = self.images[batch].to(self.device).float() / 127.5 - 1
        z = world_latent(self.attrs[batch].to(self.device), self.g.style_dim)
        img = self.g(self.g.mapping(z), noise_mode="const")
        l1 = (img - target).abs().mean()
        l2 = (img - target).square().mean()
        loss = c.l1 * l1 + c.l2 * l2
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"l1": float(l1.detach()), "l2": float(l2.detach()), "loss": float(loss.detach())}

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.g}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.opt}

    def options(self) -> dict:
        return {"trainer": asdict(self.cfg)}

    def export(self, path) -> None:
        g = self.g.eval()
        g.mean_latent(4096)
        world = {"z_attributes": [a.name for a in ATTRIBUTES], "z_scale": Z_SCALE}
        save_components(path, {"decoder": g}, {"generator": g.config, "world": world}, g.w_avg.clone())
        g.train()


@register_trainer("generator", "fit a StyleGAN2 generator to the synthetic face world (regression)")
def _train_generator(**kwargs) -> WorldGeneratorTrainer:
    return WorldGeneratorTrainer(**kwargs)

"""Training a StyleGAN2 generator on the synthetic face world by regression (``gie train --method generator``).

Each training face is rendered from sampled attributes; its latent ``z`` holds the attribute vector (mapped to
``N(0, 1)`` coordinates by the inverse normal CDF) in the first dimensions and a random direction in the rest, scaled
so that ``|z|^2 = style_dim``. The mapping network starts with pixel normalisation, which only sees the direction of
``z``; such a ``z`` passes through it unchanged, so the attributes reach the MLP exactly, while ``z ~ N(0, I)``
(normalised: uniform on that sphere, whose first coordinates are close to ``N(0, 1)``) still samples the world's
attribute prior. ``G(mapping(z))`` is fitted to the render with L1 + L2 losses. This converges far faster on a CPU
than adversarial training and gives a W space organised by the world's attributes. The clean world renders every
face with the same detail seed, so an image is a function of its attributes alone.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn

from gie_cli.methods.loading import build_generator, read_components, require_weights, save_components
from gie_cli.models.stylegan2 import Generator
from gie_cli.synth.dataset import WORLD_VERSION
from gie_cli.synth.params import ATTRIBUTES, attribute_vector, sample_params
from gie_cli.synth.render import render
from gie_cli.training.base import Trainer, register_trainer
from gie_cli.training.data import index_batches

log = logging.getLogger(__name__)


@dataclass
class WorldGeneratorConfig:
    """Settings (``--set key=value``).

    Attributes:
        size: output resolution.
        style_dim, n_mlp, channel_max: architecture (official layout, reduced widths).
        channels: explicit widths per resolution from 4 px up, comma-separated (e.g. ``128,128,128,96,48`` for 64 px:
            wide at low resolution, narrow at high, ~4x faster than 128 everywhere); empty = ``channel_max``.
        lr_mlp: mapping-network learning-rate multiplier. StyleGAN2 uses 0.01, which all but freezes the mapping;
            regression from attributes needs the mapping to learn to separate them from the noise dimensions.
        lr: Adam learning rate.
        beta1: Adam's first beta (StyleGAN2's adversarial training uses 0; plain regression learns faster with
            momentum).
        quiet_noise_dims: start the first mapping layer with zero weights on the noise dims of ``z``. They carry no
            information about the render; with random weights they drown the attributes and the generator spends
            its first thousands of steps learning to ignore them (measured: several times slower convergence).
        pool: number of pre-rendered faces cycled through (fresh random noise dims every step).
        detail_strength: 0 renders the clean world (no image-specific detail), as the generator cannot model it.
        detail_seed: the detail seed of every training face (hairline waves, background blobs); negative = random
            per face, which the attributes cannot predict.
        l1, l2: loss weights.
    """

    size: int = 64
    style_dim: int = 128
    n_mlp: int = 4
    channel_max: int = 128
    channels: str = "128,128,128,96,48"
    lr_mlp: float = 1.0
    lr: float = 3e-3
    beta1: float = 0.0
    quiet_noise_dims: bool = True
    pool: int = 4096
    detail_strength: float = 0.0
    detail_seed: int = 0
    l1: float = 1.0
    l2: float = 1.0


def attribute_z(attrs: Tensor) -> Tensor:
    """Attributes in [-1, 1] -> ``N(0, 1)`` coordinates: ``Phi^-1((a + 1) / 2)`` (``u`` clipped to [0.002, 0.998]).

    Exact for the uniform attributes; every ``z`` maps back into the attribute range (``a = 2 Phi(z) - 1``), so
    sampling ``z ~ N(0, I)`` never asks the generator for a face outside the world.
    """
    u = ((attrs + 1) / 2).clamp(0.002, 0.998)
    return math.sqrt(2.0) * torch.erfinv(2 * u - 1)


def z_attributes(z: Tensor) -> Tensor:
    """Inverse of :func:`attribute_z`: ``[B, A]`` z coordinates -> attributes in [-1, 1]."""
    return torch.erf(z / math.sqrt(2.0))


def world_latent(attrs: Tensor, style_dim: int, noise: Tensor | None = None) -> Tensor:
    """``z [B, style_dim]`` with ``|z|^2 = style_dim`` from attribute vectors ``[B, A]`` in [-1, 1].

    The first ``A`` dims are :func:`attribute_z` of the attributes; the rest point in the direction of
    ``noise [B, style_dim - A]`` (Gaussian if omitted) with the length that completes the norm, so pixel normalisation
    leaves ``z`` unchanged.
    """
    b, a = attrs.shape
    head = attribute_z(attrs)
    if noise is None:
        noise = torch.randn(b, style_dim - a, device=attrs.device)
    room = (style_dim - head.square().sum(1, keepdim=True)).clamp_min(0.0)
    tail = noise / noise.norm(dim=1, keepdim=True).clamp_min(1e-8) * room.sqrt()
    return torch.cat([head, tail], dim=1)


def parse_channels(spec: str, size: int) -> dict[int, int] | None:
    """``"128,128,96"`` -> ``{4: 128, 8: 128, 16: 96, ...}`` (the last width repeats up to ``size``); ``""`` -> None."""
    if not spec.strip():
        return None
    from gie_cli.errors import UsageError

    hint = "e.g. channels=128,128,128,96,48"
    try:
        widths = [int(v) for v in spec.split(",")]
    except ValueError:
        raise UsageError(f"channels={spec!r} is not a comma-separated list of ints", hint=hint) from None
    if min(widths) < 1:
        raise UsageError(f"channels={spec!r}: widths must be positive", hint=hint)
    res = [2**i for i in range(2, int(math.log2(size)) + 1)]
    return {r: widths[min(i, len(widths) - 1)] for i, r in enumerate(res)}


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
            chans = parse_channels(c.channels, c.size)
            self.g = Generator(
                c.size, style_dim=c.style_dim, n_mlp=c.n_mlp, channel_max=c.channel_max, channels=chans, lr_mlp=c.lr_mlp
            )
            if c.quiet_noise_dims:
                with torch.no_grad():  # the first mapping layer starts blind to the noise dims of z
                    self.g.style[1].weight[:, len(ATTRIBUTES) :] = 0.0
        self.g = self.g.to(self.device).train()
        self.opt = torch.optim.Adam(self.g.parameters(), lr=c.lr, betas=(c.beta1, 0.99))
        self.batch_size, self.seed = batch_size, seed
        self.images, self.attrs = self._render_pool(c.pool, seed)

    def _render_pool(self, n: int, seed: int) -> tuple[Tensor, Tensor]:
        rng = np.random.default_rng(seed)
        imgs = np.empty((n, self.g.size, self.g.size, 3), np.uint8)
        attrs = np.empty((n, len(ATTRIBUTES)), np.float32)
        for i in range(n):
            p = sample_params(rng, 0.0, detail_strength=self.cfg.detail_strength)
            if self.cfg.detail_seed >= 0:
                p = dataclasses.replace(p, detail_seed=self.cfg.detail_seed)
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
        world = {
            "z_attributes": [a.name for a in ATTRIBUTES],
            "z_encoding": "z = sqrt(2) erfinv(a), a in [-1, 1] (see gie_cli.synth.train.attribute_z)",
            "detail_seed": self.cfg.detail_seed,
            "world_version": WORLD_VERSION,
        }
        save_components(path, {"decoder": g}, {"generator": g.config, "world": world}, g.w_avg.clone())
        g.train()


@register_trainer("generator", "fit a StyleGAN2 generator to the synthetic face world (regression)")
def _train_generator(**kwargs) -> WorldGeneratorTrainer:
    return WorldGeneratorTrainer(**kwargs)

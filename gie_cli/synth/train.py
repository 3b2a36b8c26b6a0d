"""The synthetic world's trainers: a StyleGAN2 generator fitted by regression (``gie train --method generator``) and
the attribute estimator (``gie train --method attributes``).

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
import torch.nn.functional as F
from torch import Tensor, nn

from gie_cli.errors import UsageError
from gie_cli.models import create_model
from gie_cli.models.loading import build_generator, save_components
from gie_cli.settings import parse_settings
from gie_cli.synth.dataset import WORLD_VERSION
from gie_cli.synth.estimator import AttributeEstimator
from gie_cli.synth.latent import world_latent
from gie_cli.synth.params import ATTRIBUTES, attribute_vector, sample_params
from gie_cli.synth.render import render
from gie_cli.training import Trainer
from gie_cli.training.data import index_batches
from gie_cli.weights import load_components, resolve_weights

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
        self.cfg = parse_settings(WorldGeneratorConfig, settings, "generator training")
        if data != "synthface":
            raise UsageError(
                f"data {data!r}: the generator trainer renders its own data", hint="pass synthface", param="data"
            )
        self.device = torch.device(device)
        c = self.cfg
        if weights:
            path = resolve_weights(weights, method="generator", what="a generator checkpoint")
            self.g = build_generator(load_components(path))
        else:
            chans = parse_channels(c.channels, c.size)
            self.g = create_model(
                "stylegan2",
                size=c.size,
                style_dim=c.style_dim,
                n_mlp=c.n_mlp,
                channel_max=c.channel_max,
                channels=chans,
                lr_mlp=c.lr_mlp,
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
            "z_encoding": "z = sqrt(2) erfinv(a), a in [-1, 1] (see gie_cli.synth.latent.attribute_z)",
            "detail_seed": self.cfg.detail_seed,
            "world_version": WORLD_VERSION,
        }
        save_components(path, {"decoder": g}, {"generator": g.config, "world": world}, g.w_avg.clone())
        g.train()


def train_world_generator(**kwargs) -> WorldGeneratorTrainer:
    """The ``generator`` trainer (catalog entry)."""
    return WorldGeneratorTrainer(**kwargs)


# --------------------------------------------------------------------------------------------- attribute estimator
@dataclass
class EstimatorConfig:
    """Settings (``--set key=value``): pool of renders, resolution, width, lr, detail and OOD probability, and
    ``blur``: the largest Gaussian blur sigma (pixels at ``size``) of a random per-image blur, so the estimator also
    reads the smoother images of a generator trained on the world (0 = no blur)."""

    pool: int = 4096
    size: int = 64
    width: int = 32
    lr: float = 2e-3
    detail_strength: float = 1.0
    ood_prob: float = 0.2
    blur: float = 1.2


def random_blur(x: Tensor, max_sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """Blurs each image of ``x [B,C,H,W]`` with a Gaussian of sigma uniform in ``[0, max_sigma]`` (5x5 kernel,
    reflect padding); half the images are left sharp."""
    if max_sigma <= 0:
        return x
    b, c = x.shape[:2]
    sig = torch.rand(b, generator=generator) * max_sigma
    sig = torch.where(torch.rand(b, generator=generator) < 0.5, torch.zeros_like(sig), sig).clamp_min(1e-3)
    t = torch.arange(-2, 3, dtype=x.dtype)
    k1 = torch.exp(-(t[None] ** 2) / (2 * sig[:, None].to(x.dtype) ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)  # [B, 5]
    k2 = (k1[:, :, None] * k1[:, None, :]).to(x.device)  # [B, 5, 5]
    w = k2[:, None].repeat_interleave(c, 0)  # [B*C, 1, 5, 5]
    y = F.conv2d(F.pad(x.reshape(1, b * c, *x.shape[2:]), (2, 2, 2, 2), mode="reflect"), w, groups=b * c)
    return y.reshape_as(x)


class EstimatorTrainer(Trainer):
    """Regresses attribute vectors of world renders (with detail and OOD objects, so it ignores them)."""

    name = "attributes"

    def __init__(self, data: str, weights: str | None, device, batch_size: int, seed: int, **settings) -> None:
        if data != "synthface":
            raise UsageError(
                f"data {data!r}: the attribute trainer renders its own data", hint="pass synthface", param="data"
            )
        self.cfg = c = parse_settings(EstimatorConfig, settings, "attributes training")
        self.device = torch.device(device)
        self.net = AttributeEstimator.load(weights) if weights else AttributeEstimator(width=c.width, input_size=c.size)
        self.net = self.net.to(self.device).train()
        self.opt = torch.optim.Adam(self.net.parameters(), lr=c.lr)
        self.batch_size, self.seed = batch_size, seed
        rng = np.random.default_rng(seed + 7)
        imgs = np.empty((c.pool, c.size, c.size, 3), np.uint8)
        attrs = np.empty((c.pool, len(ATTRIBUTES)), np.float32)
        for i in range(c.pool):
            p = sample_params(rng, c.ood_prob, detail_strength=c.detail_strength * float(rng.uniform()))
            imgs[i] = render(p, size=c.size).image
            attrs[i] = attribute_vector(p)
        self.images = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
        self.attrs = torch.from_numpy(attrs)

    def batches(self) -> Iterator[Tensor]:
        return index_batches(len(self.images), self.batch_size, self.seed)

    def train_step(self, batch: Tensor, step: int) -> dict[str, float]:
        x = self.images[batch].to(self.device).float() / 127.5 - 1  # no flips: yaw and lighting are not symmetric
        x = random_blur(x, self.cfg.blur)
        loss = (self.net(x) - self.attrs[batch].to(self.device)).square().mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"mse": float(loss.detach())}

    def modules(self) -> dict[str, nn.Module]:
        return {"estimator": self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"estimator": self.opt}

    def options(self) -> dict:
        return {"trainer": asdict(self.cfg)}

    def export(self, path) -> None:
        self.net.eval()
        self.net.save(path)
        self.net.train()


def train_attribute_estimator(**kwargs) -> EstimatorTrainer:
    """The ``attributes`` trainer (catalog entry)."""
    return EstimatorTrainer(**kwargs)

"""Attribute estimator for the synthetic face world: image -> attribute vector (a small CNN regressor).

Used to label generator samples for direction fitting and to measure what an edit changed (benchmarks). Trained with
``gie train --method attributes --data synthface`` on renders whose attributes are known exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gie_cli.io.checkpoint import load_safetensors, load_state_dict_strict, save_safetensors
from gie_cli.synth.params import ATTRIBUTES, attribute_vector, sample_params
from gie_cli.synth.render import render
from gie_cli.training.base import Trainer, register_trainer
from gie_cli.training.data import index_batches

log = logging.getLogger(__name__)

ESTIMATOR_FORMAT = "gie-attribute-estimator/1"


class AttributeEstimator(nn.Module):
    """Conv stack (stride-2 stages) + global pooling + linear head.

    Args:
        n_attributes: outputs (the world's ``ATTRIBUTES``).
        width: channels of the first stage (doubled per stage, capped at 8x).
        input_size: images are resized to this before the network.
    """

    def __init__(self, n_attributes: int = len(ATTRIBUTES), width: int = 32, input_size: int = 64) -> None:
        super().__init__()
        self.config = {"n_attributes": n_attributes, "width": width, "input_size": input_size}
        self.input_size = input_size
        layers: list[nn.Module] = []
        c_in, c = 3, width
        for _ in range(4):
            layers += [
                nn.Conv2d(c_in, c, 3, stride=2, padding=1),
                nn.BatchNorm2d(c),
                nn.SiLU(),
                nn.Conv2d(c, c, 3, padding=1),
                nn.BatchNorm2d(c),
                nn.SiLU(),
            ]
            c_in, c = c, min(c * 2, width * 8)
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, n_attributes)

    def forward(self, img: Tensor) -> Tensor:
        """Args: img [B,3,H,W] in [-1, 1]. Returns attributes [B, A] (the world's [-1, 1] scale)."""
        assert img.ndim == 4 and img.shape[1] == 3, f"images must be [B,3,H,W], got {tuple(img.shape)}"
        if img.shape[-1] != self.input_size or img.shape[-2] != self.input_size:
            img = F.interpolate(img, size=(self.input_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        return self.head(self.body(img).mean(dim=(2, 3)))

    def save(self, path: str | Path) -> None:
        save_safetensors(
            path,
            dict(self.state_dict()),
            {"format": ESTIMATOR_FORMAT, **self.config, "attributes": [a.name for a in ATTRIBUTES]},
        )

    @classmethod
    def load(cls, path: str | Path) -> AttributeEstimator:
        tensors, cfg = load_safetensors(path)
        m = cls(cfg["n_attributes"], cfg["width"], cfg["input_size"])
        load_state_dict_strict(m, tensors, str(path))
        return m.eval()


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
        from gie_cli.errors import UsageError
        from gie_cli.methods.psp_e4e import _config_from_settings

        if data != "synthface":
            raise UsageError(f"--data {data}: the attribute trainer renders its data", hint="pass --data synthface")
        self.cfg = c = _config_from_settings(EstimatorConfig, settings, "attributes")
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


@register_trainer("attributes", "train the synthetic world's attribute estimator (image -> attributes)")
def _train_attributes(**kwargs) -> EstimatorTrainer:
    return EstimatorTrainer(**kwargs)


_ESTIMATORS: dict[str, AttributeEstimator] = {}


@torch.no_grad()
def world_attributes(images: Tensor) -> Tensor:
    """The embedded attribute estimator (``world.attributes``) as a labelling function.

    For ``gie directions fit interfacegan --classifier gie_cli.synth.estimator:world_attributes --on image
    --attribute smile``; ``$GIE_WORLD_ESTIMATOR`` names another estimator file.

    Args:
        images: ``[B, 3, H, W]`` in [-1, 1].

    Returns:
        ``[B, A]`` attribute estimates (columns: :data:`world_attributes.columns`).
    """
    import os

    from gie_cli.weights import resolve_weights

    spec = os.environ.get("GIE_WORLD_ESTIMATOR") or None
    path = str(resolve_weights(spec, method="attributes", what="an attribute estimator"))
    if path not in _ESTIMATORS:
        _ESTIMATORS[path] = AttributeEstimator.load(path)
    net = _ESTIMATORS[path].to(images.device)
    return net(images.float())


world_attributes.columns = [a.name for a in ATTRIBUTES]  # type: ignore[attr-defined]

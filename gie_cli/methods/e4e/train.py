"""Training pSp (Richardson et al., CVPR 2021) and e4e (Tov et al., SIGGRAPH 2021) encoders for a frozen generator
(``gie train --method e4e|psp``)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gie_cli.methods.e4e.method import EncoderMethod, load_encoder_method
from gie_cli.models import create_model
from gie_cli.models.encoders import ENCODER_CONFIGS
from gie_cli.models.loading import build_generator, wplus_average
from gie_cli.settings import parse_settings
from gie_cli.training import Trainer
from gie_cli.training.data import ImageFolder, endless
from gie_cli.weights import load_components, resolve_weights

log = logging.getLogger(__name__)


@dataclass
class EncoderTrainConfig:
    """Settings of pSp/e4e training (``gie train --method e4e|psp --set key=value``).

    Attributes:
        encoder: ``ENCODER_CONFIGS`` preset (``tiny`` for the demo world, ``ir_se50`` official).
        input_size: encoder input resolution (default: the preset's, capped at the generator size x 2).
        lr: Adam learning rate (the official runs use Ranger at 1e-4).
        l2_lambda, lpips_lambda: reconstruction losses (LPIPS is used when its VGG weights are available).
        delta_reg: e4e's delta regularisation weight (L2 norm of rows minus row 0).
        progressive_every: e4e progressive training: one more W+ row gets its offset every this many steps
            (0 = all rows from the start; pSp ignores it).
        init: a pSp/e4e checkpoint to fine-tune instead of starting from scratch.
    """

    encoder: str = "tiny"
    input_size: int = 0
    lr: float = 1e-4
    l2_lambda: float = 1.0
    lpips_lambda: float = 0.8
    delta_reg: float = 2e-4
    progressive_every: int = 0
    init: str = ""


class EncoderTrainer(Trainer):
    """Trains a pSp/e4e encoder against a frozen generator on aligned images (L2 + LPIPS + e4e delta reg)."""

    def __init__(self, kind: str, data: str, weights: str | None, device, batch_size: int, seed: int, **settings):
        self.name = kind
        self.kind = kind
        self.cfg = parse_settings(EncoderTrainConfig, settings, f"{kind} training")
        self.device = torch.device(device)
        if self.cfg.init:
            method = load_encoder_method(kind, self.cfg.init)
        else:
            path = resolve_weights(
                weights, method=f"{kind} training", what="the generator to invert (a generator checkpoint)"
            )
            comp = load_components(path)
            g = build_generator(comp)
            preset = dict(ENCODER_CONFIGS[self.cfg.encoder])
            preset.update(n_styles=g.n_latent, style_dim=g.style_dim)
            preset["input_size"] = self.cfg.input_size or min(preset.get("input_size", 256), 2 * g.size)
            enc = create_model(kind, **preset)
            avg = wplus_average(comp, g)
            method = EncoderMethod(g, enc, avg.float(), kind, preset, True, comp.weights_id)
        self.method = method.to(self.device)
        self.method.generator.requires_grad_(False).eval()
        self.encoder = self.method.encoder.train()
        self.opt = torch.optim.Adam(self.encoder.parameters(), lr=self.cfg.lr)
        self.loss_size = min(self.method.input_size, self.method.generator.size)
        self._lpips = None
        if self.cfg.lpips_lambda > 0:
            from gie_cli.metrics.lpips import LPIPS, lpips_available

            ok, reason = lpips_available("vgg")
            if ok:
                self._lpips = LPIPS("vgg").to(self.device)
            else:
                log.warning("training without LPIPS (%s); L2 only", reason)
        self.data = ImageFolder(data, self.method.input_size)
        self.batch_size, self.seed = batch_size, seed

    def batches(self):
        return endless(self.data, self.batch_size, self.seed)

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"encoder": self.opt}

    def options(self) -> dict:
        return {"trainer": asdict(self.cfg), "encoder_config": self.method.encoder_config}

    def train_step(self, batch: Tensor, step: int) -> dict[str, float]:
        c = self.cfg
        if self.kind == "e4e" and c.progressive_every > 0:
            self.encoder.set_progressive_stage(min(step // c.progressive_every, self.encoder.n_styles))
        x = batch.to(self.device)
        codes = self.method.encode(x)
        img = self.method.generator(codes, noise_mode="const")
        img = F.interpolate(img, size=(self.loss_size,) * 2, mode="area") if img.shape[-1] != self.loss_size else img
        target = x if x.shape[-1] == self.loss_size else F.interpolate(x, size=(self.loss_size,) * 2, mode="area")
        l2 = (img - target).square().mean()
        loss = c.l2_lambda * l2
        metrics = {"l2": float(l2.detach())}
        if self._lpips is not None:
            lp = self._lpips(img, target).mean()
            loss = loss + c.lpips_lambda * lp
            metrics["lpips"] = float(lp.detach())
        if self.kind == "e4e" and c.delta_reg > 0:
            delta = (codes[:, 1:] - codes[:, :1]).norm(dim=2).sum(1).mean()
            loss = loss + c.delta_reg * delta
            metrics["delta"] = float(delta.detach())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        metrics["loss"] = float(loss.detach())
        return metrics

    def export(self, path) -> None:
        self.encoder.eval()
        if self.kind == "e4e":
            self.encoder.set_progressive_stage(self.encoder.n_styles)
        self.method.save(path)
        self.encoder.train()


def train_e4e(**kwargs) -> EncoderTrainer:
    """The ``e4e`` trainer (catalog entry)."""
    return EncoderTrainer("e4e", **kwargs)


def train_psp(**kwargs) -> EncoderTrainer:
    """The ``psp`` trainer (catalog entry)."""
    return EncoderTrainer("psp", **kwargs)

"""Training HFGI's ADA and consultation encoder on a frozen e4e and generator (Wang et al., "High-Fidelity GAN Inversion
for Image Attribute Editing", CVPR 2022, sec. 3.3 and appendix A.1)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gie_cli.errors import UsageError
from gie_cli.methods.e4e import load_encoder_method
from gie_cli.methods.hfgi.method import HFGIMethod, check_condition_layer, load_hfgi
from gie_cli.methods.hfgi.modules import ResidualAligner, ResidualEncoder, condition_hook
from gie_cli.metrics.alignment import relative_l1
from gie_cli.models.stylegan2 import Generator
from gie_cli.ops.warp import random_perspective, warp_features
from gie_cli.settings import parse_settings
from gie_cli.training import Trainer
from gie_cli.training.data import ImageFolder, endless
from gie_cli.training.losses import ImageLosses, ImageLossSettings, resize_to
from gie_cli.training.optim import Lookahead

log = logging.getLogger(__name__)

#: The conditioned resolution of the official model (its 64x64 block).
OFFICIAL_CONDITION_RESOLUTION = 64


@dataclass
class HFGITrainConfig(ImageLossSettings):
    """Settings of ``gie train --method hfgi --set key=value`` (defaults: the appendix's, A.1; the loss settings of
    :class:`ImageLossSettings` at the appendix's weights: 1, 0.8, 0.1 faces / 0.5 cars, 0.01).

    Attributes:
        condition_resolution: resolution of the conditioned layer (the first, upsampling conv of that block); 0 =
            the official 64 px, or half the output size for generators smaller than 128 px (the 64 px world: 32).
        lr: Adam learning rate of the consultation encoder (with Lookahead; the appendix's 1e-4 for both modules).
        ada_lr: Adam learning rate of ADA (0 = ``lr``). gie's 1e-3: a fresh ADA's output is about 20x the residual's
            size and it must first learn to pass the residual through; at 1e-4 it was still worse than zeros after
            300 steps on the world (``benchmarks/results/hfgi/align_loss.md``).
        lookahead_k, lookahead_alpha: Lookahead settings (the appendix names Lookahead, not its settings).
        align_loss: ``relative`` = ``|ADA(warp(res), G(w)) - res|_1 / |res|_1`` per image (gie's default: 0 =
            aligned, 1 = no better than zeros) or ``l1`` = the mean absolute error (the paper's "alignment loss",
            whose norm the appendix does not name).
        align_lambda: its weight. The appendix's 0.1 on ``l1`` leaves ADA's output no residual: 300 steps on the world
            end at relative error 1.77 against 0.82 for the warped residual itself (the consultation encoder learns
            to read whatever ADA makes); gie's ``relative`` at 1 with ``ada_lr`` 1e-3 ends at 0.94 and reconstructs
            better (``benchmarks/results/hfgi/align_loss.md``).
        distortion: ``RandomPerspective`` distortion scale of the self-supervised warp of the residual (0.15).
        aug_rate: probability that an image's residual is warped (the official ``aug_rate``); the others teach ADA
            to leave an aligned residual alone.
        zero_init: start the last conv of ``condition_scale3`` / ``condition_shift3`` at zero, so training starts
            from e4e's image (conditions 0) instead of the random conditions of a fresh official model, which
            scramble the 64 px feature (measured on the world: L2 0.96 at step 1 against e4e's 0.1).
        init: an HFGI checkpoint to fine-tune (then ``-w`` is not needed).
    """

    condition_resolution: int = 0
    lr: float = 1e-4
    ada_lr: float = 1e-3
    lookahead_k: int = 5
    lookahead_alpha: float = 0.5
    align_loss: str = "relative"
    align_lambda: float = 1.0
    distortion: float = 0.15
    aug_rate: float = 0.8
    zero_init: bool = True
    init: str = ""


def condition_layer_for(generator: Generator, resolution: int = 0) -> int:
    """The gie layer index of the first (upsampling) styled conv at ``resolution`` (0: see
    :attr:`HFGITrainConfig.condition_resolution`).

    Raises:
        UsageError: the generator has no upsampling conv at that resolution.
    """
    if resolution <= 0:
        resolution = OFFICIAL_CONDITION_RESOLUTION if generator.size >= 128 else generator.size // 2
    for layer in range(1, generator.num_layers):
        if generator.layer_resolution(layer) == resolution:
            return layer
    sizes = sorted({generator.layer_resolution(i) for i in range(1, generator.num_layers)})
    raise UsageError(
        f"hfgi setting condition_resolution={resolution}: the generator has no block at that size",
        hint=f"one of {', '.join(map(str, sizes))}",
    )


class HFGITrainer(Trainer):
    """Trains ADA and the consultation encoder with the e4e encoder and the generator frozen (appendix A.1, Fig. 1).

    One step: ``w = e4e(x)``, ``rec = resize(clamp(G(w)))`` and the residual ``res = x - rec`` (no grad); with
    probability ``aug_rate`` the residual is perspective-warped (one random transform per image); ADA aligns it to
    ``rec`` (the "edited" image of an edit of 0) and the consultation encoder conditions ``G(w)``. Loss
    ``L2 + 0.8 perceptual + lambda_id ID + 0.01 adv`` on the conditioned image plus ``L_align`` (ADA's output
    against the unwarped residual; relative, see :class:`HFGITrainConfig`); Adam + Lookahead at 1e-4; then a
    discriminator step (logistic loss + lazy R1).
    """

    name = "hfgi"

    def __init__(self, data: str, weights: str | None, device, batch_size: int, seed: int, **settings: str) -> None:
        self.cfg = c = parse_settings(HFGITrainConfig, settings, "hfgi training")
        self.device = torch.device(device)
        if c.align_loss not in ("l1", "relative"):
            raise UsageError(f"hfgi setting align_loss={c.align_loss!r}", hint="l1 or relative")
        if not 0.0 <= c.aug_rate <= 1.0:
            raise UsageError(f"hfgi setting aug_rate={c.aug_rate} must be in [0, 1]")
        if c.init:
            method = load_hfgi(c.init)
            if "condition_resolution" in settings:
                log.warning("init=%s: the condition layer comes from the checkpoint", c.init)
        else:
            if not weights:
                raise UsageError(
                    "gie train --method hfgi needs -w: an e4e checkpoint (the frozen encoder and generator)",
                    hint="e.g. -w e4e.ffhq, or a gie e4e checkpoint from `gie train --method e4e`",
                )
            e4e = load_encoder_method("e4e", weights)
            g = e4e.generator
            layer = condition_layer_for(g, c.condition_resolution)
            check_condition_layer(g, layer)
            residue = ResidualEncoder(g.layer_channels(layer), g.layer_resolution(layer))
            if c.zero_init:
                with torch.no_grad():
                    for head in (residue.condition_scale3, residue.condition_shift3):
                        head[2].weight.zero_()
                        head[2].bias.zero_()
            try:
                method = HFGIMethod(
                    g,
                    e4e.encoder,
                    e4e.latent_avg,
                    e4e.encoder_config,
                    ResidualAligner(),
                    residue,
                    layer,
                    e4e.start_from_latent_avg,
                    e4e.weights_id,
                )
            except ValueError as e:
                raise UsageError(f"hfgi training: {e}") from None
        self.method: HFGIMethod = method.to(self.device)
        self.generator = self.method.generator.requires_grad_(False).eval()
        self.method.encoder.requires_grad_(False).eval()
        self.method.grid_align.train().requires_grad_(True)
        self.method.residue.train().requires_grad_(True)
        g = self.generator
        self.loss_size = min(c.loss_size, g.size) if c.loss_size > 0 else g.size
        groups = [
            {"params": list(self.method.residue.parameters()), "lr": c.lr},
            {"params": list(self.method.grid_align.parameters()), "lr": c.ada_lr if c.ada_lr > 0 else c.lr},
        ]
        self.opt = Lookahead(torch.optim.Adam(groups), c.lookahead_k, c.lookahead_alpha)
        self.losses = ImageLosses(
            c.loss_weights(),
            g.size,
            g.channels,
            self.device,
            tuple(w for w in (weights, c.init) if w),
            "hfgi",
        )
        self.data = ImageFolder(data, max(g.size, self.method.input_size))
        self.batch_size, self.seed = batch_size, seed
        self._rng = torch.Generator().manual_seed(seed)

    # ----------------------------------------------------------------------------------------------- loop API
    def batches(self) -> Iterator[Tensor]:
        return endless(self.data, self.batch_size, self.seed)

    def modules(self) -> dict[str, nn.Module]:
        return {"grid_align": self.method.grid_align, "residue": self.method.residue, **self.losses.modules()}

    def optimizers(self) -> dict[str, Any]:
        return {"hfgi": self.opt, **self.losses.optimizers()}

    def options(self) -> dict:
        return {
            "trainer": asdict(self.cfg),
            "hfgi": self.method.config,
            **self.losses.describe(),
            "loss_size": self.loss_size,
        }

    # ----------------------------------------------------------------------------------------------- one step
    def train_step(self, batch: Tensor, step: int) -> dict[str, float]:
        c, m = self.cfg, self.method
        x = batch.to(self.device)
        real = resize_to(x, self.generator.size)
        target = resize_to(x, self.loss_size)
        with torch.no_grad():
            wplus, residual, rec = m.invert_parts(x)
        b = x.shape[0]
        src, dst = random_perspective(b, c.distortion, self._rng, self.device)
        keep = (torch.rand(b, generator=self._rng) >= c.aug_rate).to(self.device)
        dst = torch.where(keep[:, None, None], src, dst)
        aligned = m.align(warp_features(residual, src, dst), rec)
        scale, shift = m.residue(aligned)
        img = self.generator(wplus, noise_mode="const", hooks=[condition_hook(scale, shift, m.condition_layer)])
        self.losses.freeze_discriminator()
        metrics: dict[str, float] = {}
        loss = self.losses(img, resize_to(img, self.loss_size), target, metrics, "hfgi")
        if c.align_loss == "relative":
            l_align = relative_l1(aligned, residual).mean()
        else:
            l_align = (aligned - residual).abs().mean()
        loss = loss + c.align_lambda * l_align
        metrics["l_align"] = float(l_align.detach())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        metrics["loss"] = float(loss.detach())
        metrics.update(self.losses.discriminator_step(real, [img], step))
        return metrics

    def export(self, path) -> None:
        self.method.grid_align.eval()
        self.method.residue.eval()
        self.method.save(path)
        self.method.grid_align.train()
        self.method.residue.train()


def train_hfgi(**kwargs: Any) -> HFGITrainer:
    """The ``hfgi`` trainer (catalog entry)."""
    return HFGITrainer(**kwargs)

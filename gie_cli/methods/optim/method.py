"""Latent optimization (projector of Karras et al., StyleGAN2, 2020): fit W or W+ (and optionally noise) per image."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from gie_cli.errors import UsageError
from gie_cli.methods.base import Inversion, InversionMethod
from gie_cli.methods.registry import checks_options, create_method
from gie_cli.models.loading import build_generator
from gie_cli.models.stylegan2 import Generator
from gie_cli.settings import parse_settings, setting
from gie_cli.weights import load_components, resolve_weights

log = logging.getLogger(__name__)

LOSS_TERMS = ("l2", "lpips", "msssim")


@dataclass
class OptimConfig:
    """Settings of latent optimization (defaults follow the StyleGAN2 projector, fewer steps).

    Attributes:
        steps: optimization steps per batch.
        lr: peak Adam learning rate (cosine ramp-down over the last ``lr_rampdown`` and linear ramp-up).
        space: ``wplus`` (one code per layer) or ``w`` (one code broadcast to all layers).
        loss: ``auto`` (``lpips+l2`` when LPIPS backbone weights are available, else ``l2+msssim``) or a
            ``+``-joined subset of ``l2``, ``lpips``, ``msssim``.
        l2_weight, lpips_weight, msssim_weight: loss weights.
        latent_noise: initial latent noise strength in units of the W std, ramped to 0 by ``noise_ramp``.
        optimize_noise: also fit the per-layer noise maps (stored in the latent file as extras).
        noise_regularize: weight of the noise auto-correlation penalty (when ``optimize_noise``).
        init: ``mean`` (W average) or a path to a pSp/e4e checkpoint whose encoder gives the starting codes.
        loss_size: images are compared at this resolution (at most the generator's).
        seed: seed of the latent noise (deterministic runs).
    """

    steps: int = setting(300, ge=1)
    lr: float = setting(0.1, gt=0)
    space: str = "wplus"
    loss: str = "auto"
    l2_weight: float = setting(1.0, ge=0)
    lpips_weight: float = setting(1.0, ge=0)
    msssim_weight: float = setting(1.0, ge=0)
    latent_noise: float = setting(0.05, ge=0)
    noise_ramp: float = setting(0.75, gt=0)
    lr_rampup: float = setting(0.05, ge=0, le=1)
    lr_rampdown: float = setting(0.25, ge=0, le=1)
    optimize_noise: bool = False
    noise_regularize: float = setting(1e5, ge=0)
    init: str = "mean"
    loss_size: int = setting(256, ge=8)
    seed: int = 0

    @classmethod
    def from_options(cls, options: dict) -> OptimConfig:
        """Build from ``--set key=value`` strings (or typed values); unknown keys, bad values, non-finite floats and
        values out of range (``lr > 0``, ``steps >= 1``, weights >= 0, ...) are usage errors."""
        cfg = parse_settings(cls, options, "optim")
        if cfg.space not in ("w", "wplus"):
            raise UsageError(f"optim space must be w or wplus, got {cfg.space!r}")
        if cfg.steps < 1:
            raise UsageError("optim steps must be >= 1")
        return cfg


def lr_schedule(t: float, peak: float, rampup: float, rampdown: float) -> float:
    """Learning rate at progress ``t`` in [0, 1]: linear warm-up, then a cosine ramp-down at the end."""
    down = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    up = min(1.0, t / rampup) if rampup > 0 else 1.0
    return peak * (0.5 - 0.5 * math.cos(down * math.pi)) * up


def noise_regularization(noises: list[Tensor]) -> Tensor:
    """Penalty on spatial auto-correlation of noise maps ``[B,1,R,R]`` at every octave down to 8x8; returns ``[B]``."""
    total = noises[0].new_zeros(noises[0].shape[0])
    for n in noises:
        while True:
            total = total + (n * n.roll(1, dims=3)).mean(dim=(1, 2, 3)).square()
            total = total + (n * n.roll(1, dims=2)).mean(dim=(1, 2, 3)).square()
            r = n.shape[-1]
            if r <= 8:
                break
            n = F.avg_pool2d(n, 2)
    return total


def normalize_noise_(noises: list[Tensor]) -> None:
    """Renormalize each noise map to zero mean, unit variance per item (in place)."""
    with torch.no_grad():
        for n in noises:
            mean = n.mean(dim=(1, 2, 3), keepdim=True)
            std = n.std(dim=(1, 2, 3), keepdim=True)
            n.sub_(mean).div_(std + 1e-8)


class LatentOptimization(InversionMethod):
    """Per-image optimization of W or W+ codes against a reconstruction loss (works with any generator).

    Args:
        generator: the shared generator.
        config: :class:`OptimConfig`.
        init_method: optional encoder method giving the starting codes (e4e -> optimize).
    """

    name = "optim"
    needs_grad = True

    def __init__(
        self,
        generator: Generator,
        config: OptimConfig,
        init_method: InversionMethod | None = None,
        weights_id: str = "",
    ) -> None:
        super().__init__(generator, weights_id)
        self.config = config
        self.init_method = init_method
        self.generator.requires_grad_(False)
        self._lpips = None
        self.terms = self._resolve_loss(config.loss)
        self._w_std: float | None = None

    @property
    def loss_size(self) -> int:
        return min(self.config.loss_size, self.generator.size)

    @property
    def input_size(self) -> int:
        return self.init_method.input_size if self.init_method is not None else self.loss_size

    def _resolve_loss(self, spec: str) -> tuple[str, ...]:
        if spec == "auto":
            from gie_cli.metrics.lpips import lpips_available

            ok, reason = lpips_available("vgg")
            terms = ("lpips", "l2") if ok else ("l2", "msssim")
            if not ok:
                log.info("optim loss: l2+msssim (LPIPS unavailable: %s)", reason)
            return terms
        terms = tuple(t for t in spec.split("+") if t)
        bad = [t for t in terms if t not in LOSS_TERMS]
        if bad or not terms:
            raise UsageError(f"optim loss {spec!r} is not valid", hint=f"use auto or a +-joined subset of {LOSS_TERMS}")
        return terms

    def _lpips_net(self):
        if self._lpips is None:
            from gie_cli.metrics.lpips import LPIPS

            self._lpips = LPIPS(net="vgg").to(self.device)  # raises WeightsUnavailableError with the file to fetch
        return self._lpips

    def _latent_std(self) -> float:
        if self._w_std is None:
            g = self.generator
            with torch.no_grad():
                z = torch.randn(4096, g.style_dim, generator=torch.Generator().manual_seed(1)).to(self.device)
                w = g.style(z)
                self._w_std = float(((w - w.mean(0)).square().sum(1).mean()).sqrt())
        return self._w_std

    def loss(self, img: Tensor, target: Tensor) -> Tensor:
        """Per-item loss ``[B]`` between renders and targets ``[B,3,s,s]`` in [-1,1]."""
        c = self.config
        total = img.new_zeros(img.shape[0])
        if "l2" in self.terms:
            total = total + c.l2_weight * (img - target).square().mean(dim=(1, 2, 3))
        if "lpips" in self.terms:
            total = total + c.lpips_weight * self._lpips_net()(img, target).reshape(-1)
        if "msssim" in self.terms:
            from gie_cli.metrics.ssim import ms_ssim

            x, y = (img.clamp(-1, 1) + 1) / 2, (target + 1) / 2
            total = total + c.msssim_weight * (1 - ms_ssim(x, y, data_range=1.0))
        return total

    def invert(self, images: Tensor) -> Inversion:
        c, g = self.config, self.generator
        images = images.to(self.device)
        target = images
        if target.shape[-1] != self.loss_size:
            size = (self.loss_size, self.loss_size)
            target = F.interpolate(target, size=size, mode="bilinear", align_corners=False, antialias=True)
        b = target.shape[0]
        if self.init_method is not None:
            with torch.no_grad():
                start = self.init_method.invert(images).wplus.to(self.device)
            if c.space == "w":
                start = start.mean(1)
        else:
            start = g.w_avg.expand(b, -1) if c.space == "w" else g.broadcast(g.w_avg.expand(b, -1))
        latent = start.detach().clone().float().requires_grad_(True)
        params = [latent]
        noises: list[Tensor] = []
        if c.optimize_noise:
            gen = torch.Generator().manual_seed(c.seed + 1)
            for layer in range(g.num_layers):
                r = g.layer_resolution(layer)
                noises.append(torch.randn(b, 1, r, r, generator=gen).to(self.device).requires_grad_(True))
            params += noises
        opt = torch.optim.Adam(params, lr=c.lr, betas=(0.9, 0.999))
        w_std = self._latent_std()
        gen = torch.Generator().manual_seed(c.seed)
        for step in range(c.steps):
            t = step / c.steps
            for group in opt.param_groups:
                group["lr"] = lr_schedule(t, c.lr, c.lr_rampup, c.lr_rampdown)
            strength = w_std * c.latent_noise * max(0.0, 1.0 - t / c.noise_ramp) ** 2
            jitter = torch.randn(latent.shape, generator=gen).to(self.device) * strength
            img = g(latent + jitter, noise_mode="const", noise=noises or None)
            img = F.interpolate(img, size=target.shape[-2:], mode="area") if img.shape[-1] != target.shape[-1] else img
            loss = self.loss(img, target)
            if noises:
                loss = loss + c.noise_regularize * noise_regularization(noises)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            if noises:
                normalize_noise_(noises)
            if step % max(1, c.steps // 5) == 0 or step == c.steps - 1:
                log.debug("optim step %d/%d loss %.4f", step + 1, c.steps, float(loss.detach().mean()))
        wplus = latent.detach() if c.space == "wplus" else g.broadcast(latent.detach())
        extras = {f"noise_{i}": n.detach() for i, n in enumerate(noises)}
        return Inversion(wplus.contiguous(), extras)

    def nonfinite_cause(self) -> str:
        """The optimisation diverged: name the settings that drive it (``lr``, the loss weights)."""
        c = self.config
        return (
            f"the latent optimisation diverged with lr={c.lr:g}, steps={c.steps}, loss {'+'.join(self.terms)}; "
            "lower the learning rate (--set lr=0.1 is the default)"
        )

    def describe(self) -> dict:
        d = super().describe()
        d["optim"] = {f.name: getattr(self.config, f.name) for f in fields(self.config)} | {
            "loss": "+".join(self.terms)
        }
        return d


@checks_options(OptimConfig.from_options)
def load_optim(weights: str | None, **options: object) -> LatentOptimization:
    """The ``optim`` method (catalog entry): a generator from ``weights`` (or the starting encoder's, or the embedded
    default) and :class:`OptimConfig` from ``options``."""
    config = OptimConfig.from_options(dict(options))
    init_method = None
    if config.init != "mean":
        kind = "e4e"
        init_method = create_method(kind, config.init)
    path = ""
    if weights:
        comp = load_components(weights)
        generator, wid, path = build_generator(comp), comp.weights_id, str(comp.source)
    elif init_method is not None:
        generator, wid, path = init_method.generator, init_method.weights_id, init_method.weights_path
    else:  # the embedded default generator (or a usage error naming the registry entries)
        comp = load_components(resolve_weights(None, method="optim", what="a generator or pSp/e4e checkpoint"))
        generator, wid, path = build_generator(comp), comp.weights_id, str(comp.source.resolve())
    method = LatentOptimization(generator, config, init_method, wid)
    method.weights_path = path
    return method

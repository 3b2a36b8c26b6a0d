"""The image losses of the pSp-family refinement trainers (HFGI, GradStyle, ...): L2, a perceptual term (LPIPS-VGG, or
``1 - MS-SSIM`` where LPIPS weights are unavailable offline), ArcFace ID where installed, and the non-saturating
adversarial loss against a StyleGAN2 discriminator with its own step (logistic loss + lazy R1)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gie_cli.errors import UsageError
from gie_cli.io.checkpoint import load_state_dict_strict
from gie_cli.models import create_model
from gie_cli.models.stylegan2 import Discriminator, discriminator_config_from_state_dict
from gie_cli.weights import load_components

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LossWeights:
    """Weights and choices of :class:`ImageLosses` (each trainer fills them from its settings).

    Attributes:
        l2, perceptual, identity, adversarial: loss weights (0 turns a term off).
        perceptual_kind: ``auto`` (LPIPS-VGG when its weights are installed, else ``1 - MS-SSIM``), ``lpips``,
            ``msssim`` or ``none``.
        identity_mode: ``auto`` (ArcFace ID loss when ``arcface.ir_se50`` is installed, else none), ``on``, ``off``.
        d_lr: discriminator learning rate (Adam, betas 0 / 0.99).
        r1, r1_every: lazy R1 penalty of the discriminator (StyleGAN2's; 0 = off).
        discriminator: checkpoint whose StyleGAN2 discriminator initialises D; empty = the first of the trainer's
            own weights that has one, else a fresh one (logged).
    """

    l2: float = 1.0
    perceptual: float = 0.8
    identity: float = 0.1
    adversarial: float = 0.01
    perceptual_kind: str = "auto"
    identity_mode: str = "auto"
    d_lr: float = 1e-4
    r1: float = 10.0
    r1_every: int = 16
    discriminator: str = ""


@dataclass
class ImageLossSettings:
    """The loss settings every refinement trainer shares (``gie train --set key=value``); a trainer's settings
    dataclass extends this one and may redeclare a default (e.g. GradStyle's ``adv_lambda``).

    Attributes:
        l2_lambda, lpips_lambda, id_lambda, adv_lambda: loss weights (the pSp family's 1, 0.8, 0.1, and 0.01 here).
        perceptual: ``auto`` (LPIPS-VGG when its weights are installed, else ``1 - MS-SSIM``, the offline
            substitute), ``lpips``, ``msssim``, ``none``.
        identity: ``auto`` (ArcFace ID loss when ``arcface.ir_se50`` is installed, else none), ``on``, ``off``.
        d_lr: discriminator learning rate (1e-4).
        r1, r1_every: lazy R1 penalty of the discriminator (StyleGAN2's; 0 = off).
        discriminator: checkpoint (file or registry name, e.g. ``stylegan2.ffhq``) whose StyleGAN2 discriminator
            initialises D; empty = the trainer's own weights' if they have one, else a fresh one (logged).
        loss_size: resolution of the L2/perceptual/ID losses (capped at the generator size).
    """

    l2_lambda: float = 1.0
    lpips_lambda: float = 0.8
    perceptual: str = "auto"
    id_lambda: float = 0.1
    identity: str = "auto"
    adv_lambda: float = 0.01
    d_lr: float = 1e-4
    r1: float = 10.0
    r1_every: int = 16
    discriminator: str = ""
    loss_size: int = 256

    def loss_weights(self) -> LossWeights:
        """These settings as :class:`ImageLosses` takes them."""
        return LossWeights(
            l2=self.l2_lambda,
            perceptual=self.lpips_lambda,
            identity=self.id_lambda,
            adversarial=self.adv_lambda,
            perceptual_kind=self.perceptual,
            identity_mode=self.identity,
            d_lr=self.d_lr,
            r1=self.r1,
            r1_every=self.r1_every,
            discriminator=self.discriminator,
        )


def resize_to(x: Tensor, size: int) -> Tensor:
    """``x [B, C, H, H]`` at ``size`` (area when shrinking, bilinear when growing, itself when equal)."""
    if x.shape[-1] == size:
        return x
    if x.shape[-1] > size:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class ImageLosses:
    """The weighted image losses of a generated batch against its target, and the discriminator they train against.

    Args:
        weights: the loss weights and choices.
        image_size: the generator's output size (the discriminator's input size).
        channels: the generator's channel map (a fresh discriminator mirrors it).
        device: where the loss networks live.
        sources: checkpoints searched, in order, for a StyleGAN2 discriminator when ``weights.discriminator`` is empty.
        what: the trainer, for messages (e.g. ``"hfgi"``).
    """

    def __init__(
        self,
        weights: LossWeights,
        image_size: int,
        channels: dict,
        device: torch.device,
        sources: tuple[str, ...] = (),
        what: str = "training",
    ) -> None:
        self.w, self.device, self.what = weights, device, what
        self.perceptual_net, self.perceptual_kind = self._build_perceptual()
        self.id_net = self._build_identity()
        self.disc: Discriminator | None = None
        self.d_opt: torch.optim.Optimizer | None = None
        if weights.adversarial > 0:
            self.disc = self._build_discriminator(image_size, channels, sources).to(device).train()
            self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=weights.d_lr, betas=(0.0, 0.99))

    # ----------------------------------------------------------------------------------------------- parts
    def _build_perceptual(self) -> tuple[nn.Module | None, str]:
        kind = self.w.perceptual_kind.lower()
        if self.w.perceptual <= 0 or kind == "none":
            return None, "none"
        if kind not in ("auto", "lpips", "msssim"):
            raise UsageError(f"{self.what} setting perceptual={kind!r}", hint="auto, lpips, msssim or none")
        if kind in ("auto", "lpips"):
            from gie_cli.metrics.lpips import LPIPS, lpips_available

            ok, reason = lpips_available("vgg")
            if ok:
                return LPIPS("vgg").to(self.device), "lpips"
            if kind == "lpips":
                raise UsageError(f"perceptual=lpips but LPIPS is unavailable: {reason}")
            log.warning("LPIPS unavailable (%s); using 1 - MS-SSIM as the perceptual loss", reason)
        return None, "msssim"

    def _build_identity(self) -> nn.Module | None:
        mode = self.w.identity_mode.lower()
        if self.w.identity <= 0 or mode == "off":
            return None
        from gie_cli.metrics.identity import identity_available, load_identity_net

        ok, reason = identity_available()
        if ok:
            return load_identity_net(device=self.device)
        if mode == "on":
            raise UsageError(f"identity=on but the ArcFace weights are unavailable: {reason}")
        log.warning("ID loss off: %s", reason)
        return None

    def _build_discriminator(self, size: int, channels: dict, sources: tuple[str, ...]) -> Discriminator:
        chosen = self.w.discriminator
        for src in [chosen] if chosen else [s for s in sources if s]:
            comp = load_components(src)
            if "discriminator" not in comp.parts:
                if chosen:
                    raise UsageError(f"discriminator={src}: the file has no StyleGAN2 discriminator ('d')")
                continue
            sd = comp.parts["discriminator"]
            d = create_model("stylegan2-discriminator", **discriminator_config_from_state_dict(sd))
            if d.size != size:
                raise UsageError(f"discriminator={src} is for {d.size} px images, the generator draws {size} px")
            load_state_dict_strict(d, sd, f"{comp.source} [discriminator]")
            log.info("discriminator initialised from %s", comp.source)
            return d
        log.warning(
            "no StyleGAN2 discriminator in the weights: adversarial loss with a freshly initialised one "
            "(pass --set discriminator=FILE to start from a trained one, as the papers do)"
        )
        return create_model("stylegan2-discriminator", size=size, channels=channels)

    def modules(self) -> dict[str, nn.Module]:
        """The trained loss networks, for a trainer's snapshots: ``{"discriminator": D}`` or nothing."""
        return {"discriminator": self.disc} if self.disc is not None else {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Their optimizers, keyed as :meth:`modules`."""
        return {"discriminator": self.d_opt} if self.d_opt is not None else {}

    def describe(self) -> dict:
        """What the run uses, for ``options.json``."""
        return {"perceptual_loss": self.perceptual_kind, "id_loss": self.id_net is not None}

    # ----------------------------------------------------------------------------------------------- losses
    def __call__(
        self, img: Tensor, small: Tensor, target: Tensor, metrics: dict[str, float], tag: str, adversarial: bool = True
    ) -> Tensor:
        """The weighted sum for one generated batch.

        Args:
            img: ``[B, 3, S, S]`` at the generator's size (what the discriminator judges).
            small: ``img`` at the loss resolution, ``[B, 3, s, s]``.
            target: the real images at the loss resolution, ``[B, 3, s, s]``.
            metrics: receives each term as ``<term>_<tag>``.
            tag: suffix of the metric names (e.g. ``"rec"``).
            adversarial: include the adversarial term (False: e.g. before a trainer's ``adv_start`` step).
        """
        w = self.w
        l2 = (small - target).square().mean()
        loss = w.l2 * l2
        metrics[f"l2_{tag}"] = float(l2.detach())
        if self.perceptual_kind == "lpips":
            p = self.perceptual_net(small, target).mean()
        elif self.perceptual_kind == "msssim":
            from gie_cli.metrics.ssim import ms_ssim

            p = 1 - ms_ssim(small, target, data_range=2.0).mean()
        else:
            p = None
        if p is not None:
            loss = loss + w.perceptual * p
            metrics[f"perceptual_{tag}"] = float(p.detach())
        if self.id_net is not None:
            from gie_cli.metrics.identity import identity_similarity

            ident = (1 - identity_similarity(self.id_net, small, target)).mean()
            loss = loss + w.identity * ident
            metrics[f"id_{tag}"] = float(ident.detach())
        if self.disc is not None and adversarial:
            adv = F.softplus(-self.disc(img)).mean()
            loss = loss + w.adversarial * adv
            metrics[f"adv_{tag}"] = float(adv.detach())
        return loss

    def freeze_discriminator(self) -> None:
        """No discriminator gradients during the generator-side step."""
        if self.disc is not None:
            self.disc.requires_grad_(False)

    def discriminator_step(self, real: Tensor, fakes: list[Tensor], step: int) -> dict[str, float]:
        """One discriminator update on ``real [B, 3, S, S]`` against the detached ``fakes``; its metrics (none
        without a discriminator)."""
        if self.disc is None or self.d_opt is None:
            return {}
        d = self.disc.requires_grad_(True)
        fake = torch.cat([f.detach() for f in fakes])
        d_loss = F.softplus(d(fake)).mean() + F.softplus(-d(real)).mean()
        out = {"d_loss": float(d_loss.detach())}
        if self.w.r1 > 0 and step % self.w.r1_every == 0:
            r = real.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(d(r).sum(), r, create_graph=True)
            r1 = grad.square().sum(dim=(1, 2, 3)).mean()
            d_loss = d_loss + self.w.r1 / 2 * r1 * self.w.r1_every
            out["r1"] = float(r1.detach())
        self.d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_opt.step()
        d.requires_grad_(False)
        return out

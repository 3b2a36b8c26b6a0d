"""pSp (Richardson et al., CVPR 2021) and e4e (Tov et al., SIGGRAPH 2021): feed-forward W+ encoders."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gie_cli.errors import UsageError
from gie_cli.io.checkpoint import latent_avg_as_wplus
from gie_cli.methods.base import Inversion, InversionMethod, register_method
from gie_cli.methods.loading import build_encoder, build_generator, read_components, require_weights, save_components
from gie_cli.models.encoders import ENCODER_CONFIGS, create_encoder
from gie_cli.models.stylegan2 import Generator
from gie_cli.training.base import Trainer, register_trainer
from gie_cli.training.data import ImageFolder, endless

log = logging.getLogger(__name__)

_OFFICIAL_TYPES = {"e4e": ("Encoder4Editing",), "psp": ("GradualStyleEncoder",)}


class EncoderMethod(InversionMethod):
    """A feed-forward encoder predicting W+ offsets from ``latent_avg`` (pSp and e4e share this).

    Args:
        generator: shared generator.
        encoder: ``Encoder4Editing`` or ``GradualStyleEncoder`` (images ``[B,3,S,S]`` -> codes ``[B,n_latent,D]``).
        latent_avg: ``[n_latent, D]`` added to the codes when ``start_from_latent_avg``.
        encoder_config: kwargs the encoder was built with (saved in gie checkpoints).
    """

    def __init__(
        self,
        generator: Generator,
        encoder: nn.Module,
        latent_avg: Tensor,
        kind: str,
        encoder_config: dict,
        start_from_latent_avg: bool = True,
        weights_id: str = "",
    ) -> None:
        super().__init__(generator, weights_id)
        self.name = kind
        self.encoder = encoder
        self.encoder_config = encoder_config
        self.start_from_latent_avg = start_from_latent_avg
        assert latent_avg.shape == (generator.n_latent, generator.style_dim), (
            f"latent_avg must be [{generator.n_latent}, {generator.style_dim}], got {tuple(latent_avg.shape)}"
        )
        self.register_buffer("latent_avg", latent_avg.clone())
        if encoder.n_styles != generator.n_latent:
            raise ValueError(f"encoder predicts {encoder.n_styles} styles, generator needs {generator.n_latent}")

    @property
    def input_size(self) -> int:
        return int(self.encoder.input_size)

    def encode(self, images: Tensor, return_features: bool = False):
        """Codes (with ``latent_avg``) ``[B, n_latent, D]`` and optionally the feature pyramid."""
        x = self.prepare(images)
        if return_features:
            codes, feats = self.encoder(x, return_features=True)
        else:
            codes, feats = self.encoder(x), None
        if self.start_from_latent_avg:
            codes = codes + self.latent_avg
        return (codes, feats) if return_features else codes

    def invert(self, images: Tensor) -> Inversion:
        return Inversion(self.encode(images))

    def save(self, path) -> None:
        """Save in gie's checkpoint format (official prefixes ``encoder.``/``decoder.``)."""
        save_components(
            path,
            {"encoder": self.encoder, "decoder": self.generator},
            {
                "method": self.name,
                "encoder": self.encoder_config,
                "generator": self.generator.config,
                "opts": {"start_from_latent_avg": self.start_from_latent_avg},
            },
            self.latent_avg,
        )


def load_encoder_method(kind: str, weights: str | None) -> EncoderMethod:
    """Load pSp or e4e from an official ``*_ffhq_encode.pt`` (or any pSp-family file) or a gie checkpoint."""
    path = require_weights(weights, kind, f"an official {kind}_ffhq_encode.pt or a gie {kind} checkpoint")
    comp = read_components(path)
    enc_type = comp.opts.get("encoder_type")
    if enc_type and enc_type not in _OFFICIAL_TYPES[kind]:
        log.warning("%s: opts.encoder_type is %s, loading it as %s anyway", path, enc_type, kind)
    generator = build_generator(comp)
    encoder, cfg = build_encoder(comp, kind)
    if comp.latent_avg is not None:
        avg = latent_avg_as_wplus(comp.latent_avg, generator.n_latent)
    else:
        avg = generator.w_avg[None].expand(generator.n_latent, -1)
    start = bool(comp.opts.get("start_from_latent_avg", True))
    method = EncoderMethod(generator, encoder, avg.float(), kind, cfg, start, comp.weights_id)
    method.weights_path = str(Path(path).resolve())
    return method


@register_method("e4e", "encoder for editing (Tov et al. 2021): fast, editable W+ codes")
def _load_e4e(weights: str | None, **_: object) -> EncoderMethod:
    return load_encoder_method("e4e", weights)


@register_method("psp", "pixel2style2pixel (Richardson et al. 2021): fast W+ encoder")
def _load_psp(weights: str | None, **_: object) -> EncoderMethod:
    return load_encoder_method("psp", weights)


# --------------------------------------------------------------------------------------------------- training
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
        self.cfg = _config_from_settings(EncoderTrainConfig, settings, kind)
        self.device = torch.device(device)
        if self.cfg.init:
            method = load_encoder_method(kind, self.cfg.init)
        else:
            path = require_weights(weights, f"{kind} training", "the generator to invert (a generator checkpoint)")
            comp = read_components(path)
            g = build_generator(comp)
            preset = dict(ENCODER_CONFIGS[self.cfg.encoder])
            preset.update(n_styles=g.n_latent, style_dim=g.style_dim)
            preset["input_size"] = self.cfg.input_size or min(preset.get("input_size", 256), 2 * g.size)
            enc = create_encoder(kind, **preset)
            avg = (
                latent_avg_as_wplus(comp.latent_avg, g.n_latent)
                if comp.latent_avg is not None
                else g.broadcast(g.w_avg[None])[0]
            )
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


def _config_from_settings(cls, settings: dict, what: str):
    from gie_cli.methods.optim import _coerce

    known = {f.name for f in fields(cls)}
    bad = [k for k in settings if k not in known]
    if bad:
        raise UsageError(f"{what} training has no setting {bad[0]!r}", hint=f"known: {', '.join(sorted(known))}")
    return cls(**{k: _coerce(k, v, type(getattr(cls(), k))) for k, v in settings.items()})


@register_trainer("e4e", "train an e4e encoder for a generator")
def _train_e4e(**kwargs) -> EncoderTrainer:
    return EncoderTrainer("e4e", **kwargs)


@register_trainer("psp", "train a pSp encoder for a generator")
def _train_psp(**kwargs) -> EncoderTrainer:
    return EncoderTrainer("psp", **kwargs)

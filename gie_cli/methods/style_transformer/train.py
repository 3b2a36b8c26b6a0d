"""Training the Style Transformer inversion encoder (Hu et al., CVPR 2022) for a frozen synthesis network
(``gie train --method style_transformer``): the encoder and the generator's mapping MLP are trained, as the
supplement's section D says, with pSp's losses."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gie_cli.errors import CheckpointError, UsageError
from gie_cli.io.checkpoint import read_checkpoint
from gie_cli.methods.style_transformer.method import StyleTransformerMethod, load_style_transformer
from gie_cli.methods.style_transformer.modules import StyleTransformerEncoder
from gie_cli.models.encoders import ENCODER_CONFIGS
from gie_cli.models.loading import build_generator, wplus_average
from gie_cli.settings import parse_settings
from gie_cli.training import Trainer
from gie_cli.training.data import ImageFolder, endless
from gie_cli.training.losses import ImageLosses, ImageLossSettings, resize_to
from gie_cli.training.optim import ranger_or_adam
from gie_cli.weights import load_components, resolve_weights

log = logging.getLogger(__name__)


@dataclass
class StyleTransformerTrainConfig(ImageLossSettings):
    """Settings of Style Transformer training (``gie train --method style_transformer --set key=value``).

    The loss fields are :class:`~gie_cli.training.losses.ImageLossSettings`' with pSp's weights (L2 1, LPIPS 0.8, ID
    0.1 where ArcFace is installed; offline the perceptual term is ``1 - MS-SSIM``) and no adversarial term.

    Attributes:
        encoder: ``ENCODER_CONFIGS`` preset of the IR-SE backbone (``ir_se50`` official, ``world`` for the demo world,
            ``tiny`` for tests); its last width becomes the generator's ``style_dim`` (the transformer's width).
        input_size: encoder input resolution (default: the preset's, capped at twice the generator size).
        nhead, dim_feedforward: the decoder layers (official 4 and 1024; 0 = twice ``style_dim``).
        lr: learning rate of the encoder and the mapping MLP (the supplement's 1e-4).
        optimizer: ``ranger`` (RAdam + Lookahead, the supplement's) or ``adam``.
        train_mapping: also train the generator's mapping MLP (the supplement: yes; the synthesis stays frozen).
        body_from: a pSp/e4e/Style Transformer checkpoint, or an ArcFace IR-SE50 (``arcface.ir_se50``, the
            official run's start), whose IR-SE ``input_layer``/``body`` initialise the backbone (offline, gie starts
            the world model from ``world.e4e``'s body). Empty: a random backbone.
        init: a Style Transformer checkpoint to fine-tune (then ``encoder``, ``body_from`` and ``-w`` are unused).
    """

    adv_lambda: float = 0.0
    encoder: str = "tiny"
    input_size: int = 0
    nhead: int = 4
    dim_feedforward: int = 0
    lr: float = 1e-4
    optimizer: str = "ranger"
    train_mapping: bool = True
    body_from: str = ""
    init: str = ""


def _new_method(weights: str | None, c: StyleTransformerTrainConfig) -> StyleTransformerMethod:
    """A fresh Style Transformer on the generator of ``weights`` (backbone random or from ``c.body_from``)."""
    if not weights:
        raise UsageError(
            "gie train --method style_transformer needs -w: the generator to invert (or --set init=CHECKPOINT)",
            hint="e.g. -w world.generator, or an e4e/pSp checkpoint whose generator it should use",
        )
    if c.encoder not in ENCODER_CONFIGS:
        raise UsageError(
            f"style_transformer setting encoder={c.encoder!r}", hint=f"one of {', '.join(ENCODER_CONFIGS)}"
        )
    comp = load_components(resolve_weights(weights, method="style_transformer training", what="a generator"))
    g = build_generator(comp)
    preset = dict(ENCODER_CONFIGS[c.encoder])
    backbone = {k: preset[k] for k in ("mode", "unit_counts", "widths", "num_layers", "input_nc") if k in preset}
    if "widths" in backbone:
        backbone["widths"] = [*list(backbone["widths"])[:-1], g.style_dim]
    elif g.style_dim != 512:
        raise UsageError(f"encoder={c.encoder} has 512 channels; this generator's style_dim is {g.style_dim}")
    cfg = {
        **backbone,
        "n_styles": g.n_latent,
        "style_dim": g.style_dim,
        "nhead": c.nhead,
        "dim_feedforward": c.dim_feedforward or 2 * g.style_dim,
        "input_size": c.input_size or min(int(preset.get("input_size", 256)), 2 * g.size),
    }
    try:
        enc = StyleTransformerEncoder(**cfg)
    except ValueError as e:
        raise UsageError(f"style_transformer training: {e}") from None
    if c.body_from:
        _load_body(enc, c.body_from)
    return StyleTransformerMethod(
        g, enc, wplus_average(comp, g).float(), "style_transformer", cfg, True, comp.weights_id
    )


def _load_body(encoder: StyleTransformerEncoder, spec: str) -> None:
    """Copy ``input_layer.*`` and ``body.*`` from another IR-SE encoder's checkpoint (shapes must match).

    Raises:
        UsageError: the file has no encoder, or its backbone has other shapes.
    """
    path = resolve_weights(spec, method="style_transformer training", what="an IR-SE encoder")
    try:
        sd = load_components(path).parts.get("encoder", {})
    except CheckpointError:  # an ArcFace IR-SE50 (model_ir_se50.pth): a bare state dict with an output_layer
        sd = read_checkpoint(path)
    src = {k: v for k, v in sd.items() if k.startswith(("input_layer.", "body."))}
    own = {k: v for k, v in encoder.state_dict().items() if k.startswith(("input_layer.", "body."))}
    if not src or set(src) != set(own) or any(src[k].shape != own[k].shape for k in own):
        raise UsageError(
            f"body_from={spec}: its IR-SE backbone does not match this encoder's (preset and widths)",
            hint="train with the preset that checkpoint was made with (--set encoder=...)",
        )
    encoder.load_state_dict(src, strict=False)
    log.info("backbone initialised from %s (%d tensors)", path, len(src))


class StyleTransformerTrainer(Trainer):
    """Trains the Style Transformer encoder and the generator's mapping MLP (synthesis frozen) on aligned images:
    pSp's L2 + perceptual (+ ID) losses, Ranger (RAdam + Lookahead) at 1e-4."""

    name = "style_transformer"

    def __init__(self, data: str, weights: str | None, device, batch_size: int, seed: int, **settings: str) -> None:
        self.cfg = c = parse_settings(StyleTransformerTrainConfig, settings, "style_transformer training")
        self.device = torch.device(device)
        method = load_style_transformer(c.init) if c.init else _new_method(weights, c)
        self.method = method.to(self.device)
        g = self.generator = self.method.generator
        g.requires_grad_(False).eval()
        self.encoder = self.method.encoder.train().requires_grad_(True)
        params = list(self.encoder.parameters())
        if c.train_mapping:
            g.style.requires_grad_(True)
            params += list(g.style.parameters())
        self.opt: Any = ranger_or_adam(params, c.lr, c.optimizer, "style_transformer")
        self.loss_size = min(c.loss_size, g.size) if c.loss_size > 0 else g.size
        self.losses = ImageLosses(c.loss_weights(), g.size, g.channels, self.device, (), "style_transformer")
        self.data = ImageFolder(data, self.method.input_size)
        self.batch_size, self.seed = batch_size, seed

    def batches(self):
        return endless(self.data, self.batch_size, self.seed)

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "mapping": self.generator.style, **self.losses.modules()}

    def optimizers(self) -> dict[str, Any]:
        return {"encoder": self.opt, **self.losses.optimizers()}

    def options(self) -> dict:
        return {
            "trainer": asdict(self.cfg),
            "encoder_config": self.method.encoder_config,
            **self.losses.describe(),
            "loss_size": self.loss_size,
        }

    def train_step(self, batch: Tensor, step: int) -> dict[str, float]:
        x = batch.to(self.device)
        codes = self.method.encode(x)
        img = self.generator(codes, noise_mode="const")
        target = resize_to(x, self.loss_size)
        self.losses.freeze_discriminator()
        metrics: dict[str, float] = {}
        loss = self.losses(img, resize_to(img, self.loss_size), target, metrics, "rec")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        metrics["loss"] = float(loss.detach())
        metrics.update(self.losses.discriminator_step(resize_to(x, self.generator.size), [img], step))
        return metrics

    def export(self, path) -> None:
        self.encoder.eval()
        self.method.save(path)
        self.encoder.train()


def train_style_transformer(**kwargs) -> StyleTransformerTrainer:
    """The ``style_transformer`` trainer (catalog entry)."""
    return StyleTransformerTrainer(**kwargs)

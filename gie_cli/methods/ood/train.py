"""Training OOD inversion's SAMM with the objective of its Section 3.4 (Yin et al., ICCV 2023): reconstruction of the
blended output, adversarial loss, and the mask regularisation, with e4e and the generator frozen."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gie_cli.errors import UsageError
from gie_cli.methods.e4e import EncoderMethod, load_encoder_method
from gie_cli.methods.ood.method import OODMethod, level_layer, load_ood
from gie_cli.methods.ood.modules import OFFICIAL_ITERATIONS, OFFICIAL_WARP_SCALE, SAMM
from gie_cli.settings import parse_settings, setting
from gie_cli.training import Trainer
from gie_cli.training.data import ImageFolder, endless
from gie_cli.training.losses import ImageLosses, ImageLossSettings, resize_to

log = logging.getLogger(__name__)

#: AlignNet first-unit widths, finest level first: the official ``2C`` (None), and gie's small world model's (0.6 M
#: parameters, 1.2 MB in float16) and tests'.
OOD_PRESETS: dict[str, list[int] | None] = {"official": None, "world": [32, 48, 64, 64], "tiny": [8, 8, 8, 8]}
#: The paper's expected OOD areas (phi_area): 0.3 at its two coarser levels (32, 64 px), 0.25 at the finer (128, 256).
PAPER_AREAS = {"coarse": 0.3, "fine": 0.25}


@dataclass
class OODTrainConfig(ImageLossSettings):
    """Settings of ``gie train --method ood --set key=value``.

    The loss fields are :class:`~gie_cli.training.losses.ImageLossSettings`' at the official E4E training config's
    weights (MSE 1, perceptual 1 (VGG there; LPIPS here, or ``1 - MS-SSIM`` offline), ID 0.1 where ArcFace is
    installed, adversarial 0.5 on the blended output), taken on ``x_hat``.

    Attributes:
        preset: AlignNet widths (:data:`OOD_PRESETS`); ``auto`` = ``official`` for generators of 256 px and more,
            else ``world`` (or ``tiny`` for test-sized generators).
        levels: comma-separated aligned resolutions; empty = e4e's stem and first three stage maps that the generator
            has an upsampling block for (the official 256, 128, 64, 32 px; the world's 64, 32, 16, 8).
        iterations: ``N`` of Algorithm 1 (the paper's 2).
        warp_scale: the flows' bound (0.08, the official test config).
        lr: Adam learning rate of SAMM (official 2e-5 over 1.8 M steps; the world trains at a larger one).
        mask_lambda: weight of ``L_mask`` (the official ``MaskLoss`` weight 5).
        bin_lambda: ``lambda_1`` of Eq. 8 relative to the area term (the official ``binary_weight`` 0.04).
        areas: comma-separated ``phi_area`` per level, finest first; empty = the paper's 0.25 at the two finest
            levels and 0.3 at the others.
        adv_start: step from which the adversarial term and the discriminator train.
        quiet_init: start every level with zero flow and the mask ``mask_init`` everywhere (the last unit's output
            norms set so) instead of the official Xavier-random start.
        mask_init: the masks' start for ``quiet_init``. 0.5 (the official random start's mean): a small start
            (0.05) stays small, because the gathered mask is gated by every level's (Algorithm 2) and the binary
            term pulls values under 0.5 to 0 (on the world, 1000 steps from 0.05 ended at an average OOD area of 4.6%
            with object IoU 0.00).
        init: a gie OOD checkpoint to continue from (then ``-w`` is not needed).
    """

    lpips_lambda: float = 1.0
    adv_lambda: float = 0.5
    preset: str = "auto"
    levels: str = ""
    iterations: int = OFFICIAL_ITERATIONS
    warp_scale: float = OFFICIAL_WARP_SCALE
    lr: float = 2e-5
    mask_lambda: float = 5.0
    bin_lambda: float = 0.04
    areas: str = ""
    adv_start: int = 0
    quiet_init: bool = True
    mask_init: float = setting(0.5, gt=0, lt=1)
    init: str = ""


def default_levels(e4e: EncoderMethod) -> list[int]:
    """e4e's stem and first three stage map sizes (finest first) at which the generator has an upsampling block."""
    g, s = e4e.generator, int(e4e.encoder.input_size)
    return [s // 2**j for j in range(4) if 8 <= s // 2**j <= g.size]


def new_samm(e4e: EncoderMethod, preset: str, levels: list[int], iterations: int, warp_scale: float) -> SAMM:
    """A fresh SAMM for ``e4e``'s generator and backbone (see :class:`OODTrainConfig`).

    Raises:
        UsageError: an unknown preset or a level without an e4e map or generator block.
    """
    g, enc = e4e.generator, e4e.encoder
    if preset == "auto":
        preset = "official" if g.size >= 256 else "world" if g.style_dim >= 64 else "tiny"
    if preset not in OOD_PRESETS:
        raise UsageError(f"ood setting preset={preset!r}", hint=f"auto or one of {', '.join(OOD_PRESETS)}")
    sizes = [enc.input_size // 2**j for j in range(len(enc.widths) + 1)]
    channels = [enc.widths[0], *enc.widths]  # the stem has widths[0] channels
    try:
        gen_c = [g.layer_channels(level_layer(g, r)) for r in levels]
        enc_c = [channels[sizes.index(r)] for r in levels]
    except ValueError as e:
        raise UsageError(f"ood setting levels={','.join(map(str, levels))}: {e or 'no e4e map of that size'}") from None
    hidden = OOD_PRESETS[preset]
    return SAMM(levels, enc_c, gen_c, warp_scale, iterations, hidden[: len(levels)] if hidden else None)


def quiet_init(samm: SAMM, mask_logit: float = -3.0) -> None:
    """Zero every level's flow and set its mask to ``sigmoid(mask_logit)``: the last IR unit's output norms get
    weight 0 and bias ``(0, 0, mask_logit)`` (its residual norm) and 0 (its shortcut norm)."""
    with torch.no_grad():
        for block in samm.modulation:
            last = block.alignment.body.body[1]
            last.res_layer[4].weight.zero_()
            last.res_layer[4].bias.copy_(torch.tensor([0.0, 0.0, mask_logit]))
            if isinstance(last.shortcut_layer, nn.Sequential):
                last.shortcut_layer[1].weight.zero_()
                last.shortcut_layer[1].bias.zero_()


def mask_loss(aligns: dict[int, Tensor], areas: dict[int, float], bin_lambda: float) -> tuple[Tensor, dict[str, float]]:
    """Eq. 6-8 as the official ``MaskLoss``: per level ``bin_lambda * mean(min(M, 1 - M)) + max(0, mean(M) - phi)``.

    Args:
        aligns: resolution -> ``[B, 3, r, r]`` (the mask is channel 2).
        areas: resolution -> ``phi_area``.
        bin_lambda: weight of the binary term.

    Returns:
        ``(loss, {"mask_bin": ..., "mask_area": ...})`` (unweighted sums over levels).
    """
    binary = area = None
    for r, a in aligns.items():
        m = a[:, 2:]
        b = torch.minimum(m, 1 - m).mean()
        e = torch.relu(m.mean() - areas[r])
        binary = b if binary is None else binary + b
        area = e if area is None else area + e
    assert binary is not None and area is not None, "no level to regularise"
    return bin_lambda * binary + area, {"mask_bin": float(binary.detach()), "mask_area": float(area.detach())}


class OODTrainer(Trainer):
    """Trains SAMM (``feats_conv`` + ``modulation``); e4e and the generator are frozen.

    One step: ``x_hat, x_in_hat, m, aligns = forward(x)``; ``L = L_rec(x_hat, x) + L_adv(x_hat) + mask_lambda *
    L_mask(aligns)``; the discriminator trains on ``x`` against ``x_hat``.
    """

    name = "ood"

    def __init__(self, data: str, weights: str | None, device, batch_size: int, seed: int, **settings: str) -> None:
        self.cfg = c = parse_settings(OODTrainConfig, settings, "ood training")
        if c.iterations < 1:
            raise UsageError(f"ood setting iterations={c.iterations}", hint="a whole number >= 1")
        self.device = torch.device(device)
        self.method: OODMethod = self._method(weights, c).to(self.device)
        g = self.generator = self.method.generator.requires_grad_(False).eval()
        self.method.e4e.requires_grad_(False).eval()
        self.trained: nn.Module = self.method.samm.train().requires_grad_(True)
        for block in self.method.samm.modulation:  # official frozen, unused parameters
            block.weight.requires_grad_(False)
            block.noiseInj.requires_grad_(False)
        params = [p for p in self.trained.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(params, lr=c.lr, betas=(0.9, 0.99))
        self.areas = self._areas(c)
        self.loss_size = min(c.loss_size, g.size) if c.loss_size > 0 else g.size
        sources = tuple(w for w in (weights, c.init) if w)
        self.losses = ImageLosses(c.loss_weights(), g.size, g.channels, self.device, sources, "ood")
        self.data = ImageFolder(data, g.size)
        self.batch_size, self.seed = batch_size, seed

    @staticmethod
    def _method(weights: str | None, c: OODTrainConfig) -> OODMethod:
        init = c.init or (weights if weights and _is_ood_file(weights) else "")
        if init:
            return load_ood(init, iterations=c.iterations)
        if not weights:
            raise UsageError(
                "gie train --method ood needs -w: an e4e checkpoint (the frozen encoder and generator)",
                hint="e.g. -w world.e4e or -w e4e.ffhq",
            )
        e4e = load_encoder_method("e4e", weights)
        try:
            levels = [int(v) for v in c.levels.split(",") if v.strip()] or default_levels(e4e)
        except ValueError:
            raise UsageError(
                f"ood setting levels={c.levels!r}", hint="comma-separated resolutions, e.g. 64,32,16,8"
            ) from None
        levels = sorted(levels, reverse=True)
        samm = new_samm(e4e, c.preset, levels, c.iterations, c.warp_scale)
        if c.quiet_init:
            quiet_init(samm, math.log(c.mask_init / (1 - c.mask_init)))
        try:
            return OODMethod(e4e.generator, e4e, samm, weights_id=e4e.weights_id)
        except ValueError as e:
            raise UsageError(f"ood training: {e}") from None

    def _areas(self, c: OODTrainConfig) -> dict[int, float]:
        res = self.method.samm.resolutions
        if c.areas:
            try:
                vals = [float(v) for v in c.areas.split(",")]
            except ValueError:
                vals = []
            if len(vals) != len(res) or not all(0 < v < 1 for v in vals):
                raise UsageError(f"ood setting areas={c.areas!r}", hint=f"{len(res)} numbers in (0, 1), finest first")
            return dict(zip(res, vals, strict=True))
        return {r: PAPER_AREAS["fine"] if i < 2 else PAPER_AREAS["coarse"] for i, r in enumerate(res)}

    # ----------------------------------------------------------------------------------------------- loop API
    def batches(self) -> Iterator[Tensor]:
        return endless(self.data, self.batch_size, self.seed)

    def modules(self) -> dict[str, nn.Module]:
        return {"samm": self.trained, **self.losses.modules()}

    def optimizers(self) -> dict[str, Any]:
        return {"samm": self.opt, **self.losses.optimizers()}

    def options(self) -> dict:
        return {
            "trainer": asdict(self.cfg),
            "ood": self.method.config,
            "areas": {str(r): a for r, a in self.areas.items()},
            **self.losses.describe(),
            "loss_size": self.loss_size,
        }

    def train_step(self, batch: Tensor, step: int) -> dict[str, float]:
        x = resize_to(batch.to(self.device), self.generator.size)
        adversarial = step >= self.cfg.adv_start
        self.losses.freeze_discriminator()
        metrics: dict[str, float] = {}
        out, _, m, aligns, _ = self.method.forward_blend(x)
        loss = self.losses(out, resize_to(out, self.loss_size), resize_to(x, self.loss_size), metrics, "rec",
                           adversarial)  # fmt: skip
        reg, parts = mask_loss(aligns, self.areas, self.cfg.bin_lambda)
        metrics.update(parts)
        metrics["aoa"] = float(m.mean().detach())
        loss = loss + self.cfg.mask_lambda * reg
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        metrics["loss"] = float(loss.detach())
        if adversarial:
            metrics.update(self.losses.discriminator_step(x, [out.detach()], step))
        return metrics

    def export(self, path) -> None:
        self.trained.eval()
        self.method.save(path)
        self.trained.train()


def _is_ood_file(weights: str) -> bool:
    """Whether ``weights`` (a file or registry name) is a gie OOD checkpoint (its config's method is ``ood``)."""
    from pathlib import Path

    from gie_cli.weights import load_components, resolve_weights

    path = resolve_weights(weights, method="ood", what="an e4e checkpoint or a gie OOD checkpoint")
    return Path(path).suffix == ".safetensors" and load_components(path).config.get("method") == "ood"


def train_ood(**kwargs: Any) -> OODTrainer:
    """The ``ood`` trainer (catalog entry)."""
    return OODTrainer(**kwargs)

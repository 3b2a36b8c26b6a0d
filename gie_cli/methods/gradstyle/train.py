"""Self-supervised training of GradStyle (Li et al., "Gradual Residuals Alignment", AAAI 2024, sec. 3.4 and A.1)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gie_cli.errors import UsageError
from gie_cli.methods.e4e import load_encoder_method
from gie_cli.methods.gradstyle.method import GradStyleMethod, load_gradstyle
from gie_cli.methods.gradstyle.modules import GradStyleNet, parse_layers, stage_specs
from gie_cli.metrics.alignment import relative_l1
from gie_cli.ops.warp import random_perspective, warp_features
from gie_cli.settings import parse_settings
from gie_cli.training import Trainer
from gie_cli.training.data import ImageFolder, endless
from gie_cli.training.losses import ImageLosses, ImageLossSettings, resize_to
from gie_cli.training.optim import Lookahead

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------- settings
@dataclass
class GradStyleTrainConfig(ImageLossSettings):
    """Settings of ``gie train --method gradstyle --set key=value`` (defaults: the paper's, appendix A.1).

    Attributes:
        stages: refined gie layers, ``auto`` = the paper's 3rd/6th/8th blocks (layers 1,4,6) or e.g. ``1`` (Table 4
            "one stage (low)") / ``6`` ("one stage (high)").
        level: encoder pyramid level of every stage: ``auto`` = the level that predicts the stage's W+ row (the
            paper), ``c3`` / ``p2`` / ``p1`` = Table 4 "only hierarchical I / II / III".
        aligner_keys: ``source`` (the Aligner matches the edited feature against the generator feature the residual
            was computed on; gie's default) or ``residual`` (against the residual itself, the paper's Eq. 7).
        use_grm: False = Table 4 "w/o GRM" (residuals are projected encoder features, no residual network).
        use_gam: False = Table 4 "w/o GAM" (no Aligner; edits inject residuals unaligned; no Editing Stream loss).
        mu: Selective Attention's kept percentage (not given in the paper).
        attn_layers: Selective Attention passes per Aligner ("several times"; not given).
        hidden: GRM common-space width (0 = the generator's width at the stage).
        grm_blocks, gate_blocks: ResBlocks per GRM / Gate&Fusion (not given).
        lr: learning rate of the GRMs and gates (Adam + Lookahead; the paper's 1e-4).
        aligner_lr: learning rate of the GAM Aligners (measured on the world: at 1e-4 the 32 px Aligner barely moves
            in 1500 steps; 1e-3 learns every stage).
        lookahead_k, lookahead_alpha: Lookahead settings (the paper names Lookahead, not its settings).
        l2_lambda, lpips_lambda, id_lambda, adv_lambda, f_lambda: loss weights (the paper's 1, 0.8, 0.1 faces /
            0.5 cars, 0.001, 0.01); the other loss settings are :class:`ImageLossSettings`'.
        aligner_lambda: weight of ``L_aligner``, which gie takes as a relative error: per image and stage
            ``|F'_m - F_m|_1 / |F_m|_1``, summed over stages. The paper's 0.1 weighs an unnormalised L1 norm whose
            size follows the residuals' (tiny, and growing, early in training: the term vanished next to the image
            losses); normalised, 0 means aligned and 1 means no better than zeros, and the weight is 1.
        warp_p: probability that an image's residuals are perspective-warped in the Editing Stream (HFGI's
            ``RandomPerspective(p=aug_rate)``); the others teach the Aligner to leave aligned residuals alone.
        distortion: random perspective distortion scale of the self-supervised warp (0.15).
        progressive_every: > 0 = progressive training: stage ``m`` (with its GRM/gate/GAM) trains from step
            ``m * progressive_every`` with the earlier stages fixed and the later ones not yet used.
        init: a GradStyle checkpoint to fine-tune (then ``-w`` is not needed).
    """

    stages: str = "auto"
    level: str = "auto"
    aligner_keys: str = "source"
    use_grm: bool = True
    use_gam: bool = True
    mu: float = 50.0
    attn_layers: int = 2
    hidden: int = 0
    grm_blocks: int = 2
    gate_blocks: int = 1
    lr: float = 1e-4
    aligner_lr: float = 1e-3
    lookahead_k: int = 5
    lookahead_alpha: float = 0.5
    adv_lambda: float = 0.001
    f_lambda: float = 0.01
    aligner_lambda: float = 1.0
    distortion: float = 0.15
    warp_p: float = 0.5
    progressive_every: int = 0
    init: str = ""


# --------------------------------------------------------------------------------------------------- trainer
class GradStyleTrainer(Trainer):
    """Trains GradStyle's GRMs, gates and GAMs with the e4e encoder and the generator frozen (paper sec. 3.4).

    One step: encode (no grad) -> Reconstruction Stream ``X^r`` (residuals ``F_m``) -> Editing Stream at alpha = 0:
    each stage's Aligner gets ``F_m`` and the generator feature it was computed on detached and perspective-warped
    (one random transform per image, shared by all stages) and must restore ``F_m`` (``L_aligner``) while ``X^e`` is
    drawn with the aligned residuals (the shared gate used with detached parameters and its BatchNorm statistics
    untouched, so only the Reconstruction Stream trains the GRM side); ``warp_p`` of the images are warped, the rest
    passed as they are.
    Loss ``L2 + 0.8 LPIPS + lambda_id ID + 0.001 adv + 0.01 L_f + 1 L_aligner`` (relative, see
    :class:`GradStyleTrainConfig`) over both streams; GRMs and gates learn at ``lr``, Aligners at ``aligner_lr``;
    then a discriminator step (non-saturating logistic loss + lazy R1).
    """

    name = "gradstyle"

    def __init__(self, data: str, weights: str | None, device, batch_size: int, seed: int, **settings: str) -> None:
        self.cfg = c = parse_settings(GradStyleTrainConfig, settings, "gradstyle training")
        self.device = torch.device(device)
        if c.init:
            method = load_gradstyle(c.init)
            self.net = method.net
            if any(
                k in settings
                for k in ("stages", "level", "use_grm", "use_gam", "mu", "attn_layers", "hidden", "aligner_keys")
            ):
                log.warning("init=%s: the architecture settings come from the checkpoint", c.init)
        else:
            if not weights:
                raise UsageError(
                    "gie train --method gradstyle needs -w: an e4e checkpoint (the frozen encoder and generator)",
                    hint="e.g. -w e4e.ffhq, or a gie e4e checkpoint from `gie train --method e4e`",
                )
            e4e = load_encoder_method("e4e", weights)
            try:
                level = None if c.level.strip().lower() in ("", "auto") else c.level.strip().lower()
                specs = stage_specs(e4e.generator, e4e.encoder, parse_layers(c.stages), level)
                self.net = GradStyleNet(
                    specs,
                    e4e.encoder.feature_dim,
                    c.hidden,
                    c.mu,
                    c.attn_layers,
                    c.grm_blocks,
                    c.gate_blocks,
                    c.use_grm,
                    c.use_gam,
                    c.aligner_keys,
                )
            except ValueError as e:
                raise UsageError(f"gradstyle training: {e}") from None
            method = GradStyleMethod(
                e4e.generator,
                e4e.encoder,
                e4e.latent_avg,
                e4e.encoder_config,
                self.net,
                e4e.start_from_latent_avg,
                e4e.weights_id,
            )
        self.method = method.to(self.device)
        self.generator = self.method.generator.requires_grad_(False).eval()
        self.method.encoder.requires_grad_(False).eval()
        self.net.train()
        g = self.generator
        self.loss_size = min(c.loss_size, g.size) if c.loss_size > 0 else g.size
        if not 0.0 <= c.warp_p <= 1.0:
            raise UsageError(f"gradstyle setting warp_p={c.warp_p} must be in [0, 1]")
        groups = [{"params": [*self.net.grm.parameters(), *self.net.gate.parameters()], "lr": c.lr}]
        if self.net.use_gam:
            groups.append({"params": list(self.net.gam.parameters()), "lr": c.aligner_lr})
        self.opt = Lookahead(torch.optim.Adam(groups), c.lookahead_k, c.lookahead_alpha)
        self.losses = ImageLosses(
            c.loss_weights(),
            g.size,
            g.channels,
            self.device,
            tuple(w for w in (weights, c.init) if w),
            "gradstyle",
        )
        self.data = ImageFolder(data, max(g.size, self.method.input_size))
        self.batch_size, self.seed = batch_size, seed
        self._rng = torch.Generator().manual_seed(seed)

    # ----------------------------------------------------------------------------------------------- loop API
    def batches(self) -> Iterator[Tensor]:
        return endless(self.data, self.batch_size, self.seed)

    def modules(self) -> dict[str, nn.Module]:
        return {"gradstyle": self.net, **self.losses.modules()}

    def optimizers(self) -> dict[str, Any]:
        return {"gradstyle": self.opt, **self.losses.optimizers()}

    def options(self) -> dict:
        return {
            "trainer": asdict(self.cfg),
            "gradstyle": self.net.config,
            **self.losses.describe(),
            "loss_size": self.loss_size,
        }

    def active_layers(self, step: int) -> tuple[list[int], list[int]]:
        """``(used, trained)`` stage layers at ``step`` (all of them unless training progressively)."""
        layers = list(self.net.layers)
        every = self.cfg.progressive_every
        if every <= 0:
            return layers, layers
        m = min(step // every, len(layers) - 1)
        return layers[: m + 1], [layers[m]]

    def _set_trainable(self, trained: Iterable[int]) -> None:
        """Progressive training: only the ``trained`` stages learn (and update BatchNorm statistics)."""
        trained = {str(k) for k in trained}
        for part in (self.net.grm, self.net.gate, self.net.gam):
            for k, mod in part.items():
                mod.requires_grad_(k in trained).train(k in trained)

    # ----------------------------------------------------------------------------------------------- one step
    def _image_losses(self, img: Tensor, target: Tensor, metrics: dict[str, float], tag: str) -> Tensor:
        return self.losses(img, resize_to(img, self.loss_size), target, metrics, tag)

    def train_step(self, batch: Tensor, step: int) -> dict[str, float]:
        c = self.cfg
        used, trained = self.active_layers(step)
        if c.progressive_every > 0:
            if step > 0 and step % c.progressive_every == 0:
                self.opt.synchronize()  # the finished stage keeps its slow weights from now on
            self._set_trainable(trained)
        x = batch.to(self.device)
        g = self.generator
        real = resize_to(x, g.size)
        target = resize_to(x, self.loss_size)
        with torch.no_grad():
            wplus, pyramid = self.method.encode(x, return_features=True)
        self.losses.freeze_discriminator()
        metrics: dict[str, float] = {}
        # Reconstruction Stream
        rec: dict[str, dict[int, Tensor]] = {}
        x_rec = g(wplus, noise_mode="const", feature_hooks=self.net.reconstruction_hooks(pyramid, rec, used))
        loss = self._image_losses(x_rec, target, metrics, "rec")
        l_f = sum(v.abs().mean() for v in rec["fused"].values())
        loss = loss + c.f_lambda * l_f
        metrics["l_f"] = float(l_f.detach())
        fakes = [x_rec]
        # Editing Stream (alpha = 0): warped, detached residuals must be re-aligned
        if self.net.use_gam:
            src, dst = random_perspective(x.shape[0], c.distortion, self._rng, self.device)
            keep = (torch.rand(x.shape[0], generator=self._rng) >= c.warp_p).to(self.device)
            dst = torch.where(keep[:, None, None], src, dst)
            clean = {k: v.detach() for k, v in rec["residual"].items()}
            warped = {k: warp_features(v, src, dst) for k, v in clean.items()}
            sources = {k: warp_features(v.detach(), src, dst) for k, v in rec["feature"].items()}
            edi: dict[str, dict[int, Tensor]] = {}
            hooks = self.net.editing_hooks(warped, sources, edi, detach_gate=True)
            x_edi = g(wplus, noise_mode="const", feature_hooks=hooks)
            loss = loss + self._image_losses(x_edi, target, metrics, "edi")
            l_al = sum(relative_l1(edi["aligned"][k], clean[k]).mean() for k in clean)
            loss = loss + c.aligner_lambda * l_al
            metrics["l_aligner"] = float(l_al.detach())
            fakes.append(x_edi)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        metrics["loss"] = float(loss.detach())
        metrics.update(self.losses.discriminator_step(real, fakes, step))
        return metrics

    def export(self, path) -> None:
        self.net.eval()
        self.method.save(path)
        self.net.train()


def train_gradstyle(**kwargs: Any) -> GradStyleTrainer:
    """The ``gradstyle`` trainer (catalog entry)."""
    return GradStyleTrainer(**kwargs)

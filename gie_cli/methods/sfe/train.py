"""Training StyleFeatureEditor in the two phases of its supplement (Bobkov et al., CVPR 2024, supplement §7): phase 1
the Inverter, phase 2 the Feature Editor on synthesized edit pairs, with the generator and e4e frozen."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gie_cli.errors import UsageError
from gie_cli.methods.e4e import load_encoder_method
from gie_cli.methods.sfe.method import E4E_KEY, FEATURE_KEY, SFEMethod, feature_layer_for, load_sfe
from gie_cli.methods.sfe.modules import ContentLayerDeepFast, Inverter
from gie_cli.models.stylegan2 import NEXT_INPUT, Generator, Hook
from gie_cli.settings import parse_settings
from gie_cli.training import Trainer
from gie_cli.training.data import ImageFolder, endless
from gie_cli.training.losses import ImageLosses, ImageLossSettings, resize_to
from gie_cli.training.optim import ranger_or_adam

log = logging.getLogger(__name__)

#: Inverter / Feature Editor sizes: the official model, gie's small world model (1.2 M parameters, 2.4 MB in
#: float16: its style heads read a 2x2 pool, see :class:`~gie_cli.methods.sfe.modules.FSLikeBackbone`), and tests'.
SFE_PRESETS: dict[str, dict[str, Any]] = {
    "official": {"unit_counts": (3, 4, 14, 3), "widths": (64, 128, 256, 512), "pool_size": 3, "fuser_length": 6,
                 "editor_length": 6},
    "world": {"unit_counts": (1, 1, 2, 1), "widths": (16, 24, 32, 48), "pool_size": 2, "fuser_length": 2,
              "editor_length": 2},
    "tiny": {"unit_counts": (1, 1, 1, 1), "widths": (8, 8, 16, 16), "pool_size": 1, "fuser_length": 2,
             "editor_length": 2},
}  # fmt: skip
#: The official replaced feature (the 64x64 block of the 1024 px generator).
OFFICIAL_FEATURE_RESOLUTION = 64


@dataclass
class SFETrainConfig(ImageLossSettings):
    """Settings of ``gie train --method sfe --set key=value`` (defaults: the supplement's, §7).

    The loss fields are :class:`~gie_cli.training.losses.ImageLossSettings`' at the supplement's weights (L2 1,
    LPIPS 0.8, ID 0.1 where ArcFace is installed, adversarial 0.01; offline the perceptual term is ``1 - MS-SSIM``).

    Attributes:
        phase: 1 = the Inverter (``-w``: an e4e checkpoint, whose generator and encoder stay frozen); 2 = the Feature
            Editor (``-w`` or ``init``: the phase-1 checkpoint; the Inverter is frozen too).
        preset: module sizes (:data:`SFE_PRESETS`); ``auto`` = ``official`` for generators of 256 px and more, else
            ``world``.
        feature_resolution: side of the replaced feature; 0 = the official 64 px, or half the output size for
            generators under 256 px (the 64 px world: 32). The Inverter reads images at 4x this size.
        lr: learning rate of the trained part (the supplement's 2e-4).
        optimizer: ``ranger`` (RAdam + Lookahead, the supplement's) or ``adam``.
        reg_lambda: phase 1: weight of the ``F_k`` regularisation ``mean((F_k - F_w)^2)`` (the supplement names the
            term and its weight 0.01, not its form; gie keeps ``F_k`` near the generator's own feature of ``w``). On
            the world, 0.01 let ``F_k`` drift far from ``F_w`` (a mean distance about twice ``F_w``'s own size), and
            edits, which add ``Δ`` to ``F_k``, barely moved smile; ``scripts/build_zoo.sh`` trains ``world.sfe`` at 0.5.
        adv_start: step from which the adversarial term and the discriminator train (phase 1: the supplement's 14000
            of 37500; phase 2 uses it from the start).
        directions: phase 2: comma-separated directions of the fixed training set ``D``; empty = every direction on
            the search path bound to this generator (the world's seven).
        powers: phase 2: comma-separated powers; empty = per direction its recommended range's ends and halves.
        zero_init: start the fuser as ``F_k = F_w`` and the Feature Editor as ``F_k - Δ`` (their 1x1 convs set to
            identity blocks, the residual blocks' last BN at zero), so training starts from the generator's feature
            and a first-order edit instead of a random feature.
        init: an SFE checkpoint to continue from (phase 2: the phase-1 result; then ``-w`` is not needed).
        world_pairs: phase 2, synthetic world only: weight of a second editing loss on the world renderer's true edit
            pairs (0 = the supplement's recipe). The supplement's pairs ``(X_E, X'_E)`` are drawn by the generator,
            so the Feature Editor never sees the detail a real photo's ``F_k`` carries; on the world that detail
            weakened its smile edits to 58% of e4e's. Each step then also renders random world faces ``x`` and the
            same faces with one attribute of the edit set moved (``x'``), and edits ``x`` by the e4e code difference
            ``e4e(x') - e4e(x)`` towards ``x'``.
        pair_change: phase 2 with ``world_pairs``: the largest attribute change of a pair on the attribute's [-1, 1]
            scale (drawn uniformly from ``[0.05, pair_change]`` with a random sign).
    """

    phase: int = 1
    preset: str = "auto"
    feature_resolution: int = 0
    lr: float = 2e-4
    optimizer: str = "ranger"
    reg_lambda: float = 0.01
    adv_start: int = 14000
    directions: str = ""
    powers: str = ""
    zero_init: bool = True
    init: str = ""
    world_pairs: float = 0.0
    pair_change: float = 0.5


def zero_init_feature_net(net: ContentLayerDeepFast, blocks: tuple[float, float]) -> None:
    """Set ``net``'s 1x1 conv to ``[a·I, b·I]`` over its two input halves (``blocks = (a, b)``) and its residual blocks'
    last BN to zero, so that ``net(cat(x, y)) = a·x + b·y`` exactly."""
    c = net.out
    assert net.inp == 2 * c, f"expected two {c}-channel inputs, got {net.inp} channels"
    with torch.no_grad():
        eye = torch.eye(c)[:, :, None, None]
        net.conv.weight.copy_(torch.cat([blocks[0] * eye, blocks[1] * eye], dim=1))
        net.conv.bias.zero_()
        for block in net.body:
            block.body[5].weight.zero_()
            block.body[5].bias.zero_()


def new_inverter(generator: Generator, preset: str, feature_resolution: int) -> Inverter:
    """A fresh Inverter for ``generator`` (see :class:`SFETrainConfig` for the arguments).

    Raises:
        UsageError: an unknown preset or a resolution the generator has no block at.
    """
    if preset == "auto":
        preset = "official" if generator.size >= 256 else "world"
    if preset not in SFE_PRESETS:
        raise UsageError(f"sfe setting preset={preset!r}", hint=f"auto or one of {', '.join(SFE_PRESETS)}")
    p = SFE_PRESETS[preset]
    r = feature_resolution or (OFFICIAL_FEATURE_RESOLUTION if generator.size >= 256 else generator.size // 2)
    try:
        layer = feature_layer_for(generator, r)
    except ValueError as e:
        raise UsageError(f"sfe setting feature_resolution={r}: {e}") from None
    return Inverter(
        p["fuser_length"], 4 * r, n_styles=generator.n_latent, style_dim=generator.style_dim,
        feature_channels=generator.layer_channels(layer), unit_counts=p["unit_counts"], widths=p["widths"],
        pool_size=p["pool_size"],
    )  # fmt: skip


class SFETrainer(Trainer):
    """Trains SFE's Inverter (phase 1) or Feature Editor (phase 2); everything else is frozen.

    Phase 1, one step: ``w = I(x) + latent_avg``, ``F_k = fuser(cat(F_pred, F_w))``; the losses of both the
    reconstruction ``X̂ = G(w, F_k)`` and the w-only one ``X̂_w = G(w)`` against ``x`` (adversarial from
    ``adv_start``), plus ``reg_lambda · mean((F_k - F_w)^2)``.

    Phase 2, one step: ``X_E = G(e4e(x))`` and ``X'_E = G(e4e(x) + d)`` for a direction and power drawn per image from
    the fixed set; SFE inverts ``X_E`` and edits it by ``d`` through the Feature Editor; editing loss (L2, perceptual,
    ID) between that and ``X'_E``; inversion loss (the same + adversarial) between ``x`` and its reconstruction
    through the Feature Editor with ``Δ = 0``.
    """

    name = "sfe"

    def __init__(self, data: str, weights: str | None, device, batch_size: int, seed: int, **settings: str) -> None:
        self.cfg = c = parse_settings(SFETrainConfig, settings, "sfe training")
        if c.phase not in (1, 2):
            raise UsageError(f"sfe setting phase={c.phase}", hint="1 (the Inverter) or 2 (the Feature Editor)")
        self.device = torch.device(device)
        method = self._method(weights, c)
        self.method: SFEMethod = method.to(self.device)
        g = self.generator = self.method.generator.requires_grad_(False).eval()
        self.method.e4e_encoder.requires_grad_(False).eval()
        if c.phase == 1:
            self.trained: nn.Module = self.method.inverter
        else:
            self.method.inverter.requires_grad_(False).eval()
            assert self.method.editor is not None
            self.trained = self.method.editor
        self.trained.train().requires_grad_(True)
        self.opt: Any = ranger_or_adam(self.trained.parameters(), c.lr, c.optimizer, "sfe")
        self.loss_size = min(c.loss_size, g.size) if c.loss_size > 0 else g.size
        sources = tuple(w for w in (weights, c.init) if w)
        self.losses = ImageLosses(c.loss_weights(), g.size, g.channels, self.device, sources, "sfe")
        self.edits = self._edit_set(c) if c.phase == 2 else []
        self.pair_attributes = self._pair_attributes(c) if c.phase == 2 and c.world_pairs > 0 else []
        self.data = ImageFolder(data, max(g.size, self.method.input_size))
        self.batch_size, self.seed = batch_size, seed
        self._rng = torch.Generator().manual_seed(seed)

    # ----------------------------------------------------------------------------------------------- setup
    @staticmethod
    def _method(weights: str | None, c: SFETrainConfig) -> SFEMethod:
        """The method to train: from ``init`` (or phase 2's ``-w``), else a fresh Inverter on the e4e of ``-w``."""
        init = c.init or (weights if c.phase == 2 else "")
        if init:
            method = load_sfe(init)
            if c.phase == 2 and method.editor is None:
                fc = method.inverter.fs_backbone.feature_channels
                length = SFE_PRESETS["official" if fc >= 512 else "world"]["editor_length"]
                method.editor = ContentLayerDeepFast(length, 2 * fc, fc)
                if c.zero_init:
                    zero_init_feature_net(method.editor, (1.0, -1.0))
            return method
        if c.phase == 2:
            raise UsageError(
                "sfe phase 2 trains the Feature Editor of a phase-1 checkpoint",
                hint="pass it with -w or --set init=FILE (from gie train --method sfe --set phase=1)",
            )
        if not weights:
            raise UsageError(
                "gie train --method sfe needs -w: an e4e checkpoint (the frozen encoder and generator)",
                hint="e.g. -w world.e4e or -w e4e.ffhq",
            )
        e4e = load_encoder_method("e4e", weights)
        inverter = new_inverter(e4e.generator, c.preset, c.feature_resolution)
        if c.zero_init:
            zero_init_feature_net(inverter.fuser, (0.0, 1.0))
        try:
            return SFEMethod(e4e.generator, e4e, inverter, None, e4e.latent_avg, e4e.weights_id)
        except ValueError as e:
            raise UsageError(f"sfe training: {e}") from None

    def _edit_set(self, c: SFETrainConfig) -> list[tuple[Any, list[float]]]:
        """Phase 2's fixed set ``D``: ``[(direction, powers)]``.

        Raises:
            UsageError: no direction, a direction for another generator, or one without powers.
        """
        from gie_cli.editing.binding import check_generator, generator_fingerprint, pick_for_generator
        from gie_cli.editing.library import list_directions, load_direction_candidates

        fp = generator_fingerprint(self.generator)
        if c.directions:
            names = [n.strip() for n in c.directions.split(",") if n.strip()]
        else:
            names = [d["path"] for d in list_directions() if (d.get("generator") or {}).get("fingerprint") == fp]
        if not names:
            raise UsageError(
                "sfe phase 2: no direction is bound to this generator",
                hint="name the training directions: --set directions=age,smile,...",
            )
        try:
            powers = [float(p) for p in c.powers.split(",") if p.strip()]
        except ValueError:
            raise UsageError(
                f"sfe setting powers={c.powers!r}", hint="comma-separated numbers, e.g. -2,-1,1,2"
            ) from None
        out = []
        for name in names:
            d = pick_for_generator(load_direction_candidates(name), fp)
            check_generator(d, self.generator, fingerprint=fp)
            ps = powers or ([d.power_range[0], d.power_range[0] / 2, d.power_range[1] / 2, d.power_range[1]]
                            if d.power_range else [])  # fmt: skip
            if not ps:
                raise UsageError(f"sfe phase 2: direction {d.name} has no recommended range", hint="--set powers=...")
            out.append((d, ps))
        log.info("sfe phase 2 edits: %s", ", ".join(f"{d.name} {ps}" for d, ps in out))
        return out

    def _pair_attributes(self, c: SFETrainConfig) -> list[str]:
        """The world attributes the edit set's directions move (the attributes of ``world_pairs``' true pairs).

        Raises:
            UsageError: a ``pair_change`` out of range, or no direction of the edit set names a world attribute.
        """
        from gie_cli.synth.params import ATTRIBUTE_NAMES

        if not 0.05 < c.pair_change <= 2:
            raise UsageError(f"sfe setting pair_change={c.pair_change}", hint="a change in (0.05, 2]")
        names = sorted({d.name for d, _ in self.edits if d.name in ATTRIBUTE_NAMES})
        if not names:
            raise UsageError(
                "sfe setting world_pairs: no direction of the edit set is named after a world attribute",
                hint="train on the world's directions (--set directions=smile,age,...)",
            )
        return names

    # ----------------------------------------------------------------------------------------------- loop API
    def batches(self) -> Iterator[Tensor]:
        return endless(self.data, self.batch_size, self.seed)

    def modules(self) -> dict[str, nn.Module]:
        return {"inverter" if self.cfg.phase == 1 else "editor": self.trained, **self.losses.modules()}

    def optimizers(self) -> dict[str, Any]:
        return {"sfe": self.opt, **self.losses.optimizers()}

    def options(self) -> dict:
        return {
            "trainer": asdict(self.cfg),
            "sfe": self.method.config,
            "edits": {d.name: ps for d, ps in self.edits},
            **self.losses.describe(),
            "loss_size": self.loss_size,
        }

    # ----------------------------------------------------------------------------------------------- steps
    def _draw(self, wplus: Tensor, feature: Tensor) -> Tensor:
        hook = Hook(self.method.feature_layer, lambda _x, _layer: feature, NEXT_INPUT)
        return self.generator(wplus, noise_mode="const", hooks=[hook])

    def train_step(self, batch: Tensor, step: int) -> dict[str, float]:
        x = batch.to(self.device)
        real = resize_to(x, self.generator.size)
        target = resize_to(x, self.loss_size)
        adversarial = self.cfg.phase == 2 or step >= self.cfg.adv_start
        self.losses.freeze_discriminator()
        metrics: dict[str, float] = {}
        if self.cfg.phase == 1:
            loss, fakes = self._phase1(x, target, adversarial, metrics)
        else:
            loss, fakes = self._phase2(x, target, metrics)
            if self.pair_attributes:
                pair_loss = self._world_pair_loss(step, x.shape[0], metrics)
                loss = loss + self.cfg.world_pairs * pair_loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        metrics["loss"] = float(loss.detach())
        if adversarial:
            metrics.update(self.losses.discriminator_step(real, fakes, step))
        return metrics

    def _phase1(self, x: Tensor, target: Tensor, adversarial: bool, metrics: dict) -> tuple[Tensor, list[Tensor]]:
        m = self.method
        codes, predicted = m.inverter(x)
        wplus = codes + m.latent_avg
        f_w = m.generator_feature(wplus)
        f_k = m.inverter.fuse(predicted, f_w)
        img, img_w = self._draw(wplus, f_k), self.generator(wplus, noise_mode="const")
        loss = self.losses(img, resize_to(img, self.loss_size), target, metrics, "rec", adversarial)
        loss = loss + self.losses(img_w, resize_to(img_w, self.loss_size), target, metrics, "w", adversarial)
        reg = (f_k - f_w).square().mean()
        metrics["reg"] = float(reg.detach())
        return loss + self.cfg.reg_lambda * reg, [img]

    def _sample_edits(self, wplus: Tensor) -> Tensor:
        """One W+ offset ``[B, n_latent, D]`` per item: a direction and power drawn from the fixed set (W/W+ edits;
        StyleSpace offsets are not drawn here)."""
        from gie_cli.editing import apply

        deltas = []
        for i in range(wplus.shape[0]):
            d, ps = self.edits[int(torch.randint(len(self.edits), (1,), generator=self._rng))]
            p = ps[int(torch.randint(len(ps), (1,), generator=self._rng))]
            e = apply(d, p, wplus[i : i + 1])
            if e.style_offsets:
                raise UsageError(f"sfe phase 2 trains on W/W+ directions; {d.name} is a StyleSpace edit")
            deltas.append(e.delta.to(wplus).expand_as(wplus[i : i + 1]))
        return torch.cat(deltas)

    def _phase2(self, x: Tensor, target: Tensor, metrics: dict) -> tuple[Tensor, list[Tensor]]:
        m, editor = self.method, self.trained
        with torch.no_grad():
            inv = m.invert(x)  # its extras hold e4e(x): the codes the edit pairs are drawn from
            f_k = inv.extras[FEATURE_KEY].float()
            w_e4e = inv.extras[E4E_KEY]
            delta = self._sample_edits(w_e4e)
            x_e = self.generator(w_e4e, noise_mode="const").clamp(-1, 1)
            x_e_edit = self.generator(w_e4e + delta, noise_mode="const").clamp(-1, 1)
            inv_e = m.invert(x_e)
            f_k_e = inv_e.extras[FEATURE_KEY].float()
            w_e4e_e = inv_e.extras[E4E_KEY]
            diff = m.generator_feature(w_e4e_e) - m.generator_feature(w_e4e_e + delta)
        edited = self._draw(inv_e.wplus + delta, editor(torch.cat([f_k_e, diff], dim=1)))
        small_target = resize_to(x_e_edit, self.loss_size)
        loss = self.losses(edited, resize_to(edited, self.loss_size), small_target, metrics, "edit", False)
        rec = self._draw(inv.wplus, editor(torch.cat([f_k, torch.zeros_like(f_k)], dim=1)))
        loss = loss + self.losses(rec, resize_to(rec, self.loss_size), target, metrics, "rec", True)
        return loss, [rec]

    def pair_params(self, step: int, n: int) -> list[tuple[Any, Any]]:
        """The ``n`` world faces of step ``step``'s true edit pairs: ``(p, q)`` with ``p`` a random face without objects
        and ``q`` the same face with one of :attr:`pair_attributes` moved by ``c``, ``|c|`` uniform in ``[0.05,
        pair_change]`` on the attribute's [-1, 1] scale (the renderer clips a value beyond the range). The draw depends
        only on the seed and the step, so a resumed run draws the same pairs."""
        from gie_cli.synth.params import ATTRIBUTES, attribute_index, sample_params

        rng = np.random.default_rng([self.seed, step, 0x5FE])
        out = []
        for _ in range(n):
            p = sample_params(rng, 0.0)
            name = self.pair_attributes[int(rng.integers(len(self.pair_attributes)))]
            spec = ATTRIBUTES[attribute_index(name)]
            change = float(rng.uniform(0.05, self.cfg.pair_change)) * float(rng.choice([-1.0, 1.0]))
            moved = float(getattr(p, name)) + change * (spec.high - spec.low) / 2
            out.append((p, dataclasses.replace(p, **{name: moved})))
        return out

    def world_pairs(self, step: int, n: int) -> tuple[Tensor, Tensor]:
        """Step ``step``'s true edit pairs (:meth:`pair_params`) drawn by the world's renderer at the generator's size:
        ``(x, x')``, each ``[n, 3, S, S]`` in [-1, 1]."""
        from gie_cli.synth.render import render

        size = self.generator.size
        pairs = self.pair_params(step, n)
        x = torch.stack([render(p, size).to_tensor() for p, _ in pairs])
        x_edit = torch.stack([render(q, size).to_tensor() for _, q in pairs])
        return x.to(self.device), x_edit.to(self.device)

    def _world_pair_loss(self, step: int, n: int, metrics: dict) -> Tensor:
        """The editing loss (L2, perceptual, ID) of SFE's edit of true world pairs (see ``world_pairs``)."""
        m, editor = self.method, self.trained
        x, x_edit = self.world_pairs(step, n)
        with torch.no_grad():
            inv = m.invert(x)
            f_k = inv.extras[FEATURE_KEY].float()
            w_e4e = inv.extras[E4E_KEY]
            w_e4e_edit = m._e4e().encode(m.prepare(x_edit))
            diff = m.generator_feature(w_e4e) - m.generator_feature(w_e4e_edit)
        edited = self._draw(inv.wplus + (w_e4e_edit - w_e4e), editor(torch.cat([f_k, diff], dim=1)))
        small_target = resize_to(x_edit, self.loss_size)
        return self.losses(edited, resize_to(edited, self.loss_size), small_target, metrics, "pairs", False)

    def export(self, path) -> None:
        self.trained.eval()
        self.method.save(path)
        self.trained.train()


def train_sfe(**kwargs: Any) -> SFETrainer:
    """The ``sfe`` trainer (catalog entry)."""
    return SFETrainer(**kwargs)

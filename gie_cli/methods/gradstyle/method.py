"""GradStyle (Li et al., "Gradual Residuals Alignment", AAAI 2024) as a gie inversion method: invert, render, edit."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from gie_cli.errors import CheckpointError, UsageError
from gie_cli.io.checkpoint import load_state_dict_strict
from gie_cli.methods.base import AlignmentProbe, Inversion
from gie_cli.methods.e4e import EncoderMethod
from gie_cli.methods.gradstyle.modules import GradStyleNet
from gie_cli.methods.registry import bool_options, checks_options
from gie_cli.metrics.alignment import relative_l1
from gie_cli.models.loading import build_encoder, build_generator, save_components, wplus_average
from gie_cli.models.stylegan2 import Generator
from gie_cli.ops.warp import warp_features
from gie_cli.weights import load_components, resolve_weights

log = logging.getLogger(__name__)

#: dtype of the residual features stored in latent files (``extra.residual_<layer>``).
RESIDUAL_DTYPE = torch.float16


def residual_key(layer: int) -> str:
    """Name of a stage's residual feature in :attr:`Inversion.extras` / latent files (``residual_<layer>``)."""
    return f"residual_{layer}"


class GradStyleMethod(EncoderMethod):
    """GradStyle: e4e codes + gradual residuals in the Reconstruction Stream, aligned residuals in the Editing Stream.

    :meth:`invert` runs the Encoding Phase (e4e: W+ and the feature pyramid ``T``) and the Reconstruction Stream up
    to the last refined layer; the :class:`Inversion` carries W+ and each stage's residual feature ``F_m``
    (``extras["residual_<layer>"]``, ``[B, C_l, R_l, R_l]``, float16). :meth:`render` draws from those alone (no
    encoder): without an edit, the Reconstruction Stream (``f + g(f, F_m) F_m``, the stored ``F_m`` is exactly the
    one computed at inversion); with an edit (``delta`` or StyleSpace ``style_offsets`` non-zero), the Editing
    Stream: each stage's Aligner aligns ``F_m`` to the edited feature before the shared Gate&Fusion.

    Args:
        generator: the shared generator (frozen).
        encoder: the e4e encoder (frozen).
        latent_avg: ``[n_latent, D]``.
        encoder_config: encoder kwargs (saved in checkpoints).
        net: the trained GradStyle modules.
        start_from_latent_avg: whether codes are offsets from ``latent_avg``.
        weights_id: id recorded in outputs.
        use_gam: False renders edits without alignment (the "w/o GAM" variant of a full checkpoint).
    """

    def __init__(
        self,
        generator: Generator,
        encoder: nn.Module,
        latent_avg: Tensor,
        encoder_config: dict,
        net: GradStyleNet,
        start_from_latent_avg: bool = True,
        weights_id: str = "",
        use_gam: bool = True,
    ) -> None:
        super().__init__(generator, encoder, latent_avg, "gradstyle", encoder_config, start_from_latent_avg, weights_id)
        for s in net.stages:
            if s.layer >= generator.num_layers or (s.channels, s.resolution) != (
                generator.layer_channels(s.layer),
                generator.layer_resolution(s.layer),
            ):
                raise ValueError(f"GradStyle stage {s} does not fit the generator (config {generator.config})")
            if s.level not in ("c3", "p2", "p1"):
                raise ValueError(f"GradStyle stage {s.layer}: unknown encoder level {s.level!r}")
        self.net = net
        self.use_gam = bool(use_gam) and net.use_gam

    # ----------------------------------------------------------------------------------------------- inversion
    def residuals(self, images: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        """W+ ``[B, n_latent, D]`` and the Reconstruction Stream's residuals ``{layer: [B, C, R, R]}`` (float16)."""
        wplus, pyramid = self.encode(images, return_features=True)
        record: dict[str, dict[int, Tensor]] = {}
        hooks = self.net.reconstruction_hooks(pyramid, record, quantize=RESIDUAL_DTYPE)
        self.generator.synthesis(wplus, noise_mode="const", feature_hooks=hooks, stop_at_layer=max(self.net.layers))
        return wplus, {k: v.to(RESIDUAL_DTYPE) for k, v in record["residual"].items()}

    def invert(self, images: Tensor) -> Inversion:
        """Invert aligned ``images [B,3,H,W]`` in [-1,1]; extras hold ``residual_<layer>`` per stage."""
        wplus, res = self.residuals(images)
        return Inversion(wplus, {residual_key(k): v for k, v in res.items()})

    def probe_alignment(self, images: Tensor, src: Tensor, dst: Tensor) -> AlignmentProbe:
        """Per stage: the Reconstruction Stream's residual ``F_m`` of ``images``, warped by ``src -> dst``, and what
        the Editing Stream injects for it (``Aligner(warp(F_m), warp(f_m^rec), f_m^rec)``, or ``warp(F_m)`` itself
        without the GAM), both measured against ``F_m``; and the Editing Stream's render at alpha = 0 (no warp).

        Args:
            images: ``[B, 3, H, W]`` in [-1, 1].
            src: ``[B, 4, 2]`` unit corners.
            dst: ``[B, 4, 2]`` where they move.
        """
        wplus, pyramid = self.encode(images, return_features=True)
        record: dict[str, dict[int, Tensor]] = {}
        hooks = self.net.reconstruction_hooks(pyramid, record, quantize=RESIDUAL_DTYPE)
        self.generator.synthesis(wplus, noise_mode="const", feature_hooks=hooks, stop_at_layer=max(self.net.layers))
        feats = record["feature"]
        stages: dict[str, dict[str, Tensor]] = {}
        for s in self.net.stages:
            res = record["residual"][s.layer]
            src_, dst_ = src.to(res.device), dst.to(res.device)
            warped = warp_features(res, src_, dst_)
            f = feats[s.layer]
            out = self.net.gam[str(s.layer)](warped, warp_features(f, src_, dst_), f) if self.use_gam else warped
            stages[f"layer {s.layer} ({s.resolution} px)"] = {
                "aligned": relative_l1(out.float(), res.float()).cpu(),
                "unaligned": relative_l1(warped.float(), res.float()).cpu(),
            }
        residuals = {k: v.to(RESIDUAL_DTYPE) for k, v in record["residual"].items()}
        sources = self.source_features(wplus, residuals) if self.use_gam else None
        return AlignmentProbe(stages, self._draw(wplus, residuals, sources, {}))

    # ----------------------------------------------------------------------------------------------- rendering
    def stored_residuals(self, inv: Inversion) -> dict[int, Tensor]:
        """The residual features of ``inv`` per stage layer.

        Raises:
            UsageError: ``inv`` lacks them (a latent made by another method, or by a GradStyle checkpoint with other
                stages).
        """
        missing = [residual_key(k) for k in self.net.layers if residual_key(k) not in inv.extras]
        if missing:
            raise UsageError(
                f"the latent has no GradStyle residual features ({', '.join(missing)})",
                hint="invert the images again with --method gradstyle and these weights",
            )
        return {k: inv.extras[residual_key(k)] for k in self.net.layers}

    def render(
        self, inv: Inversion, delta: Tensor | None = None, style_offsets: Mapping[int, Tensor] | None = None
    ) -> Tensor:
        """Draw ``inv``, optionally edited, to ``[B, 3, S, S]``.

        Items whose edit is zero (no ``delta`` row and no StyleSpace offset row) take the Reconstruction Stream,
        edited items the Editing Stream (GAM), so a batch of powers ``0, 3`` draws the reconstruction and the edit.

        Args:
            inv: the inversion (``B`` items, with the residual features of this checkpoint's stages).
            delta: W+ offset ``[B|1, n_latent, D]``.
            style_offsets: StyleSpace offsets, conv layer -> ``[B|1, C_l]`` added to that layer's style vector.
        """
        residuals = self.stored_residuals(inv)
        wplus = inv.wplus if delta is None else inv.wplus + delta.to(inv.wplus)
        offsets = dict(style_offsets or {})
        if self.use_gam:
            edited = self.edited_items(len(inv), delta, offsets)
        else:
            edited = torch.zeros(len(inv), dtype=torch.bool)
        if not edited.any():
            return self._draw(wplus, residuals, None, offsets)
        sources = self.source_features(inv.wplus, residuals)
        if edited.all():
            return self._draw(wplus, residuals, sources, offsets)
        # a mixed batch draws both streams whole and picks per item
        pick = edited.to(wplus.device)[:, None, None, None]
        return torch.where(
            pick, self._draw(wplus, residuals, sources, offsets), self._draw(wplus, residuals, None, offsets)
        )

    def source_features(self, wplus: Tensor, residuals: dict[int, Tensor]) -> dict[int, Tensor]:
        """The Reconstruction Stream's generator feature ``f_m^rec`` at each stage (what the residuals were computed
        on, and the Aligners' keys), from the unedited ``wplus [B, n_latent, D]``: a synthesis up to the last stage."""
        record: dict[str, dict[int, Tensor]] = {}
        hooks = self.net.fusion_hooks(residuals, record)
        self.generator.synthesis(wplus, noise_mode="const", feature_hooks=hooks, stop_at_layer=max(self.net.layers))
        return record["feature"]

    def _draw(
        self,
        wplus: Tensor,
        residuals: dict[int, Tensor],
        sources: dict[int, Tensor] | None,
        style_offsets: Mapping[int, Tensor],
    ) -> Tensor:
        """One stream for the whole batch, ``wplus [B, n_latent, D]`` -> ``[B, 3, S, S]``: the Editing Stream when
        ``sources`` (:meth:`source_features`) are given, else the Reconstruction Stream."""
        if sources is not None:
            hooks = self.net.editing_hooks(residuals, sources)
        else:
            hooks = self.net.fusion_hooks(residuals)
        return self.generator(wplus, noise_mode="const", feature_hooks=hooks, style_offsets=style_offsets or None)

    @staticmethod
    def edited_items(
        batch: int, delta: Tensor | None = None, style_offsets: Mapping[int, Tensor] | None = None
    ) -> Tensor:
        """Which of ``batch`` items (bool ``[B]``, CPU) are edits: a non-zero row of ``delta [B|1, n_latent, D]`` or of
        any StyleSpace offset ``[B|1, C_l]`` (a ``1``-row edit applies to every item)."""
        rows = torch.zeros(batch, dtype=torch.bool)
        parts = ([] if delta is None else [delta]) + list((style_offsets or {}).values())
        for t in parts:
            rows |= (t != 0).flatten(1).any(1).cpu().expand(batch)
        return rows

    def describe(self) -> dict:
        info = super().describe()
        info["gradstyle"] = {
            "layers": list(self.net.layers),
            "editing_stream": "gam" if self.use_gam else "unaligned",
            "extras": {residual_key(s.layer): [s.channels, s.resolution, s.resolution] for s in self.net.stages},
        }
        return info

    # ----------------------------------------------------------------------------------------------- saving
    def save(self, path) -> None:
        """Save in gie's checkpoint format: ``encoder.*``, ``decoder.*``, ``gradstyle.*``, ``latent_avg`` + config."""
        save_components(
            path,
            {"encoder": self.encoder, "decoder": self.generator, "gradstyle": self.net},
            {
                "method": "gradstyle",
                "encoder": self.encoder_config,
                "generator": self.generator.config,
                "opts": {"start_from_latent_avg": self.start_from_latent_avg},
                "gradstyle": self.net.config,
            },
            self.latent_avg,
        )


def load_gradstyle(weights: str | None, use_gam: bool = True) -> GradStyleMethod:
    """Load a GradStyle checkpoint written by ``gie train --method gradstyle`` (:meth:`GradStyleMethod.save`).

    Raises:
        CheckpointError: the file has no ``gradstyle.*`` part (e.g. a plain e4e checkpoint).
    """
    path = resolve_weights(
        weights, method="gradstyle", what="a GradStyle checkpoint made by `gie train --method gradstyle`"
    )
    comp = load_components(path)
    if "gradstyle" not in comp.parts or "gradstyle" not in comp.config:
        raise CheckpointError(
            path,
            "has no GradStyle modules ('gradstyle.*' weights and config); GradStyle has no official checkpoint",
            hint="train one: gie train --method gradstyle -w E4E_CHECKPOINT --data ALIGNED_FACES",
        )
    generator = build_generator(comp)
    encoder, cfg = build_encoder(comp, "e4e")
    net = GradStyleNet(**comp.config["gradstyle"])
    load_state_dict_strict(net, comp.part("gradstyle"), f"{comp.source} [gradstyle.*]")
    avg = wplus_average(comp, generator)
    start = bool(comp.opts.get("start_from_latent_avg", True))
    method = GradStyleMethod(generator, encoder, avg.float(), cfg, net, start, comp.weights_id, use_gam)
    method.weights_path = str(Path(path).resolve())
    return method


def gradstyle_options(options: dict[str, object]) -> dict[str, bool]:
    """Parse the ``gradstyle`` settings: its one option is ``use_gam`` (false: edits inject the residuals unaligned).

    Raises:
        UsageError: an unknown option or a value that is not a boolean.
    """
    return bool_options("gradstyle", options, {"use_gam": True})


@checks_options(gradstyle_options)
def load_gradstyle_method(weights: str | None, **options: object) -> GradStyleMethod:
    """The ``gradstyle`` method (catalog entry); see :func:`gradstyle_options`."""
    return load_gradstyle(weights, **gradstyle_options(dict(options)))

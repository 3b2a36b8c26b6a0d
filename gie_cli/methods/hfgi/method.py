"""HFGI (Wang et al., "High-Fidelity GAN Inversion for Image Attribute Editing", CVPR 2022) as a gie inversion method:
the official inference recipe on gie's one generator, batched, at the generator's full size."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gie_cli.errors import CheckpointError, UsageError
from gie_cli.io.checkpoint import load_state_dict_strict
from gie_cli.methods.base import AlignmentProbe, Inversion, built_from
from gie_cli.methods.e4e import EncoderMethod
from gie_cli.methods.hfgi.modules import CONDITION_LAYER, ResidualAligner, ResidualEncoder, condition_hook
from gie_cli.methods.registry import bool_options, checks_options
from gie_cli.metrics.alignment import relative_l1
from gie_cli.models.loading import Components, build_encoder, build_generator, save_components, wplus_average
from gie_cli.models.stylegan2 import Generator
from gie_cli.ops.warp import warp_features
from gie_cli.weights import load_components, resolve_weights

log = logging.getLogger(__name__)

#: Name of the distortion residual in :attr:`Inversion.extras` and latent files (``extra.residual``).
RESIDUAL_KEY = "residual"
#: dtype of the stored residual.
RESIDUAL_DTYPE = torch.float16
#: The official encoder's input type (``opts.encoder_type``).
OFFICIAL_ENCODER = "Encoder4Editing"


def residual_size_image(images: Tensor, size: int) -> Tensor:
    """The official ``interpolate(clamp(G(w), -1, 1), (size, size), mode="bilinear")`` of ``images [B,3,S,S]``
    (no antialiasing, ``align_corners=False``: exactly what HFGI computes its residual against)."""
    images = images.clamp(-1, 1)
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


class HFGIMethod(EncoderMethod):
    """HFGI: e4e codes, plus the distortion residual re-injected through ADA and the consultation encoder.

    :meth:`invert` returns W+ (e4e, ``latent_avg`` added) and the distortion residual
    ``x - resize(clamp(G(w)))`` at the encoder's input size (``extras["residual"]``, ``[B, 3, R, R]``, float16).
    :meth:`render` draws from those alone (no encoder, no photo): the edited image ``resize(clamp(G(w_edit)))``,
    ADA aligns the residual to it (``grid_align(cat(residual, edited))``), the consultation encoder turns it into
    ``(scale, shift)`` and ``G(w_edit)`` is drawn with the conditioned layer ``out * (1 + scale) + shift``; the
    reconstruction is the same path with ``w_edit = w`` (the official recipe, anchors §3.3).

    Args:
        generator: the shared generator (frozen).
        encoder: the e4e encoder.
        latent_avg: ``[n_latent, D]``.
        encoder_config: encoder kwargs (saved in checkpoints).
        grid_align: ADA.
        residue: the consultation encoder; its ``channels``/``size`` must fit ``condition_layer``.
        condition_layer: gie layer index of the conditioned styled conv (official: ``CONDITION_LAYER``).
        start_from_latent_avg: whether codes are offsets from ``latent_avg``.
        weights_id: id recorded in outputs.
        use_ada: False injects the residual unaligned (the paper's "w/o ADA" ablation).
    """

    def __init__(
        self,
        generator: Generator,
        encoder: nn.Module,
        latent_avg: Tensor,
        encoder_config: dict,
        grid_align: ResidualAligner,
        residue: ResidualEncoder,
        condition_layer: int = CONDITION_LAYER,
        start_from_latent_avg: bool = True,
        weights_id: str = "",
        use_ada: bool = True,
    ) -> None:
        super().__init__(generator, encoder, latent_avg, "hfgi", encoder_config, start_from_latent_avg, weights_id)
        check_condition_layer(generator, condition_layer, residue)
        if self.input_size % 8:
            raise ValueError(f"HFGI's residual size (the encoder input, {self.input_size}) must be divisible by 8")
        self.grid_align, self.residue = grid_align, residue
        self.condition_layer = int(condition_layer)
        self.use_ada = bool(use_ada)
        # the last inversion's W+ (with its version counter) and resize(clamp(G(w))): rendering that inversion
        # unedited needs exactly this image as its "edited" image, so `invert` then `render` draws G(w) once
        self._last_render: tuple[Tensor, int, Tensor] | None = None

    @property
    def residual_size(self) -> int:
        """Resolution of the distortion residual (the encoder's input size: 256 for the official model)."""
        return self.input_size

    @property
    def config(self) -> dict:
        """The ``hfgi`` part of gie's checkpoint config."""
        return {"condition_layer": self.condition_layer, "channels": self.residue.channels}

    # ----------------------------------------------------------------------------------------------- inversion
    def invert_parts(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """W+ ``[B, n_latent, D]``, the residual ``[B, 3, R, R]`` (float32) and ``resize(clamp(G(w)))`` it was
        computed against, for aligned ``images [B, 3, H, W]`` in [-1, 1]."""
        x = self.prepare(images)
        wplus = self.encode(x)
        rec = residual_size_image(self.generator(wplus, noise_mode="const"), self.residual_size)
        return wplus, x - rec, rec

    def invert(self, images: Tensor) -> Inversion:
        """Invert aligned ``images [B,3,H,W]`` in [-1,1]; ``extras["residual"]`` is the distortion residual."""
        wplus, residual, rec = self.invert_parts(images)
        self._last_render = (wplus, wplus._version, rec)
        return Inversion(wplus, {RESIDUAL_KEY: residual.to(RESIDUAL_DTYPE)})

    def probe_alignment(self, images: Tensor, src: Tensor, dst: Tensor) -> AlignmentProbe:
        """The residual of ``images`` warped by ``src -> dst`` (``[B, 4, 2]`` unit corners), ADA's alignment of it
        to the unedited reconstruction (or the warped residual itself without ADA), both against the residual."""
        _, residual, rec = self.invert_parts(images)
        residual = residual.to(RESIDUAL_DTYPE).to(rec)
        warped = warp_features(residual, src.to(rec.device), dst.to(rec.device))
        out = self.align(warped, rec)
        stage = f"residual ({self.residual_size} px)"
        return AlignmentProbe(
            {stage: {"aligned": relative_l1(out, residual).cpu(), "unaligned": relative_l1(warped, residual).cpu()}}
        )

    # ----------------------------------------------------------------------------------------------- rendering
    def stored_residual(self, inv: Inversion) -> Tensor:
        """The distortion residual of ``inv``, ``[B, 3, R, R]``.

        Raises:
            UsageError: ``inv`` lacks it, or it was made at another size (another method or checkpoint).
        """
        res = inv.extras.get(RESIDUAL_KEY)
        if res is None:
            raise UsageError(
                "the latent has no HFGI distortion residual (extra.residual)",
                hint="invert the images again with --method hfgi",
            )
        want = (len(inv), 3, self.residual_size, self.residual_size)
        if tuple(res.shape) != want:
            raise UsageError(
                f"the latent's HFGI residual is {list(res.shape)}, these weights need {list(want)}",
                hint="edit with the weights the latent was made with, or invert again",
            )
        return res

    def align(self, residual: Tensor, edited: Tensor) -> Tensor:
        """ADA: ``residual [B, 3, R, R]`` aligned to ``edited [B, 3, R, R]`` (the residual itself without ADA)."""
        if not self.use_ada:
            return residual
        return self.grid_align(torch.cat([residual, edited], dim=1))

    def conditioned(
        self, wplus: Tensor, residual: Tensor, edited: Tensor, style_offsets: Mapping[int, Tensor] | None = None
    ) -> Tensor:
        """``G(wplus, conditions)`` ``[B, 3, S, S]`` with ``conditions = residue(align(residual, edited))``."""
        scale, shift = self.residue(self.align(residual.to(edited), edited))
        hook = condition_hook(scale, shift, self.condition_layer)
        return self.generator(wplus, noise_mode="const", hooks=[hook], style_offsets=style_offsets or None)

    def render(
        self, inv: Inversion, delta: Tensor | None = None, style_offsets: Mapping[int, Tensor] | None = None
    ) -> Tensor:
        """Draw ``inv``, optionally edited, to ``[B, 3, S, S]`` (the official recipe; no edit = ``w_edit = w``).

        Args:
            inv: the inversion (``B`` items, with the HFGI residual).
            delta: W+ offset ``[B|1, n_latent, D]``.
            style_offsets: StyleSpace offsets, conv layer -> ``[B|1, C_l]`` added to that layer's style vector.
        """
        residual = self.stored_residual(inv)
        wplus = inv.wplus if delta is None else inv.wplus + delta.to(inv.wplus)
        offsets = style_offsets or None
        last = self._last_render
        if delta is None and offsets is None and last is not None and last[0] is wplus and last[1] == wplus._version:
            edited = last[2]  # the unedited render of the inversion just made: G(w) is not drawn twice
        else:
            plain = self.generator(wplus, noise_mode="const", style_offsets=offsets)
            edited = residual_size_image(plain, self.residual_size)
        return self.conditioned(wplus, residual, edited, offsets)

    def describe(self) -> dict:
        info = super().describe()
        r = self.residual_size
        info["hfgi"] = {
            **self.config,
            "condition_resolution": self.generator.layer_resolution(self.condition_layer),
            "alignment": "ada" if self.use_ada else "unaligned",
            "extras": {RESIDUAL_KEY: [3, r, r]},
        }
        return info

    # ----------------------------------------------------------------------------------------------- saving
    def save(self, path) -> None:
        """Save in gie's checkpoint format, with the official prefixes: ``encoder.``, ``decoder.``, ``grid_align.``,
        ``residue.``, ``latent_avg`` + config."""
        save_components(
            path,
            {
                "encoder": self.encoder,
                "decoder": self.generator,
                "grid_align": self.grid_align,
                "residue": self.residue,
            },
            {
                "method": "hfgi",
                "encoder": self.encoder_config,
                "generator": self.generator.config,
                "opts": {"start_from_latent_avg": self.start_from_latent_avg},
                "hfgi": self.config,
            },
            self.latent_avg,
        )


def check_condition_layer(generator: Generator, layer: int, residue: ResidualEncoder | None = None) -> None:
    """Check that ``layer`` is a styled conv of ``generator`` the consultation encoder ``residue`` fits.

    Raises:
        ValueError: it is not, naming what does not fit.
    """
    if not 0 < layer < generator.num_layers:
        raise ValueError(
            f"HFGI condition layer {layer} is not a styled conv of this generator (1..{generator.num_layers - 1})"
        )
    c, r = generator.layer_channels(layer), generator.layer_resolution(layer)
    if residue is not None and (residue.channels, residue.size) != (c, r):
        raise ValueError(
            f"the consultation encoder makes [{residue.channels}, {residue.size}, {residue.size}] conditions, "
            f"layer {layer} of the generator is [{c}, {r}, {r}]"
        )


def hfgi_parts(comp: Components) -> tuple[ResidualAligner, ResidualEncoder, int]:
    """``grid_align``, ``residue`` (strictly loaded) and the condition layer of an official or gie HFGI file.

    Raises:
        CheckpointError: the file has no ``grid_align.*`` / ``residue.*`` part, or they do not load strictly.
    """
    missing = [p for p in ("grid_align", "residue") if p not in comp.parts]
    if missing:
        raise CheckpointError(
            comp.source,
            f"has no HFGI modules ({', '.join(p + '.*' for p in missing)} missing): it is not an HFGI checkpoint",
            hint="pass the official HFGI ckpt.pt (-w hfgi.ffhq) or a checkpoint from `gie train --method hfgi`",
        )
    cfg = comp.config.get("hfgi") or {}
    sd = comp.part("residue")
    key = "condition_scale3.2.weight"
    if key not in sd:
        raise CheckpointError(comp.source, f"[residue.*] has no {key}: not HFGI's consultation encoder")
    channels = int(cfg.get("channels", sd[key].shape[0]))
    layer = int(cfg.get("condition_layer", CONDITION_LAYER))
    return ResidualAligner(), ResidualEncoder(channels), layer


def load_hfgi(weights: str | None, use_ada: bool = True) -> HFGIMethod:
    """Load the official HFGI ``ckpt.pt`` (``state_dict`` with ``encoder.``/``decoder.``/``grid_align.``/``residue.``,
    ``opts``, ``latent_avg``) or a checkpoint from ``gie train --method hfgi``, strictly.

    Raises:
        CheckpointError: not an HFGI file, a part that does not load strictly, or modules that do not fit each other.
    """
    path = resolve_weights(weights, method="hfgi", what="the official HFGI ckpt.pt or a gie HFGI checkpoint")
    comp = load_components(path)
    enc_type = comp.opts.get("encoder_type")
    if enc_type and enc_type != OFFICIAL_ENCODER:
        raise CheckpointError(path, f"opts.encoder_type is {enc_type!r}; HFGI's base encoder is {OFFICIAL_ENCODER}")
    grid_align, residue, layer = hfgi_parts(comp)
    generator = build_generator(comp)
    encoder, cfg = build_encoder(comp, "e4e")
    try:
        check_condition_layer(generator, layer)
    except ValueError as e:
        raise CheckpointError(path, str(e)) from None
    residue.size = generator.layer_resolution(layer)
    load_state_dict_strict(grid_align, comp.part("grid_align"), f"{comp.source} [grid_align.*]")
    load_state_dict_strict(residue, comp.part("residue"), f"{comp.source} [residue.*]")
    avg = wplus_average(comp, generator)
    start = bool(comp.opts.get("start_from_latent_avg", True))
    return built_from(
        path,
        lambda: HFGIMethod(
            generator,
            encoder,
            avg.float(),
            cfg,
            grid_align.eval(),
            residue.eval(),
            layer,
            start,
            comp.weights_id,
            use_ada,
        ),
    )


def hfgi_options(options: dict[str, object]) -> dict[str, bool]:
    """Parse the ``hfgi`` settings: its one option is ``use_ada`` (false: the residual is injected unaligned).

    Raises:
        UsageError: an unknown option or a value that is not a boolean.
    """
    return bool_options("hfgi", options, {"use_ada": True})


@checks_options(hfgi_options)
def load_hfgi_method(weights: str | None, **options: object) -> HFGIMethod:
    """The ``hfgi`` method (catalog entry); see :func:`hfgi_options`."""
    return load_hfgi(weights, **hfgi_options(dict(options)))

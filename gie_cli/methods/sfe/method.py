"""StyleFeatureEditor (Bobkov et al., CVPR 2024) as a gie inversion method: the official ``fse_full`` inference path
on gie's one generator, from the light checkpoints plus the generator and e4e of their own registry entries."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gie_cli.errors import CheckpointError, UsageError
from gie_cli.io.checkpoint import get_prefixed, load_state_dict_strict, read_checkpoint
from gie_cli.methods.base import EDIT_MASK_KEY, Inversion, InversionMethod, built_from
from gie_cli.methods.e4e import EncoderMethod
from gie_cli.methods.e4e.method import load_encoder_method
from gie_cli.methods.registry import checks_options
from gie_cli.methods.sfe.modules import ContentLayerDeepFast, Inverter
from gie_cli.models.loading import build_encoder, build_generator, save_components, wplus_average
from gie_cli.models.stylegan2 import NEXT_INPUT, Generator, Hook
from gie_cli.weights import load_components, resolve_weights
from gie_cli.weights.cache import sha256_file

log = logging.getLogger(__name__)

#: Names of SFE's extras in :attr:`Inversion.extras` and latent files: the e4e codes the edits' feature difference
#: is taken from, and the fused feature ``F_k`` (float16, ``[C, R, R]``).
E4E_KEY, FEATURE_KEY = "wplus_e4e", "feature"
FEATURE_DTYPE = torch.float16
#: Checkpoint part of gie's SFE files holding the Inverter's ``latent_avg`` where it differs from e4e's.
INVERTER_AVG_PART = "inverter_latent_avg"


def feature_layer_for(generator: Generator, resolution: int) -> int:
    """The styled conv layer whose output SFE replaces: the second conv of the ``resolution`` px block (gie layer 8 at
    64 px), so the feature feeds the next block while that block's ToRGB drew the generator's own.

    Raises:
        ValueError: the generator has no such block.
    """
    k = int(round(math.log2(resolution))) - 2
    layer = 2 * k
    if resolution < 8 or 2 ** (k + 2) != resolution or layer >= generator.num_layers - 1:
        raise ValueError(f"the generator ({generator.size} px) has no {resolution} px block before its last one")
    return layer


def feature_mask(mask: Tensor, resolution: int) -> Tensor:
    """An edit mask ``[B, 1, H, W]`` (or ``[B, H, W]``) in [0, 1] at the feature's ``resolution`` (area-averaged when
    shrinking, as the official mask is scaled to 64x64)."""
    m = mask if mask.dim() == 4 else mask[:, None]
    assert m.shape[1] == 1, f"an edit mask has one channel, got {tuple(m.shape)}"
    m = m.float()
    if m.shape[-1] == resolution and m.shape[-2] == resolution:
        return m
    if m.shape[-1] >= resolution:
        return F.adaptive_avg_pool2d(m, resolution)
    return F.interpolate(m, size=(resolution, resolution), mode="bilinear", align_corners=False)


class SFEMethod(InversionMethod):
    """SFE's inversion and editing (``fse_full``).

    Inversion: ``w = Inverter(x) + latent_avg``; ``F_w`` is the generator's feature of ``w`` at :attr:`feature_layer`;
    ``F_k = fuser(cat(predicted, F_w))``. Editing with a W+ offset ``delta``: ``Δ = F(w_e4e) - F(w_e4e + delta)``
    from the e4e codes, ``F_k' = editor(cat(F_k, Δ))`` replaces the generator's feature (a ``next_input`` hook) in
    the render of ``w + delta``. The reconstruction is the same path with ``Δ = 0`` (so it equals a power-0 edit);
    without a Feature Editor (the inverter-only checkpoint) it draws ``F_k`` itself. Masked editing (supplement §9):
    an ``edit_mask`` extra ``[B|1, 1, H, W]`` in [0, 1] (1 = face) is resized to the feature's size and multiplies
    ``Δ``, so the feature outside the face is not edited.

    Args:
        generator: the generator (FFHQ's for the official checkpoints).
        e4e: e4e on the same generator (its codes give the edits' feature difference).
        inverter: the Inverter.
        editor: the Feature Editor (None: inversion only, edits are refused).
        latent_avg: ``[n_latent, D]`` added to the Inverter's codes.
    """

    name = "sfe"
    accepts_edit_mask = True

    def __init__(
        self,
        generator: Generator,
        e4e: EncoderMethod,
        inverter: Inverter,
        editor: ContentLayerDeepFast | None,
        latent_avg: Tensor,
        weights_id: str = "",
    ) -> None:
        super().__init__(generator, weights_id)
        if e4e.generator is not generator:
            raise ValueError("e4e must render with the method's generator")
        bb = inverter.fs_backbone
        if bb.n_styles != generator.n_latent or bb.style_dim != generator.style_dim:
            raise ValueError(f"the Inverter predicts {bb.n_styles}x{bb.style_dim}, the generator takes "
                             f"{generator.n_latent}x{generator.style_dim}")  # fmt: skip
        self.e4e_encoder, self.e4e_latent_avg = e4e.encoder, e4e.latent_avg
        self.e4e_config, self.e4e_start = e4e.encoder_config, e4e.start_from_latent_avg
        self.inverter, self.editor = inverter, editor
        self.feature_resolution = inverter.input_size // 4
        self.feature_layer = feature_layer_for(generator, self.feature_resolution)
        c = generator.layer_channels(self.feature_layer)
        if c != bb.feature_channels:
            raise ValueError(f"the Inverter predicts {bb.feature_channels}-channel features, the generator has {c}")
        self.register_buffer("latent_avg", latent_avg.clone())

    @property
    def config(self) -> dict:
        """What rebuilds the modules: the Inverter's settings and the Feature Editor's length (None: no editor)."""
        return {"inverter": dict(self.inverter.config), "editor_length": self.editor.length if self.editor else None}

    @property
    def input_size(self) -> int:
        return self.inverter.input_size

    def _e4e(self) -> EncoderMethod:
        return EncoderMethod(self.generator, self.e4e_encoder, self.e4e_latent_avg, "e4e", self.e4e_config,
                             self.e4e_start)  # fmt: skip

    def generator_feature(self, wplus: Tensor, style_offsets: Mapping[int, Tensor] | None = None) -> Tensor:
        """The generator's own feature ``[B, C, R, R]`` of ``wplus`` at :attr:`feature_layer` (drawing stops there)."""
        out = self.generator.synthesis(
            wplus, noise_mode="const", return_features=[self.feature_layer], stop_at_layer=self.feature_layer,
            style_offsets=style_offsets or None,
        )  # fmt: skip
        return out.features[self.feature_layer]

    def invert(self, images: Tensor) -> Inversion:
        """Invert aligned ``images [B, 3, H, W]`` in [-1, 1]: W+ and the extras ``wplus_e4e``, ``feature``."""
        x = self.prepare(images)
        codes, predicted = self.inverter(x)
        wplus = codes + self.latent_avg
        fused = self.inverter.fuse(predicted, self.generator_feature(wplus))
        extras = {E4E_KEY: self._e4e().encode(x), FEATURE_KEY: fused.to(FEATURE_DTYPE)}
        return Inversion(wplus, extras)

    def stored(self, inv: Inversion) -> tuple[Tensor, Tensor]:
        """``(feature [B, C, R, R], e4e codes [B, n_latent, D])`` of ``inv``.

        Raises:
            UsageError: the latent lacks them or has other shapes (another method or checkpoint).
        """
        feat, w_e4e = inv.extras.get(FEATURE_KEY), inv.extras.get(E4E_KEY)
        if feat is None or w_e4e is None:
            raise UsageError(
                "the latent has no SFE feature / e4e codes", hint="invert the images again with --method sfe"
            )
        r, c = self.feature_resolution, self.inverter.fs_backbone.feature_channels
        if tuple(feat.shape[1:]) != (c, r, r) or tuple(w_e4e.shape) != tuple(inv.wplus.shape):
            raise UsageError(
                f"the latent's SFE feature is {list(feat.shape[1:])}, these weights need {[c, r, r]}",
                hint="edit with the weights the latent was made with, or invert again",
            )
        return feat, w_e4e

    def render(
        self, inv: Inversion, delta: Tensor | None = None, style_offsets: Mapping[int, Tensor] | None = None
    ) -> Tensor:
        """Draw ``inv`` ``[B, 3, S, S]``, edited by a W+ ``delta [B|1, n_latent, D]`` and/or StyleSpace offsets through
        the Feature Editor (see the class docstring)."""
        feat, w_e4e = self.stored(inv)
        wplus = inv.wplus
        feat = feat.to(wplus.dtype)
        offsets = style_offsets or None
        edited = delta is not None or offsets is not None
        if edited and self.editor is None:
            raise UsageError(
                "these SFE weights have no Feature Editor (sfe_inverter_light.pt): they invert but cannot edit",
                hint="edit with sfe.editor_light (--weights)",
            )
        if self.editor is not None:
            if edited:
                d = torch.zeros_like(wplus) if delta is None else delta.to(wplus).expand_as(wplus)
                e4e = w_e4e.to(wplus)
                diff = self.generator_feature(e4e) - self.generator_feature(e4e + d, offsets)
                mask = inv.extras.get(EDIT_MASK_KEY)
                if mask is not None:
                    diff = diff * feature_mask(mask, diff.shape[-1]).to(diff)
                wplus = wplus + d
            else:
                diff = torch.zeros_like(feat)  # the inversion path: Δ = 0
            feat = self.editor(torch.cat([feat, diff], dim=1))
        hook = Hook(self.feature_layer, lambda _x, _layer: feat, NEXT_INPUT)
        return self.generator(wplus, noise_mode="const", hooks=[hook], style_offsets=offsets)

    def save(self, path: str | Path) -> None:
        """Save in gie's checkpoint format: ``inverter.*`` (official keys), ``editor.*`` (the Feature Editor, if any),
        ``encoder.*`` (e4e), ``decoder.*``, ``latent_avg`` (e4e's; the Inverter's under ``inverter_latent_avg.*``
        only where it differs) + config."""
        parts: dict[str, nn.Module] = {
            "inverter": self.inverter,
            "encoder": self.e4e_encoder,
            "decoder": self.generator,
        }
        if self.editor is not None:
            parts["editor"] = self.editor
        if not torch.equal(self.latent_avg, self.e4e_latent_avg.to(self.latent_avg)):
            holder = nn.Module()
            holder.register_buffer("latent_avg", self.latent_avg)
            parts[INVERTER_AVG_PART] = holder
        config = {
            "method": "sfe",
            "encoder": self.e4e_config,
            "generator": self.generator.config,
            "opts": {"start_from_latent_avg": self.e4e_start},
            "sfe": self.config,
        }
        save_components(path, parts, config, self.e4e_latent_avg)

    def describe(self) -> dict:
        info = super().describe()
        r, c = self.feature_resolution, self.inverter.fs_backbone.feature_channels
        info["sfe"] = {
            "feature_layer": self.feature_layer,
            "feature_resolution": r,
            "editor": self.editor is not None,
            "inverter": dict(self.inverter.config),
            "extras": {E4E_KEY: [self.generator.n_latent, self.generator.style_dim], FEATURE_KEY: [c, r, r]},
        }
        return info


def read_sfe_parts(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """The Inverter's and the Feature Editor's state dicts of an official light checkpoint.

    ``sfe_editor_light.pt``: ``inverter.*`` + ``encoder.*`` (the Feature Editor); ``sfe_inverter_light.pt``: the
    Inverter under ``encoder.*`` (no editor). DataParallel ``module.`` prefixes are stripped.

    Raises:
        CheckpointError: neither layout.
    """
    ck = read_checkpoint(path)
    sd = ck["state_dict"] if isinstance(ck.get("state_dict"), dict) else ck
    sd = {k.replace("module.", "", 1) if k.startswith("module.") else k: v for k, v in sd.items()}
    inverter, encoder = get_prefixed(sd, "inverter"), get_prefixed(sd, "encoder")
    if inverter:
        return inverter, encoder or None
    if any(k.startswith("fs_backbone.") for k in encoder):
        return encoder, None
    raise CheckpointError(
        path, "has no SFE Inverter (inverter.fs_backbone.* or encoder.fs_backbone.*)",
        hint="pass sfe_editor_light.pt (-w sfe.editor_light) or sfe_inverter_light.pt",
    )  # fmt: skip


def load_sfe(weights: str | None, generator: str | None = None, e4e: str | None = None) -> SFEMethod:
    """SFE from an official light checkpoint plus the generator and e4e of their own files, or from a gie SFE
    checkpoint (``gie train --method sfe``, self-contained); strict loading throughout.

    Args:
        weights: ``sfe_editor_light.pt`` / ``sfe_inverter_light.pt`` or a gie ``.safetensors`` (file or registry name).
        generator: for the official files: the StyleGAN2 checkpoint (its ``latent_avg`` is the Inverter's); default
            ``stylegan2.ffhq``.
        e4e: for the official files: the e4e checkpoint (its encoder only; for the same generator shapes); default
            ``e4e.ffhq``.

    Raises:
        CheckpointError: a file that is not what it should be, or parts that do not fit each other.
        UsageError: ``generator``/``e4e`` given with a gie checkpoint (it holds its own).
    """
    path = resolve_weights(weights, method="sfe", what="the official sfe_editor_light.pt or a gie SFE checkpoint")
    if Path(path).suffix == ".safetensors":
        if generator or e4e:
            raise UsageError(
                f"{path} is a gie SFE checkpoint with its own generator and e4e",
                hint="drop --set generator=/e4e= (they apply to the official light checkpoints)",
            )
        return _load_gie_sfe(path)
    inv_sd, ed_sd = read_sfe_parts(path)
    inverter = Inverter()
    load_state_dict_strict(inverter, inv_sd, f"{path} [Inverter]")
    editor = None
    if ed_sd is not None:
        editor = ContentLayerDeepFast(
            6, 2 * inverter.fs_backbone.feature_channels, inverter.fs_backbone.feature_channels
        )
        load_state_dict_strict(editor, ed_sd, f"{path} [Feature Editor]")
    gspec = generator or "stylegan2.ffhq"
    gcomp = load_components(resolve_weights(gspec, method="sfe", what="the FFHQ StyleGAN2 generator"))
    g = build_generator(gcomp)
    e4e_method = load_encoder_method("e4e", e4e or "e4e.ffhq")
    e4e_method = EncoderMethod(g, e4e_method.encoder, e4e_method.latent_avg, "e4e", e4e_method.encoder_config,
                               e4e_method.start_from_latent_avg)  # fmt: skip
    wid = f"{Path(path).name}@{sha256_file(Path(path))[:12]}"

    return built_from(path, lambda: SFEMethod(g, e4e_method, inverter, editor, wplus_average(gcomp, g), wid).eval())


def _load_gie_sfe(path: str | Path) -> SFEMethod:
    """A gie SFE checkpoint (see :meth:`SFEMethod.save`).

    Raises:
        CheckpointError: not an SFE file, or a part that does not load strictly.
    """
    comp = load_components(path)
    cfg = comp.config.get("sfe")
    if comp.config.get("method") != "sfe" or not isinstance(cfg, dict) or "inverter" not in comp.parts:
        raise CheckpointError(
            comp.source, "is not a gie SFE checkpoint (no sfe config / inverter.* weights)",
            hint="pass a checkpoint from `gie train --method sfe`, or the official sfe_editor_light.pt",
        )  # fmt: skip
    try:
        inverter = Inverter(**cfg["inverter"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(comp.source, f"cannot build the SFE Inverter from its config: {e}") from None
    load_state_dict_strict(inverter, comp.part("inverter"), f"{comp.source} [inverter.*]")
    editor = None
    if cfg.get("editor_length") is not None:
        fc = inverter.fs_backbone.feature_channels
        editor = ContentLayerDeepFast(int(cfg["editor_length"]), 2 * fc, fc)
        load_state_dict_strict(editor, comp.part("editor"), f"{comp.source} [editor.*]")
    elif "editor" in comp.parts:
        raise CheckpointError(comp.source, "has editor.* weights but its config names no Feature Editor")
    g = build_generator(comp)
    encoder, ecfg = build_encoder(comp, "e4e")
    e4e_avg = wplus_average(comp, g).float()
    start = bool(comp.opts.get("start_from_latent_avg", True))
    e4e_method = EncoderMethod(g, encoder, e4e_avg, "e4e", ecfg, start)
    own = comp.parts.get(INVERTER_AVG_PART, {}).get("latent_avg")
    avg = e4e_avg if own is None else own.float()

    return built_from(comp.source, lambda: SFEMethod(g, e4e_method, inverter, editor, avg, comp.weights_id).eval())


def sfe_options(options: dict[str, object]) -> dict[str, str]:
    """``generator`` and ``e4e`` (files or registry names; for the official light checkpoints).

    Raises:
        UsageError: another setting.
    """
    unknown = set(options) - {"generator", "e4e"}
    if unknown:
        raise UsageError(f"sfe has no setting {', '.join(sorted(unknown))}", hint="sfe settings: generator, e4e")
    return {k: str(v) for k, v in options.items()}


@checks_options(sfe_options)
def load_sfe_method(weights: str | None, **options: object) -> SFEMethod:
    """The ``sfe`` method (catalog entry); see :func:`sfe_options`."""
    return load_sfe(weights, **sfe_options(dict(options)))

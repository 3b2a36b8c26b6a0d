"""OOD GAN inversion by invertibility decomposition (Yin et al., ICCV 2023) as a gie inversion method: e4e codes, SAMM
alignment of the generator's features to the encoder's at several resolutions, and the RGB blend of what the generator
cannot draw, on gie's one generator; official BasicSR checkpoints and gie's own load strictly."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from gie_cli.errors import CheckpointError, UsageError
from gie_cli.io.checkpoint import get_prefixed, load_state_dict_strict, read_checkpoint
from gie_cli.methods.base import Inversion, InversionMethod, built_from
from gie_cli.methods.e4e import EncoderMethod
from gie_cli.methods.ood.modules import SAMM, blend, gather_masks, warp_feature
from gie_cli.methods.registry import checks_options
from gie_cli.models.loading import Components, build_encoder, build_generator, save_components, wplus_average
from gie_cli.models.stylegan2 import PRE_NOISE, Generator, Hook
from gie_cli.settings import check_range, coerce
from gie_cli.weights import load_components, resolve_weights
from gie_cli.weights.cache import sha256_file

log = logging.getLogger(__name__)

#: Extras of an OOD inversion (latent files): the source image at the output size (uint8, what the blend puts back)
#: and, per aligned level ``r``, ``align_<r>`` = (dx, dy, M) ``[3, r, r]`` (float16). Editing re-uses them: the
#: edited generator features are warped by the stored flows and blended by the stored masks, so ``gie edit`` needs
#: neither the encoder nor the photo.
SOURCE_KEY = "source"
ALIGN_PREFIX = "align_"
ALIGN_DTYPE = torch.float16
#: Top-level keys of an official BasicSR ``params_ema`` dict besides the four module prefixes.
OFFICIAL_PARAMS = ("avg_latent", "delta_latent")


def level_layer(generator: Generator, resolution: int) -> int:
    """The styled conv whose output SAMM aligns at ``resolution``: the block's upsampling conv (gie layer
    ``2 log2(r) - 5``; the official ``cond_layers`` 5, 7, 9, 11 at 32...256 px of the 1024 px generator).

    Raises:
        ValueError: the generator has no such block.
    """
    k = int(round(math.log2(resolution))) - 3
    if resolution < 8 or 2 ** (k + 3) != resolution or 2 * k + 1 >= generator.num_layers:
        raise ValueError(f"the generator ({generator.size} px) has no {resolution} px block")
    return 2 * k + 1


def align_key(resolution: int) -> str:
    return f"{ALIGN_PREFIX}{resolution}"


def image_to_uint8(x: Tensor) -> Tensor:
    """``[B, 3, S, S]`` in [-1, 1] -> uint8 (as an image file would hold it)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def uint8_to_image(x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    return x.to(dtype) / 127.5 - 1


class OODMethod(InversionMethod):
    """OOD inversion (the official ``ood_faceGAN_e4e`` forward, E4E test config).

    Inversion: e4e reads the image (resized to its input size, bilinear as the official code) and returns its codes
    ``w`` and backbone maps; ``feats_conv`` projects the maps to the generator's widths. While the generator draws
    ``w``, at each aligned level (coarsest first) the upsampling conv's output ``g`` (before its noise, the official
    injection point) is replaced by SAMM's aligned feature (Algorithm 1, ``N`` iterations, the level's mask merged with
    the coarser level's). The levels' masks are gathered (Algorithm 2) into ``m`` at the output size and the result
    is ``m * x + (1 - m) * G(w)``.

    Editing re-uses the stored flows and masks on the edited codes' features and blends the stored source back.

    Args:
        generator: the generator.
        e4e: e4e on the same generator (frozen; its backbone maps feed SAMM).
        samm: the trained SAMM.
        iterations: ``N`` at inference (default the SAMM's own).
        skip_align: the paper's "skip SA" ablation: masks as usual, features not warped.
    """

    name = "ood"

    def __init__(
        self,
        generator: Generator,
        e4e: EncoderMethod,
        samm: SAMM,
        iterations: int | None = None,
        skip_align: bool = False,
        weights_id: str = "",
    ) -> None:
        super().__init__(generator, weights_id)
        if e4e.generator is not generator:
            raise ValueError("e4e must render with the method's generator")
        self.e4e = e4e
        self.samm = samm
        self.iterations = samm.iterations if iterations is None else int(iterations)
        if self.iterations < 1:
            raise ValueError(f"OOD needs at least one alignment iteration, got {self.iterations}")
        self.skip_align = bool(skip_align)
        enc = e4e.encoder
        self.layers = [level_layer(generator, r) for r in samm.resolutions]
        sizes = [enc.input_size // 2**j for j in range(len(enc.widths) + 1)]  # e4e's stem and stage maps
        self.stages: list[int] = []
        for r, layer, cg in zip(samm.resolutions, self.layers, samm.generator_channels, strict=True):
            if generator.layer_channels(layer) != cg:
                have = generator.layer_channels(layer)
                raise ValueError(f"SAMM's {r} px level has {cg} channels, the generator {have}")
            if r not in sizes:
                raise ValueError(f"SAMM aligns at {r} px, e4e (reading {enc.input_size} px) has maps of {sizes} px")
            self.stages.append(sizes.index(r))

    @property
    def input_size(self) -> int:
        return self.generator.size  # the blend puts the photo back at full resolution

    @property
    def config(self) -> dict:
        return self.samm.config

    def encode(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``x [B, 3, S, S]`` -> ``(W+ [B, n_latent, D], projected maps finest first)``; only the projection carries
        gradients."""
        s = self.e4e.input_size
        with torch.no_grad():  # e4e is frozen (the official code runs it under no_grad too)
            xe = x if x.shape[-1] == s else F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
            codes, stages = self.e4e.encoder.forward_with_stages(xe)
            if self.e4e.start_from_latent_avg:
                codes = codes + self.e4e.latent_avg
        return codes, self.samm.project([stages[j] for j in self.stages])

    def aligned_render(
        self, wplus: Tensor, maps: list[Tensor], iterations: int | None = None, skip_align: bool | None = None
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """Draw ``wplus`` with SAMM aligning each level to ``maps`` (finest first).

        Returns:
            ``(G(w) with aligned features [B, 3, S, S], {resolution: align [B, 3, r, r]})``.
        """
        n = self.iterations if iterations is None else iterations
        skip = self.skip_align if skip_align is None else skip_align
        aligns: dict[int, Tensor] = {}
        res = self.samm.resolutions

        def hook(k: int):
            def fn(g: Tensor, _layer: int, _style: Tensor) -> Tensor:
                prev = aligns.get(res[k + 1]) if k + 1 < len(res) else None
                out, aligns[res[k]] = self.samm.modulation[k](maps[k], g, prev, n, skip)
                return out

            return fn

        hooks = [Hook(layer, hook(k), PRE_NOISE) for k, layer in enumerate(self.layers)]
        return self.generator(wplus, noise_mode="const", hooks=hooks), aligns

    def blend_mask(self, aligns: Mapping[int, Tensor]) -> Tensor:
        """The blending mask ``m [B, 1, S, S]`` from the levels' aligns (Algorithm 2)."""
        alphas = [aligns[r][:, 2:].float() for r in sorted(self.samm.resolutions)]
        return gather_masks(alphas, self.generator.size)

    def forward_blend(self, x: Tensor, iterations: int | None = None, skip_align: bool | None = None):
        """The training/inversion forward: ``(x_hat, x_in_hat, m, aligns, w)`` for ``x [B, 3, S, S]``."""
        wplus, maps = self.encode(x)
        inverted, aligns = self.aligned_render(wplus, maps, iterations, skip_align)
        m = self.blend_mask(aligns)
        return blend(x, inverted, m.to(inverted)), inverted, m, aligns, wplus

    def invert(self, images: Tensor) -> Inversion:
        """Invert aligned ``images [B, 3, H, W]`` in [-1, 1]: W+ and the extras ``source``, ``align_<r>``."""
        x = self.prepare(images)
        wplus, maps = self.encode(x)
        _, aligns = self.aligned_render(wplus, maps)
        extras = {SOURCE_KEY: image_to_uint8(x)}
        extras.update({align_key(r): a.to(ALIGN_DTYPE) for r, a in aligns.items()})
        return Inversion(wplus, extras)

    def stored(self, inv: Inversion) -> tuple[Tensor, dict[int, Tensor]]:
        """``(source [B, 3, S, S] in [-1, 1], {resolution: align})`` of ``inv``.

        Raises:
            UsageError: the latent lacks them or has other shapes (another method or checkpoint).
        """
        src = inv.extras.get(SOURCE_KEY)
        keys = [align_key(r) for r in self.samm.resolutions]
        if src is None or any(k not in inv.extras for k in keys):
            raise UsageError(
                "the latent has no OOD source image / alignment", hint="invert the images again with --method ood"
            )
        s = self.generator.size
        bad = tuple(src.shape[1:]) != (3, s, s) or any(
            tuple(inv.extras[align_key(r)].shape[1:]) != (3, r, r) for r in self.samm.resolutions
        )
        if bad:
            raise UsageError(
                f"the latent's OOD extras do not fit these weights ({s} px, levels {list(self.samm.resolutions)})",
                hint="edit with the weights the latent was made with, or invert again",
            )
        dtype = inv.wplus.dtype
        return uint8_to_image(src, dtype), {r: inv.extras[align_key(r)].to(dtype) for r in self.samm.resolutions}

    def render(
        self, inv: Inversion, delta: Tensor | None = None, style_offsets: Mapping[int, Tensor] | None = None
    ) -> Tensor:
        """Draw ``inv`` ``[B, 3, S, S]``, optionally edited: the (edited) generator features are warped by the stored
        flows, and the stored source is blended back by the stored mask."""
        source, aligns = self.stored(inv)
        wplus = inv.wplus if delta is None else inv.wplus + delta.to(inv.wplus)

        def hook(r: int):
            return lambda g, _layer, _style: g if self.skip_align else warp_feature(g, aligns[r].to(g))

        hooks = [Hook(layer, hook(r), PRE_NOISE) for r, layer in zip(self.samm.resolutions, self.layers, strict=True)]
        inverted = self.generator(wplus, noise_mode="const", hooks=hooks, style_offsets=style_offsets or None)
        return blend(source.to(inverted), inverted, self.blend_mask(aligns).to(inverted))

    def mask_of(self, inv: Inversion) -> Tensor:
        """The blending mask ``[B, 1, S, S]`` in [0, 1] (1 = the photo is kept) of a stored inversion."""
        return self.blend_mask(self.stored(inv)[1])

    def save(self, path: str | Path) -> None:
        """Save in gie's format: ``feats_conv.*`` and ``modulation.*`` (official keys), ``encoder.*`` (e4e),
        ``decoder.*``, ``latent_avg`` + config."""
        config = {
            "method": "ood",
            "encoder": self.e4e.encoder_config,
            "generator": self.generator.config,
            "opts": {"start_from_latent_avg": self.e4e.start_from_latent_avg},
            "ood": self.samm.config,
        }
        parts = {"feats_conv": self.samm.feats_conv, "modulation": self.samm.modulation,
                 "encoder": self.e4e.encoder, "decoder": self.generator}  # fmt: skip
        save_components(path, parts, config, self.e4e.latent_avg)

    def describe(self) -> dict:
        info = super().describe()
        info["ood"] = {
            **self.samm.config,
            "iterations": self.iterations,
            "skip_align": self.skip_align,
            "layers": self.layers,
        }
        return info


def samm_config_from_state_dict(sd: Mapping[str, Tensor], encoder_input: int) -> dict:
    """SAMM's constructor arguments from official-layout ``feats_conv.*`` / ``modulation.*`` keys (as the official
    code, level ``i`` aligns at e4e's map ``i``: ``encoder_input / 2**i`` px)."""
    n = len({k.split(".")[1] for k in sd if k.startswith("feats_conv.")})
    if n == 0:
        raise ValueError("no feats_conv.* weights")
    w = [sd[f"feats_conv.{i}.weight"] for i in range(n)]
    hidden = [int(sd[f"modulation.{i}.alignment.body.body.0.res_layer.1.weight"].shape[0]) for i in range(n)]
    gen = [int(t.shape[0]) for t in w]
    return {
        "resolutions": [encoder_input // 2**i for i in range(n)],
        "encoder_channels": [int(t.shape[1]) for t in w],
        "generator_channels": gen,
        "hidden": None if hidden == [2 * c for c in gen] else hidden,
    }


def load_samm(sd: Mapping[str, Tensor], cfg: dict, source: str) -> SAMM:
    """Build SAMM from ``cfg`` and load ``sd`` (``feats_conv.*`` + ``modulation.*``) strictly."""
    try:
        samm = SAMM(**cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(source, f"cannot build the OOD SAMM from its config: {e}") from None
    load_state_dict_strict(samm, dict(sd), f"{source} [feats_conv.*, modulation.*]")
    return samm


def read_basicsr(path: str | Path) -> Components:
    """An official OOD-GAN-inversion checkpoint (BasicSR ``net_g_*.pth``: ``params_ema`` or ``params``) as
    components: ``encoder``, ``decoder`` (its ``generator.*``), ``samm`` (``feats_conv.*`` + ``modulation.*``) and the
    ``avg_latent``. Every key must belong to one of them (gie names what is left over, where the official code loads
    with ``strict=False``); ``delta_latent`` (an editing offset the official loader zeroes) must be zero.

    Raises:
        CheckpointError: not such a file.
    """
    ck = read_checkpoint(path)
    sd = ck.get("params_ema", ck.get("params"))
    if not isinstance(sd, dict):
        raise CheckpointError(path, "is not a BasicSR checkpoint (no params_ema / params)",
                              hint="pass net_g_*.pth of OOD-GAN-inversion or a gie OOD checkpoint")  # fmt: skip
    prefixes = ("encoder", "generator", "feats_conv", "modulation")
    unexpected = [k for k in sd if k.split(".")[0] not in prefixes and k not in OFFICIAL_PARAMS]
    missing = [k for k in ("avg_latent",) if k not in sd]
    if unexpected or missing:
        raise CheckpointError(path, f"has unexpected keys {unexpected[:5]} / lacks {missing} for OOD-GAN-inversion")
    delta = sd.get("delta_latent")
    if delta is not None and bool(delta.abs().max() > 0):
        raise CheckpointError(path, "has a non-zero delta_latent (an edit baked into the file)",
                              hint="save the checkpoint with delta_latent zeroed; edit with gie edit")  # fmt: skip
    samm = {k: v for k, v in sd.items() if k.split(".")[0] in ("feats_conv", "modulation")}
    parts = {"encoder": get_prefixed(sd, "encoder"), "decoder": get_prefixed(sd, "generator"), "samm": samm}
    return Components(Path(path), parts, sd["avg_latent"].reshape(-1), {"start_from_latent_avg": True}, {},
                      sha256_file(Path(path)))  # fmt: skip


def load_ood(weights: str | None, iterations: int | None = None, skip_align: bool = False) -> OODMethod:
    """OOD inversion from a gie checkpoint (``gie train --method ood``) or an official BasicSR ``.pth``; strict.

    Raises:
        CheckpointError: a file that is not what it should be, or parts that do not fit each other.
    """
    path = resolve_weights(weights, method="ood", what="a gie OOD checkpoint or an official BasicSR net_g_*.pth")
    if Path(path).suffix == ".safetensors":
        comp = load_components(path)
        cfg = comp.config.get("ood")
        if comp.config.get("method") != "ood" or not isinstance(cfg, dict):
            raise CheckpointError(comp.source, "is not a gie OOD checkpoint (no ood config)",
                                  hint="pass a checkpoint from `gie train --method ood`")  # fmt: skip
        sd = {f"feats_conv.{k}": v for k, v in comp.part("feats_conv").items()}
        sd.update({f"modulation.{k}": v for k, v in comp.part("modulation").items()})
        samm = load_samm(sd, cfg, str(comp.source))
    else:
        comp = read_basicsr(path)
        encoder_input = int(build_encoder(comp, "e4e")[1]["input_size"])
        try:
            cfg = samm_config_from_state_dict(comp.parts["samm"], encoder_input)
        except (KeyError, ValueError) as e:
            raise CheckpointError(path, f"has no complete SAMM ({e})") from None
        samm = load_samm(comp.parts["samm"], cfg, str(path))
    g = build_generator(comp)
    encoder, ecfg = build_encoder(comp, "e4e")
    start = bool(comp.opts.get("start_from_latent_avg", True))
    e4e = EncoderMethod(g, encoder, wplus_average(comp, g), "e4e", ecfg, start)
    return built_from(comp.source, lambda: OODMethod(g, e4e, samm, iterations, skip_align, comp.weights_id).eval())


def ood_options(options: dict[str, object]) -> dict[str, object]:
    """``iterations`` (N at inference, >= 1) and ``skip_align`` (the "skip SA" ablation).

    Raises:
        UsageError: another setting or a bad value.
    """
    unknown = set(options) - {"iterations", "skip_align"}
    if unknown:
        names = ", ".join(sorted(unknown))
        raise UsageError(f"ood has no setting {names}", hint="ood settings: iterations, skip_align")
    out: dict[str, object] = {}
    if "iterations" in options:
        out["iterations"] = n = coerce("ood", "iterations", options["iterations"], int)
        check_range("ood", "iterations", n, {"ge": 1})
    if "skip_align" in options:
        out["skip_align"] = coerce("ood", "skip_align", options["skip_align"], bool)
    return out


@checks_options(ood_options)
def load_ood_method(weights: str | None, **options: object) -> OODMethod:
    """The ``ood`` method (catalog entry); see :func:`ood_options`."""
    return load_ood(weights, **ood_options(dict(options)))  # type: ignore[arg-type]

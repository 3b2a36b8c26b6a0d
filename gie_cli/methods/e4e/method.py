"""pSp (Richardson et al., CVPR 2021) and e4e (Tov et al., SIGGRAPH 2021) as inversion methods: feed-forward W+
encoders, loaded from official checkpoints or gie's own."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from gie_cli.methods.base import Inversion, InversionMethod
from gie_cli.models.loading import build_encoder, build_generator, save_components, wplus_average
from gie_cli.models.stylegan2 import Generator
from gie_cli.weights import load_components, resolve_weights

log = logging.getLogger(__name__)

_OFFICIAL_TYPES = {"e4e": ("Encoder4Editing",), "psp": ("GradualStyleEncoder",)}


class EncoderMethod(InversionMethod):
    """A feed-forward encoder predicting W+ offsets from ``latent_avg`` (pSp and e4e share this).

    Args:
        generator: shared generator.
        encoder: ``Encoder4Editing`` or ``GradualStyleEncoder`` (images ``[B,3,S,S]`` -> codes ``[B,n_latent,D]``).
        latent_avg: ``[n_latent, D]`` added to the codes when ``start_from_latent_avg``.
        encoder_config: kwargs the encoder was built with (saved in gie checkpoints).

    Attributes:
        channels_last: on CPU, encode without gradients in the channels-last memory format (oneDNN's convolutions
            run faster on it; equal to the default format up to float rounding, ``tests/test_fastpath.py``; speed:
            ``benchmarks/bench_encoder.py``). A class-wide switch; training (with gradients) keeps the default format.
    """

    channels_last: bool = True

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
        fast = self.channels_last and x.device.type == "cpu" and not torch.is_grad_enabled()
        if fast:
            x = x.contiguous(memory_format=torch.channels_last)
        if return_features:
            codes, feats = self.encoder(x, return_features=True)
            if fast:  # callers may view or flatten them
                feats = {k: v.contiguous() for k, v in feats.items()}
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
    path = resolve_weights(weights, method=kind, what=f"an official {kind}_ffhq_encode.pt or a gie {kind} checkpoint")
    comp = load_components(path)
    enc_type = comp.opts.get("encoder_type")
    if enc_type and enc_type not in _OFFICIAL_TYPES[kind]:
        log.warning("%s: opts.encoder_type is %s, loading it as %s anyway", path, enc_type, kind)
    generator = build_generator(comp)
    encoder, cfg = build_encoder(comp, kind)
    avg = wplus_average(comp, generator)
    start = bool(comp.opts.get("start_from_latent_avg", True))
    method = EncoderMethod(generator, encoder, avg.float(), kind, cfg, start, comp.weights_id)
    method.weights_path = str(Path(path).resolve())
    return method


def load_e4e(weights: str | None, **_: object) -> EncoderMethod:
    """The ``e4e`` method (catalog entry): :func:`load_encoder_method` for e4e."""
    return load_encoder_method("e4e", weights)


def load_psp(weights: str | None, **_: object) -> EncoderMethod:
    """The ``psp`` method (catalog entry): :func:`load_encoder_method` for pSp."""
    return load_encoder_method("psp", weights)

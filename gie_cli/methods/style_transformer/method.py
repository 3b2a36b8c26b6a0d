"""Style Transformer (Hu et al., "Style Transformer for Image Inversion and Editing", CVPR 2022) as a gie inversion
method: its encoder with the queries made by the checkpoint's own (fine-tuned) mapping MLP."""

from __future__ import annotations

from torch import Tensor

from gie_cli.errors import CheckpointError
from gie_cli.io.checkpoint import load_state_dict_strict
from gie_cli.methods.base import built_from
from gie_cli.methods.e4e import EncoderMethod
from gie_cli.methods.style_transformer.modules import StyleTransformerEncoder, config_from_state_dict
from gie_cli.models.loading import build_generator, wplus_average
from gie_cli.weights import load_components, resolve_weights


class StyleTransformerMethod(EncoderMethod):
    """W+ codes from the Style Transformer encoder; the queries are ``generator.style(z)``.

    The generator is the checkpoint's own: Style Transformer fine-tunes the mapping MLP (``decoder.style.*``), so
    the queries and any rendering from ``z`` use that MLP; the synthesis network is FFHQ's, so FFHQ directions (bound
    to the synthesis network's fingerprint) apply unchanged.
    """

    def encode(self, images: Tensor, return_features: bool = False):
        """Codes (with ``latent_avg``) ``[B, n_latent, D]``; with ``return_features`` also the pyramid."""
        x = self.prepare(images)
        codes = self.encoder(x, self.generator.style)
        if self.start_from_latent_avg:
            codes = codes + self.latent_avg
        return (codes, self.encoder.forward_features(x)) if return_features else codes


def load_style_transformer(weights: str | None, **_: object) -> StyleTransformerMethod:
    """Load the official ``style-transformer-ffhq.pt`` (``encoder.module.*``, ``decoder.module.*``, ``opts``,
    ``latent_avg``) or a gie checkpoint of the method, strictly (the ``style_transformer`` catalog entry).

    Raises:
        CheckpointError: not a Style Transformer file (no encoder ``z``), or a part that does not load strictly.
    """
    path = resolve_weights(weights, method="style_transformer", what="the official style-transformer-ffhq.pt")
    comp = load_components(path)
    sd = comp.part("encoder")
    if "z" not in sd:
        raise CheckpointError(
            path, "[encoder.*] has no learned queries 'z': not a Style Transformer encoder",
            hint="pass style-transformer-ffhq.pt (-w style_transformer.ffhq)",
        )  # fmt: skip
    cfg = comp.config.get("encoder") or config_from_state_dict(sd)
    encoder = StyleTransformerEncoder(**cfg)
    load_state_dict_strict(encoder, sd, f"{comp.source} [encoder.*]")
    generator = build_generator(comp)
    avg = wplus_average(comp, generator)
    start = bool(comp.opts.get("start_from_latent_avg", True))
    return built_from(
        path,
        lambda: StyleTransformerMethod(
            generator, encoder.eval(), avg.float(), "style_transformer", cfg, start, comp.weights_id
        ),
    )

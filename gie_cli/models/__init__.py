"""Network architectures (StyleGAN2, the pSp/e4e encoders), the model registry with its one construction path
(``create_model``), and checkpoint-to-module loading (:mod:`.loading`)."""

from functools import partial

from gie_cli.models.encoders.psp import create_encoder
from gie_cli.models.registry import create_model, list_models, model_defaults, register_model
from gie_cli.models.stylegan2 import Discriminator, Generator

# architectures built from a checkpoint's own config (every kwarg given)
register_model("stylegan2", Generator)
register_model("stylegan2-discriminator", Discriminator)
register_model("psp", partial(create_encoder, "psp"))
register_model("e4e", partial(create_encoder, "e4e"))
# named presets
register_model("stylegan2-1024", Generator, size=1024, style_dim=512, n_mlp=8, channel_multiplier=2)
register_model("stylegan2-512", Generator, size=512, style_dim=512, n_mlp=8, channel_multiplier=2)
register_model("stylegan2-256", Generator, size=256, style_dim=512, n_mlp=8, channel_multiplier=2)
register_model("stylegan2-tiny64", Generator, size=64, style_dim=64, n_mlp=2, channel_max=64)
register_model("stylegan2-d-1024", Discriminator, size=1024, channel_multiplier=2)
register_model("stylegan2-d-256", Discriminator, size=256, channel_multiplier=2)
register_model("stylegan2-d-tiny64", Discriminator, size=64, channel_max=64)

__all__ = ["Discriminator", "Generator", "create_model", "list_models", "model_defaults", "register_model"]

"""Network architectures (StyleGAN2, encoders) and the model registry."""

from gie_cli.models.registry import create_model, list_models, model_defaults, register_model
from gie_cli.models.stylegan2 import Discriminator, Generator

register_model("stylegan2-1024", Generator, size=1024, style_dim=512, n_mlp=8, channel_multiplier=2)
register_model("stylegan2-512", Generator, size=512, style_dim=512, n_mlp=8, channel_multiplier=2)
register_model("stylegan2-256", Generator, size=256, style_dim=512, n_mlp=8, channel_multiplier=2)
register_model("stylegan2-tiny64", Generator, size=64, style_dim=64, n_mlp=2, channel_max=64)
register_model("stylegan2-d-1024", Discriminator, size=1024, channel_multiplier=2)
register_model("stylegan2-d-256", Discriminator, size=256, channel_multiplier=2)
register_model("stylegan2-d-tiny64", Discriminator, size=64, channel_max=64)

__all__ = ["Discriminator", "Generator", "create_model", "list_models", "model_defaults", "register_model"]

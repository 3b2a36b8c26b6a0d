"""Latent optimization (the StyleGAN2 projector of Karras et al., 2020): fit W or W+ (and optionally noise) per image.

- ``method``: the ``optim`` inversion method and its settings (:class:`OptimConfig`); it has nothing to train.
"""

from gie_cli.methods.optim.method import LatentOptimization, OptimConfig, lr_schedule, noise_regularization

__all__ = ["LatentOptimization", "OptimConfig", "lr_schedule", "noise_regularization"]

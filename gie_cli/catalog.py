"""The composition point: gie's built-in inversion methods and trainers as lazy ``"module:attr"`` entries.

Adding a method is one folder (``gie_cli/methods/<name>/``) and one line here. Nothing is imported until a method or
trainer is created, so ``gie --help`` stays fast and no package imports its plugins.
"""

from __future__ import annotations

from typing import NamedTuple


class Entry(NamedTuple):
    """A lazily imported factory: ``target`` is ``"package.module:function"``; ``summary`` is one line for listings."""

    target: str
    summary: str


#: method name -> ``factory(weights: str | None, **options) -> InversionMethod``
METHODS: dict[str, Entry] = {
    "e4e": Entry(
        "gie_cli.methods.e4e.method:load_e4e", "encoder for editing (Tov et al. 2021): fast, editable W+ codes"
    ),
    "psp": Entry("gie_cli.methods.e4e.method:load_psp", "pixel2style2pixel (Richardson et al. 2021): fast W+ encoder"),
    "optim": Entry(
        "gie_cli.methods.optim.method:load_optim",
        "latent optimization (StyleGAN2 projector): slow, any generator, W or W+",
    ),
    "gradstyle": Entry(
        "gie_cli.methods.gradstyle.method:load_gradstyle_method",
        "Gradual Residuals Alignment (Li et al. 2024): e4e + gradual residuals, aligned edits",
    ),
}

#: trainer name -> ``factory(data, weights, device, batch_size, seed, **settings) -> Trainer``
TRAINERS: dict[str, Entry] = {
    "e4e": Entry("gie_cli.methods.e4e.train:train_e4e", "train an e4e encoder for a generator"),
    "psp": Entry("gie_cli.methods.e4e.train:train_psp", "train a pSp encoder for a generator"),
    "gradstyle": Entry(
        "gie_cli.methods.gradstyle.train:train_gradstyle",
        "train GradStyle's residual/alignment modules on a frozen e4e (-w)",
    ),
    "generator": Entry(
        "gie_cli.synth.train:train_world_generator",
        "fit a StyleGAN2 generator to the synthetic face world (regression)",
    ),
    "attributes": Entry(
        "gie_cli.synth.train:train_attribute_estimator",
        "train the synthetic world's attribute estimator (image -> attributes)",
    ),
}


def load(entry: Entry):
    """Import and return the factory an entry names."""
    import importlib

    module, _, attr = entry.target.partition(":")
    return getattr(importlib.import_module(module), attr)

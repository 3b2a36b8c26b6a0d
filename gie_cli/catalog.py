"""The composition point: gie's built-in inversion methods and trainers as lazy ``"module:attr"`` entries.

Adding a method is one folder (``gie_cli/methods/<name>/``) and one line here. Nothing is imported until a method or
trainer is created, so ``gie --help`` stays fast and no package imports its plugins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple


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
    "hfgi": Entry(
        "gie_cli.methods.hfgi.method:load_hfgi_method", "HFGI (Wang et al. 2022): e4e + ADA-aligned residual"
    ),
    "style_transformer": Entry(
        "gie_cli.methods.style_transformer.method:load_style_transformer",
        "Style Transformer (Hu et al. 2022): learned queries attend to an IR-SE pyramid",
    ),
    "sfe": Entry(
        "gie_cli.methods.sfe.method:load_sfe_method",
        "StyleFeatureEditor (Bobkov et al. 2024): predicted 64 px feature + Feature Editor for edits",
    ),
    "ood": Entry(
        "gie_cli.methods.ood.method:load_ood_method",
        "OOD inversion (Yin et al. 2023): e4e + SAMM feature alignment, out-of-domain parts blended back",
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
    "hfgi": Entry(
        "gie_cli.methods.hfgi.train:train_hfgi", "train HFGI's ADA and consultation encoder on a frozen e4e (-w)"
    ),
    "style_transformer": Entry(
        "gie_cli.methods.style_transformer.train:train_style_transformer",
        "train a Style Transformer encoder and its mapping MLP for a frozen synthesis network",
    ),
    "sfe": Entry(
        "gie_cli.methods.sfe.train:train_sfe",
        "train SFE's Inverter (--set phase=1, on a frozen e4e -w) or Feature Editor (phase=2, on the phase-1 result)",
    ),
    "ood": Entry(
        "gie_cli.methods.ood.train:train_ood", "train OOD inversion's SAMM (alignment + masks) on a frozen e4e (-w)"
    ),
    "latent_classifier": Entry(
        "gie_cli.editing.train:train_latent_classifier",
        "train a latent attribute classifier on labelled faces' W+ codes (label-based editing)",
    ),
    "edit_transformer": Entry(
        "gie_cli.editing.train:train_edit_transformer",
        "train a reference-based editing transformer on labelled faces' W+ codes (needs a latent classifier)",
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


def load(entry: Entry) -> Callable[..., Any]:
    """Import and return the factory an entry names."""
    import importlib

    module, _, attr = entry.target.partition(":")
    return getattr(importlib.import_module(module), attr)


class LazyRegistry:
    """Names -> factories: the built-in entries of a table above (imported on first use) plus plugins registered at
    run time, which cannot shadow a built-in name.

    Args:
        kind: What the factories make, for messages (``"method"``, ``"trainer"``).
        builtin: The catalog table.
        unknown: Builds the error raised for an unknown name, from the name and the known names.
    """

    def __init__(self, kind: str, builtin: dict[str, Entry], unknown: Callable[[str, list[str]], Exception]) -> None:
        self.kind, self.builtin, self.unknown = kind, builtin, unknown
        self.plugins: dict[str, tuple[Callable[..., Any], str]] = {}

    def register(self, name: str, summary: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering a plugin factory under ``name``."""

        def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self.builtin or name in self.plugins:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self.plugins[name] = (factory, summary)
            return factory

        return deco

    def summaries(self) -> dict[str, str]:
        """Every name -> its one-line summary, sorted by name (imports nothing)."""
        names = {k: e.summary for k, e in self.builtin.items()} | {k: v[1] for k, v in self.plugins.items()}
        return dict(sorted(names.items()))

    def factory(self, name: str) -> Callable[..., Any]:
        """The factory of ``name`` (a built-in one is imported now).

        Raises:
            Exception: ``unknown(name, known)`` for a name nobody registered.
        """
        if name in self.plugins:
            return self.plugins[name][0]
        if name not in self.builtin:
            raise self.unknown(name, list(self.summaries()))
        return load(self.builtin[name])

"""The trainer registry: built-in trainers come from :mod:`gie_cli.catalog`; plugins add theirs with
:func:`register_trainer`."""

from __future__ import annotations

from collections.abc import Callable

from gie_cli import catalog
from gie_cli.errors import UsageError
from gie_cli.training.base import Trainer

TrainerFactory = Callable[..., Trainer]
_PLUGINS: dict[str, tuple[TrainerFactory, str]] = {}


def register_trainer(name: str, summary: str) -> Callable[[TrainerFactory], TrainerFactory]:
    """Decorator registering ``factory(data, weights, device, batch_size, seed, **settings) -> Trainer``."""

    def deco(factory: TrainerFactory) -> TrainerFactory:
        if name in catalog.TRAINERS or name in _PLUGINS:
            raise ValueError(f"trainer {name!r} is already registered")
        _PLUGINS[name] = (factory, summary)
        return factory

    return deco


def list_trainers() -> dict[str, str]:
    """Trainer names -> one-line summaries (imports nothing)."""
    names = {k: e.summary for k, e in catalog.TRAINERS.items()} | {k: v[1] for k, v in _PLUGINS.items()}
    return dict(sorted(names.items()))


def create_trainer(name: str, **kwargs: object) -> Trainer:
    """Build trainer ``name`` (``kwargs``: data, weights, device, batch_size, seed and the trainer's settings).

    Raises:
        UsageError: No trainer of that name.
    """
    if name in _PLUGINS:
        return _PLUGINS[name][0](**kwargs)
    if name not in catalog.TRAINERS:
        raise UsageError(f"no trainer for method {name!r}", hint=f"trainable: {', '.join(list_trainers())}")
    return catalog.load(catalog.TRAINERS[name])(**kwargs)

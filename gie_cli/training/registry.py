"""The trainer registry: built-in trainers come from :mod:`gie_cli.catalog`; plugins add theirs with
:func:`register_trainer`."""

from __future__ import annotations

from collections.abc import Callable

from gie_cli import catalog
from gie_cli.errors import UsageError
from gie_cli.training.base import Trainer

TrainerFactory = Callable[..., Trainer]
REGISTRY = catalog.LazyRegistry(
    "trainer",
    catalog.TRAINERS,
    lambda name, known: UsageError(f"no trainer for method {name!r}", hint=f"trainable: {', '.join(known)}"),
)


def register_trainer(name: str, summary: str) -> Callable[[TrainerFactory], TrainerFactory]:
    """Decorator registering ``factory(data, weights, device, batch_size, seed, **settings) -> Trainer``."""
    return REGISTRY.register(name, summary)


def list_trainers() -> dict[str, str]:
    """Trainer names -> one-line summaries (imports nothing)."""
    return REGISTRY.summaries()


def create_trainer(name: str, **kwargs: object) -> Trainer:
    """Build trainer ``name`` (``kwargs``: data, weights, device, batch_size, seed and the trainer's settings).

    Raises:
        UsageError: No trainer of that name.
    """
    return REGISTRY.factory(name)(**kwargs)

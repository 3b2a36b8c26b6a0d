"""The trainer interface and registry: each method's trainable parts plug into the shared `gie train` loop."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import ClassVar

import torch
from torch import nn

from gie_cli.errors import UsageError


class Trainer(ABC):
    """One method's training recipe.

    The loop (``gie_cli.training.loop``) owns run folders, snapshots, resume, logging and progress; a trainer owns
    models, optimizers, the data stream and one optimisation step.
    """

    name: ClassVar[str] = ""

    @abstractmethod
    def batches(self) -> Iterator[torch.Tensor]:
        """Endless training batches."""

    @abstractmethod
    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, float]:
        """One optimisation step; returns scalar metrics for ``metrics.jsonl``."""

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Trained modules, saved in snapshots."""

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers, saved in snapshots."""

    @abstractmethod
    def export(self, path) -> None:
        """Write the trained method's weights in gie's checkpoint format (loadable by ``gie invert --weights``)."""

    def options(self) -> dict:
        """Settings recorded in ``options.json``."""
        return {}

    def state_dict(self) -> dict:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
            "rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers().items():
            o.load_state_dict(state["optimizers"][k])
        if "rng" in state:
            torch.set_rng_state(state["rng"])


TrainerFactory = Callable[..., Trainer]
_TRAINERS: dict[str, tuple[TrainerFactory, str]] = {}


def register_trainer(name: str, summary: str) -> Callable[[TrainerFactory], TrainerFactory]:
    """Decorator registering ``factory(data, weights, device, batch_size, seed, **settings) -> Trainer``."""

    def deco(factory: TrainerFactory) -> TrainerFactory:
        if name in _TRAINERS:
            raise ValueError(f"trainer {name!r} is already registered")
        _TRAINERS[name] = (factory, summary)
        return factory

    return deco


def list_trainers() -> dict[str, str]:
    _load_builtin()
    return {k: v[1] for k, v in sorted(_TRAINERS.items())}


def create_trainer(name: str, **kwargs) -> Trainer:
    _load_builtin()
    if name not in _TRAINERS:
        raise UsageError(f"no trainer for method {name!r}", hint=f"trainable: {', '.join(sorted(_TRAINERS))}")
    return _TRAINERS[name][0](**kwargs)


def _load_builtin() -> None:
    from gie_cli.methods import base as _methods
    from gie_cli.synth import estimator as _estimator  # noqa: F401 - the synthetic world's trainers
    from gie_cli.synth import train as _world  # noqa: F401

    _methods._load_builtin()  # method modules register their trainers next to their inference code

"""The trainer interface: each method's trainable parts plug into the shared `gie train` loop."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import nn


class Trainer(ABC):
    """One method's training recipe.

    The loop (``gie_cli.training.loop``) owns run folders, snapshots, resume, logging and progress; a trainer owns
    models, optimizers, the data stream and one optimisation step.
    """

    name: ClassVar[str] = ""

    @abstractmethod
    def batches(self) -> Iterator[torch.Tensor]:
        """Endless training batches of the global batch size.

        In a data-parallel run, streams of :func:`~gie_cli.training.data.endless` and
        :func:`~gie_cli.training.data.index_batches` yield this rank's share themselves; the loop cuts any other
        stream's batches (tensors, or tuples, lists and dicts of them, along the first dimension).
        """

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

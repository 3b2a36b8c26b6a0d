"""Optimizer wrappers shared by gie's trainers: Lookahead (Zhang et al., "Lookahead Optimizer: k steps forward, 1
step back", NeurIPS 2019), which HFGI and GradStyle train with around Adam, and Ranger (RAdam + Lookahead), Style
Transformer's and SFE's."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class Lookahead:
    """Lookahead (Zhang et al., NeurIPS 2019) around an inner optimizer: every ``k`` inner steps the slow weights
    move ``alpha`` of the way to the fast ones and the fast weights restart from them.

    Quacks like a ``torch.optim.Optimizer`` for gie's training loop (``step``, ``zero_grad``, ``param_groups``,
    ``state_dict``/``load_state_dict`` with tensors and plain values only, so snapshots load with
    ``weights_only=True``).

    Args:
        inner: the fast optimizer (Adam in GradStyle).
        k: inner steps per synchronisation (5).
        alpha: slow-weight step size (0.5).
    """

    def __init__(self, inner: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5) -> None:
        if k < 1 or not 0.0 < alpha <= 1.0:
            raise ValueError(f"Lookahead needs k >= 1 and 0 < alpha <= 1, got k={k}, alpha={alpha}")
        self.inner, self.k, self.alpha = inner, int(k), float(alpha)
        self.steps = 0
        self.slow = [p.detach().clone() for p in self._params()]

    def _params(self) -> list[Tensor]:
        return [p for group in self.inner.param_groups for p in group["params"]]

    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        """One inner step; every ``k``-th also synchronises slow and fast weights."""
        self.inner.step()
        self.steps += 1
        if self.steps % self.k == 0:
            self.synchronize()

    @torch.no_grad()
    def synchronize(self) -> None:
        """The slow update now: ``slow += alpha * (fast - slow)``, then ``fast = slow``."""
        for p, slow in zip(self._params(), self.slow, strict=True):
            slow.add_(p - slow, alpha=self.alpha)
            p.copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "slow": list(self.slow), "steps": self.steps, "k": self.k}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        if len(state["slow"]) != len(self.slow):
            raise ValueError(f"Lookahead state has {len(state['slow'])} slow tensors, expected {len(self.slow)}")
        for slow, saved in zip(self.slow, state["slow"], strict=True):
            slow.copy_(saved)
        self.steps = int(state["steps"])


#: ``optimizer`` settings of the trainers that take :func:`ranger_or_adam`.
OPTIMIZERS = ("ranger", "adam")


def ranger_or_adam(params: Any, lr: float, kind: str, owner: str) -> Any:
    """``ranger`` (``torch.optim.RAdam`` + :class:`Lookahead`) or plain ``adam`` over ``params`` at ``lr``.

    Raises:
        UsageError: another ``kind`` (the message names the ``owner``'s setting).
    """
    from gie_cli.errors import UsageError

    if kind not in OPTIMIZERS:
        raise UsageError(f"{owner} setting optimizer={kind!r}", hint=" or ".join(OPTIMIZERS))
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr)
    return Lookahead(torch.optim.RAdam(params, lr=lr))

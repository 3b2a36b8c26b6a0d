"""What a direction at one power does to a batch of codes (:class:`Edit`), and drawing it through a method."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from gie_cli.methods import Inversion, InversionMethod


@dataclass
class Edit:
    """A batch of edits: a W+ offset plus StyleSpace offsets, both passed explicitly to the renderer.

    Attributes:
        delta: W+ offset ``[B, n_latent, D]`` (zeros for pure StyleSpace edits).
        style_offsets: conv layer -> StyleSpace offset ``[B, C_l]`` added to that layer's style vector (empty for
            W/W+ edits).
    """

    delta: Tensor
    style_offsets: dict[int, Tensor] = field(default_factory=dict)

    @property
    def styles(self) -> dict[int, Tensor]:
        """Alias of :attr:`style_offsets`."""
        return self.style_offsets

    def __len__(self) -> int:
        return self.delta.shape[0]

    def select(self, start: int, stop: int) -> Edit:
        """Items ``start:stop`` of the batch."""
        return Edit(self.delta[start:stop], {k: v[start:stop] for k, v in self.style_offsets.items()})

    @staticmethod
    def cat(edits: Sequence[Edit]) -> Edit:
        """Concatenate edits along the batch; a style layer missing from some edits gets zero offsets there."""
        layers = sorted({k for e in edits for k in e.style_offsets})
        offsets = {}
        for k in layers:
            like = next(e.style_offsets[k] for e in edits if k in e.style_offsets)
            zeros = like.new_zeros  # same dtype/device as the layer's offsets elsewhere
            offsets[k] = torch.cat([e.style_offsets.get(k, zeros(len(e), like.shape[1])) for e in edits])
        return Edit(torch.cat([e.delta for e in edits]), offsets)


def render_edit(method: InversionMethod, inv: Inversion, edit: Edit) -> Tensor:
    """Render ``inv`` edited by ``edit`` through the method's own path: ``method.render(inv, delta, style_offsets)``.

    Args:
        method: the inversion method that made ``inv``.
        inv: ``Inversion`` with ``B`` items.
        edit: ``Edit`` with ``B`` items.

    Returns:
        ``[B, 3, S, S]`` images.
    """
    assert len(edit) == len(inv), f"edit has {len(edit)} items, inversion {len(inv)}"
    return method.render(inv, edit.delta, edit.style_offsets or None)

"""StyleSpace (Wu et al., "StyleSpace Analysis", CVPR 2021): style vectors of StyleGAN2's conv layers, indexing.

StyleSpace ``S`` is the output of each layer's affine style transform (``conv.modulation``). gie edits it by passing
offsets explicitly to the renderer (``method.render(inv, delta, style_offsets)``, down to ``Generator.forward(...,
style_offsets=...)``), so any method's own rendering path draws the edit and the generator is never copied or changed.

Layer indexing: gie's *conv layer* ``l`` (``0..num_layers-1``) is the ``l``-th styled convolution (see
``gie_cli.models.stylegan2``); it is modulated by W+ entry ``l``. The StyleSpace paper (and SFE's channel tables)
number the 26 style layers of a 1024px generator including the ToRGB layers: ``0`` = conv 0, ``1`` = ToRGB, then
per block ``3k + 2`` = conv ``2k + 1``, ``3k + 3`` = conv ``2k + 2``, ``3k + 4`` = ToRGB.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from gie_cli.models.stylegan2 import Generator

log = logging.getLogger(__name__)


def conv_modulations(generator: Generator) -> list[nn.Module]:
    """The affine style transforms of the styled convs, indexed by conv layer (``[conv1, convs[0], convs[1], ...]``)."""
    return [generator.conv1.conv.modulation, *(c.conv.modulation for c in generator.convs)]


def style_channels(generator: Generator, layer: int) -> int:
    """Width of conv layer ``layer``'s style vector (its input channel count)."""
    return int(conv_modulations(generator)[layer].weight.shape[0])


def s_index_to_layer(s_index: int) -> int:
    """StyleSpace paper index (ToRGB layers included) -> gie conv layer.

    Raises:
        ValueError: ``s_index`` names a ToRGB style layer (not a conv layer) or is negative.
    """
    if s_index < 0:
        raise ValueError(f"StyleSpace index must be >= 0, got {s_index}")
    if s_index == 0:
        return 0
    k, r = divmod(s_index - 2, 3)
    if s_index == 1 or r == 2:
        raise ValueError(f"StyleSpace index {s_index} is a ToRGB style layer, not a conv layer")
    return 2 * k + 1 + r


def layer_to_s_index(layer: int) -> int:
    """gie conv layer -> StyleSpace paper index (inverse of :func:`s_index_to_layer`)."""
    if layer == 0:
        return 0
    k, r = divmod(layer - 1, 2)
    return 3 * k + 2 + r


@torch.no_grad()
def style_vectors(generator: Generator, wplus: Tensor, layers: list[int] | None = None) -> dict[int, Tensor]:
    """Style vectors ``s_l = A_l(w_l)`` of W+ codes.

    Args:
        generator: the generator.
        wplus: ``[B, n_latent, D]`` (a W code ``[B, D]`` is broadcast).
        layers: conv layers to compute (default all).

    Returns:
        conv layer -> ``[B, C_l]``.
    """
    if wplus.ndim == 2:
        wplus = generator.broadcast(wplus)
    mods = conv_modulations(generator)
    layers = list(range(len(mods))) if layers is None else layers
    return {layer: mods[layer](wplus[:, layer]) for layer in layers}

"""The synthetic world's latent code: attributes live in the first coordinates of ``z`` (inverse normal CDF), the
rest is a direction that completes ``|z|^2 = style_dim`` (see :mod:`gie_cli.synth.train`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def attribute_z(attrs: Tensor) -> Tensor:
    """Attributes in [-1, 1] -> ``N(0, 1)`` coordinates: ``Phi^-1((a + 1) / 2)`` (``u`` clipped to [0.002, 0.998]).

    Exact for the uniform attributes; every ``z`` maps back into the attribute range (``a = 2 Phi(z) - 1``), so
    sampling ``z ~ N(0, I)`` never asks the generator for a face outside the world.
    """
    u = ((attrs + 1) / 2).clamp(0.002, 0.998)
    return math.sqrt(2.0) * torch.erfinv(2 * u - 1)


def z_attributes(z: Tensor) -> Tensor:
    """Inverse of :func:`attribute_z`: ``[B, A]`` z coordinates -> attributes in [-1, 1]."""
    return torch.erf(z / math.sqrt(2.0))


def world_latent(attrs: Tensor, style_dim: int, noise: Tensor | None = None) -> Tensor:
    """``z [B, style_dim]`` with ``|z|^2 = style_dim`` from attribute vectors ``[B, A]`` in [-1, 1].

    The first ``A`` dims are :func:`attribute_z` of the attributes; the rest point in the direction of
    ``noise [B, style_dim - A]`` (Gaussian if omitted) with the length that completes the norm, so pixel normalisation
    leaves ``z`` unchanged.
    """
    b, a = attrs.shape
    head = attribute_z(attrs)
    if noise is None:
        noise = torch.randn(b, style_dim - a, device=attrs.device)
    room = (style_dim - head.square().sum(1, keepdim=True)).clamp_min(0.0)
    tail = noise / noise.norm(dim=1, keepdim=True).clamp_min(1e-8) * room.sqrt()
    return torch.cat([head, tail], dim=1)

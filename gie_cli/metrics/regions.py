"""Reconstruction error inside and outside a region mask (e.g. the synthetic world's out-of-domain objects)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["masked_mse"]


def masked_mse(x: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean squared error over the pixels inside ``mask`` and over the pixels outside it, per image.

    Args:
        x: ``[B, C, H, W]`` images.
        y: ``[B, C, H, W]`` images (same shape as ``x``).
        mask: ``[B, H, W]`` (or ``[B, 1, H, W]``) bool region.

    Returns:
        ``(inside [B], outside [B])``: the mean of ``(x - y)^2`` over the channels of the pixels in the region and
        outside it; NaN for an image whose region (or its complement) is empty.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"masked_mse: expected two [B,C,H,W] tensors of one shape, got {x.shape} and {y.shape}")
    m = mask.reshape(x.shape[0], 1, *x.shape[-2:]).to(torch.bool)
    err = (x.float() - y.float()).pow(2).mean(dim=1, keepdim=True)  # [B, 1, H, W]
    inside = m.float()
    n_in = inside.sum(dim=(1, 2, 3))
    n_out = (1.0 - inside).sum(dim=(1, 2, 3))
    s_in = (err * inside).sum(dim=(1, 2, 3))
    s_out = (err * (1.0 - inside)).sum(dim=(1, 2, 3))
    nan = torch.full_like(s_in, float("nan"))
    return torch.where(n_in > 0, s_in / n_in.clamp_min(1), nan), torch.where(n_out > 0, s_out / n_out.clamp_min(1), nan)

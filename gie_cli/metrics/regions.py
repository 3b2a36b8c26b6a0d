"""Reconstruction quality inside and outside a region mask (e.g. the synthetic world's out-of-domain objects or its
face), and the overlap of a predicted region with a true one."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gie_cli.metrics.ssim import ssim_map

__all__ = ["mask_iou", "masked_mse", "masked_psnr", "masked_ssim"]


def _region(mask: Tensor, like: Tensor) -> Tensor:
    """``mask`` (``[B, H, W]`` or ``[B, 1, H, W]``) as a ``[B, 1, H, W]`` bool region of the images ``like``."""
    return mask.reshape(like.shape[0], 1, *like.shape[-2:]).to(torch.bool)


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
    m = _region(mask, x)
    err = (x.float() - y.float()).pow(2).mean(dim=1, keepdim=True)  # [B, 1, H, W]
    inside = m.float()
    n_in = inside.sum(dim=(1, 2, 3))
    n_out = (1.0 - inside).sum(dim=(1, 2, 3))
    s_in = (err * inside).sum(dim=(1, 2, 3))
    s_out = (err * (1.0 - inside)).sum(dim=(1, 2, 3))
    nan = torch.full_like(s_in, float("nan"))
    return torch.where(n_in > 0, s_in / n_in.clamp_min(1), nan), torch.where(n_out > 0, s_out / n_out.clamp_min(1), nan)


def masked_psnr(x: Tensor, y: Tensor, mask: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR inside a region per image: ``10 log10(data_range^2 / MSE_in)`` with ``MSE_in`` of :func:`masked_mse`.

    Args:
        x: ``[B, C, H, W]`` images.
        y: ``[B, C, H, W]`` images (same shape as ``x``).
        mask: ``[B, H, W]`` (or ``[B, 1, H, W]``) bool region.
        data_range: Dynamic range of the inputs (1 for ``[0, 1]``).

    Returns:
        ``[B]`` PSNR in dB; ``inf`` where the images agree inside the region, NaN where the region is empty.
    """
    inside, _ = masked_mse(x, y, mask)
    return 10 * torch.log10(data_range**2 / inside)


def masked_ssim(
    x: Tensor,
    y: Tensor,
    mask: Tensor,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
    K: Sequence[float] = (0.01, 0.03),
) -> Tensor:
    """SSIM inside a region per image: the :func:`~gie_cli.metrics.ssim.ssim_map` (the window of
    :func:`~gie_cli.metrics.ssim.ssim`) averaged over the channels and over the windows centred on a region pixel.

    Only valid windows exist, so region pixels closer than ``win_size // 2`` to the border do not count.

    Args:
        x: ``[B, C, H, W]`` images; ``H`` and ``W`` must be at least ``win_size``.
        y: ``[B, C, H, W]`` images (same shape as ``x``).
        mask: ``[B, H, W]`` (or ``[B, 1, H, W]``) bool region.
        data_range: Dynamic range of the inputs (1 for ``[0, 1]``).
        win_size: Odd side of the Gaussian window.
        sigma: Standard deviation of the Gaussian window.
        K: ``(K1, K2)`` stabilising constants.

    Returns:
        ``[B]`` masked SSIM (1 for images identical around the region); NaN where no window is centred in it.
    """
    smap = ssim_map(x, y, data_range, win_size, sigma, K).mean(dim=1, keepdim=True)  # [B, 1, H - k + 1, W - k + 1]
    r = win_size // 2
    m = _region(mask, x)[..., r : x.shape[-2] - r, r : x.shape[-1] - r].to(smap.dtype)
    n = m.sum(dim=(1, 2, 3))
    s = (smap * m).sum(dim=(1, 2, 3))
    return torch.where(n > 0, s / n.clamp_min(1), torch.full_like(s, float("nan")))


def mask_iou(pred: Tensor, truth: Tensor, threshold: float = 0.5) -> Tensor:
    """Intersection over union of a thresholded soft mask and a true region, per image.

    Args:
        pred: ``[B, H, W]`` (or ``[B, 1, H, W]``) predicted mask; its region is ``pred > threshold``.
        truth: ``[B, H, W]`` (or ``[B, 1, H, W]``) bool true region.
        threshold: Where ``pred`` counts as inside.

    Returns:
        ``[B]`` ``|P & T| / |P | T|`` in [0, 1]; NaN where both regions are empty.
    """
    p = (pred > threshold).reshape(pred.shape[0], -1)
    t = truth.to(torch.bool).reshape(truth.shape[0], -1)
    if p.shape != t.shape:
        raise ValueError(f"mask_iou: masks of different sizes, {tuple(pred.shape)} and {tuple(truth.shape)}")
    inter = (p & t).sum(dim=1).float()
    union = (p | t).sum(dim=1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, float("nan")))

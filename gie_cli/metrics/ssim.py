"""SSIM (Wang et al. 2004), MS-SSIM (Wang et al. 2003), PSNR and MSE: differentiable, one value per image."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MS_SSIM_WEIGHTS", "ms_ssim", "ms_ssim_scales", "mse", "psnr", "ssim", "ssim_map"]

logger = logging.getLogger(__name__)

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Per-scale exponents of Wang et al. 2003, finest scale first."""

_MS_SSIM_FLOOR = 1e-8  # cs/ssim means are clamped to this before the fractional powers (keeps them and grads finite)


def _check_pair(x: Tensor, y: Tensor, fn: str, ndim: int | None = 4) -> tuple[Tensor, Tensor]:
    """Validates shapes and promotes non-floating inputs to float32."""
    if x.shape != y.shape:
        raise ValueError(f"{fn}: inputs must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{fn}: expected [B,C,H,W] tensors, got shape {tuple(x.shape)}")
    if x.dim() < 2:
        raise ValueError(f"{fn}: expected a batch dimension plus at least one more, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    if not y.is_floating_point():
        y = y.float()
    return x, y


def _gaussian_window(win_size: int, sigma: float, like: Tensor) -> Tensor:
    """Normalised 1-D Gaussian ``[win_size]`` with the dtype and device of ``like``."""
    if win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"win_size must be a positive odd integer, got {win_size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    coords = torch.arange(win_size, dtype=torch.float64) - (win_size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype=like.dtype, device=like.device)


def _filter_valid(x: Tensor, win: Tensor) -> Tensor:
    """Separable Gaussian filter without padding: ``[B, C, H, W]`` -> ``[B, C, H - k + 1, W - k + 1]``."""
    c, k = x.shape[1], win.numel()
    x = F.conv2d(x, win.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, win.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def _ssim_maps(x: Tensor, y: Tensor, win: Tensor, data_range: float, K: Sequence[float]) -> tuple[Tensor, Tensor]:
    """SSIM and contrast-structure maps of the valid windows.

    Args:
        x: ``[B, C, H, W]`` with ``H, W >= win.numel()``.
        y: Same shape as ``x``.
        win: 1-D Gaussian window ``[k]``.
        data_range: Dynamic range of the inputs.
        K: ``(K1, K2)`` stabilising constants.

    Returns:
        ``(ssim_map, cs_map)``, each ``[B, C, H - k + 1, W - k + 1]``: entry ``(i, j)`` is the window centred on
        pixel ``(i + k // 2, j + k // 2)``.
    """
    c1 = (K[0] * data_range) ** 2
    c2 = (K[1] * data_range) ** 2
    c = x.shape[1]
    stats = _filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), win)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.split(c, dim=1)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_x, var_y, cov = e_xx - mu_xx, e_yy - mu_yy, e_xy - mu_xy  # population (biased) statistics
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    ssim_map = (2 * mu_xy + c1) / (mu_xx + mu_yy + c1) * cs_map
    return ssim_map, cs_map


def _ssim_cs(x: Tensor, y: Tensor, win: Tensor, data_range: float, K: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Mean SSIM and mean contrast-structure term per batch element (arguments as :func:`_ssim_maps`).

    Returns:
        ``(ssim [B], cs [B])``, averaged over channels and the valid pixels.
    """
    s_map, cs_map = _ssim_maps(x, y, win, data_range, K)
    return s_map.mean(dim=(1, 2, 3)), cs_map.mean(dim=(1, 2, 3))


def ssim(
    x: Tensor,
    y: Tensor,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
    K: Sequence[float] = (0.01, 0.03),
) -> Tensor:
    """Structural similarity with a Gaussian window (Wang et al. 2004).

    Matches ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``: the local statistics use population (co)variances and only windows that lie
    fully inside the image (a "valid" convolution) enter the mean, which is taken over channels and pixels.

    Args:
        x: ``[B, C, H, W]`` images; ``H`` and ``W`` must be at least ``win_size``.
        y: ``[B, C, H, W]`` images, same shape as ``x``.
        data_range: Dynamic range of the inputs (1 for ``[0, 1]``, 2 for ``[-1, 1]``, 255 for 8-bit).
        win_size: Odd side of the Gaussian window.
        sigma: Standard deviation of the Gaussian window.
        K: ``(K1, K2)`` stabilising constants.

    Returns:
        ``[B]`` SSIM values (1 for identical images).

    Raises:
        ValueError: Mismatched or non-4-D shapes, an image smaller than the window, or a bad window.
    """
    x, y = _check_pair(x, y, "ssim")
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"ssim: images of {tuple(x.shape[-2:])} are smaller than the {win_size}x{win_size} window")
    return _ssim_cs(x, y, _gaussian_window(win_size, sigma, x), data_range, K)[0]


def ssim_map(
    x: Tensor,
    y: Tensor,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
    K: Sequence[float] = (0.01, 0.03),
) -> Tensor:
    """The per-window SSIM map behind :func:`ssim` (same window, constants and valid windows; its mean over
    channels and pixels is :func:`ssim`).

    Args:
        x: ``[B, C, H, W]`` images; ``H`` and ``W`` must be at least ``win_size``.
        y: ``[B, C, H, W]`` images, same shape as ``x``.
        data_range: Dynamic range of the inputs (1 for ``[0, 1]``, 2 for ``[-1, 1]``, 255 for 8-bit).
        win_size: Odd side of the Gaussian window.
        sigma: Standard deviation of the Gaussian window.
        K: ``(K1, K2)`` stabilising constants.

    Returns:
        ``[B, C, H - win_size + 1, W - win_size + 1]`` local SSIM per channel: entry ``(i, j)`` belongs to the
        window centred on pixel ``(i + win_size // 2, j + win_size // 2)``.

    Raises:
        ValueError: Mismatched or non-4-D shapes, an image smaller than the window, or a bad window.
    """
    x, y = _check_pair(x, y, "ssim_map")
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"ssim_map: images of {tuple(x.shape[-2:])} are smaller than the {win_size}x{win_size} window")
    return _ssim_maps(x, y, _gaussian_window(win_size, sigma, x), data_range, K)[0]


def ms_ssim_scales(height: int, width: int, n_weights: int = len(MS_SSIM_WEIGHTS), win_size: int = 11) -> int:
    """Number of MS-SSIM scales used for an image size.

    Scale ``i`` works on the image average-pooled ``i`` times by 2x2 (sizes rounded down); a scale is usable while
    its smaller side is still at least ``win_size``.

    Args:
        height: Image height.
        width: Image width.
        n_weights: Number of scales requested (length of the weights).
        win_size: Window side.

    Returns:
        ``min(n_weights, usable scales)``; 0 when the image is smaller than the window.
    """
    n, side = 0, min(height, width)
    while n < n_weights and side >= win_size:
        n += 1
        side //= 2
    return n


def ms_ssim(
    x: Tensor,
    y: Tensor,
    data_range: float = 1.0,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    win_size: int = 11,
    sigma: float = 1.5,
    K: Sequence[float] = (0.01, 0.03),
) -> Tensor:
    """Multi-scale structural similarity (Wang et al. 2003).

    ``prod_{i < n-1} cs_i ** w_i * ssim_{n-1} ** w_{n-1}`` over ``n`` scales, each scale being the previous one
    2x2 average-pooled; ``cs_i`` / ``ssim_i`` are the per-image means of the contrast-structure / full SSIM maps of
    :func:`ssim`. The means are clamped to at least 1e-8 before the powers so that anti-correlated images give a
    tiny positive value and finite gradients instead of NaN.

    Small images: with the defaults all 5 scales need a smaller side of at least 176 px. Smaller images use only
    the first ``n = ms_ssim_scales(H, W, len(weights), win_size)`` scales (e.g. 3 for 64x64, whose coarsest scale is
    16x16) with ``weights[:n]`` rescaled to the sum of all ``weights``; the last used scale contributes full SSIM.

    Args:
        x: ``[B, C, H, W]`` images; the smaller side must be at least ``win_size``.
        y: ``[B, C, H, W]`` images, same shape as ``x``.
        data_range: Dynamic range of the inputs.
        weights: Per-scale exponents, finest first.
        win_size: Odd side of the Gaussian window.
        sigma: Standard deviation of the Gaussian window.
        K: ``(K1, K2)`` stabilising constants.

    Returns:
        ``[B]`` MS-SSIM values (1 for identical images).

    Raises:
        ValueError: Mismatched or non-4-D shapes, empty weights, a bad window, or an image smaller than the window.
    """
    x, y = _check_pair(x, y, "ms_ssim")
    if len(weights) == 0:
        raise ValueError("ms_ssim: weights must not be empty")
    n = ms_ssim_scales(x.shape[-2], x.shape[-1], len(weights), win_size)
    if n == 0:
        raise ValueError(f"ms_ssim: images of {tuple(x.shape[-2:])} are smaller than the {win_size}x{win_size} window")
    w = [float(v) for v in weights[:n]]
    if n < len(weights):
        total = math.fsum(float(v) for v in weights)
        w = [v * total / math.fsum(w) for v in w]
        logger.debug("ms_ssim: %s images allow %d of %d scales; weights %s", tuple(x.shape[-2:]), n, len(weights), w)
    win = _gaussian_window(win_size, sigma, x)
    out = x.new_ones(x.shape[0])
    for i in range(n):
        if i > 0:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        s, cs = _ssim_cs(x, y, win, data_range, K)
        v = s if i == n - 1 else cs
        out = out * v.clamp(min=_MS_SSIM_FLOOR).pow(w[i])
    return out


def mse(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error per batch element.

    Args:
        x: ``[B, ...]`` (typically ``[B, C, H, W]``).
        y: Same shape as ``x``.

    Returns:
        ``[B]`` mean of ``(x - y) ** 2`` over all non-batch dimensions.

    Raises:
        ValueError: Mismatched shapes or fewer than 2 dimensions.
    """
    x, y = _check_pair(x, y, "mse", ndim=None)
    return (x - y).pow(2).flatten(1).mean(dim=1)


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per batch element, ``10 * log10(data_range**2 / mse)`` in dB.

    Args:
        x: ``[B, ...]`` (typically ``[B, C, H, W]``).
        y: Same shape as ``x``.
        data_range: Dynamic range of the inputs (1 for ``[0, 1]``, 2 for ``[-1, 1]``, 255 for 8-bit).

    Returns:
        ``[B]`` PSNR in dB; ``inf`` for identical images.

    Raises:
        ValueError: Mismatched shapes or fewer than 2 dimensions.
    """
    return 10 * torch.log10(data_range**2 / mse(x, y))

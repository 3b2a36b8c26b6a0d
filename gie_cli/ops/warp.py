"""Perspective warps of images and feature maps (torchvision's ``perspective`` / ``RandomPerspective`` rule), used by
the self-supervised alignment training of GradStyle (Li et al., AAAI 2024) and HFGI (Wang et al., CVPR 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["perspective_matrix", "random_perspective", "unit_corners", "warp_features", "warp_perspective"]


def perspective_matrix(src: Tensor, dst: Tensor) -> Tensor:
    """Homographies that map points of ``dst`` onto ``src`` (the sampling map of a warp moving ``src`` to ``dst``).

    Args:
        src: ``[B, 4, 2]`` corner points ``(x, y)`` in the input.
        dst: ``[B, 4, 2]`` where those points land in the output.

    Returns:
        ``[B, 3, 3]`` matrices ``H`` with ``H @ (u, v, 1) ~ (x, y, 1)`` (float64).
    """
    assert src.shape == dst.shape and src.shape[1:] == (4, 2), f"corners must be [B,4,2], got {src.shape}, {dst.shape}"
    s, d = src.double(), dst.double()
    u, v, x, y = d[..., 0], d[..., 1], s[..., 0], s[..., 1]
    one, zero = torch.ones_like(u), torch.zeros_like(u)
    rows_x = torch.stack([u, v, one, zero, zero, zero, -u * x, -v * x], dim=-1)
    rows_y = torch.stack([zero, zero, zero, u, v, one, -u * y, -v * y], dim=-1)
    a = torch.cat([rows_x, rows_y], dim=1)  # [B, 8, 8]
    rhs = torch.cat([x, y], dim=1)  # [B, 8]
    coef = torch.linalg.solve(a, rhs)
    return torch.cat([coef, torch.ones_like(coef[:, :1])], dim=1).reshape(-1, 3, 3)


def warp_perspective(x: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """Perspective-warp feature maps so that the content at corners ``src`` moves to ``dst`` (torchvision's
    ``perspective`` convention); bilinear sampling, zeros outside.

    Args:
        x: ``[B, C, H, W]``.
        src: ``[B, 4, 2]`` pixel coordinates ``(x, y)`` (0 = first pixel centre, ``W - 1`` = last).
        dst: ``[B, 4, 2]`` pixel coordinates.

    Returns:
        ``[B, C, H, W]``.
    """
    assert x.ndim == 4 and src.shape[0] == x.shape[0], f"warp: x {tuple(x.shape)}, corners {tuple(src.shape)}"
    b, _, h, w = x.shape
    mat = perspective_matrix(src, dst).to(x.device)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(1, -1, 3).to(x.device)  # [1, HW, 3]
    mapped = pts @ mat.transpose(1, 2)  # [B, HW, 3]
    xy = mapped[..., :2] / mapped[..., 2:]
    gx = 2 * xy[..., 0] / max(w - 1, 1) - 1
    gy = 2 * xy[..., 1] / max(h - 1, 1) - 1
    grid = torch.stack([gx, gy], dim=-1).reshape(b, h, w, 2).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def unit_corners(batch: int = 1, device=None) -> Tensor:
    """The unit square's corners ``[B, 4, 2]``: top-left, top-right, bottom-right, bottom-left."""
    c = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], device=device)
    return c[None].expand(batch, -1, -1).clone()


def random_perspective(
    batch: int, distortion: float, generator: torch.Generator | None = None, device=None
) -> tuple[Tensor, Tensor]:
    """Random perspective transforms in unit coordinates (torchvision's ``RandomPerspective`` rule, continuous).

    Each corner moves inwards by ``U(0, distortion / 2)`` of the side along each axis (torchvision: up to
    ``distortion * half_side`` pixels); continuous offsets because integer pixel offsets vanish on 8x8 feature maps.

    Args:
        batch: number of transforms.
        distortion: the distortion scale (0.15 in the paper; 0 = identity).
        generator: random generator (CPU).
        device: device of the result.

    Returns:
        ``(src, dst)`` ``[B, 4, 2]`` in unit coordinates; scale them with :func:`warp_features`.
    """
    src = unit_corners(batch)
    mag = torch.rand(batch, 4, 2, generator=generator) * (distortion / 2)
    inward = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    return src.to(device), (src + mag * inward).to(device)


def warp_features(x: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """:func:`warp_perspective` with corners in unit coordinates (one transform serves every stage's resolution)."""
    h, w = x.shape[-2:]
    scale = torch.tensor([max(w - 1, 1), max(h - 1, 1)], dtype=src.dtype, device=src.device)
    return warp_perspective(x, src * scale, dst * scale)

"""The alignment error of feature-level methods (GradStyle's GAM, HFGI's ADA): relative L1 against the reference."""

from __future__ import annotations

from torch import Tensor


def relative_l1(x: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-item relative L1 error ``|x - target|_1 / |target|_1`` of ``[B, ...]`` maps, ``[B]``.

    How far a re-aligned feature or residual is from its reference, scale-free: 0 = aligned exactly, 1 = as far off
    as a zero map (GradStyle's ``L_aligner`` in gie's relative form, the alignment figures of ``gie benchmark``).
    """
    assert x.shape == target.shape, f"relative_l1: {tuple(x.shape)} vs {tuple(target.shape)}"
    return (x - target).abs().flatten(1).sum(1) / target.abs().flatten(1).sum(1).clamp_min(eps)

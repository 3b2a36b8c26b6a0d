"""Which of gie's image metrics can run here (LPIPS, identity and FID need weights files; SSIM, MS-SSIM, PSNR and MSE
need none). An unavailable metric is reported with the reason; it is never replaced by another network."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gie_cli.errors import UsageError
from gie_cli.metrics.fid import fid_available
from gie_cli.metrics.identity import identity_available
from gie_cli.metrics.lpips import lpips_available

__all__ = ["METRIC_NAMES", "MetricStatus", "metric_status", "metrics_status"]

METRIC_NAMES = ("mse", "psnr", "ssim", "ms-ssim", "lpips-vgg", "lpips-alex", "identity", "fid")
"""Metric names understood by :func:`metric_status`."""

_LPIPS = {"lpips-vgg": "vgg", "lpips-alex": "alex"}


@dataclass(frozen=True)
class MetricStatus:
    """Whether a metric can run.

    Attributes:
        name: Metric name, one of :data:`METRIC_NAMES`.
        available: True if it can be computed with the files on disk.
        reason: Why not (the missing file, where it was expected and where to get it); None when available.
    """

    name: str
    available: bool
    reason: str | None = None


def metric_status(name: str, weights: str | Path | None = None) -> MetricStatus:
    """Reports whether metric ``name`` can run; an unavailable network is never replaced by another one.

    Args:
        name: One of :data:`METRIC_NAMES`.
        weights: Explicit checkpoint of the metric's network: the LPIPS backbone, ArcFace ``model_ir_se50.pth``
            (identity) or ``pt_inception-2015-12-05-6726825d.pth`` (fid); ignored by the others.

    Returns:
        The metric's status. Only the existence of the files is checked, not their content.

    Raises:
        UsageError: Unknown metric name.
    """
    if name not in METRIC_NAMES:
        raise UsageError(f"unknown metric {name!r}", hint=f"known: {', '.join(METRIC_NAMES)}")
    if name in _LPIPS:
        ok, reason = lpips_available(_LPIPS[name], weights)
        return MetricStatus(name, ok, None if ok else reason)
    if name == "identity":
        ok, reason = identity_available(weights)
        return MetricStatus(name, ok, None if ok else reason)
    if name == "fid":
        ok, reason = fid_available(weights)
        return MetricStatus(name, ok, None if ok else reason)
    return MetricStatus(name, True, None)


def metrics_status(
    names: Iterable[str] = METRIC_NAMES, weights: Mapping[str, str | Path] | None = None
) -> list[MetricStatus]:
    """Statuses of several metrics, in the given order.

    Args:
        names: Metric names (default: all of :data:`METRIC_NAMES`).
        weights: Optional explicit backbone checkpoint per metric name, e.g. ``{"lpips-vgg": "/w/vgg16.pth"}``.

    Returns:
        One :class:`MetricStatus` per name.

    Raises:
        UsageError: Unknown metric name.
    """
    weights = weights or {}
    return [metric_status(n, weights.get(n)) for n in names]

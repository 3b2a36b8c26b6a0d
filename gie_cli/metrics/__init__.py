"""Image metrics and losses: LPIPS (Zhang et al. CVPR 2018), SSIM (Wang et al. 2004), MS-SSIM (Wang et al. 2003).

Nothing here imports torchvision or the ``lpips`` package.
"""

from gie_cli.metrics.availability import METRIC_NAMES, MetricStatus, metric_status, metrics_status
from gie_cli.metrics.lpips import LPIPS, lpips_available
from gie_cli.metrics.ssim import ms_ssim, mse, psnr, ssim

__all__ = [
    "LPIPS",
    "METRIC_NAMES",
    "MetricStatus",
    "lpips_available",
    "metric_status",
    "metrics_status",
    "ms_ssim",
    "mse",
    "psnr",
    "ssim",
]

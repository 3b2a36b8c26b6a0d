"""Image metrics and losses: LPIPS (Zhang et al. CVPR 2018), SSIM (Wang et al. 2004), MS-SSIM (Wang et al. 2003),
ArcFace identity similarity (Deng et al. CVPR 2019), FID (Heusel et al. NeurIPS 2017), region errors.

Nothing here imports torchvision or the ``lpips`` package.
"""

from gie_cli.metrics.availability import METRIC_NAMES, MetricStatus, metric_status, metrics_status
from gie_cli.metrics.fid import FIDInceptionV3, fid_available, fid_from_features, frechet_distance
from gie_cli.metrics.identity import IdentityNet, identity_available, identity_similarity
from gie_cli.metrics.lpips import LPIPS, lpips_available
from gie_cli.metrics.regions import mask_iou, masked_mse, masked_psnr, masked_ssim
from gie_cli.metrics.ssim import ms_ssim, mse, psnr, ssim, ssim_map

__all__ = [
    "FIDInceptionV3",
    "IdentityNet",
    "LPIPS",
    "METRIC_NAMES",
    "MetricStatus",
    "fid_available",
    "fid_from_features",
    "frechet_distance",
    "identity_available",
    "identity_similarity",
    "lpips_available",
    "mask_iou",
    "masked_mse",
    "masked_psnr",
    "masked_ssim",
    "metric_status",
    "metrics_status",
    "ms_ssim",
    "mse",
    "psnr",
    "ssim",
    "ssim_map",
]

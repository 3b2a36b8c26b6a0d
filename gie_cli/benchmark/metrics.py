"""The benchmark's metric set: which metrics run, their networks, per-image values and their definitions."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from gie_cli.errors import GieError, UsageError
from gie_cli.metrics.availability import METRIC_NAMES, MetricStatus, metric_status

__all__ = ["DEFINITIONS", "MetricSuite", "Accumulator", "parse_metric_names", "to_size"]

log = logging.getLogger(__name__)

_GT = "the renderer's ground-truth edited photo (see edit_attr)"
DEFINITIONS: dict[str, str] = {
    "mse": "L2: mean of (x - y)^2 over pixels and channels, images in [0, 1]; per image, averaged over images",
    "psnr": "10 log10(1 / MSE) in dB, images in [0, 1]; per image, averaged over images",
    "ssim": "SSIM (Wang et al. 2004): Gaussian window 11 px, sigma 1.5, K = (0.01, 0.03), population statistics, "
    "valid windows only, mean over channels; images in [0, 1] (= skimage structural_similarity with "
    "gaussian_weights=True, sigma=1.5, use_sample_covariance=False)",
    "ms-ssim": "MS-SSIM (Wang et al. 2003): weights 0.0448/0.2856/0.3001/0.2363/0.1333 on 5 scales of 2x2 average "
    "pooling; images under 176 px use the scales whose side is >= 11 px (3 at 64 px) with the weights "
    "rescaled to the full sum; images in [0, 1]",
    "lpips-alex": "LPIPS v0.1 (Zhang et al. 2018), AlexNet backbone (torchvision ImageNet) + the official linear "
    "heads, images in [-1, 1]; 0 = identical, lower is better",
    "lpips-vgg": "LPIPS v0.1, VGG16 backbone (torchvision ImageNet) + the official linear heads, images in [-1, 1]",
    "identity": "cosine similarity of ArcFace IR-SE50 embeddings (model_ir_se50.pth): image brought to 256 px, "
    "crop rows 35:223, columns 32:220, area-resized to 112 px, as the ID loss of pSp/e4e/HFGI; 1 = same identity",
    "fid": "FID (Heusel et al. 2017) between the set of inputs and the set of outputs: pytorch-fid's Inception-v3 "
    "pool3 features (2048-d), images bilinearly resized to 299 px; biased upwards for small sets",
    "attr_mae": "mean |estimator(reconstruction) - true attribute| over the world's 20 attributes on their [-1, 1] "
    "scale (synthface only; data.estimator_mae_on_inputs is the estimator's own error on the inputs)",
    "ood_mse_in": "MSE ([0, 1] images) inside the union of the out-of-domain object masks, averaged over the images "
    "that carry objects (synthface only)",
    "ood_mse_out": "MSE ([0, 1] images) outside the object masks of the same images (synthface only)",
    "psnr_ood": "10 log10(1 / MSE inside the union of the out-of-domain object masks) in dB, images in [0, 1]; per "
    "image, averaged over the images that carry objects (synthface only)",
    "ssim_ood": "the SSIM map (the window of ssim, valid windows only, mean over channels) averaged over the windows "
    "centred on a pixel of the object masks, images in [0, 1]; per image, averaged over the images that carry objects "
    "(synthface only)",
    "psnr_face": "10 log10(1 / MSE inside the true face region) in dB, images in [0, 1]; per image, averaged over "
    "images (synthface only)",
    "ssim_face": "the SSIM map (as ssim_ood) averaged over the windows centred on a pixel of the true face region; per "
    "image, averaged over images (synthface only)",
    "mask_iou": "IoU |P & T| / |P | T| of P = the method's photo-blending mask (OOD inversion's mask_of, resized to "
    "the benchmark size as the images: area average down, bilinear up) > 0.5 and T = the union of the true object "
    "masks; per image, averaged over the images that carry objects (synthface, methods with a blending mask only)",
    "aoa": "average OOD area in percent: 100 x the mean value of the method's photo-blending mask (as in mask_iou; "
    "1 = the input photo is kept) over the pixels of an image, averaged over all images (methods with a blending mask "
    "only)",
    "edit_attr": "estimator change of the direction's attribute (named like the direction) from the unedited "
    "reconstruction to the edited image, on the [-1, 1] scale (synthface only)",
    "edit_others": "mean |estimator change| of the other 19 attributes (entanglement; synthface only)",
    "edit_change_face": "MSE ([0, 1] images) between the edited image and the unedited reconstruction inside the "
    "true face region (synthface only): how much the edit changed the face",
    "edit_change_bg": "the same outside the face region (hair, background, ...): what a masked edit should keep",
    "edit_ood_mse": "MSE ([0, 1] images) between the edited image and the input photo inside the union of the "
    "out-of-domain object masks, averaged over the images that carry objects (synthface only): whether an edit keeps "
    "the objects in place",
    "gt_mse_face": f"MSE between the edited image and {_GT} inside the true face region",
    "gt_mse_bg": f"MSE between the edited image and {_GT} outside the true face region",
    "id_to_input": "identity similarity between the edited image and the input (editing identity preservation)",
    "gt_mse": f"MSE between the edited image and {_GT}: the source face re-rendered (same details, objects and "
    "background) with the attribute moved by edit_attr per image",
    "gt_psnr": f"PSNR between the edited image and {_GT}",
    "gt_ssim": f"SSIM between the edited image and {_GT}",
    "gt_ms-ssim": f"MS-SSIM between the edited image and {_GT}",
    "gt_lpips-alex": f"LPIPS-AlexNet between the edited image and {_GT}",
    "gt_lpips-vgg": f"LPIPS-VGG between the edited image and {_GT}",
    "gt_identity": f"identity similarity between the edited image and {_GT}",
    "gt_fid": f"FID between the set of edited images and the set of {_GT}s",
}
"""What each reported number means (written into the JSON and the markdown)."""


def parse_metric_names(spec: str) -> list[str]:
    """``"all"`` or a comma list of :data:`~gie_cli.metrics.availability.METRIC_NAMES`.

    Raises:
        UsageError: An unknown name.
    """
    if spec.strip().lower() in ("", "all"):
        return list(METRIC_NAMES)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in METRIC_NAMES]
    if bad:
        raise UsageError(f"unknown metric(s) {', '.join(bad)}", hint=f"known: {', '.join(METRIC_NAMES)} or all")
    return list(dict.fromkeys(names))


def to_size(x: Tensor, size: int) -> Tensor:
    """Brings ``[B, C, H, W]`` images to ``size`` x ``size``: area average when shrinking (pSp/e4e's
    ``AdaptiveAvgPool2d(256)`` "face_pool" for 1024 px outputs), bilinear when enlarging."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    if min(x.shape[-2:]) >= size:
        return F.adaptive_avg_pool2d(x, (size, size))
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class MetricSuite:
    """Loads the networks of the requested metrics that are available and computes per-image values.

    Args:
        names: Metric names (:data:`~gie_cli.metrics.availability.METRIC_NAMES`).
        device: Where the metric networks run (always float32).
        weights: Optional explicit checkpoint per metric name (``lpips-vgg``, ``lpips-alex``, ``identity``,
            ``fid``).
    """

    def __init__(
        self, names: Sequence[str], device: torch.device, weights: Mapping[str, str | Path] | None = None
    ) -> None:
        weights = weights or {}
        self.device = device
        self.status: dict[str, MetricStatus] = {}
        self._nets: dict[str, torch.nn.Module] = {}
        for name in names:
            st = metric_status(name, weights.get(name))
            if st.available and name in ("lpips-vgg", "lpips-alex", "identity", "fid"):
                try:
                    self._nets[name] = self._load(name, weights.get(name))
                except GieError as e:  # an existing but unusable file: unavailable, with the reason
                    st = MetricStatus(name, False, str(e))
            if not st.available:
                log.warning("metric %s unavailable: %s", name, st.reason)
            self.status[name] = st

    def _load(self, name: str, path: str | Path | None) -> torch.nn.Module:
        if name.startswith("lpips-"):
            from gie_cli.metrics.lpips import LPIPS

            return LPIPS(name.split("-", 1)[1], backbone_weights=path).to(self.device)
        if name == "identity":
            from gie_cli.metrics.identity import load_identity_net

            return load_identity_net(path, self.device)
        from gie_cli.metrics.fid import load_fid_inception

        return load_fid_inception(path, self.device)

    def available(self, name: str) -> bool:
        """True when ``name`` was requested and can run."""
        st = self.status.get(name)
        return st is not None and st.available

    @torch.no_grad()
    def pairwise(self, x: Tensor, y: Tensor, prefix: str = "") -> dict[str, Tensor]:
        """Per-image values of every available pairwise metric (all but ``fid``).

        Args:
            x: ``[B, 3, S, S]`` outputs in [-1, 1] (clamped here).
            y: ``[B, 3, S, S]`` references in [-1, 1].
            prefix: Prepended to the names (e.g. ``"gt_"``).

        Returns:
            Name -> ``[B]`` values on the CPU.
        """
        from gie_cli.metrics.identity import identity_similarity
        from gie_cli.metrics.ssim import ms_ssim, mse, psnr, ssim

        x = x.to(self.device, torch.float32).clamp(-1, 1)
        y = y.to(self.device, torch.float32).clamp(-1, 1)
        a, b = (x + 1) / 2, (y + 1) / 2
        out: dict[str, Tensor] = {}
        fns = {"mse": lambda: mse(a, b), "psnr": lambda: psnr(a, b), "ssim": lambda: ssim(a, b)}
        fns["ms-ssim"] = lambda: ms_ssim(a, b)
        for name, fn in fns.items():
            if self.available(name):
                out[prefix + name] = fn()
        for name in ("lpips-alex", "lpips-vgg"):
            if name in self._nets:
                out[prefix + name] = self._nets[name](x, y)
        if "identity" in self._nets:
            out[prefix + "identity"] = identity_similarity(self._nets["identity"], x, y)
        return {k: v.detach().float().cpu() for k, v in out.items()}

    @torch.no_grad()
    def identity(self, x: Tensor, y: Tensor) -> Tensor | None:
        """``[B]`` identity similarities, or None when the metric is unavailable."""
        if "identity" not in self._nets:
            return None
        from gie_cli.metrics.identity import identity_similarity

        x = x.to(self.device, torch.float32).clamp(-1, 1)
        return identity_similarity(self._nets["identity"], x, y.to(self.device, torch.float32)).float().cpu()

    @torch.no_grad()
    def fid_features(self, x: Tensor) -> Tensor | None:
        """``[B, 2048]`` Inception pool3 features of images in [-1, 1], or None when FID is unavailable."""
        if "fid" not in self._nets:
            return None
        return self._nets["fid"](x.to(self.device, torch.float32).clamp(-1, 1)).double().cpu()

    def unavailable(self) -> dict[str, str]:
        """Name -> reason of every requested metric that cannot run."""
        return {k: st.reason or "unavailable" for k, st in self.status.items() if not st.available}


class Accumulator:
    """Collects per-image values and feature sets over batches; :meth:`means` averages them."""

    def __init__(self) -> None:
        self.values: dict[str, list[Tensor]] = {}
        self.features: dict[str, list[Tensor]] = {}

    def add(self, values: Mapping[str, Tensor]) -> None:
        """Appends ``[B]`` values per name."""
        for k, v in values.items():
            self.values.setdefault(k, []).append(v.reshape(-1).double())

    def add_features(self, name: str, feats: Tensor | None) -> None:
        """Appends ``[B, D]`` features to set ``name`` (None is ignored)."""
        if feats is not None:
            self.features.setdefault(name, []).append(feats)

    def means(self) -> dict[str, float | None]:
        """Mean per name, NaN values (an empty region) left out; None when nothing is left. A PSNR of identical
        images is +inf and makes the mean +inf."""
        out: dict[str, float | None] = {}
        for k, vs in self.values.items():
            v = torch.cat(vs)
            v = v[~torch.isnan(v)]
            out[k] = float(v.mean()) if v.numel() else None
        return out

    def fid(self, a: str, b: str) -> float | None:
        """FID between feature sets ``a`` and ``b`` (None when either is missing)."""
        if a not in self.features or b not in self.features:
            return None
        from gie_cli.metrics.fid import fid_from_features

        return fid_from_features(torch.cat(self.features[a]), torch.cat(self.features[b]))

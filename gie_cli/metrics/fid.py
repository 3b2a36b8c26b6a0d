"""Fréchet Inception Distance (Heusel et al., NeurIPS 2017) with pytorch-fid's port of the TF FID Inception-v3.

The network is torchvision's ``Inception3(num_classes=1008, aux_logits=False)`` with pytorch-fid's FID patches
(``FIDInceptionA/C/E_1/E_2``: TensorFlow's average pools exclude the padding, and ``Mixed_7c`` max-pools its pool
branch), written here without torchvision so that ``pt_inception-2015-12-05-6726825d.pth`` (registry entry
``fid.inception``) loads with strict key checking. Features are the 2048-d outputs of the final average pool
("pool3"): images in [-1, 1] are bilinearly resized to 299x299 (``align_corners=False``; pytorch-fid resizes
[0, 1] images first and then maps them to [-1, 1], which is the same since both steps are affine).

FID between two image sets is ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` over the features' means and
(unbiased, ``N - 1``) covariances, computed in float64 (:func:`frechet_distance`; :func:`fid_from_features` uses
an exact ``N x N`` form when a set has fewer images than features). FID from few images is strongly biased
upwards: compare values only at equal set sizes.

Nothing is ever downloaded: a missing file raises :class:`~gie_cli.errors.WeightsUnavailableError`; no other network
is ever used instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gie_cli.errors import WeightsUnavailableError
from gie_cli.io.checkpoint import load_state_dict_strict, read_checkpoint
from gie_cli.metrics.identity import fill_num_batches_tracked

__all__ = [
    "FID_ENTRY",
    "FIDInceptionV3",
    "fid_available",
    "fid_from_features",
    "find_fid_weights",
    "feature_statistics",
    "frechet_distance",
    "load_fid_inception",
]

logger = logging.getLogger(__name__)

FID_ENTRY = "fid.inception"
"""Weights-registry entry of pytorch-fid's Inception weights."""


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm(eps 1e-3) + ReLU, keys ``conv.weight`` and ``bn.*``."""

    def __init__(self, c_in: int, c_out: int, **conv: int | tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, bias=False, **conv)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: Tensor) -> Tensor:
    """TensorFlow's 3x3 stride-1 average pool: the zero padding does not count in the mean."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """``Mixed_5b..5d`` (pytorch-fid ``FIDInceptionA``): 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg3(x))], 1)


class InceptionB(nn.Module):
    """``Mixed_6a``: grid reduction 35 -> 17."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """``Mixed_6b..6e`` (pytorch-fid ``FIDInceptionC``): factorised 7x7 branches."""

    def __init__(self, c_in: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class InceptionD(nn.Module):
    """``Mixed_7a``: grid reduction 17 -> 8."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """``Mixed_7b`` / ``Mixed_7c`` (pytorch-fid ``FIDInceptionE_1`` / ``FIDInceptionE_2``).

    Args:
        c_in: Input channels.
        max_pool: The pool branch max-pools (``Mixed_7c`` of the FID network) instead of average-pooling.
    """

    def __init__(self, c_in: int, max_pool: bool = False) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(c_in, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 in pytorch-fid's key layout (``Conv2d_1a_3x3.*`` ... ``Mixed_7c.*``, ``fc.*``).

    ``fc`` (2048 -> 1008 logits) is part of the checkpoint and is loaded, but FID uses the pool3 features before it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: Tensor) -> Tensor:
        """Pool3 features.

        Args:
            x: ``[B, 3, H, W]`` images in [-1, 1] (any size; resized to 299x299 bilinearly).

        Returns:
            ``[B, 2048]`` features.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"FIDInceptionV3 expects [B,3,H,W] images, got {list(x.shape)}")
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def find_fid_weights(path: str | Path | None = None) -> Path:
    """Locates ``pt_inception-2015-12-05-6726825d.pth``; never downloads.

    Args:
        path: Explicit file (or folder holding it); when given no other place is tried. None: the weights cache
            (``gie weights download fid.inception``), then ``torch.hub.get_dir()/checkpoints/`` (where pytorch-fid
            stores it).

    Returns:
        The existing file.

    Raises:
        WeightsUnavailableError: Not there; names the file, every path checked and the URL.
    """
    from gie_cli.weights import entry_path, load_registry

    entry = load_registry().get(FID_ENTRY)
    if path is not None:
        p = Path(path).expanduser()
        candidates = [p / entry.filename if p.is_dir() else p]
    else:
        candidates = [entry_path(entry), Path(torch.hub.get_dir()) / "checkpoints" / entry.filename]
    for p in candidates:
        if p.is_file():
            return p
    hint = f"or run `gie weights download {FID_ENTRY}`" if path is None else None
    raise WeightsUnavailableError(entry.filename, candidates[0], list(entry.urls), candidates, hint=hint)


def fid_available(path: str | Path | None = None) -> tuple[bool, str]:
    """Whether FID can run here (only the file's existence is checked).

    Returns:
        ``(True, "")`` or ``(False, reason)`` naming the missing file and where to get it.
    """
    try:
        find_fid_weights(path)
    except WeightsUnavailableError as e:
        return False, str(e)
    return True, ""


def load_fid_inception(path: str | Path | None = None, device: torch.device | str = "cpu") -> FIDInceptionV3:
    """Builds :class:`FIDInceptionV3` and loads pytorch-fid's weights strictly (frozen, eval mode).

    Raises:
        WeightsUnavailableError: The file is missing.
        CheckpointError: It is unreadable.
        StateDictMismatchError: Its keys or shapes are not pytorch-fid's.
    """
    file = find_fid_weights(path)
    sd = read_checkpoint(file)
    with torch.device("meta"):  # no random init of weights that are replaced at once
        net = FIDInceptionV3()
    load_state_dict_strict(net, fill_num_batches_tracked(net, sd), str(file), assign=True)
    logger.debug("fid: Inception-v3 from %s", file)
    return net.requires_grad_(False).eval().to(device)


def feature_statistics(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of a feature set (as pytorch-fid's ``np.mean``/``np.cov(rowvar=False)``).

    Args:
        features: ``[N, D]`` features, ``N >= 2``.

    Returns:
        ``(mu [D], sigma [D, D])`` in float64.
    """
    f = _as_f64(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feature_statistics needs [N>=2, D] features, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between the Gaussians ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``. The eigenvalues of
    ``sigma1 sigma2`` are those of the symmetric PSD matrix ``R sigma2 R`` with ``R = sigma1^(1/2)``, so the last trace
    is the sum of the square roots of the (symmetric, float64) eigenvalues of ``R sigma2 R``; round-off below zero is
    clipped.

    Args:
        mu1: ``[D]`` mean.
        sigma1: ``[D, D]`` covariance.
        mu2: ``[D]`` mean.
        sigma2: ``[D, D]`` covariance.

    Returns:
        The squared distance (what papers report as FID), >= 0 up to round-off.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"frechet_distance: shapes {mu1.shape} {s1.shape} vs {mu2.shape} {s2.shape} do not fit")
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    r = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = r @ s2 @ r
    tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def _as_f64(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().double().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x, np.float64)


def fid_from_features(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """FID between two feature sets: :func:`frechet_distance` of their :func:`feature_statistics`.

    When a set is smaller than the feature width (``N < D``, e.g. 32 images and 2048 features) the same value is
    computed exactly from the centred features ``A [N1, D]`` and ``B [N2, D]``: the non-zero eigenvalues of
    ``sigma1 sigma2`` are the squared singular values of ``A B^T / sqrt((N1 - 1)(N2 - 1))``, so
    ``tr((sigma1 sigma2)^(1/2))`` is that matrix's nuclear norm (an ``N1 x N2`` problem instead of ``D x D``).

    Args:
        a: ``[N1, D]`` features, ``N1 >= 2``.
        b: ``[N2, D]`` features, ``N2 >= 2``.

    Returns:
        The FID.
    """
    fa, fb = _as_f64(a), _as_f64(b)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1] or min(fa.shape[0], fb.shape[0]) < 2:
        raise ValueError(f"fid_from_features needs [N>=2, D] sets of one width, got {fa.shape} and {fb.shape}")
    n1, n2, d = fa.shape[0], fb.shape[0], fa.shape[1]
    if min(n1, n2) >= d:
        return frechet_distance(*feature_statistics(fa), *feature_statistics(fb))
    mu1, mu2 = fa.mean(axis=0), fb.mean(axis=0)
    ca, cb = fa - mu1, fb - mu2
    tr1, tr2 = float((ca * ca).sum()) / (n1 - 1), float((cb * cb).sum()) / (n2 - 1)
    tr_sqrt = float(np.linalg.svd(ca @ cb.T, compute_uv=False).sum()) / np.sqrt((n1 - 1) * (n2 - 1))
    diff = mu1 - mu2
    return float(diff @ diff + tr1 + tr2 - 2.0 * tr_sqrt)

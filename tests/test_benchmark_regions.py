"""The benchmark's region metrics (gie_cli.metrics.regions): PSNR and SSIM inside a mask, IoU of masks, on hand-made
tensors with known values."""

from __future__ import annotations

import math

import pytest
import torch

from gie_cli.metrics.regions import mask_iou, masked_mse, masked_psnr, masked_ssim
from gie_cli.metrics.ssim import ssim, ssim_map


def _square(b: int, size: int, top: int, left: int, side: int) -> torch.Tensor:
    """``[b, size, size]`` bool masks holding one ``side`` px square at ``(top, left)``."""
    m = torch.zeros(b, size, size, dtype=torch.bool)
    m[:, top : top + side, left : left + side] = True
    return m


def test_masked_psnr_reads_only_the_region():
    x = torch.full((2, 3, 16, 16), 0.5)
    mask = _square(2, 16, 4, 4, 6)
    y = x.clone()
    y[:, :, mask[0]] += 0.1  # error 0.1 inside: MSE 0.01 -> 20 dB
    y[:, :, ~mask[0]] = 1.0  # a large error outside must not count
    got = masked_psnr(y, x, mask)
    assert torch.allclose(got, torch.full((2,), 20.0), atol=1e-4), got
    assert torch.allclose(masked_psnr(y, x, mask[:, None], data_range=2.0), torch.full((2,), 20 + 20 * math.log10(2)))
    assert torch.isinf(masked_psnr(x, x.clone(), mask)).all()  # identical inside: +inf, as psnr
    empty = mask.clone()
    empty[1] = False
    got = masked_psnr(y, x, empty)
    assert got[0].item() == pytest.approx(20.0, abs=1e-4) and torch.isnan(got[1])  # an empty region: NaN
    assert torch.allclose(masked_mse(y, x, mask)[0], torch.full((2,), 0.01))  # the MSE it is made from


def test_masked_ssim_is_one_for_images_identical_around_the_region():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 40, 40, generator=g)
    mask = _square(2, 40, 8, 8, 6)  # centres 8..13: their windows (+-5 px) reach rows/columns 3..18
    assert torch.allclose(masked_ssim(x, x.clone(), mask), torch.ones(2), atol=1e-6)
    y = x.clone()
    y[:, :, 25:, 25:] = torch.rand(2, 3, 15, 15, generator=g)  # changed beyond the windows' reach
    assert torch.allclose(masked_ssim(y, x, mask), torch.ones(2), atol=1e-6)
    assert (ssim(y, x) < 0.95).all()  # while the whole image differs
    far = _square(2, 40, 26, 26, 8)
    assert (masked_ssim(y, x, far) < 0.5).all()  # inside the changed part: low
    border = _square(2, 40, 0, 0, 5)  # no valid window is centred within 5 px of the border
    assert torch.isnan(masked_ssim(y, x, border)).all()


def test_masked_ssim_is_the_mean_of_the_ssim_map_over_the_region():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 32, 32, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    smap = ssim_map(x, y)
    assert smap.shape == (1, 3, 22, 22) and torch.allclose(smap.mean(dim=(1, 2, 3)), ssim(x, y))
    full = torch.ones(1, 32, 32, dtype=torch.bool)
    assert torch.allclose(masked_ssim(x, y, full), ssim(x, y), atol=1e-6)  # the whole image: SSIM itself
    mask = _square(1, 32, 10, 12, 7)
    want = smap.mean(dim=1)[0, 10 - 5 : 17 - 5, 12 - 5 : 19 - 5].mean()  # map entry (i, j) = window at (i+5, j+5)
    assert masked_ssim(x, y, mask).item() == pytest.approx(want.item(), abs=1e-6)
    skm = pytest.importorskip("skimage.metrics")
    _, s_full = skm.structural_similarity(
        x[0].numpy(), y[0].numpy(), channel_axis=0, data_range=1.0, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, full=True,
    )  # fmt: skip
    ref = torch.from_numpy(s_full).mean(dim=0)[mask[0]].mean().item()  # skimage's full map, same window centres
    assert masked_ssim(x, y, mask).item() == pytest.approx(ref, abs=1e-4)


def test_mask_iou_of_known_masks():
    truth = torch.zeros(4, 8, 8, dtype=torch.bool)
    truth[:, 0:4, 2:6] = True  # 16 px
    pred = torch.zeros(4, 1, 8, 8)
    pred[0, 0, 0:4, 0:4] = 0.7  # 16 px, 8 of them on the truth: 8 / 24
    pred[1, 0, 0:4, 2:6] = 1.0  # the truth itself
    pred[2, 0, 0:4, 2:6] = 0.5  # not above the threshold: nothing predicted
    pred[3, 0, 4:8, :] = 0.9  # disjoint
    got = mask_iou(pred, truth)
    assert torch.allclose(got, torch.tensor([1 / 3, 1.0, 0.0, 0.0])), got
    assert mask_iou(pred[2:3], truth[2:3], threshold=0.4).item() == 1.0
    none = mask_iou(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8, dtype=torch.bool))
    assert torch.isnan(none).all()  # both empty: undefined
    with pytest.raises(ValueError, match="different sizes"):
        mask_iou(torch.zeros(1, 4, 4), truth[:1])

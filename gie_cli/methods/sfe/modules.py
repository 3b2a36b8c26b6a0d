"""StyleFeatureEditor's modules in the official layout (Bobkov et al., "The Devil is in the Details: StyleFeatureEditor
for Detail-Rich StyleGAN Inversion and High Quality Image Editing", CVPR 2024): the Inverter (an ArcFace iresnet
trunk predicting W+ and a 64x64 feature, and the fuser that merges it with the generator's own feature) and the
Feature Editor.

Keys match ``sfe_editor_light.pt`` (``inverter.*``: ``fs_backbone.*``, ``fuser.*``; ``encoder.*``: the Feature
Editor) and ``sfe_inverter_light.pt`` (the Inverter under ``encoder.*``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: The official trunk: ArcFace iresnet50's blocks per stage and widths.
IRESNET50_UNITS = (3, 4, 14, 3)
IRESNET_WIDTHS = (64, 128, 256, 512)


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (iresnet's)."""
    return nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)


class IBasicBlock(nn.Module):
    """ArcFace iresnet's residual block: ``bn3(conv2(prelu(bn2(conv1(bn1(x)))))) + shortcut(x)``.

    Args:
        c_in, c_out: channels.
        stride: of ``conv2`` and the shortcut.
        downsample: a 1x1 conv + BN shortcut (the first block of each stage); else identity.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, downsample: bool = False) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = conv3x3(c_in, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.prelu = nn.PReLU(c_out)
        self.conv2 = conv3x3(c_out, c_out, stride)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.downsample = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)) if downsample else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


def _stage(c_in: int, c_out: int, units: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        IBasicBlock(c_in, c_out, stride, downsample=True), *(IBasicBlock(c_out, c_out) for _ in range(units - 1))
    )


class FSLikeBackbone(nn.Module):
    """SFE's ``fs_backbone``: image -> (W+ codes before ``latent_avg``, the predicted feature).

    ``conv`` stem (3x3 conv, BN, PReLU) at full resolution; ``block_1..4`` = iresnet stages with stride 2, except that
    ``block_3`` keeps the resolution (the official stride-1 copy of its first block), so a 256 px input gives stages at
    128/64/64/32 px; ``content_layer`` maps ``block_3``'s output to the feature (``BN, conv, BN, PReLU, conv, BN``);
    each stage is average-pooled to 3x3, concatenated and flattened (channel-major) into ``n_styles`` linear heads.

    Args:
        n_styles: W+ rows (18 for 1024 px).
        style_dim: W width (512).
        feature_channels: channels of the predicted feature (the generator's at the replaced block: 512).
        unit_counts: blocks per stage (iresnet50: 3, 4, 14, 3).
        widths: stage widths (64, 128, 256, 512).
        input_nc: image channels.
        pool_size: side of the average pool each stage is reduced to before the heads (official 3; gie's small
            world model uses 2, as the heads' ``pool_size² · Σ widths · style_dim`` weights dominate its size).
    """

    def __init__(
        self,
        n_styles: int = 18,
        style_dim: int = 512,
        feature_channels: int = 512,
        unit_counts: Sequence[int] = IRESNET50_UNITS,
        widths: Sequence[int] = IRESNET_WIDTHS,
        input_nc: int = 3,
        pool_size: int = 3,
    ) -> None:
        super().__init__()
        if len(unit_counts) != 4 or len(widths) != 4:
            raise ValueError(f"four stages expected, got units {list(unit_counts)}, widths {list(widths)}")
        w = [int(c) for c in widths]
        self.n_styles, self.style_dim, self.feature_channels = int(n_styles), int(style_dim), int(feature_channels)
        self.conv = nn.Sequential(conv3x3(input_nc, w[0]), nn.BatchNorm2d(w[0]), nn.PReLU(w[0]))
        self.block_1 = _stage(w[0], w[0], unit_counts[0], 2)
        self.block_2 = _stage(w[0], w[1], unit_counts[1], 2)
        self.block_3 = _stage(w[1], w[2], unit_counts[2], 1)  # the official stride-1 block_3[0]
        self.block_4 = _stage(w[2], w[3], unit_counts[3], 2)
        fc = self.feature_channels
        self.content_layer = nn.Sequential(
            nn.BatchNorm2d(w[2]), conv3x3(w[2], fc), nn.BatchNorm2d(fc), nn.PReLU(fc), conv3x3(fc, fc),
            nn.BatchNorm2d(fc),
        )  # fmt: skip
        self.config = {
            "n_styles": self.n_styles, "style_dim": self.style_dim, "feature_channels": fc,
            "unit_counts": [int(u) for u in unit_counts], "widths": w, "input_nc": int(input_nc),
            "pool_size": int(pool_size),
        }  # fmt: skip
        self.avg_pool = nn.AdaptiveAvgPool2d(int(pool_size))
        self.styles = nn.ModuleList(nn.Linear(int(pool_size) ** 2 * sum(w), style_dim) for _ in range(n_styles))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [B, input_nc, S, S]`` -> ``(codes [B, n_styles, style_dim], feature [B, C_feat, S/4, S/4])``."""
        f1 = self.block_1(self.conv(x))
        f2 = self.block_2(f1)
        f3 = self.block_3(f2)
        f4 = self.block_4(f3)
        h = torch.cat([self.avg_pool(f) for f in (f1, f2, f3, f4)], dim=1).flatten(1)
        codes = torch.stack([head(h) for head in self.styles], dim=1)
        return codes, self.content_layer(f3)


class FeatureEncoderBlock(nn.Module):
    """A residual branch of :class:`ContentLayerDeepFast`: ``BN, conv3x3, BN, PReLU, conv3x3, BN`` (keys ``body.*``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.BatchNorm2d(c), conv3x3(c, c), nn.BatchNorm2d(c), nn.PReLU(c), conv3x3(c, c), nn.BatchNorm2d(c)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class ContentLayerDeepFast(nn.Module):
    """SFE's feature network (the Inverter's ``fuser`` and the Feature Editor): a 1x1 conv, then ``length - 1``
    residual blocks ``x = x + block(x)``.

    Args:
        length: 1 + the number of residual blocks (official: 6).
        inp: input channels (official: 1024, two 512-channel features concatenated).
        out: output channels (512).
    """

    def __init__(self, length: int = 6, inp: int = 1024, out: int = 512) -> None:
        super().__init__()
        self.length, self.inp, self.out = int(length), int(inp), int(out)
        self.body = nn.ModuleList(FeatureEncoderBlock(out) for _ in range(length - 1))
        self.conv = nn.Conv2d(inp, out, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, inp, H, W]`` -> ``[B, out, H, W]``."""
        assert x.shape[1] == self.inp, f"expected {self.inp} channels, got {x.shape[1]}"
        x = self.conv(x)
        for block in self.body:
            x = x + block(x)
        return x


class Inverter(nn.Module):
    """SFE's Inverter: ``fs_backbone`` (W+ codes and a predicted feature) and ``fuser`` (merges the predicted feature
    with the generator's own feature ``F_w`` of those codes into ``F_k``).

    Args:
        backbone: kwargs of :class:`FSLikeBackbone`.
        fuser_length: :class:`ContentLayerDeepFast` length (6).
        input_size: the image size the Inverter reads (256; inputs are resized to it, bilinear).
    """

    def __init__(self, fuser_length: int = 6, input_size: int = 256, **backbone) -> None:
        super().__init__()
        self.fs_backbone = FSLikeBackbone(**backbone)
        fc = self.fs_backbone.feature_channels
        self.fuser = ContentLayerDeepFast(fuser_length, 2 * fc, fc)
        self.input_size = int(input_size)
        self.config = {**self.fs_backbone.config, "fuser_length": int(fuser_length), "input_size": self.input_size}

    def prepare(self, images: Tensor) -> Tensor:
        """Images at the Inverter's input size (bilinear, ``align_corners=False``, as the official transform)."""
        if images.shape[-1] == self.input_size and images.shape[-2] == self.input_size:
            return images
        return F.interpolate(images, size=(self.input_size,) * 2, mode="bilinear", align_corners=False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images [B, 3, H, W]`` -> ``(codes [B, n_styles, D] before latent_avg, predicted feature)``."""
        return self.fs_backbone(self.prepare(images))

    def fuse(self, predicted: Tensor, generator_feature: Tensor) -> Tensor:
        """``F_k = fuser(cat(predicted, F_w))``, both ``[B, C, R, R]``."""
        assert predicted.shape == generator_feature.shape, (
            f"features differ: {tuple(predicted.shape)} vs {tuple(generator_feature.shape)}"
        )
        return self.fuser(torch.cat([predicted, generator_feature], dim=1))

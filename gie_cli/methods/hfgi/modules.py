"""HFGI's networks in the official layout (Wang et al., "High-Fidelity GAN Inversion for Image Attribute Editing",
CVPR 2022): the Adaptive Distortion Alignment module ``grid_align`` (``ResidualAligner``), the consultation encoder
``residue`` (``ResidualEncoder``) and the conditioning of the generator's 64x64 block, as a hook of gie's one
generator.

Keys match the ``grid_align.*`` / ``residue.*`` parts of the official ``ckpt.pt`` (Tengfei-Wang/HFGI,
``models/encoders/psp_encoders.py``); both are built from plain IR units (the official ``bottleneck_IR``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gie_cli.models.encoders.ir_se import BottleneckIR
from gie_cli.models.stylegan2 import POST_ACTIVATION, EqualConv2d, Hook

#: The 64x64 block's first (upsampling) styled conv, ``convs[6]`` in the official layout: the conditioned layer.
CONDITION_LAYER = 7
#: Resolution of the conditions ``[B, 512, 64, 64]`` (the official 1024 px model's 64x64 block).
CONDITION_SIZE = 64


def _stem(in_ch: int, out_ch: int) -> nn.Sequential:
    """``conv3x3 (no bias) -> BN -> PReLU`` (keys ``0``, ``1``, ``2``)."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch), nn.PReLU(out_ch))


def _units(widths: Sequence[int], first_stride: int) -> nn.Sequential:
    """IR units ``widths[0] -> widths[1] -> ...``; the first has stride ``first_stride``."""
    pairs = zip(widths[:-1], widths[1:], strict=True)
    return nn.Sequential(*[BottleneckIR(a, b, first_stride if i == 0 else 1) for i, (a, b) in enumerate(pairs)])


def _resize_to(x: Tensor, ref: Tensor) -> Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class ResidualAligner(nn.Module):
    """ADA (``grid_align``): a small U-Net that aligns the distortion residual to the edited image.

    Input ``cat([residual, edited_image])`` ``[B, 6, H, W]`` (``H = W = 256`` in HFGI); encoder ``conv_layer1``
    (16 ch at H) and ``conv_layer2/3/4`` (32, 48, 64 ch at H/2, H/4, H/8); decoder: the deeper map resized
    bilinearly to the skip's size, concatenated ``[deeper, skip]``, three IR units each (``dconv_layer1/2/3``: 112 ->
    32, 64 -> 16, 32 -> 3). No activation at the end.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv_layer1 = _stem(6, 16)
        self.conv_layer2 = _units([16, 32, 32, 32], 2)
        self.conv_layer3 = _units([32, 48, 48, 48], 2)
        self.conv_layer4 = _units([48, 64, 64, 64], 2)
        self.dconv_layer1 = _units([112, 64, 32, 32], 1)
        self.dconv_layer2 = _units([64, 32, 16, 16], 1)
        self.dconv_layer3 = _units([32, 16, 3, 3], 1)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 6, H, W]`` (residual, edited image) -> aligned residual ``[B, 3, H, W]`` (``H`` divisible by 8)."""
        assert x.ndim == 4 and x.shape[1] == 6 and x.shape[-1] % 8 == 0 and x.shape[-2] % 8 == 0, (
            f"grid_align expects [B,6,H,W] with H, W divisible by 8, got {tuple(x.shape)}"
        )
        f1 = self.conv_layer1(x)
        f2 = self.conv_layer2(f1)
        f3 = self.conv_layer3(f2)
        f4 = self.conv_layer4(f3)
        d1 = self.dconv_layer1(torch.cat([_resize_to(f4, f3), f3], dim=1))
        d2 = self.dconv_layer2(torch.cat([_resize_to(d1, f2), f2], dim=1))
        return self.dconv_layer3(torch.cat([_resize_to(d2, f1), f1], dim=1))


class ScaledLeakyReLU(nn.Module):
    """``leaky_relu(x, 0.2) * sqrt(2)`` (the official ``ScaledLeakyReLU``; no parameters)."""

    def __init__(self, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.negative_slope) * math.sqrt(2)


def _condition_head(in_ch: int, channels: int) -> nn.Sequential:
    """``EqualConv2d 3x3 -> ScaledLeakyReLU -> EqualConv2d 3x3`` (keys ``0``, ``2``)."""
    return nn.Sequential(
        EqualConv2d(in_ch, channels, 3, 1, 1), ScaledLeakyReLU(0.2), EqualConv2d(channels, channels, 3, 1, 1)
    )


class ResidualEncoder(nn.Module):
    """The consultation encoder ``E_c`` (``residue``): aligned residual -> conditions ``(scale, shift)``.

    ``conv_layer1`` (32 ch) -> ``conv_layer2`` (48 ch, /2) -> ``conv_layer3`` (64 ch, /4), then ``condition_scale3``
    and ``condition_shift3`` (EqualConv2d stacks to ``channels``), each resized bilinearly to ``size``.

    Args:
        channels: channels of the conditioned generator layer (512 for the official FFHQ model).
        size: resolution of the conditioned layer (64).
    """

    def __init__(self, channels: int = 512, size: int = CONDITION_SIZE) -> None:
        super().__init__()
        self.channels, self.size = channels, size
        self.conv_layer1 = _stem(3, 32)
        self.conv_layer2 = _units([32, 48, 48, 48], 2)
        self.conv_layer3 = _units([48, 64, 64, 64], 2)
        self.condition_scale3 = _condition_head(64, channels)
        self.condition_shift3 = _condition_head(64, channels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, 3, H, W]`` aligned residual -> ``(scale, shift)``, each ``[B, channels, size, size]``."""
        assert x.ndim == 4 and x.shape[1] == 3, f"residue expects [B,3,H,W], got {tuple(x.shape)}"
        feat = self.conv_layer3(self.conv_layer2(self.conv_layer1(x)))
        size = (self.size, self.size)
        scale = F.interpolate(self.condition_scale3(feat), size=size, mode="bilinear", align_corners=False)
        shift = F.interpolate(self.condition_shift3(feat), size=size, mode="bilinear", align_corners=False)
        return scale, shift


def condition_hook(scale: Tensor, shift: Tensor, layer: int = CONDITION_LAYER) -> Hook:
    """The conditioned generator step: ``out * (1 + scale) + shift`` on ``layer``'s output (after noise, bias and
    activation, before the block's second conv; the ToRGB skip path is unchanged).

    Args:
        scale: ``[B, C, R, R]`` for the layer's ``C`` channels at its resolution ``R``.
        shift: same shape.
        layer: gie layer index (``CONDITION_LAYER`` = the official ``convs[6]``).
    """
    assert scale.shape == shift.shape and scale.ndim == 4, f"conditions {tuple(scale.shape)}, {tuple(shift.shape)}"

    def fn(out: Tensor, _layer: int) -> Tensor:
        assert out.shape == scale.shape, f"conditions {tuple(scale.shape)} do not fit layer {layer} {tuple(out.shape)}"
        return out * (1 + scale.to(out)) + shift.to(out)

    return Hook(layer, fn, POST_ACTIVATION)

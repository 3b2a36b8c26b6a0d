"""The Spatial Alignment and Masking Module of OOD GAN inversion (Yin et al., ICCV 2023, "Out-of-Domain GAN Inversion
via Invertibility Decomposition for Photo-Realistic Human Face Manipulation"): functional pieces (the merge of
Algorithms 1-2, the flow warp, the RGB blend) and the official modules (``StyledscaleNshfitBlock``, ``SPM_Warp``,
``AlignNet``) with their key names."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gie_cli.models.encoders.ir_se import BottleneckIR
from gie_cli.models.stylegan2 import BLUR_KERNEL, Blur, NoiseInjection

#: Largest flow offset, in grid units of [-1, 1] (the official test config's ``warp_scale``).
OFFICIAL_WARP_SCALE = 0.08
#: Alignment iterations N of Algorithm 1 (the official ``cycle_align``; the paper's default).
OFFICIAL_ITERATIONS = 2


def merge_masks(prev: Tensor, new: Tensor) -> Tensor:
    """The mask merge of Algorithm 1 (line 6) and of the official cross-level fusion: ``new * u + u * (1 - u)`` with
    ``u = prev``, resized to ``new``'s size (bicubic, ``align_corners=True``) when they differ.

    Args:
        prev: ``[B, 1, h, w]`` the mask so far.
        new: ``[B, 1, H, W]`` this step's mask.

    Returns:
        ``[B, 1, H, W]`` (not clipped).
    """
    u = prev
    if prev.shape[-2:] != new.shape[-2:]:
        u = F.interpolate(prev, size=new.shape[-2:], mode="bicubic", align_corners=True)
    return new * u + u * (1 - u)


def flow_grid(flow: Tensor) -> Tensor:
    """The ``grid_sample`` grid ``[B, H, W, 2]`` of an identity grid (``linspace(-1, 1)`` over columns and rows)
    shifted by ``flow [B, 2, H, W]`` = (dx, dy)."""
    b, _, h, w = flow.shape
    ys = torch.linspace(-1, 1, h, device=flow.device, dtype=flow.dtype)
    xs = torch.linspace(-1, 1, w, device=flow.device, dtype=flow.dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx + flow[:, 0], gy + flow[:, 1]], dim=-1)


def warp_feature(feature: Tensor, align: Tensor) -> Tensor:
    """Algorithm 1, line 8: ``GS(g, Δx, Δy) * M + g * (1 - M)``.

    Args:
        feature: ``[B, C, H, W]`` the generator's feature ``g``.
        align: ``[B, 3, H, W]`` = (dx, dy, M).

    Returns:
        ``[B, C, H, W]``; bilinear sampling with zero padding and ``align_corners=False`` as the official code (so a
        zero flow still resamples slightly).
    """
    assert align.shape[1] == 3 and align.shape[-2:] == feature.shape[-2:], (tuple(align.shape), tuple(feature.shape))
    alpha = align[:, 2:]
    warped = F.grid_sample(feature, flow_grid(align[:, :2].to(feature)), align_corners=False)
    return warped * alpha + feature * (1 - alpha)


def gather_masks(alphas: Sequence[Tensor], size: int) -> Tensor:
    """Algorithm 2 as the official ``blending_mask``: the levels' masks, coarsest first, each upsampled (bilinear) to
    ``size`` and merged into the running mask ``m`` as ``a * m + m * (1 - m)``, then clipped to [0, 1].

    Args:
        alphas: ``[B, 1, r, r]`` per level, coarsest first.
        size: the output resolution.

    Returns:
        ``[B, 1, size, size]``.
    """
    m: Tensor | None = None
    for a in alphas:
        up = F.interpolate(a, size=(size, size), mode="bilinear", align_corners=False)
        m = up if m is None else up * m + m * (1 - m)
    assert m is not None, "no mask to gather"
    return m.clamp(0.0, 1.0)


def blend(source: Tensor, inverted: Tensor, mask: Tensor) -> Tensor:
    """Eq. 4: ``x_hat = m * x + (1 - m) * x_in_hat`` (``[B, 3, S, S]`` images, ``mask [B, 1, S, S]``)."""
    assert source.shape == inverted.shape and mask.shape[-2:] == source.shape[-2:], (
        tuple(source.shape), tuple(inverted.shape), tuple(mask.shape)
    )  # fmt: skip
    return mask * source + (1 - mask) * inverted


def _instance_norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=True)


class AlignNet(nn.Module):
    """Flow and mask head (official ``AlignNet``): instance-normalise (no affine) the current generator feature ``s``
    and the encoder feature ``t``, run two IR units (affine InstanceNorm, bias-free convs) on ``cat(s - t, t)`` and map
    the 3 outputs to ``(tanh * scale, tanh * scale, sigmoid)``.

    Args:
        channels: ``C`` of both features.
        scale: the flow's bound (``warp_scale``).
        hidden: width of the first unit (official: ``2C``; smaller for the world model; a width other than ``2C``
            gives that unit a shortcut conv, ``body.0.shortcut_layer.*``).
    """

    def __init__(self, channels: int, scale: float = OFFICIAL_WARP_SCALE, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or 2 * channels
        self.channels, self.scale, self.hidden = channels, scale, hidden
        self.norm = nn.InstanceNorm2d(channels)
        self.body = nn.Sequential(
            BottleneckIR(2 * channels, hidden, 1, _instance_norm), BottleneckIR(hidden, 3, 1, _instance_norm)
        )

    def forward(self, current: Tensor, encoded: Tensor) -> Tensor:
        """``[B, C, H, W]`` x 2 -> ``[B, 3, H, W]`` = (dx, dy, alpha)."""
        s, t = self.norm(current), self.norm(encoded)
        m = self.body(torch.cat([s - t, t], dim=1))
        return torch.cat([torch.tanh(m[:, :2]) * self.scale, torch.sigmoid(m[:, 2:])], dim=1)


class SPMWarp(nn.Module):
    """Algorithm 1 at one level (official ``SPM_Warp``): ``N`` passes of flow + mask prediction, each warping the
    *original* generator feature by the accumulated flow and blending it by the merged mask.

    Args:
        channels: feature channels.
        scale: the flow's bound.
        iterations: ``N`` (the official ``cycle_align``).
        hidden: :class:`AlignNet`'s first-unit width.
    """

    def __init__(
        self,
        channels: int,
        scale: float = OFFICIAL_WARP_SCALE,
        iterations: int = OFFICIAL_ITERATIONS,
        hidden: int | None = None,
    ) -> None:
        super().__init__()
        self.body = AlignNet(channels, scale, hidden)
        self.blur = Blur(BLUR_KERNEL, pad=(2, 1))
        self.scale, self.iterations = scale, iterations

    def accumulate(self, acc: Tensor, step: Tensor) -> Tensor:
        """Pass ``j > 1``: flows add (clipped to ``±scale``), masks merge (:func:`merge_masks`, clipped to [0, 1])."""
        flow = (acc[:, :2] + step[:, :2]).clamp(-self.scale, self.scale)
        return torch.cat([flow, merge_masks(acc[:, 2:], step[:, 2:]).clamp(0.0, 1.0)], dim=1)

    def forward(
        self,
        encoded: Tensor,
        generated: Tensor,
        prev: Tensor | None = None,
        iterations: int | None = None,
        skip_warp: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Align ``generated`` to ``encoded``.

        Args:
            encoded: ``[B, C, H, W]`` the projected encoder feature ``f``.
            generated: ``[B, C, H, W]`` the generator's feature ``g``.
            prev: ``[B, 3, h, w]`` the coarser level's result: after the last pass its mask is merged into this
                level's (:func:`merge_masks` with ``u`` = its mask; its flow is ignored).
            iterations: ``N`` for this call (default :attr:`iterations`).
            skip_warp: the paper's "skip SA" ablation: predict as usual but return ``g`` unwarped.

        Returns:
            ``(aligned feature [B, C, H, W], align [B, 3, H, W] = (dx, dy, M))``.
        """
        assert encoded.shape == generated.shape, (tuple(encoded.shape), tuple(generated.shape))
        n = self.iterations if iterations is None else iterations
        if n < 1:
            raise ValueError(f"the alignment needs at least one iteration, got {n}")
        current, acc = generated, None
        for k in range(n):
            step = self.blur(self.body(current, encoded))
            acc = step if acc is None else self.accumulate(acc, step)
            if k == n - 1 and prev is not None:
                acc = torch.cat([acc[:, :2], merge_masks(prev[:, 2:].to(acc), acc[:, 2:]).clamp(0.0, 1.0)], dim=1)
            current = generated if skip_warp else warp_feature(generated, acc)
        assert acc is not None
        return current, acc


class SAMMBlock(nn.Module):
    """One level's SAMM (official ``StyledscaleNshfitBlock`` with ``btn=None``, the E4E test config): an identity
    bottleneck, then :class:`SPMWarp`. ``weight`` (frozen ones) and ``noiseInj`` are in the official state dict but not
    used by its forward."""

    def __init__(
        self,
        channels: int,
        scale: float = OFFICIAL_WARP_SCALE,
        iterations: int = OFFICIAL_ITERATIONS,
        hidden: int | None = None,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.alignment = SPMWarp(channels, scale, iterations, hidden)
        self.weight = nn.Parameter(torch.ones(1), requires_grad=False)
        self.noiseInj = NoiseInjection()

    def forward(
        self,
        encoded: Tensor,
        generated: Tensor,
        prev: Tensor | None = None,
        iterations: int | None = None,
        skip_warp: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """See :meth:`SPMWarp.forward`."""
        return self.alignment(encoded, generated, prev, iterations, skip_warp)


class SAMM(nn.Module):
    """The trained part of OOD inversion (official ``ood_faceGAN_e4e`` minus its e4e and generator): ``feats_conv``
    (1x1 convs from the encoder's maps to the generator's channels) and ``modulation`` (one :class:`SAMMBlock` per
    aligned resolution), both finest level first as in the official module lists.

    Args:
        resolutions: the aligned levels, finest first (official: 256, 128, 64, 32).
        encoder_channels: channels of the encoder maps read at those levels (official: 64, 64, 128, 256).
        generator_channels: the generator's channels there (official: 128, 256, 512, 512).
        warp_scale: the flows' bound.
        iterations: ``N``.
        hidden: the AlignNets' first-unit width per level (None: official ``2C``).
    """

    def __init__(
        self,
        resolutions: Sequence[int] = (256, 128, 64, 32),
        encoder_channels: Sequence[int] = (64, 64, 128, 256),
        generator_channels: Sequence[int] = (128, 256, 512, 512),
        warp_scale: float = OFFICIAL_WARP_SCALE,
        iterations: int = OFFICIAL_ITERATIONS,
        hidden: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        n = len(resolutions)
        if not (n == len(encoder_channels) == len(generator_channels)) or n == 0:
            raise ValueError("SAMM needs one encoder and one generator width per resolution")
        if list(resolutions) != sorted(resolutions, reverse=True):
            raise ValueError(f"SAMM resolutions go finest first, got {list(resolutions)}")
        hidden = list(hidden) if hidden else [0] * n
        if len(hidden) != n:
            raise ValueError(f"SAMM hidden widths: one per level ({n}), got {len(hidden)}")
        self.resolutions = tuple(int(r) for r in resolutions)
        self.encoder_channels = tuple(int(c) for c in encoder_channels)
        self.generator_channels = tuple(int(c) for c in generator_channels)
        self.warp_scale, self.iterations = float(warp_scale), int(iterations)
        self.hidden = tuple(int(h) for h in hidden)
        self.feats_conv = nn.ModuleList(
            nn.Conv2d(ce, cg, 1) for ce, cg in zip(self.encoder_channels, self.generator_channels, strict=True)
        )
        widths = zip(self.generator_channels, self.hidden, strict=True)
        self.modulation = nn.ModuleList(SAMMBlock(cg, warp_scale, iterations, h or None) for cg, h in widths)

    @property
    def config(self) -> dict:
        """The constructor's arguments (what rebuilds the module from a gie checkpoint)."""
        return {
            "resolutions": list(self.resolutions),
            "encoder_channels": list(self.encoder_channels),
            "generator_channels": list(self.generator_channels),
            "warp_scale": self.warp_scale,
            "iterations": self.iterations,
            "hidden": list(self.hidden) if any(self.hidden) else None,
        }

    def project(self, maps: Sequence[Tensor]) -> list[Tensor]:
        """The encoder maps (finest first, one per level) through ``feats_conv``: ``[B, C_gen, r, r]`` each."""
        if len(maps) != len(self.feats_conv):
            raise ValueError(f"SAMM reads {len(self.feats_conv)} encoder maps, got {len(maps)}")
        out = []
        for conv, m, r in zip(self.feats_conv, maps, self.resolutions, strict=True):
            assert m.shape[-1] == r and m.shape[1] == conv.in_channels, (
                f"encoder map for the {r} px level must be [B,{conv.in_channels},{r},{r}], got {tuple(m.shape)}"
            )
            out.append(conv(m))
        return out

"""StyleGAN2 generator and discriminator (Karras et al., "Analyzing and Improving the Image Quality of StyleGAN", 2020).

The module and parameter names follow the rosinality/stylegan2-pytorch layout that every official inversion checkpoint
(e4e, pSp, HFGI, Style Transformer, SFE, OOD) stores, so an official ``g_ema`` loads with ``strict=True``. One generator
class serves every method: methods read or modify intermediate feature maps through insertion points (:class:`Hook`,
``feature_hooks``) and style vectors through ``style_offsets``, and never copy the synthesis loop.

Layer indexing used throughout gie: *layer* ``l`` is the ``l``-th styled convolution, ``l = 0`` being ``conv1`` at 4x4,
``l = 2k + 1`` the upsampling ``convs[2k]`` and ``l = 2k + 2`` the ``convs[2k + 1]`` of block ``k`` (resolution
``8 * 2**k``). It equals the index of the noise buffer ``noises.noise_l`` that layer uses.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gie_cli.device import PRECISIONS, autocast
from gie_cli.ops import FusedLeakyReLU, fused_leaky_relu, get_default_impl, separable_taps, upfirdn2d

log = logging.getLogger(__name__)

FeatureHook = Callable[[Tensor, int], Tensor]
"""``hook(feature [B,C,R,R], layer) -> feature``: reads or replaces the output of a styled conv layer."""
PreActivationHook = Callable[[Tensor, int, Tensor], Tensor]
"""``hook(x [B,C,R,R], layer, style [B,C_in]) -> x``: acts before a styled conv's bias and activation."""

POST_ACTIVATION = "post_activation"
NEXT_INPUT = "next_input"
PRE_ACTIVATION = "pre_activation"
PRE_NOISE = "pre_noise"
INSERTION_POINTS = (POST_ACTIVATION, NEXT_INPUT, PRE_ACTIVATION, PRE_NOISE)


@dataclass(frozen=True)
class Hook:
    """A function inserted into the synthesis loop at styled conv ``layer``.

    Insertion points (hooks at one layer and point compose in the order given):

    - ``post_activation``: ``fn(feature, layer) -> feature`` on the layer's output after noise, bias and activation;
      the result feeds the next layer *and* the block's ToRGB (HFGI's consultation, GradStyle's fusion).
    - ``next_input``: ``fn(feature, layer) -> feature`` replaces only the input of layer ``layer + 1``; at the second
      conv of a block the ToRGB has already drawn the original (SFE's ``insert_feature``). At the last layer it has no
      effect.
    - ``pre_activation``: ``fn(x, layer, style) -> x`` on the modulated conv's output after noise injection and before
      bias and activation, with the layer's style vector ``[B, C_in]``.
    - ``pre_noise``: ``fn(x, layer, style) -> x`` on the modulated conv's output before noise injection (OOD's SAMM,
      which the official code feeds through the noise input so that the layer's own noise is added to its result).

    Attributes:
        layer: Styled conv layer (gie indexing, see the module docstring).
        fn: The function.
        point: One of :data:`INSERTION_POINTS`.
    """

    layer: int
    fn: Callable[..., Tensor]
    point: str = POST_ACTIVATION

    def __post_init__(self) -> None:
        if self.point not in INSERTION_POINTS:
            raise ValueError(f"hook point must be one of {INSERTION_POINTS}, got {self.point!r}")


NOISE_MODES = ("const", "random", "none")
BLUR_KERNEL = (1, 3, 3, 1)
MODCONV_IMPLS = ("grouped", "bmm", "input")
"""Modulated conv implementations (:attr:`ModulatedConv2d.modconv`); all compute the same function."""
GRAPH_CACHE_SIZE = 8
"""CUDA graphs kept per generator (one per input signature: batch, dtype, noise shapes, switches); oldest dropped."""
GRAPH_WARMUP = 2
"""Eager runs on a side stream before a CUDA graph is captured (cuDNN autotuning, lazy initialisation, compiling)."""


@dataclass(frozen=True)
class FastPath:
    """The synthesis fast-path switches of a :class:`Generator`; each is checked against the fp32 ``grouped`` path
    (``tests/test_fastpath.py``) and timed by ``benchmarks/bench_fastpath.py``. Defaults = the reference behaviour.

    Attributes:
        modconv: modulated conv implementation, one of :data:`MODCONV_IMPLS` (see :class:`ModulatedConv2d`).
        fused_upsample: each upsampling conv and its blur as one transposed conv with the blurred kernel.
        precision: ``fp32``, or ``bf16`` / ``fp16``: ``torch.autocast`` around synthesis (and, in
            :func:`~gie_cli.methods.invert_and_render`, around the method's encoder and render), with the style
            affines, demodulation, PixelNorm statistics and the RGB skip path kept in fp32; images come back in the
            generator's dtype.
        compile: ``torch.compile`` the hook-free synthesis (calls without hooks, style offsets, returned features
            or ``stop_at_layer``; the others run eagerly). Falls back to eager, with a warning, if compiling fails.
        cuda_graphs: replay a CUDA graph captured per input signature for hook-free synthesis without autograd on
            CUDA (no effect elsewhere). Assumes the weights stay in place: call :meth:`Generator.set_fast_path`
            (which drops the graphs) after changing them.
    """

    modconv: str = "grouped"
    fused_upsample: bool = False
    precision: str = "fp32"
    compile: bool = False
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        if self.modconv not in MODCONV_IMPLS:
            raise ValueError(f"modconv must be one of {MODCONV_IMPLS}, got {self.modconv!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def changed(self) -> dict[str, object]:
        """The switches that differ from the defaults (for logs and reports)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


def default_channels(channel_multiplier: int = 2, channel_max: int | None = None) -> dict[int, int]:
    """Channel width per resolution of the official configs (config-f: ``channel_multiplier=2``).

    Args:
        channel_multiplier: rosinality's multiplier for resolutions >= 64.
        channel_max: optional cap applied to every width (tiny models keep the key names, with smaller shapes).
    """
    cm = channel_multiplier
    ch = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm, 1024: 16 * cm}
    if channel_max is not None:
        ch = {r: min(c, channel_max) for r, c in ch.items()}
    return ch


def make_kernel(k: Sequence[float]) -> Tensor:
    """Normalised 2-D FIR kernel ``[len(k), len(k)]`` (outer product of a 1-D kernel)."""
    t = torch.tensor(k, dtype=torch.float32)
    if t.ndim == 1:
        t = t[None, :] * t[:, None]
    return t / t.sum()


class PixelNorm(nn.Module):
    """Normalise each latent to unit mean square over the feature axis."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_autocast_enabled(x.device.type):  # the statistics in fp32
            with _autocast_off(x.device.type):
                xf = x.float()
                return (xf * torch.rsqrt(torch.mean(xf * xf, dim=1, keepdim=True) + 1e-8)).to(x.dtype)
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate (weights stored as N(0,1)/lr_mul, scaled at run time)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.activation = activation
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), bias)
        return F.linear(x, self.weight * self.scale, bias)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}, activation={self.activation}"


class EqualConv2d(nn.Module):
    """Conv2d with equalized learning rate."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_ch * kernel_size**2)
        self.stride, self.padding = stride, padding
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class _FIRFilter(nn.Module):
    """A module with an FIR ``kernel`` buffer (the checkpoint's) and, where that kernel is an outer product ``t t^T``,
    its 1-D taps ``t`` (not saved; refreshed when a state dict is loaded), which the filter passes instead."""

    def __init__(self, kernel: Tensor) -> None:
        super().__init__()
        self.register_buffer("kernel", kernel)
        self.register_buffer("taps", separable_taps(kernel), persistent=False)
        self.register_load_state_dict_post_hook(_FIRFilter._refresh_taps)

    @staticmethod
    def _refresh_taps(module: nn.Module, incompatible_keys: object) -> None:
        module.taps = separable_taps(module.kernel)

    def filter_kernel(self) -> Tensor:
        """``[k]`` taps when the kernel is their outer product (the same result, two 1-D passes on CUDA), else the
        ``[k, k]`` kernel."""
        return self.kernel if self.taps is None else self.taps


class Blur(_FIRFilter):
    """FIR low-pass filter (``kernel`` buffer, scaled by ``factor**2`` after an upsampling conv)."""

    def __init__(self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__(make_kernel(kernel) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.filter_kernel(), pad=self.pad)


class Upsample(_FIRFilter):
    """2x FIR upsampling (used on the RGB skip path)."""

    def __init__(self, kernel: Sequence[float], factor: int = 2) -> None:
        super().__init__(make_kernel(kernel) * factor**2)
        self.factor = factor
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.filter_kernel(), up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Style-modulated (and optionally demodulated) convolution, optionally with 2x upsampling.

    The weight is stored ``[1, out, in, k, k]`` as in the official layout. Three implementations compute the same
    function (class attribute = process default, see :func:`set_default_fast_path`; :meth:`Generator.set_fast_path`
    sets them per generator):

    - ``grouped`` (default): per-sample weights run as one grouped convolution (the official formulation; measured
      fastest on CPU, see ``benchmarks/bench_generator.py`` and ``benchmarks/bench_fastpath.py``);
    - ``bmm``: per-sample weights as batched matrix products: a 1x1 conv is one ``bmm``; a k x k conv accumulates
      ``k**2`` ``baddbmm`` over shifted windows of the zero-padded, flattened input (implicit im2col, no copies); the
      upsampling conv is one ``bmm`` to columns folded (col2im, ``F.fold``) at stride 2;
    - ``input``: modulate the activations, run one shared convolution, scale the output by the demodulation.

    With ``fused_upsample`` the upsampling conv and its FIR blur run as one stride-2 transposed conv whose kernel is
    the weight convolved with the (x4 scaled) blur kernel, ``[out, in, k + 3, k + 3]`` (exact: modulation and
    demodulation are per (out, in) scalars, so they commute with the blur). It does about 4x the multiply-adds of the
    two-step path, which pays only where the separate blur pass over memory costs more (few channels, large maps).

    Under ``torch.autocast`` the style affine and the demodulation coefficients are computed in fp32 (autocast off,
    one rounding of the modulated weight when the conv casts it).
    """

    modconv: str = "grouped"
    fused_upsample: bool = False

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        blur_kernel: Sequence[float] = BLUR_KERNEL,
    ) -> None:
        super().__init__()
        self.in_ch, self.out_ch, self.kernel_size = in_ch, out_ch, kernel_size
        self.upsample, self.demodulate = upsample, demodulate
        self._up_crop: tuple[int, int] | None = None
        self._blurred: tuple[tuple, Tensor] | None = None  # (key, weight convolved with the blur kernel)
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            pad = ((p + 1) // 2 + factor - 1, p // 2 + 1)
            self.blur = Blur(blur_kernel, pad=pad, upsample_factor=factor)
            # The blur keeps the full convolution's samples from kb - 1 - pad0 (kb - 1 - pad1 dropped at the end):
            # the one transposed conv with the blurred kernel crops as much (fused_upsample; None: not a crop).
            crop = (len(blur_kernel) - 1 - pad[0], len(blur_kernel) - 1 - pad[1])
            self._up_crop = crop if min(crop) >= 0 else None
        self.scale = 1 / math.sqrt(in_ch * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        """Args: x [B, in, H, W]; w [B, style_dim]. Returns [B, out, H', W'] (H' = 2H when upsampling)."""
        return self.modulated(x, self.style(w))

    def style(self, w: Tensor) -> Tensor:
        """The style vector ``[B, in]`` of ``w [B, style_dim]`` (the affine ``modulation(w)``; fp32 under autocast)."""
        if torch.is_autocast_enabled(w.device.type):
            with _autocast_off(w.device.type):
                return self.modulation(w.float())
        return self.modulation(w)

    def modulated(self, x: Tensor, style: Tensor) -> Tensor:
        """The convolution with a given style vector ``style [B, in]`` (the affine ``modulation(w)``, StyleSpace)."""
        amp = torch.is_autocast_enabled(x.device.type)
        with _autocast_off(x.device.type) if amp else contextlib.nullcontext():
            if amp:
                style = style.float()
            weight = self.weight[0] * self.scale  # [out, in, k, k]
            dcoef = None
            if self.demodulate:
                wsq = weight.square().sum(dim=(2, 3))  # [out, in]
                dcoef = torch.rsqrt(style.square() @ wsq.t() + 1e-8)  # [B, out]
            fused = self.upsample and self.fused_upsample and self._up_crop is not None
            if fused:
                weight = self._blurred_weight(weight)  # [out, in, k + kb - 1, k + kb - 1]
        impl = self.modconv
        if impl == "grouped":
            out = self._forward_fused(x, style, weight, dcoef, fused)
        elif impl == "bmm":
            out = self._forward_bmm(x, style, weight, dcoef, fused)
        elif impl == "input":
            out = self._forward_input(x, style, weight, dcoef, fused)
        else:
            raise ValueError(f"modconv must be one of {MODCONV_IMPLS}, got {impl!r}")
        return self.blur(out) if self.upsample and not fused else out

    # ------------------------------------------------------------------------------------------- implementations
    def _forward_input(self, x: Tensor, style: Tensor, weight: Tensor, dcoef: Tensor | None, fused: bool) -> Tensor:
        """``input``: ``conv(x * style, weight) * dcoef`` (one shared weight)."""
        b = x.shape[0]
        x = x * style.reshape(b, -1, 1, 1).to(x.dtype)
        if self.upsample:
            out = self._conv_up(x, weight.transpose(0, 1), 1, fused)
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if dcoef is not None:
            out = out * dcoef.reshape(b, -1, 1, 1).to(out.dtype)
        return out

    def _forward_fused(
        self, x: Tensor, style: Tensor, weight: Tensor, dcoef: Tensor | None, fused: bool = False
    ) -> Tensor:
        """``grouped``: per-sample weights ``[B, out, in, k, k]``, one conv with ``groups=B``."""
        b, c, h, w = x.shape
        wb = weight[None] * style[:, None, :, None, None]  # [B, out, in, k, k]
        if dcoef is not None:
            wb = wb * dcoef[:, :, None, None, None]
        k = wb.shape[-1]
        x = x.reshape(1, b * c, h, w)
        if self.upsample:
            wb = wb.transpose(1, 2).reshape(b * c, self.out_ch, k, k)
            out = self._conv_up(x, wb, b, fused)
            return out.reshape(b, self.out_ch, *out.shape[2:])
        out = F.conv2d(x, wb.reshape(b * self.out_ch, c, k, k), padding=self.padding, groups=b)
        return out.reshape(b, self.out_ch, *out.shape[2:])

    def _forward_bmm(self, x: Tensor, style: Tensor, weight: Tensor, dcoef: Tensor | None, fused: bool) -> Tensor:
        """``bmm``: per-sample weights as batched matrix products (see the class docstring)."""
        b, c, h, w = x.shape
        o = self.out_ch
        wb = weight[None] * style[:, None, :, None, None]  # [B, out, in, k, k]
        if dcoef is not None:
            wb = wb * dcoef[:, :, None, None, None]
        k = wb.shape[-1]
        if self.upsample:
            # columns [B, out*k*k, H*W]: column (i, j) is input pixel (i, j) times the kernel; col2im at stride 2
            # sums the overlaps (= conv_transpose2d); the blur's crop, if fused, is fold's padding.
            cols = torch.bmm(wb.permute(0, 1, 3, 4, 2).reshape(b, o * k * k, c), x.reshape(b, c, h * w))
            c0, c1 = self._up_crop if fused else (0, 0)  # type: ignore[misc]
            p = min(c0, c1)
            size = ((h - 1) * 2 + k - 2 * p, (w - 1) * 2 + k - 2 * p)
            out = F.fold(cols, size, k, padding=p, stride=2)
            return _crop(out, c0 - p, c1 - p)
        if k == 1:
            return torch.bmm(wb.reshape(b, o, c), x.reshape(b, c, h * w)).reshape(b, o, h, w)
        # Implicit im2col: on the input zero-padded by k//2 (one more row at the bottom) and flattened to rows of
        # wp = W + 2p, tap (i, j) is the window starting at i * wp + j; the output is computed on rows of wp and
        # the 2p extra columns dropped.
        p = k // 2
        wp = w + 2 * p
        flat = F.pad(x, [p, p, p, p + 1]).reshape(b, c, -1)
        taps = wb.permute(3, 4, 0, 1, 2).contiguous()  # [k, k, B, out, in]
        n = h * wp
        out = None
        for i in range(k):
            for j in range(k):
                win = flat[:, :, i * wp + j : i * wp + j + n]
                out = torch.bmm(taps[i, j], win) if out is None else torch.baddbmm(out, taps[i, j], win)
        return out.reshape(b, o, h, wp)[..., :w]

    def _conv_up(self, x: Tensor, weight_t: Tensor, groups: int, fused: bool) -> Tensor:
        """Stride-2 transposed conv with ``weight_t [in, out/groups, k, k]``; fused: cropped as the blur would."""
        if not fused:
            return F.conv_transpose2d(x, weight_t, stride=2, groups=groups)
        c0, c1 = self._up_crop  # type: ignore[misc]
        p = min(c0, c1)
        out = F.conv_transpose2d(x, weight_t, stride=2, padding=p, groups=groups)
        return _crop(out, c0 - p, c1 - p)

    def _blurred_weight(self, weight: Tensor) -> Tensor:
        """``weight [out, in, k, k]`` fully convolved with the blur kernel: ``[out, in, k + kb - 1, k + kb - 1]``.

        Cached while neither the weight nor the kernel changes (not when autograd needs it, nor while compiling).
        """
        kernel = self.blur.kernel
        key = None
        if not (torch.is_grad_enabled() and weight.requires_grad) and not torch.compiler.is_compiling():
            key = (
                self.weight.data_ptr(), self.weight._version, kernel.data_ptr(), kernel._version, weight.dtype,
                weight.device, torch.is_inference_mode_enabled(),  # an inference tensor serves inference mode only
            )  # fmt: skip
            if self._blurred is not None and self._blurred[0] == key:
                return self._blurred[1]
        o, i, k, _ = weight.shape
        kh, kw = kernel.shape
        flipped = torch.flip(kernel, [0, 1]).to(weight)[None, None]  # conv2d correlates: flip for a convolution
        full = F.conv2d(weight.reshape(o * i, 1, k, k), flipped, padding=(kh - 1, kw - 1))
        full = full.reshape(o, i, *full.shape[2:])
        if key is not None:
            self._blurred = (key, full)
        return full


def _crop(x: Tensor, c0: int, c1: int) -> Tensor:
    """``x [..., H, W]`` without ``c0`` leading and ``c1`` trailing rows and columns."""
    if c0 == 0 and c1 == 0:
        return x
    return x[..., c0 : x.shape[-2] - c1, c0 : x.shape[-1] - c1]


def _autocast_off(device_type: str) -> torch.autocast:
    """A region where autocast is off (fp32 statistics and demodulation inside an autocast forward)."""
    return torch.autocast(device_type, enabled=False)


class NoiseInjection(nn.Module):
    """Adds per-pixel noise scaled by a learned strength ``weight [1]``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor | None) -> Tensor:
        if noise is None:
            return x
        return x + (self.weight * noise).to(x.dtype)  # (autocast: keeps x's half precision)


class ConstantInput(nn.Module):
    """Learned constant ``input [1, C, 4, 4]`` broadcast over the batch."""

    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    """Modulated conv + noise + bias/leaky-ReLU (keys ``conv``, ``noise``, ``activate``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int, upsample: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, kernel_size, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x: Tensor, w: Tensor, noise: Tensor | None = None) -> Tensor:
        return self.activate(self.noise(self.conv(x, w), noise))

    def hooked(
        self,
        x: Tensor,
        w: Tensor,
        noise: Tensor | None,
        layer: int,
        style_offset: Tensor | None = None,
        pre_activation: Sequence[PreActivationHook] = (),
        pre_noise: Sequence[PreActivationHook] = (),
    ) -> Tensor:
        """:meth:`forward` with a StyleSpace offset ``[B|1, in]`` added to the style, pre-noise and pre-activation
        hooks."""
        style = self.conv.style(w)
        if style_offset is not None:
            style = style + style_offset.to(style)
        x = self.conv.modulated(x, style)
        for fn in pre_noise:
            x = fn(x, layer, style)
        x = self.noise(x, noise)
        for fn in pre_activation:
            x = fn(x, layer, style)
        return self.activate(x)


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (no demodulation) added to the upsampled previous RGB."""

    def __init__(self, in_ch: int, style_dim: int, upsample: bool = True) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(BLUR_KERNEL)
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, w: Tensor, skip: Tensor | None = None) -> Tensor:
        if torch.is_autocast_enabled(x.device.type):  # the RGB path in fp32: 3 channels, cheap, sums every scale
            with _autocast_off(x.device.type):
                return self.forward(x.float(), w.float(), None if skip is None else skip.float())
        out = self.conv(x, w) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


@dataclass
class SynthesisOutput:
    """Result of :meth:`Generator.synthesis`.

    Attributes:
        image: ``[B, 3, size, size]`` (unclamped, nominally in [-1, 1]); ``None`` when synthesis stopped early.
        features: layer index -> feature map ``[B, C, R, R]`` after hooks, for the requested layers.
    """

    image: Tensor | None
    features: dict[int, Tensor] = field(default_factory=dict)


class Generator(nn.Module):
    """StyleGAN2 generator (rosinality layout: ``style``, ``input``, ``conv1``, ``to_rgb1``, ``convs``, ``to_rgbs``,
    ``noises``).

    Args:
        size: output resolution, a power of two in 32..1024 (smaller powers work for tests).
        style_dim: latent width (512 official).
        n_mlp: mapping network depth (8 official).
        channel_multiplier: 2 for config-f.
        channel_max: cap on channel widths (tiny models; same key names).
        channels: explicit ``{resolution: width}`` override (wins over the two above).
        lr_mlp: mapping learning-rate multiplier (0.01 official; stored weights are divided by it).

    Fast paths (:class:`FastPath`): :meth:`set_fast_path` switches them for this generator; the class attributes
    ``precision``, ``compile_synthesis``, ``cuda_graphs`` (and :class:`ModulatedConv2d`'s ``modconv``,
    ``fused_upsample``) are the process defaults, set by :func:`set_default_fast_path` / :func:`use_fast_path`.
    """

    precision: str = "fp32"
    compile_synthesis: bool = False
    cuda_graphs: bool = False

    def __init__(
        self,
        size: int,
        style_dim: int = 512,
        n_mlp: int = 8,
        channel_multiplier: int = 2,
        channel_max: int | None = None,
        channels: Mapping[int, int] | None = None,
        lr_mlp: float = 0.01,
    ) -> None:
        super().__init__()
        log_size = int(math.log2(size))
        if 2**log_size != size or size < 8:
            raise ValueError(f"generator size must be a power of two >= 8, got {size}")
        self.size, self.style_dim, self.n_mlp = size, style_dim, n_mlp
        self.log_size = log_size
        ch = default_channels(channel_multiplier, channel_max)
        if channels is not None:
            ch.update({int(k): int(v) for k, v in channels.items()})
        self.channels = {r: ch[r] for r in (2**i for i in range(2, log_size + 1))}
        self.config = {
            "size": size,
            "style_dim": style_dim,
            "n_mlp": n_mlp,
            "channels": {str(r): c for r, c in self.channels.items()},
            "lr_mlp": lr_mlp,
        }

        self.style = nn.Sequential(
            PixelNorm(),
            *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu") for _ in range(n_mlp)],
        )
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], 3, style_dim)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False)
        self.num_layers = (log_size - 2) * 2 + 1
        self.n_latent = log_size * 2 - 2
        self.convs = nn.ModuleList()
        self.upsamples = nn.ModuleList()  # empty; kept for layout parity with the official module tree
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer in range(self.num_layers):
            r = 2 ** ((layer + 5) // 2)
            self.noises.register_buffer(f"noise_{layer}", torch.randn(1, 1, r, r))
        in_ch = ch[4]
        for i in range(3, log_size + 1):
            out_ch = ch[2**i]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim))
            self.to_rgbs.append(ToRGB(out_ch, style_dim))
            in_ch = out_ch
        # Mean of W (not part of the official g_ema state dict; checkpoints store it beside as ``latent_avg``).
        self.register_buffer("w_avg", torch.zeros(style_dim), persistent=False)

    # ----------------------------------------------------------------------------------------------- layer facts
    def layer_resolution(self, layer: int) -> int:
        """Spatial size of the feature map produced by styled conv ``layer``."""
        return 2 ** ((layer + 5) // 2)

    def layer_channels(self, layer: int) -> int:
        """Channel count of the feature map produced by styled conv ``layer``."""
        return self.channels[self.layer_resolution(layer)]

    def style_channels(self, layer: int) -> int:
        """Width of styled conv ``layer``'s style vector (its input channel count)."""
        return self.channels[self.layer_resolution(layer - 1)] if layer > 0 else self.channels[4]

    @property
    def device(self) -> torch.device:
        """The device the generator's weights are on."""
        return self.input.input.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the generator's weights."""
        return self.input.input.dtype

    # ----------------------------------------------------------------------------------------------- fast paths
    def modulated_convs(self) -> list[ModulatedConv2d]:
        """Every modulated conv (styled convs and ToRGBs), in synthesis order."""
        return [m for m in self.modules() if isinstance(m, ModulatedConv2d)]

    @property
    def fast_path(self) -> FastPath:
        """The fast-path switches in effect for this generator (its own, else the process defaults)."""
        return _read_switches(self.conv1.conv, self)

    def set_fast_path(
        self,
        modconv: str | None = None,
        fused_upsample: bool | None = None,
        precision: str | None = None,
        compile: bool | None = None,
        cuda_graphs: bool | None = None,
    ) -> FastPath:
        """Switch this generator's fast paths; see :class:`FastPath`. A switch given here is this generator's own
        from now on; one left ``None`` stays as it is (its own, or the process default it follows).

        Drops this generator's compiled synthesis and CUDA graphs, so calling it (even with no argument) also
        re-captures after the weights changed.

        Returns:
            The switches now in effect.

        Raises:
            ValueError: an unknown ``modconv`` or ``precision``.
        """
        given = _given(modconv, fused_upsample, precision, compile, cuda_graphs)
        new = replace(self.fast_path, **given)  # validates
        _write_switches(self.modulated_convs(), self, {k: getattr(new, k) for k in given})
        _FAST_CACHES.pop(self, None)
        return new

    @property
    def compile_error(self) -> str | None:
        """Why ``torch.compile`` of this generator's synthesis failed (it then runs eagerly); None otherwise."""
        cache = _FAST_CACHES.get(self)
        return cache.compile_error if cache is not None else None

    # ----------------------------------------------------------------------------------------------- mapping
    def mapping(self, z: Tensor, truncation: float = 1.0, truncation_latent: Tensor | None = None) -> Tensor:
        """Map ``z [B, style_dim]`` to ``w [B, style_dim]``, optionally truncated toward ``truncation_latent``
        (default: ``w_avg``)."""
        assert z.ndim == 2 and z.shape[1] == self.style_dim, f"z must be [B, {self.style_dim}], got {tuple(z.shape)}"
        w = self.style(z)
        if truncation != 1.0:
            center = self.w_avg if truncation_latent is None else truncation_latent.reshape(-1, self.style_dim)
            w = center + truncation * (w - center)
        return w

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, seed: int = 0, set_avg: bool = True) -> Tensor:
        """Estimate the mean of W from ``n`` samples (seeded); stores it in ``w_avg`` by default. Returns ``[D]``."""
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.style_dim, generator=gen).to(self.w_avg.device)
        mean = self.style(z).mean(0)
        if set_avg:
            self.w_avg.copy_(mean)
        return mean

    def broadcast(self, w: Tensor) -> Tensor:
        """``w [B, D]`` -> W+ ``[B, n_latent, D]``."""
        return w[:, None, :].expand(-1, self.n_latent, -1)

    # ----------------------------------------------------------------------------------------------- synthesis
    def _noise_list(self, batch: int, noise_mode: str, noise: Sequence[Tensor | None] | None, ref: Tensor):
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        out: list[Tensor | None] = []
        for layer in range(self.num_layers):
            given = noise[layer] if noise is not None and layer < len(noise) else None
            if given is not None:
                out.append(given)
            elif noise_mode == "const":
                out.append(getattr(self.noises, f"noise_{layer}"))
            elif noise_mode == "random":
                r = self.layer_resolution(layer)
                out.append(torch.randn(batch, 1, r, r, device=ref.device, dtype=ref.dtype))
            else:
                out.append(None)
        return out

    def synthesis(
        self,
        wplus: Tensor,
        noise_mode: str = "const",
        noise: Sequence[Tensor | None] | None = None,
        feature_hooks: Mapping[int, FeatureHook] | None = None,
        return_features: Sequence[int] | bool = False,
        stop_at_layer: int | None = None,
        hooks: Sequence[Hook] = (),
        style_offsets: Mapping[int, Tensor] | None = None,
    ) -> SynthesisOutput:
        """Render W+ codes.

        Args:
            wplus: ``[B, n_latent, style_dim]`` (a ``[B, style_dim]`` W code is broadcast).
            noise_mode: ``const`` (stored ``noises.noise_l`` buffers, as official ``randomize_noise=False``),
                ``random`` (fresh N(0,1)) or ``none`` (no noise).
            noise: optional per-layer tensors (``[1|B, 1|C, R, R]``) overriding ``noise_mode`` where not None.
            feature_hooks: layer -> ``hook(feature, layer) -> feature``, shorthand for ``post_activation``
                :class:`Hook` s (applied before the ``hooks`` of the same layer and point).
            return_features: ``True`` for every layer, or the layer indices to return (after post-activation hooks).
            stop_at_layer: stop after this layer (no image; used to read features only).
            hooks: functions at the insertion points of :class:`Hook`; several on one layer compose in order.
            style_offsets: conv layer -> ``[B | 1, C_l]`` added to that layer's style vector (StyleSpace edits).

        Returns:
            :class:`SynthesisOutput` with ``image [B, 3, size, size]`` and the requested features.
        """
        if wplus.ndim == 2:
            wplus = self.broadcast(wplus)
        assert wplus.ndim == 3 and wplus.shape[1:] == (self.n_latent, self.style_dim), (
            f"W+ must be [B, {self.n_latent}, {self.style_dim}], got {tuple(wplus.shape)}"
        )
        b = wplus.shape[0]
        table = self._hook_table(feature_hooks, hooks)
        offsets = dict(style_offsets or {})
        for layer, off in offsets.items():
            if not 0 <= layer < self.num_layers:
                raise ValueError(f"style offset for conv layer {layer}, the generator has 0..{self.num_layers - 1}")
            if off.ndim != 2 or off.shape[-1] != self.style_channels(layer) or off.shape[0] not in (1, b):
                raise ValueError(
                    f"style offset of layer {layer} must be [{b} | 1, {self.style_channels(layer)}], "
                    f"got {tuple(off.shape)}"
                )
        if return_features is True:
            wanted = set(range(self.num_layers))
        else:
            wanted = set(return_features or ())
        noises = self._noise_list(b, noise_mode, noise, wplus)
        plain = not offsets and not wanted and stop_at_layer is None and not any(table.values())
        graphs = self.cuda_graphs and plain and wplus.is_cuda and not torch.is_grad_enabled()
        with autocast(wplus.device, self.precision, cache_enabled=not graphs):
            if plain and (self.compile_synthesis or graphs):
                out = SynthesisOutput(self._fast_image(wplus, noises, graphs))
            else:
                out = self._synthesize(wplus, noises, table, offsets, wanted, stop_at_layer)
        if self.precision != "fp32" and out.image is not None and out.image.dtype != self.dtype:
            out.image = out.image.to(self.dtype)  # (the RGB path runs in fp32 under autocast: a safeguard)
        return out

    def _synthesize(
        self,
        wplus: Tensor,
        noises: Sequence[Tensor | None],
        table: Mapping[str, Mapping[int, Sequence[Callable[..., Tensor]]]],
        offsets: Mapping[int, Tensor],
        wanted: set[int],
        stop_at_layer: int | None,
    ) -> SynthesisOutput:
        """The synthesis loop of :meth:`synthesis` on checked arguments (``wplus [B, n_latent, D]``, one noise per
        layer, insertion point -> layer -> hooks)."""
        b = wplus.shape[0]
        feats: dict[int, Tensor] = {}
        convs = [self.conv1, *self.convs]

        def conv(layer: int, x: Tensor, w: Tensor) -> Tensor:
            pre, pre_noise = table[PRE_ACTIVATION].get(layer, ()), table[PRE_NOISE].get(layer, ())
            if pre or pre_noise or layer in offsets:
                x = convs[layer].hooked(x, w, noises[layer], layer, offsets.get(layer), pre, pre_noise)
            else:
                x = convs[layer](x, w, noises[layer])
            for fn in table[POST_ACTIVATION].get(layer, ()):
                x = fn(x, layer)
            if layer in wanted:
                feats[layer] = x
            return x

        def next_input(layer: int, x: Tensor) -> Tensor:
            for fn in table[NEXT_INPUT].get(layer, ()):
                x = fn(x, layer)
            return x

        x = conv(0, self.input(b), wplus[:, 0])
        if stop_at_layer == 0:
            return SynthesisOutput(None, feats)
        skip = self.to_rgb1(x, wplus[:, 1])
        x = next_input(0, x)
        i = 1
        for k, rgb in enumerate(self.to_rgbs):
            x = next_input(2 * k + 1, conv(2 * k + 1, x, wplus[:, i]))
            if stop_at_layer == 2 * k + 1:
                return SynthesisOutput(None, feats)
            x = conv(2 * k + 2, x, wplus[:, i + 1])
            if stop_at_layer == 2 * k + 2:
                return SynthesisOutput(None, feats)
            skip = rgb(x, wplus[:, i + 2], skip)
            x = next_input(2 * k + 2, x)
            i += 2
        return SynthesisOutput(skip, feats)

    def _plain_image(self, wplus: Tensor, noises: list[Tensor | None]) -> Tensor:
        """Hook-free synthesis ``wplus [B, n_latent, D]`` -> image ``[B, 3, size, size]`` (what ``compile`` compiles
        and ``cuda_graphs`` captures)."""
        image = self._synthesize(wplus, noises, _NO_HOOKS, {}, set(), None).image
        assert image is not None
        return image

    def _fast_image(self, wplus: Tensor, noises: list[Tensor | None], graphs: bool) -> Tensor:
        """:meth:`_plain_image`, compiled and/or replayed from a CUDA graph."""
        cache = _FAST_CACHES.get(self)
        if cache is None:
            cache = _FAST_CACHES[self] = _FastCache()
        fn = self._plain_image
        if self.compile_synthesis and cache.compile_error is None:
            if cache.compiled is None:  # the unbound function: the cache holds no reference to the generator
                cache.compiled = torch.compile(Generator._plain_image, dynamic=False)
            fn = functools.partial(cache.compiled, self)
            if not cache.compile_checked:  # the first call compiles: a failure falls back to eager, once
                try:
                    image = fn(wplus, noises)
                except Exception as e:  # any compiler failure means "not available"
                    lines = str(e).strip().splitlines()
                    cache.compile_error = f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]
                    log.warning("torch.compile of the synthesis failed (%s); running it eagerly", cache.compile_error)
                    fn = self._plain_image
                else:
                    cache.compile_checked = True
                    if not graphs:
                        return image
        if not graphs:
            return fn(wplus, noises)
        return cache.replay(fn, wplus, noises, (self.fast_path, get_default_impl()))

    def _hook_table(
        self, feature_hooks: Mapping[int, FeatureHook] | None, hooks: Sequence[Hook]
    ) -> dict[str, dict[int, list[Callable[..., Tensor]]]]:
        """Insertion point -> layer -> functions in application order."""
        table: dict[str, dict[int, list[Callable[..., Tensor]]]] = {p: {} for p in INSERTION_POINTS}
        all_hooks = [Hook(layer, fn) for layer, fn in (feature_hooks or {}).items()] + list(hooks)
        for h in all_hooks:
            if not 0 <= h.layer < self.num_layers:
                raise ValueError(f"hook at layer {h.layer}: the generator has layers 0..{self.num_layers - 1}")
            table[h.point].setdefault(h.layer, []).append(h.fn)
        return table

    def forward(self, wplus: Tensor, noise_mode: str = "const", **kwargs) -> Tensor:
        """Render ``wplus [B, n_latent, D]`` (or ``[B, D]``) to ``[B, 3, size, size]``; see :meth:`synthesis`."""
        return self.synthesis(wplus, noise_mode=noise_mode, **kwargs).image

    def generate(self, z: Tensor, truncation: float = 1.0, noise_mode: str = "const") -> Tensor:
        """Sample images from ``z [B, D]`` (W broadcast to every layer). Returns ``[B, 3, size, size]``."""
        return self.synthesis(self.mapping(z, truncation), noise_mode=noise_mode).image


# --------------------------------------------------------------------------------------------------- fast paths
_NO_HOOKS: dict[str, dict[int, list[Callable[..., Tensor]]]] = {p: {} for p in INSERTION_POINTS}


class _FastCache:
    """Per generator: its compiled synthesis and its CUDA graphs (kept outside the module: not copied, not saved)."""

    def __init__(self) -> None:
        self.compiled: Callable[..., Tensor] | None = None
        self.compile_checked = False
        self.compile_error: str | None = None
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, list[Tensor | None], Tensor]] = {}

    def replay(self, fn: Callable[..., Tensor], wplus: Tensor, noises: list[Tensor | None], switches: tuple) -> Tensor:
        """``fn(wplus, noises)`` replayed from the CUDA graph of this input signature (captured on first use)."""
        sig = tuple(None if n is None else (tuple(n.shape), n.dtype, n.device) for n in noises)
        key = (tuple(wplus.shape), wplus.dtype, wplus.device, sig, torch.is_inference_mode_enabled(),
               torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"), switches)  # fmt: skip
        entry = self.graphs.pop(key, None)
        if entry is None:
            static_w = wplus.clone()
            static_n = [None if n is None else n.clone() for n in noises]
            main = torch.cuda.current_stream(wplus.device)
            side = torch.cuda.Stream(wplus.device)
            side.wait_stream(main)
            with torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP):
                    fn(static_w, static_n)
            main.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = fn(static_w, static_n)
            entry = (graph, static_w, static_n, static_out)
            while len(self.graphs) >= GRAPH_CACHE_SIZE:
                self.graphs.pop(next(iter(self.graphs)))
        self.graphs[key] = entry  # most recently used last
        graph, static_w, static_n, static_out = entry
        static_w.copy_(wplus)
        for s, n in zip(static_n, noises, strict=True):
            if s is not None:
                s.copy_(n)
        graph.replay()
        return static_out.clone()


_FAST_CACHES: weakref.WeakKeyDictionary[Generator, _FastCache] = weakref.WeakKeyDictionary()


def drop_cuda_graphs() -> int:
    """Release every generator's captured CUDA graphs, and with them their private memory pools, which
    ``torch.cuda.empty_cache`` cannot free while a graph lives. Batch commands call this on CUDA out-of-memory before
    they retry at half the batch size (whose graph is captured anew).

    Returns:
        How many graphs were dropped.
    """
    dropped = 0
    for cache in list(_FAST_CACHES.values()):
        dropped += len(cache.graphs)
        cache.graphs.clear()
    return dropped


def _given(*values: object) -> dict[str, object]:
    """The :class:`FastPath` fields given (not None), from values in field order."""
    return {f.name: v for f, v in zip(fields(FastPath), values, strict=True) if v is not None}


_CONV_SWITCHES = {"modconv": "modconv", "fused_upsample": "fused_upsample"}
_GENERATOR_SWITCHES = {"precision": "precision", "compile": "compile_synthesis", "cuda_graphs": "cuda_graphs"}
"""Where each :class:`FastPath` field lives: an attribute of the modulated convs or of the generator (the classes
hold the process defaults, instances their own switches)."""


def _read_switches(conv: object, gen: object) -> FastPath:
    """The :class:`FastPath` of a modulated conv and a generator (instances or the classes)."""
    values = {f: getattr(conv, a) for f, a in _CONV_SWITCHES.items()}
    values.update({f: getattr(gen, a) for f, a in _GENERATOR_SWITCHES.items()})
    return FastPath(**values)


def _write_switches(convs: Sequence[object], gen: object, values: dict[str, object]) -> None:
    """Set the :class:`FastPath` fields ``values`` on ``convs`` and ``gen`` (instances or the classes)."""
    for field_name, value in values.items():
        if field_name in _CONV_SWITCHES:
            for conv in convs:
                setattr(conv, _CONV_SWITCHES[field_name], value)
        else:
            setattr(gen, _GENERATOR_SWITCHES[field_name], value)


def get_default_fast_path() -> FastPath:
    """The process-wide fast-path switches (of every generator without its own :meth:`Generator.set_fast_path`)."""
    return _read_switches(ModulatedConv2d, Generator)


def set_default_fast_path(
    modconv: str | None = None,
    fused_upsample: bool | None = None,
    precision: str | None = None,
    compile: bool | None = None,
    cuda_graphs: bool | None = None,
) -> FastPath:
    """Set the process-wide fast-path switches (``None`` leaves one as it is); see :class:`FastPath`.

    Generators switched with :meth:`Generator.set_fast_path` keep their own switches.

    Returns:
        The previous defaults.

    Raises:
        ValueError: an unknown ``modconv`` or ``precision``.
    """
    previous = get_default_fast_path()
    new = replace(previous, **_given(modconv, fused_upsample, precision, compile, cuda_graphs))
    if new.changed() and new != previous:
        log.info("generator fast path: %s", ", ".join(f"{k}={v}" for k, v in new.changed().items()))
    _write_switches([ModulatedConv2d], Generator, {f.name: getattr(new, f.name) for f in fields(new)})
    return previous


@contextlib.contextmanager
def use_fast_path(
    modconv: str | None = None,
    fused_upsample: bool | None = None,
    precision: str | None = None,
    compile: bool | None = None,
    cuda_graphs: bool | None = None,
) -> Iterator[FastPath]:
    """Context manager: :func:`set_default_fast_path` for the duration of a ``with`` block (yields the switches)."""
    previous = set_default_fast_path(modconv, fused_upsample, precision, compile, cuda_graphs)
    try:
        yield get_default_fast_path()
    finally:
        set_default_fast_path(**{f.name: getattr(previous, f.name) for f in fields(previous)})


# --------------------------------------------------------------------------------------------------- discriminator
class ConvLayer(nn.Sequential):
    """[Blur] + EqualConv2d + [FusedLeakyReLU]; Sequential indices match the official keys."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        downsample: bool = False,
        bias: bool = True,
        activate: bool = True,
    ) -> None:
        layers: list[nn.Module] = []
        if downsample:
            p = (len(BLUR_KERNEL) - 2) + (kernel_size - 1)
            layers.append(Blur(BLUR_KERNEL, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_ch, out_ch, kernel_size, stride, padding, bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_ch, bias=bias))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Discriminator residual block: two 3x3 convs (second one downsampling) + 1x1 downsampling skip, / sqrt(2)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_ch, in_ch, 3)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, downsample=True)
        self.skip = ConvLayer(in_ch, out_ch, 1, downsample=True, activate=False, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator (rosinality layout: ``convs``, ``final_conv``, ``final_linear``).

    Args:
        size: input resolution (power of two).
        channel_multiplier, channel_max, channels: as for :class:`Generator`.
        stddev_group: minibatch-stddev group size (4 official; the group is ``min(batch, stddev_group)``).
    """

    def __init__(
        self,
        size: int,
        channel_multiplier: int = 2,
        channel_max: int | None = None,
        channels: Mapping[int, int] | None = None,
        stddev_group: int = 4,
    ) -> None:
        super().__init__()
        log_size = int(math.log2(size))
        if 2**log_size != size or size < 8:
            raise ValueError(f"discriminator size must be a power of two >= 8, got {size}")
        ch = default_channels(channel_multiplier, channel_max)
        if channels is not None:
            ch.update({int(k): int(v) for k, v in channels.items()})
        self.size = size
        self.config = {"size": size, "channels": {str(2**i): ch[2**i] for i in range(2, log_size + 1)}}
        convs: list[nn.Module] = [ConvLayer(3, ch[size], 1)]
        in_ch = ch[size]
        for i in range(log_size, 2, -1):
            convs.append(ResBlock(in_ch, ch[2 ** (i - 1)]))
            in_ch = ch[2 ** (i - 1)]
        self.convs = nn.Sequential(*convs)
        self.stddev_group, self.stddev_feat = stddev_group, 1
        self.final_conv = ConvLayer(in_ch + 1, ch[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(ch[4] * 4 * 4, ch[4], activation="fused_lrelu"), EqualLinear(ch[4], 1)
        )

    def forward(self, img: Tensor) -> Tensor:
        """Args: img [B, 3, size, size]. Returns logits [B, 1]."""
        assert img.ndim == 4 and img.shape[1:] == (3, self.size, self.size), (
            f"discriminator input must be [B, 3, {self.size}, {self.size}], got {tuple(img.shape)}"
        )
        out = self.convs(img)
        b, c, h, w = out.shape
        group = min(b, self.stddev_group)
        if b % group:
            group = 1
        sd = out.view(group, -1, self.stddev_feat, c // self.stddev_feat, h, w)
        sd = torch.sqrt(sd.var(0, unbiased=False) + 1e-8).mean(dim=(2, 3, 4), keepdim=True).squeeze(2)
        sd = sd.repeat(group, 1, h, w)
        out = self.final_conv(torch.cat([out, sd], 1))
        return self.final_linear(out.reshape(b, -1))


# --------------------------------------------------------------------------------------------------- checkpoints
def generator_config_from_state_dict(sd: Mapping[str, Tensor]) -> dict:
    """Infer :class:`Generator` kwargs (size, style_dim, n_mlp, channels) from a rosinality-layout state dict."""
    n_mlp = sum(1 for k in sd if k.startswith("style.") and k.endswith(".weight"))
    style_dim = int(sd["conv1.conv.modulation.weight"].shape[1])
    n_rgb = sum(1 for k in sd if k.startswith("to_rgbs.") and k.endswith(".conv.weight"))
    size = 2 ** (n_rgb + 2)
    channels = {4: int(sd["conv1.conv.weight"].shape[1])}
    for k in range(n_rgb):
        channels[2 ** (k + 3)] = int(sd[f"convs.{2 * k}.conv.weight"].shape[1])
    return {"size": size, "style_dim": style_dim, "n_mlp": n_mlp, "channels": channels}


def discriminator_config_from_state_dict(sd: Mapping[str, Tensor]) -> dict:
    """Infer :class:`Discriminator` kwargs (size, channels) from a rosinality-layout state dict."""
    n_res = sum(1 for k in sd if k.startswith("convs.") and k.endswith(".conv1.0.weight"))
    size = 2 ** (n_res + 2)
    channels = {size: int(sd["convs.0.0.weight"].shape[0])}
    for i in range(1, n_res + 1):
        channels[size >> i] = int(sd[f"convs.{i}.conv2.1.weight"].shape[0])
    channels[4] = int(sd["final_conv.0.weight"].shape[0])
    return {"size": size, "channels": channels}


def convert_nvidia_ada_generator(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Tensor | None]:
    """Convert an NVIDIA stylegan2-ada-pytorch ``G_ema`` state dict to the rosinality layout of :class:`Generator`.

    Pure renames and reshapes, no value changes except the resampling kernels (NVIDIA stores the normalised
    ``[1,3,3,1]`` filter and applies the upsampling gain 4 at run time; rosinality bakes the x4 into its buffers).
    No kernel flips, transposes or gains: both layouts store the same values. The unused ``resample_filter``
    buffers are dropped; ``mapping.w_avg`` is returned separately as the checkpoint-level ``latent_avg``. Only the
    ``skip`` architecture without class conditioning is supported.

    Args:
        state_dict: ``G_ema.state_dict()`` keys (``mapping.fc{i}.*``, ``mapping.w_avg``, ``synthesis.b{R}.*``).

    Returns:
        ``(rosinality_state_dict, w_avg)``: the state dict (in rosinality's key order) loads strictly into
        ``Generator(**generator_config_from_state_dict(sd))``; ``w_avg`` is ``[w_dim]``, or None if absent.

    Raises:
        ValueError: The keys are not those of an unconditional NVIDIA StyleGAN2 generator with skip ToRGBs.
    """
    import re

    sd = dict(state_dict)
    if "synthesis.b4.const" not in sd or "mapping.fc0.weight" not in sd:
        raise ValueError("not an NVIDIA StyleGAN2 G_ema state dict (missing synthesis.b4.const / mapping.fc0.weight)")
    if any(k.startswith("mapping.embed.") for k in sd):
        raise ValueError("class-conditional generators (mapping.embed.*) have no rosinality equivalent")
    res = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"synthesis\.b(\d+)\.conv1\.weight", k)))
    if not res or res != [4 * 2**i for i in range(len(res))]:
        raise ValueError(f"unexpected synthesis blocks {res}; expected b4, b8, b16, ...")
    if any(f"synthesis.b{r}.torgb.weight" not in sd for r in res):
        raise ValueError("every block needs a torgb layer ('skip' architecture); 'orig'/'resnet' are not supported")
    used: set[str] = set()

    def take(key: str) -> Tensor:
        used.add(key)
        return sd[key]

    def styled(src: str, dst: str, blur: bool) -> dict[str, Tensor]:
        out = {f"{dst}.conv.weight": take(f"{src}.weight").unsqueeze(0)}
        if blur:
            out[f"{dst}.conv.blur.kernel"] = take(f"{src}.resample_filter") * 4
        out[f"{dst}.conv.modulation.weight"] = take(f"{src}.affine.weight")
        out[f"{dst}.conv.modulation.bias"] = take(f"{src}.affine.bias")
        out[f"{dst}.noise.weight"] = take(f"{src}.noise_strength").reshape(1)
        out[f"{dst}.activate.bias"] = take(f"{src}.bias")
        return out

    def to_rgb(src: str, dst: str, upsample_filter: str | None) -> dict[str, Tensor]:
        out = {f"{dst}.bias": take(f"{src}.bias").reshape(1, -1, 1, 1)}
        if upsample_filter is not None:
            out[f"{dst}.upsample.kernel"] = take(upsample_filter) * 4
        out[f"{dst}.conv.weight"] = take(f"{src}.weight").unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = take(f"{src}.affine.weight")
        out[f"{dst}.conv.modulation.bias"] = take(f"{src}.affine.bias")
        return out

    head: dict[str, Tensor] = {}
    n_fc = sum(1 for k in sd if re.fullmatch(r"mapping\.fc\d+\.weight", k))
    for i in range(n_fc):
        head[f"style.{i + 1}.weight"] = take(f"mapping.fc{i}.weight")
        head[f"style.{i + 1}.bias"] = take(f"mapping.fc{i}.bias")
    w_avg = take("mapping.w_avg") if "mapping.w_avg" in sd else None
    head["input.input"] = take("synthesis.b4.const").unsqueeze(0)
    head.update(styled("synthesis.b4.conv1", "conv1", blur=False))
    head.update(to_rgb("synthesis.b4.torgb", "to_rgb1", None))
    convs: dict[str, Tensor] = {}
    rgbs: dict[str, Tensor] = {}
    noise_srcs = ["synthesis.b4.conv1"]
    for k, r in enumerate(res[1:]):
        convs.update(styled(f"synthesis.b{r}.conv0", f"convs.{2 * k}", blur=True))
        convs.update(styled(f"synthesis.b{r}.conv1", f"convs.{2 * k + 1}", blur=False))
        rgbs.update(to_rgb(f"synthesis.b{r}.torgb", f"to_rgbs.{k}", f"synthesis.b{r}.resample_filter"))
        noise_srcs += [f"synthesis.b{r}.conv0", f"synthesis.b{r}.conv1"]
    noises = {}
    for i, src in enumerate(noise_srcs):  # noise_i feeds styled layer i: b4.conv1, then conv0/conv1 per block
        n = take(f"{src}.noise_const")
        noises[f"noises.noise_{i}"] = n.reshape(1, 1, *n.shape[-2:])
    unused = [k for k in sd if k not in used and not k.endswith("resample_filter")]
    if unused:
        raise ValueError(f"unexpected NVIDIA generator keys: {', '.join(unused[:8])}")
    out = {**head, **convs, **rgbs, **noises}  # rosinality's module order
    return {k: v.contiguous() for k, v in out.items()}, w_avg

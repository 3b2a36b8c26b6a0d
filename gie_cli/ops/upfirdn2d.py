"""upfirdn2d: zero-insertion upsampling, FIR filtering and decimation of 2-D maps, as in StyleGAN2 (Karras et al. 2020).

Semantics (those of rosinality's ``upfirdn2d``), per spatial axis with input length ``n``:

1. upsample by ``up``: insert ``up - 1`` zeros after every sample (length ``n * up``);
2. pad ``pad0`` zeros before and ``pad1`` after (negative values crop);
3. convolve with the kernel as a true convolution (the kernel is flipped), keeping only fully overlapping positions;
4. keep every ``down``-th sample, starting with the first.

Output length: ``(n * up + pad0 + pad1 - k) // down + 1``. Three implementations share these semantics:
:func:`upfirdn2d_ref` (the executable spec), a fast pure-PyTorch path (grouped ``conv2d`` / ``conv_transpose2d``)
and a compiled CUDA kernel (see ``_cuda.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gie_cli.ops import _cuda

IntPair = int | tuple[int, int]
# (up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1)
Args8 = tuple[int, int, int, int, int, int, int, int]

# On CPU, grouped convs on NCHW tensors go through oneDNN's blocked layout, which pads channels to multiples of 16;
# for fewer channels (the RGB skip path) a channels-last round trip is several times faster (see benchmarks/).
CHANNELS_LAST_BELOW = 16


def _pair(value: IntPair, name: str) -> tuple[int, int]:
    vx, vy = (value, value) if isinstance(value, int) else tuple(value)
    if not all(isinstance(v, int) and v >= 1 for v in (vx, vy)):
        raise ValueError(f"{name} must be a positive int or an (x, y) pair of positive ints, got {value!r}")
    return vx, vy


def _parse_args(up: IntPair, down: IntPair, pad: Sequence[int]) -> Args8:
    upx, upy = _pair(up, "up")
    downx, downy = _pair(down, "down")
    pad = tuple(int(p) for p in pad)
    if len(pad) == 2:
        pad = (pad[0], pad[1], pad[0], pad[1])
    if len(pad) != 4:
        raise ValueError(f"pad must be (pad0, pad1) or (x0, x1, y0, y1), got {pad!r}")
    return (upx, upy, downx, downy, *pad)


def _as_2d_kernel(kernel: Tensor) -> Tensor:
    if kernel.ndim == 1:  # separable shorthand: the same 1-D filter on both axes
        return torch.outer(kernel, kernel)
    if kernel.ndim != 2:
        raise ValueError(f"kernel must be [kh, kw] (or 1-D), got shape {tuple(kernel.shape)}")
    return kernel


def separable_taps(kernel: Tensor) -> Tensor | None:
    """The 1-D taps ``t`` with ``outer(t, t) == kernel`` exactly, or None (the kernel is not such a product, or its
    sum is not positive). StyleGAN2's filters are: passing ``t`` instead of the kernel gives the same result on every
    path, and lets the compiled op run its separable kernel.

    Args:
        kernel: ``[k, k]`` FIR kernel.

    Returns:
        ``[k]`` taps in the kernel's dtype and device, or None.
    """
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or not kernel.is_floating_point() or kernel.is_meta:
        return None
    total = kernel.sum()
    if not total > 0:
        return None
    taps = kernel.sum(1) / total.sqrt()
    return taps if torch.equal(torch.outer(taps, taps), kernel) else None


def _out_size(n: int, up: int, down: int, pad0: int, pad1: int, k: int) -> int:
    return (n * up + pad0 + pad1 - k) // down + 1


def _check(x: Tensor, kernel: Tensor, args: Args8) -> tuple[int, int]:
    if x.ndim != 4:
        raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
    upx, upy, downx, downy, px0, px1, py0, py1 = args
    kh, kw = kernel.shape
    h, w = x.shape[2], x.shape[3]
    if h * upy + py0 + py1 < kh or w * upx + px0 + px1 < kw:
        raise ValueError(
            f"upfirdn2d output would be empty: input {h}x{w}, up {(upx, upy)}, pad {(px0, px1, py0, py1)}, "
            f"kernel {kh}x{kw}"
        )
    return _out_size(h, upy, downy, py0, py1, kh), _out_size(w, upx, downx, px0, px1, kw)


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float16/bfloat16 are upcast to float32 on CPU (faster and more accurate there); kept as is on CUDA."""
    if x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return x.dtype


# --------------------------------------------------------------------------------------------------------------------
# Reference formula (the executable spec).
# --------------------------------------------------------------------------------------------------------------------


def upfirdn2d_ref(x: Tensor, kernel: Tensor, up: IntPair = 1, down: IntPair = 1, pad: Sequence[int] = (0, 0)) -> Tensor:
    """Reference upfirdn2d, written step by step: zero insertion, pad/crop, true convolution, decimation.

    Args:
        x: Input maps ``[B, C, H, W]``.
        kernel: FIR kernel ``[kh, kw]`` (a 1-D ``[k]`` kernel means ``outer(k, k)``).
        up: Upsampling factor, ``int`` or ``(up_x, up_y)``.
        down: Downsampling factor, ``int`` or ``(down_x, down_y)``.
        pad: ``(pad0, pad1)`` for both axes or ``(x0, x1, y0, y1)``; negative values crop.

    Returns:
        ``[B, C, (H * up_y + y0 + y1 - kh) // down_y + 1, (W * up_x + x0 + x1 - kw) // down_x + 1]``, dtype of ``x``.
    """
    args = _parse_args(up, down, pad)
    kernel = _as_2d_kernel(kernel)
    out_h, out_w = _check(x, kernel, args)
    upx, upy, downx, downy, px0, px1, py0, py1 = args
    b, c, h, w = x.shape
    kh, kw = kernel.shape
    t = x.to(_compute_dtype(x))

    # 1. zero insertion: every sample is followed by up - 1 zeros along each axis.
    t = t.reshape(b * c, 1, h, 1, w, 1)
    t = F.pad(t, [0, upx - 1, 0, 0, 0, upy - 1])
    t = t.reshape(b * c, 1, h * upy, w * upx)
    # 2. zero padding (positive pads), then cropping (negative pads).
    t = F.pad(t, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    t = t[:, :, max(-py0, 0) : t.shape[2] - max(-py1, 0), max(-px0, 0) : t.shape[3] - max(-px1, 0)]
    # 3. true convolution = cross-correlation (conv2d) with the flipped kernel, one plane at a time.
    weight = torch.flip(kernel, [0, 1]).to(device=t.device, dtype=t.dtype).reshape(1, 1, kh, kw)
    t = F.conv2d(t, weight)
    # 4. decimation: keep every down-th sample.
    t = t[:, :, ::downy, ::downx]
    assert t.shape[2:] == (out_h, out_w)
    return t.reshape(b, c, out_h, out_w).to(x.dtype)


# --------------------------------------------------------------------------------------------------------------------
# Fast pure-PyTorch path.
# --------------------------------------------------------------------------------------------------------------------


def _split_pad(p0: int, p1: int, limit: int | None = None) -> tuple[int, int, int]:
    """Split a (p0, p1) pad into a symmetric part a conv can absorb and a residual for ``F.pad`` (may be < 0)."""
    sym = max(0, min(p0, p1) if limit is None else min(p0, p1, limit))
    return sym, p0 - sym, p1 - sym


def _upfirdn2d_torch(x: Tensor, kernel: Tensor, args: Args8) -> Tensor:
    """upfirdn2d as one depthwise (groups=C) ``conv2d`` or ``conv_transpose2d``; no zero-inserted intermediates.

    * ``up == 1``: pad/crop, then ``conv2d(stride=down)`` with the flipped kernel (decimation by the conv stride).
    * ``up > 1``: ``conv_transpose2d(stride=up)`` with the kernel itself is the full true convolution of the
      zero-inserted input; its ``padding`` absorbs the crop, the remainder is an ``F.pad``; ``down`` is a slice.
    """
    upx, upy, downx, downy, px0, px1, py0, py1 = args
    b, c, h, w = x.shape
    kh, kw = kernel.shape
    out_dtype = x.dtype
    x = x.to(_compute_dtype(x))
    kernel = kernel.to(device=x.device, dtype=x.dtype)

    contiguous_in = x.is_contiguous()
    to_channels_last = x.device.type == "cpu" and 1 < c < CHANNELS_LAST_BELOW

    if upx == 1 and upy == 1:
        sy, ry0, ry1 = _split_pad(py0, py1)
        sx, rx0, rx1 = _split_pad(px0, px1)
        if ry0 or ry1 or rx0 or rx1:
            x = F.pad(x, [rx0, rx1, ry0, ry1])  # zeros where > 0, crop where < 0
        if to_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        weight = torch.flip(kernel, [0, 1]).reshape(1, 1, kh, kw).expand(c, 1, kh, kw)
        y = F.conv2d(x, weight, stride=(downy, downx), padding=(sy, sx), groups=c)
    else:
        if to_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # Full convolution index m maps to output index m - (k - 1 - pad0); crop that much on the left and
        # (k - up - pad1) on the right (negative: pad instead).
        sy, ry0, ry1 = _split_pad(kh - 1 - py0, kh - upy - py1, kh - 1)
        sx, rx0, rx1 = _split_pad(kw - 1 - px0, kw - upx - px1, kw - 1)
        weight = kernel.reshape(1, 1, kh, kw).expand(c, 1, kh, kw)
        y = F.conv_transpose2d(x, weight, stride=(upy, upx), padding=(sy, sx), groups=c)
        if ry0 or ry1 or rx0 or rx1:
            y = F.pad(y, [-rx0, -rx1, -ry0, -ry1])
        if downx > 1 or downy > 1:
            y = y[:, :, ::downy, ::downx]
    if contiguous_in and not y.is_contiguous():
        y = y.contiguous()
    return y.to(out_dtype)


# --------------------------------------------------------------------------------------------------------------------
# Compiled CUDA path: autograd wrapper whose backward is again an upfirdn2d.
# --------------------------------------------------------------------------------------------------------------------

Primitive = Callable[..., Tensor]  # prim(x, kernel, upx, upy, downx, downy, px0, px1, py0, py1) -> y, no autograd


def _grad_args(args: Args8, in_hw: tuple[int, int], out_hw: tuple[int, int], kernel_hw: tuple[int, int]) -> Args8:
    """Arguments of the upfirdn2d that is the adjoint (input gradient) of ``upfirdn2d(.., *args)``.

    Per axis the adjoint zero-inserts the gradient by ``down``, correlates it with the kernel (i.e. true-convolves
    with the flipped kernel), undoes the padding and keeps every ``up``-th sample. The left pad is ``k - 1 - pad0``;
    the right pad makes the output exactly ``n_in`` long: ``n_in * up - n_out * down + pad0 - up + 1``.
    """
    upx, upy, downx, downy, px0, px1, py0, py1 = args
    (h, w), (oh, ow), (kh, kw) = in_hw, out_hw, kernel_hw
    gpx0, gpy0 = kw - 1 - px0, kh - 1 - py0
    gpx1 = w * upx - ow * downx + px0 - upx + 1
    gpy1 = h * upy - oh * downy + py0 - upy + 1
    return (downx, downy, upx, upy, gpx0, gpx1, gpy0, gpy1)


class _UpFirDn2dFunction(torch.autograd.Function):
    """Autograd around a non-differentiable upfirdn2d primitive (the CUDA kernel); gradient w.r.t. ``x`` only."""

    @staticmethod
    def forward(ctx, x: Tensor, kernel: Tensor, args: Args8, prim: Primitive) -> Tensor:  # type: ignore[override]
        y = prim(x, kernel, *args)
        ctx.save_for_backward(kernel)
        ctx.args, ctx.prim = args, prim
        ctx.in_hw, ctx.out_hw = (x.shape[2], x.shape[3]), (y.shape[2], y.shape[3])
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        (kernel,) = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            kh, kw = (kernel.shape[0], kernel.shape[-1])  # a 1-D kernel k means outer(k, k)
            gargs = _grad_args(ctx.args, ctx.in_hw, ctx.out_hw, (kh, kw))
            flipped = torch.flip(kernel, list(range(kernel.ndim)))
            grad_x = _UpFirDn2dFunction.apply(grad, flipped, gargs, ctx.prim)
        return grad_x, None, None, None


#: The compiled op's 2-D kernels: AUTO lets it take the tiled kernel where that fits, DIRECT forces one thread per
#: output, TILED forces the tiled kernel. A 1-D kernel (``outer(k, k)``) may also run the separable kernel.
VARIANT_AUTO, VARIANT_DIRECT, VARIANT_TILED = 0, 1, 2
#: (up, down, pad, kernel size, input side) probes of the first-use check of the tiled and separable kernels:
#: StyleGAN2's upsample, downsample and blur, odd sizes and a crop, a 1x1 tap and an asymmetric kernel.
_PROBES = (
    ((2, 2), (1, 1), (2, 1, 2, 1), (4, 4), 37), ((1, 1), (2, 2), (1, 1, 1, 1), (4, 4), 70),
    ((1, 1), (1, 1), (2, 1, 2, 1), (4, 4), 33), ((2, 1), (1, 2), (-1, 3, 0, 2), (3, 5), 41),
    ((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 35), ((4, 4), (1, 1), (5, 4, 5, 4), (8, 8), 19),
)  # fmt: skip
#: Largest difference from the direct kernel, relative to the output's magnitude, that the tiled kernel (the same
#: sums) and the separable kernel (the same products summed in another order) may show, per probe dtype.
_PROBE_TOLERANCE = {
    "tiled": {torch.float32: 1e-6, torch.float16: 1e-3},
    "separable": {torch.float32: 1e-5, torch.float16: 2e-3},
}
_choices: dict[object, tuple[int, bool]] = {}  # (device type, index) -> (2-D variant, separable kernel trusted)


def _kernel_agrees(plugin, device: torch.device, name: str) -> str | None:
    """Run the ``name`` kernel ("tiled" or "separable") and the direct kernel on :data:`_PROBES` (float32 and float16,
    rank-1 kernels outer(ky, kx)); None when every output agrees within :data:`_PROBE_TOLERANCE`, else the first
    disagreement."""
    gen = torch.Generator().manual_seed(0)
    for (ux, uy), (dx, dy), pad, (kh, kw), side in _PROBES:
        for dtype in (torch.float32, torch.float16):
            x = torch.randn(2, 3, side, side + 3, generator=gen).to(device, dtype)
            ky, kx = (torch.randn(n, generator=gen).to(device) for n in (kh, kw))
            k = torch.outer(ky, kx).contiguous()
            args = (ux, uy, dx, dy, *pad)
            try:
                direct = plugin.upfirdn2d(x, k, *args, VARIANT_DIRECT).float()
                if name == "tiled":
                    other = plugin.upfirdn2d(x, k, *args, VARIANT_TILED).float()
                else:
                    other = plugin.upfirdn2d_separable(x, ky, kx, *args, VARIANT_DIRECT).float()
            except RuntimeError as e:
                return f"up {ux}x{uy}, down {dx}x{dy}, kernel {kh}x{kw}: {str(e).splitlines()[0]}"
            err = float((other - direct).abs().max()) if other.shape == direct.shape else float("inf")
            if not err <= _PROBE_TOLERANCE[name][dtype] * max(float(direct.abs().max()), 1.0):
                return f"up {ux}x{uy}, down {dx}x{dy}, kernel {kh}x{kw}, {dtype}: max difference {err:.3g}"
    return None


def kernel_choice(plugin, device: torch.device) -> tuple[int, bool]:
    """The compiled op's kernels on ``device``, decided at its first use there (kernels that have never run on this
    GPU model are never trusted blindly).

    Returns:
        ``(variant, separable)``: :data:`VARIANT_AUTO` when the tiled kernel reproduces the direct one on every probe,
        else :data:`VARIANT_DIRECT`; ``separable`` when the separable kernel does. Each disagreement gives one
        warning that names it.
    """
    key = (device.type, device.index)
    if key not in _choices:
        import warnings

        trusted = {}
        for name in ("tiled", "separable"):
            reason = _kernel_agrees(plugin, device, name)
            trusted[name] = reason is None
            if reason is not None:
                warnings.warn(f"gie.ops: the {name} upfirdn2d kernel disagrees with the direct one on {device} "
                              f"({reason}); using the direct kernel", RuntimeWarning, stacklevel=3)  # fmt: skip
        _choices[key] = (VARIANT_AUTO if trusted["tiled"] else VARIANT_DIRECT, trusted["separable"])
    return _choices[key]


def _cuda_primitive(x: Tensor, kernel: Tensor, *args: int) -> Tensor:
    """The compiled op; a 1-D ``kernel`` (``outer(kernel, kernel)``) runs the separable kernel where it is trusted."""
    plugin = _cuda.load_plugin()
    assert plugin is not None
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    variant, separable = kernel_choice(plugin, x.device)
    kernel = kernel.to(device=x.device, dtype=acc).contiguous()
    if kernel.ndim == 1:
        if separable:
            return plugin.upfirdn2d_separable(x, kernel, kernel, *args, variant)
        kernel = torch.outer(kernel, kernel)
    return plugin.upfirdn2d(x, kernel, *args, variant)


# --------------------------------------------------------------------------------------------------------------------
# Public entry point.
# --------------------------------------------------------------------------------------------------------------------


def upfirdn2d(
    x: Tensor,
    kernel: Tensor,
    up: IntPair = 1,
    down: IntPair = 1,
    pad: Sequence[int] = (0, 0),
    impl: str = "auto",
) -> Tensor:
    """Upsample (zero insertion), FIR-filter (true convolution) and downsample a batch of 2-D maps.

    Args:
        x: Input maps ``[B, C, H, W]`` (float16/bfloat16/float32/float64).
        kernel: FIR kernel ``[kh, kw]`` (a 1-D ``[k]`` kernel means ``outer(k, k)``; the compiled op runs it as two
            1-D passes, see :func:`separable_taps`), applied to every channel.
        up: Upsampling factor, ``int`` or ``(up_x, up_y)``.
        down: Downsampling factor, ``int`` or ``(down_x, down_y)``.
        pad: ``(pad0, pad1)`` for both axes or ``(x0, x1, y0, y1)``; negative values crop.
        impl: ``"auto"`` (CUDA kernel for CUDA tensors if it builds, else ``"torch"``; defers to
            :func:`~gie_cli.ops.set_default_impl` / ``$GIE_OPS_IMPL`` when those are set), ``"torch"``, ``"ref"``
            or ``"cuda"``.

    Returns:
        ``[B, C, (H * up_y + y0 + y1 - kh) // down_y + 1, (W * up_x + x0 + x1 - kw) // down_x + 1]``, dtype of ``x``,
        computed in that dtype (half precision upcast on CPU) whether or not ``torch.autocast`` is on.
    """
    if torch.is_autocast_enabled(x.device.type):  # the filter in x's dtype, as without autocast
        with torch.autocast(x.device.type, enabled=False):
            return upfirdn2d(x, kernel, up, down, pad, impl)
    args = _parse_args(up, down, pad)
    kernel_2d = _as_2d_kernel(kernel)
    _check(x, kernel_2d, args)
    which = _cuda.resolve_impl(impl, x.device, cuda_ok=not kernel.requires_grad)
    if which == "ref":
        return upfirdn2d_ref(x, kernel_2d, up, down, pad)
    if which == "cuda":  # a 1-D kernel stays 1-D: the compiled op's separable kernel
        return _UpFirDn2dFunction.apply(x, kernel, args, _cuda_primitive)
    return _upfirdn2d_torch(x, kernel_2d, args)

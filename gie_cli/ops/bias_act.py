"""Fused bias + scaled leaky ReLU, the activation of StyleGAN2 (Karras et al. 2020).

``fused_leaky_relu(x, b) = leaky_relu(x + b[None, :, None, ...], negative_slope) * scale`` with the bias broadcast on
dim 1. The default ``scale = sqrt(2)`` keeps the activations' second moment. :class:`FusedLeakyReLU` holds the bias as
a parameter named ``bias`` (state-dict key ``activate.bias`` in rosinality-layout generators).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gie_cli.ops import _cuda


def _bias_view(x: Tensor, bias: Tensor) -> Tensor:
    if x.ndim < 2 or bias.ndim != 1 or bias.shape[0] != x.shape[1]:
        raise ValueError(f"bias must be [C] for x [B, C, ...]; got bias {tuple(bias.shape)}, x {tuple(x.shape)}")
    return bias.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))


def fused_leaky_relu_ref(
    x: Tensor, bias: Tensor | None = None, negative_slope: float = 0.2, scale: float = 2**0.5
) -> Tensor:
    """Reference formula: ``leaky_relu(x + bias, negative_slope) * scale``.

    Args:
        x: Input ``[B, C, ...]`` (rank >= 2).
        bias: Optional bias ``[C]``, broadcast on dim 1 (cast to ``x.dtype``).
        negative_slope: Slope for negative inputs.
        scale: Output gain.

    Returns:
        Tensor of the shape and dtype of ``x``.
    """
    if bias is not None:
        x = x + _bias_view(x, bias)
    return F.leaky_relu(x, negative_slope) * scale


def _forward_no_grad(x: Tensor, bias: Tensor | None, negative_slope: float, scale: float) -> Tensor:
    """The reference operations in the same order (bit-identical), in place after the first one: one allocation."""
    if bias is None:
        return F.leaky_relu(x, negative_slope).mul_(scale)
    return F.leaky_relu_(x + _bias_view(x, bias), negative_slope).mul_(scale)


Primitive = Callable[[Tensor, Tensor | None, float, float], Tensor]  # prim(x, bias, slope, scale) -> y, no autograd


class _FusedLeakyReLUFunction(torch.autograd.Function):
    """Autograd around a non-differentiable fused bias+activation primitive (torch in-place ops or the CUDA kernel).

    Saves only the output ``y``. Backward: ``grad_x = grad * where(y > 0, scale, negative_slope * scale)`` (computed
    as ``leaky_relu_backward(grad * scale, y)``, the reference's order of operations), ``grad_bias = grad_x`` summed
    over all dims but 1. Needs ``negative_slope >= 0`` and ``scale > 0`` so that ``y > 0`` iff ``x + bias > 0``. The
    backward is made of differentiable torch ops, so double backward works too.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: Tensor, bias: Tensor | None, negative_slope: float, scale: float, prim: Primitive
    ) -> Tensor:
        y = prim(x, bias, negative_slope, scale)
        ctx.save_for_backward(y)
        ctx.negative_slope, ctx.scale, ctx.has_bias = negative_slope, scale, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        grad_x = torch.ops.aten.leaky_relu_backward(grad * ctx.scale, y, ctx.negative_slope, True)
        grad_b = None
        if ctx.has_bias and ctx.needs_input_grad[1]:
            grad_b = grad_x.sum(dim=[d for d in range(grad_x.ndim) if d != 1])
        return (grad_x if ctx.needs_input_grad[0] else None), grad_b, None, None, None


def _fused_leaky_relu_torch(x: Tensor, bias: Tensor | None, negative_slope: float, scale: float) -> Tensor:
    """Fast path: bit-identical to the reference, with one forward allocation instead of three.

    Without autograd it is :func:`_forward_no_grad`. With autograd the same in-place forward runs inside
    :class:`_FusedLeakyReLUFunction` (which saves only the output) when ``negative_slope >= 0`` and ``scale > 0``;
    other parameters use the out-of-place formula.
    """
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))
    if not needs_grad:
        return _forward_no_grad(x, bias, negative_slope, scale)
    if negative_slope >= 0 and scale > 0:
        return _FusedLeakyReLUFunction.apply(x, bias, negative_slope, scale, _forward_no_grad)
    return fused_leaky_relu_ref(x, bias, negative_slope, scale)


def _cuda_primitive(x: Tensor, bias: Tensor | None, negative_slope: float, scale: float) -> Tensor:
    plugin = _cuda.load_plugin()
    assert plugin is not None
    b = x.new_empty(0) if bias is None else bias.to(x.dtype).contiguous()
    return plugin.bias_act(x, b, float(negative_slope), float(scale))


def fused_leaky_relu(
    x: Tensor,
    bias: Tensor | None = None,
    negative_slope: float = 0.2,
    scale: float = 2**0.5,
    impl: str = "auto",
) -> Tensor:
    """Bias add + leaky ReLU + gain in one op: ``leaky_relu(x + bias, negative_slope) * scale``.

    Args:
        x: Input ``[B, C, ...]`` (rank >= 2).
        bias: Optional bias ``[C]``, broadcast on dim 1 (cast to ``x.dtype``).
        negative_slope: Slope for negative inputs.
        scale: Output gain (``sqrt(2)`` in StyleGAN2).
        impl: ``"auto"``, ``"torch"``, ``"ref"`` or ``"cuda"`` (see :func:`gie_cli.ops.set_default_impl`). The CUDA
            kernel serves ``negative_slope >= 0`` and ``scale > 0``; other values use the torch path under ``"auto"``.

    Returns:
        Tensor of the shape and dtype of ``x``.
    """
    if bias is not None:
        _bias_view(x, bias)  # validate early, whatever the implementation
    elif x.ndim < 2:
        raise ValueError(f"x must be [B, C, ...], got shape {tuple(x.shape)}")
    which = _cuda.resolve_impl(impl, x.device, cuda_ok=negative_slope >= 0 and scale > 0)
    if which == "ref":
        return fused_leaky_relu_ref(x, bias, negative_slope, scale)
    if which == "cuda":
        return _FusedLeakyReLUFunction.apply(x, bias, negative_slope, scale, _cuda_primitive)
    return _fused_leaky_relu_torch(x, bias, negative_slope, scale)


class FusedLeakyReLU(nn.Module):
    """Module form of :func:`fused_leaky_relu` with a learned per-channel bias (zeros at init).

    Args:
        channel: Number of channels ``C`` (size of dim 1 of the input).
        bias: Whether to learn a bias parameter named ``bias`` (``[C]``); without it the state dict is empty.
        negative_slope: Slope for negative inputs.
        scale: Output gain.
    """

    def __init__(self, channel: int, bias: bool = True, negative_slope: float = 0.2, scale: float = 2**0.5) -> None:
        super().__init__()
        if bias:
            self.bias = nn.Parameter(torch.zeros(channel))
        else:
            self.register_parameter("bias", None)
        self.channel = channel
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        """Apply the activation to ``x`` ``[B, C, ...]``; returns the same shape."""
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)

    def extra_repr(self) -> str:
        return (
            f"{self.channel}, bias={self.bias is not None}, negative_slope={self.negative_slope}, scale={self.scale:g}"
        )

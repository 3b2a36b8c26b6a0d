"""Low-level StyleGAN2 ops (Karras et al. 2020): upfirdn2d and the fused bias + leaky ReLU activation.

Every op takes ``impl``: ``"auto"`` (default), ``"torch"`` (fast pure PyTorch), ``"ref"`` (reference formula) or
``"cuda"`` (JIT-compiled kernel, built lazily on first CUDA use). :func:`set_default_impl` (or the environment
variable ``GIE_OPS_IMPL``) forces what ``"auto"`` means for the whole process, e.g. to benchmark fast vs ref.
"""

from gie_cli.ops._cuda import IMPLS, active_impl, build_error, get_default_impl, set_default_impl, use_impl
from gie_cli.ops.bias_act import FusedLeakyReLU, fused_leaky_relu, fused_leaky_relu_ref
from gie_cli.ops.upfirdn2d import separable_taps, upfirdn2d, upfirdn2d_ref

__all__ = [
    "IMPLS",
    "FusedLeakyReLU",
    "active_impl",
    "build_error",
    "fused_leaky_relu",
    "fused_leaky_relu_ref",
    "get_default_impl",
    "set_default_impl",
    "separable_taps",
    "upfirdn2d",
    "upfirdn2d_ref",
    "use_impl",
]

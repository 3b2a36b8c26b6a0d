"""Tests of the StyleGAN2 (Karras et al. 2020) low-level ops: upfirdn2d and the fused bias + leaky ReLU."""

from __future__ import annotations

import importlib
import itertools
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from gie_cli import ops
from gie_cli.ops import (
    FusedLeakyReLU,
    _cuda,
    fused_leaky_relu,
    fused_leaky_relu_ref,
    set_default_impl,
    upfirdn2d,
    upfirdn2d_ref,
    use_impl,
)

# the package re-exports functions under the submodules' names, so fetch the modules themselves
upfirdn2d_mod = importlib.import_module("gie_cli.ops.upfirdn2d")
bias_act_mod = importlib.import_module("gie_cli.ops.bias_act")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (compiled-op tests)")

K1 = torch.tensor([1.0, 3.0, 3.0, 1.0])
SEP4 = torch.outer(K1, K1) / 64


def _kernel(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(sum(map(ord, kind)))
    return {
        "sep4": SEP4,
        "sep4x4gain": SEP4 * 4,
        "rand4": torch.randn(4, 4, generator=g),
        "rand3": torch.randn(3, 3, generator=g),
        "one": torch.randn(1, 1, generator=g),
        "odd5x3": torch.randn(5, 3, generator=g),
        "odd2x5": torch.randn(2, 5, generator=g),
    }[kind]


def _direct(x, kernel, up=1, down=1, pad=(0, 0)):
    """upfirdn2d straight from its definition, one output sample at a time (float64, tiny inputs only).

    Output (oy, ox) correlates the flipped kernel with the padded, zero-inserted input at (oy*down + i, ox*down + j);
    that position holds input sample ((oy*down + i - pad_y0) / up, ...) if it is a multiple of up inside the input.
    """
    upx, upy = (up, up) if isinstance(up, int) else up
    downx, downy = (down, down) if isinstance(down, int) else down
    px0, px1, py0, py1 = (pad[0], pad[1], pad[0], pad[1]) if len(pad) == 2 else pad
    x, kernel = x.double(), kernel.double()
    b, c, h, w = x.shape
    kh, kw = kernel.shape
    oh, ow = (h * upy + py0 + py1 - kh) // downy + 1, (w * upx + px0 + px1 - kw) // downx + 1
    out = torch.zeros(b, c, oh, ow, dtype=torch.float64)
    for oy, ox in itertools.product(range(oh), range(ow)):
        for i, j in itertools.product(range(kh), range(kw)):
            uy, ux = oy * downy + i - py0, ox * downx + j - px0
            if uy < 0 or ux < 0 or uy % upy or ux % upx or uy // upy >= h or ux // upx >= w:
                continue
            out[:, :, oy, ox] += x[:, :, uy // upy, ux // upx] * kernel[kh - 1 - i, kw - 1 - j]
    return out


# ---------------------------------------------------------------------------------------------------------------------
# upfirdn2d: the reference is the definition; the fast path is the reference.
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "up", "down", "pad"),
    [
        ("rand4", 1, 1, (1, 2)),
        ("rand4", 2, 1, (2, 1)),
        ("odd5x3", 1, 2, (2, 2)),
        ("rand3", 2, 2, (-1, 1)),
        ("odd2x5", (2, 1), (1, 2), (1, -1, 0, 2)),
        ("odd5x3", (1, 3), 2, (0, 3, 2, -2)),
    ],
)
def test_ref_matches_definition(kind, up, down, pad):
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64)
    k = _kernel(kind).double()
    torch.testing.assert_close(upfirdn2d_ref(x, k, up, down, pad), _direct(x, k, up, down, pad))


def test_ref_is_a_true_convolution():
    """An impulse comes out as the kernel itself (not flipped), offset by the padding."""
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1
    k = torch.arange(6.0).reshape(2, 3)
    out = upfirdn2d_ref(x, k, pad=(0, 0))  # output [4, 3]; impulse lands at rows 1-2, cols 0-2
    torch.testing.assert_close(out[0, 0, 1:3, 0:3], k)
    assert out.sum() == k.sum()


SHAPES = [(2, 3, 8, 8), (2, 512, 4, 4), (1, 16, 33, 17)]
PADS = [(0, 0), (1, 1), (2, 1), (1, 2), (2, 2), (-1, -1), (-2, 1), (3, -1), (1, -1, 2, 0)]


@pytest.mark.parametrize("kind", ["sep4", "rand4", "rand3", "one", "odd5x3", "odd2x5"])
@pytest.mark.parametrize(("up", "down"), [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_fast_matches_ref(kind, up, down):
    k = _kernel(kind)
    torch.manual_seed(0)
    checked = 0
    for shape, pad in itertools.product(SHAPES, PADS):
        x = torch.randn(shape)
        try:
            ref = upfirdn2d_ref(x, k, up, down, pad)
        except ValueError:  # empty output for this combination
            continue
        out = upfirdn2d(x, k, up, down, pad, impl="torch")
        assert out.shape == ref.shape and out.dtype == x.dtype
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        checked += 1
    assert checked >= 20


@pytest.mark.parametrize(("up", "down"), [((2, 1), (1, 2)), ((1, 2), 1), (3, 1), (1, 3), ((2, 3), (3, 2))])
def test_fast_matches_ref_per_axis_factors(up, down):
    x = torch.randn(2, 5, 9, 7)
    for kind, pad in itertools.product(["rand4", "odd5x3"], [(2, 1), (1, 2, -1, 3)]):
        k = _kernel(kind)
        torch.testing.assert_close(
            upfirdn2d(x, k, up, down, pad), upfirdn2d_ref(x, k, up, down, pad), atol=1e-5, rtol=1e-5
        )


def test_stylegan2_configurations():
    """The three uses in a StyleGAN2 generator/encoder give the expected sizes and match the reference."""
    x = torch.randn(2, 3, 16, 16)
    up = upfirdn2d(x, SEP4 * 4, up=2, pad=(2, 1))  # Upsample (RGB skip)
    assert up.shape == (2, 3, 32, 32)
    torch.testing.assert_close(up, upfirdn2d_ref(x, SEP4 * 4, up=2, pad=(2, 1)))
    t = torch.randn(2, 32, 33, 33)  # output of a stride-2 transposed 3x3 conv on 16x16
    blur = upfirdn2d(t, SEP4 * 4, pad=(1, 1))
    assert blur.shape == (2, 32, 32, 32)
    torch.testing.assert_close(blur, upfirdn2d_ref(t, SEP4 * 4, pad=(1, 1)))
    down = upfirdn2d(t[..., :32, :32], SEP4, down=2, pad=(1, 1))  # Downsample
    assert down.shape == (2, 32, 16, 16)
    torch.testing.assert_close(down, upfirdn2d_ref(t[..., :32, :32], SEP4, down=2, pad=(1, 1)))
    # constant maps stay constant in the interior (the kernel is normalised)
    ones = upfirdn2d(torch.ones(1, 4, 8, 8), SEP4 * 4, up=2, pad=(2, 1))
    torch.testing.assert_close(ones[..., 2:-2, 2:-2], torch.ones_like(ones[..., 2:-2, 2:-2]))


def test_one_dimensional_kernel_is_separable_shorthand():
    x = torch.randn(2, 4, 6, 6)
    for impl in ("torch", "ref"):
        torch.testing.assert_close(
            upfirdn2d(x, K1, up=2, pad=(2, 1), impl=impl),
            upfirdn2d(x, torch.outer(K1, K1), up=2, pad=(2, 1), impl="ref"),
        )


@pytest.mark.parametrize(
    ("shape", "up", "down", "pad", "kind"),
    [
        ((1, 2, 5, 4), 1, 1, (1, 2), "rand4"),
        ((1, 2, 4, 5), 2, 1, (2, 1), "rand4"),
        ((1, 2, 6, 5), 1, 2, (-1, 2), "odd5x3"),
        ((1, 2, 4, 3), 2, 2, (1, 1), "rand3"),
        ((1, 2, 3, 4), (2, 1), (1, 2), (1, 0, 2, -1), "odd2x5"),
        ((1, 16, 3, 3), 2, 1, (1, 1), "sep4"),  # >= 16 channels: NCHW branch
    ],
)
def test_fast_gradcheck(shape, up, down, pad, kind):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    k = _kernel(kind).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, k: upfirdn2d(x, k, up, down, pad, impl="torch"), (x, k))


@pytest.mark.parametrize(("up", "down", "pad"), [(2, 1, (2, 1)), (1, 1, (1, 1)), (1, 2, (1, 1)), (2, 2, (-1, 2))])
def test_fast_gradients_match_ref(up, down, pad):
    for shape in [(2, 3, 8, 8), (2, 32, 7, 9)]:
        x = torch.randn(shape)
        k = _kernel("rand4")
        grads = []
        for impl in ("torch", "ref"):
            xi, ki = x.clone().requires_grad_(), k.clone().requires_grad_()
            y = upfirdn2d(xi, ki, up, down, pad, impl=impl)
            y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
            grads.append((xi.grad, ki.grad))
        torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-4, rtol=1e-5)


def test_memory_formats():
    k = SEP4 * 4
    for c in (3, 32):
        x = torch.randn(2, c, 9, 11)
        ref = upfirdn2d_ref(x, k, 2, 1, (2, 1))
        out = upfirdn2d(x, k, 2, 1, (2, 1))
        assert out.is_contiguous()
        torch.testing.assert_close(out, ref)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(upfirdn2d(x_cl, k, 2, 1, (2, 1)), ref)
        x_t = x.transpose(2, 3).contiguous().transpose(2, 3)  # non-contiguous view with the same values
        torch.testing.assert_close(upfirdn2d(x_t, k, 1, 2, (1, 1)), upfirdn2d_ref(x, k, 1, 2, (1, 1)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision(dtype):
    x = torch.randn(2, 8, 8, 8)
    for up, down, pad in [(2, 1, (2, 1)), (1, 1, (1, 1)), (1, 2, (1, 1))]:
        ref = upfirdn2d_ref(x, SEP4 * 4, up, down, pad)
        for impl in ("torch", "ref"):
            out = upfirdn2d(x.to(dtype), SEP4 * 4, up, down, pad, impl=impl)
            assert out.dtype == dtype
            torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


def test_invalid_arguments():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match="up"):
        upfirdn2d(x, SEP4, up=0)
    with pytest.raises(ValueError, match="pad"):
        upfirdn2d(x, SEP4, pad=(1, 1, 1))
    with pytest.raises(ValueError, match="empty"):
        upfirdn2d(x, SEP4, pad=(-1, -1))
    with pytest.raises(ValueError, match="B, C, H, W"):
        upfirdn2d(x[0], SEP4)
    with pytest.raises(ValueError, match="unknown ops implementation"):
        upfirdn2d(x, SEP4, impl="fast")


# ---------------------------------------------------------------------------------------------------------------------
# Fused bias + leaky ReLU.
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 6), (2, 6, 5), (2, 6, 4, 3), (1, 6, 2, 3, 2)])
@pytest.mark.parametrize(("slope", "scale"), [(0.2, 2**0.5), (0.0, 1.0), (-0.1, 0.5)])
def test_fused_leaky_relu_is_the_formula(shape, slope, scale):
    x = torch.randn(shape)
    x.view(-1)[:3] = torch.tensor([0.0, -0.0, 1e-30])
    bias = torch.randn(shape[1])
    expected = torch.nn.functional.leaky_relu(x + bias.view(1, -1, *([1] * (len(shape) - 2))), slope) * scale
    for b, exp in [(bias, expected), (None, torch.nn.functional.leaky_relu(x, slope) * scale)]:
        assert torch.equal(fused_leaky_relu_ref(x, b, slope, scale), exp)
        assert torch.equal(fused_leaky_relu(x, b, slope, scale, impl="torch"), exp)
        assert torch.equal(fused_leaky_relu(x.clone().requires_grad_(), b, slope, scale, impl="torch"), exp)
        with torch.no_grad():
            assert torch.equal(fused_leaky_relu(x, b, slope, scale), exp)
    x_copy = x.clone()
    fused_leaky_relu(x, None, slope, scale)
    assert torch.equal(x, x_copy)  # never in place on the input


@pytest.mark.slow
def test_fused_leaky_relu_second_order_gradients():
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, b: fused_leaky_relu(x, b, impl="torch"), (x, b))


def test_fused_leaky_relu_gradients():
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, b: fused_leaky_relu(x, b, impl="torch"), (x, b))
    grads = []
    for impl in ("torch", "ref"):
        xi, bi = x.detach().float().requires_grad_(), b.detach().float().requires_grad_()
        fused_leaky_relu(xi, bi, impl=impl).pow(2).sum().backward()
        grads.append((xi.grad, bi.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    for slope, scale in [(0.0, 1.0), (-0.1, 0.5)]:  # relu, and a slope the custom autograd path leaves to the formula
        xs = x.detach().requires_grad_()
        assert torch.autograd.gradcheck(lambda x, b, s=slope, c=scale: fused_leaky_relu(x, b, s, c), (xs, b))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_leaky_relu_reduced_precision(dtype):
    x, b = torch.randn(2, 4, 3, 3).to(dtype), torch.randn(4)  # float32 bias is cast to x's dtype
    out = fused_leaky_relu(x, b)
    assert out.dtype == dtype
    assert torch.equal(out, fused_leaky_relu_ref(x, b))


def test_fused_leaky_relu_rejects_bad_bias():
    with pytest.raises(ValueError, match="bias"):
        fused_leaky_relu(torch.randn(2, 4, 3), torch.zeros(3))


def test_fused_leaky_relu_module_state_dict():
    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.activate = FusedLeakyReLU(8)

    layer = Layer()
    assert list(layer.state_dict()) == ["activate.bias"]
    assert layer.activate.bias.shape == (8,) and not layer.activate.bias.any()
    layer.load_state_dict({"activate.bias": torch.arange(8.0)}, strict=True)
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(layer.activate(x), fused_leaky_relu_ref(x, torch.arange(8.0)))
    no_bias = FusedLeakyReLU(8, bias=False)
    assert not no_bias.state_dict() and no_bias.bias is None
    assert torch.equal(no_bias(x), fused_leaky_relu_ref(x))


# ---------------------------------------------------------------------------------------------------------------------
# Implementation selection and the lazy CUDA loader.
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_loader(monkeypatch):
    """A loader that has not been attempted yet and whose build fails (restored afterwards)."""
    calls = []

    def failing_build():
        calls.append(1)
        raise RuntimeError("forced failure for the test")

    for name, value in [("_plugin", None), ("_attempted", False), ("_error", None), ("_warned", False)]:
        monkeypatch.setattr(_cuda, name, value)
    monkeypatch.setattr(_cuda, "_build", failing_build)
    monkeypatch.setattr(_cuda, "_default_impl", "auto")
    return calls


def test_loader_never_invoked_for_cpu_tensors(fresh_loader):
    x, k, b = torch.randn(1, 3, 4, 4, requires_grad=True), SEP4, torch.zeros(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for impl in ("auto", "torch", "ref"):
            upfirdn2d(x, k, up=2, pad=(2, 1), impl=impl).sum().backward()
            fused_leaky_relu(x, b, impl=impl)
        FusedLeakyReLU(3)(x)
        assert ops.active_impl("cpu") == "torch"
        with pytest.raises(ValueError, match="CUDA tensors"):
            upfirdn2d(x, k, impl="cuda")
    assert fresh_loader == [] and not _cuda._attempted


def test_failed_build_falls_back_with_one_warning(fresh_loader):
    cuda = torch.device("cuda")  # only the device type is inspected; no CUDA needed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _cuda.resolve_impl("auto", cuda) == "torch"
        assert _cuda.resolve_impl("auto", cuda) == "torch"
        assert ops.active_impl(cuda) == "torch"
    assert len(fresh_loader) == 1, "the build is attempted once per process"
    assert len(caught) == 1 and issubclass(caught[0].category, RuntimeWarning)
    assert "forced failure for the test" in str(caught[0].message)
    assert "forced failure" in ops.build_error()
    with pytest.raises(RuntimeError, match="forced failure"):
        _cuda.resolve_impl("cuda", cuda)
    assert len(fresh_loader) == 1
    # calls the compiled op cannot serve never trigger the build
    assert _cuda.resolve_impl("auto", cuda, cuda_ok=False) == "torch"


@pytest.mark.skipif(torch.version.cuda is not None, reason="checks the CPU-only PyTorch failure reason")
def test_real_build_fails_fast_on_cpu_torch():
    with pytest.raises(RuntimeError, match="no CUDA support"):
        _cuda._build()


def test_default_impl_switch(monkeypatch):
    monkeypatch.setattr(_cuda, "_default_impl", "auto")
    calls = []
    real_ref = upfirdn2d_mod.upfirdn2d_ref
    monkeypatch.setattr(upfirdn2d_mod, "upfirdn2d_ref", lambda *a: calls.append(1) or real_ref(*a))
    x = torch.randn(1, 2, 4, 4)
    upfirdn2d(x, SEP4, pad=(1, 2))
    assert calls == []
    with use_impl("ref"):
        assert ops.get_default_impl() == "ref"
        upfirdn2d(x, SEP4, pad=(1, 2))
        upfirdn2d(x, SEP4, pad=(1, 2), impl="torch")  # an explicit impl wins over the default
    assert calls == [1] and ops.get_default_impl() == "auto"
    assert set_default_impl("torch") == "auto"
    with pytest.raises(ValueError):
        set_default_impl("fastest")


def test_env_var(monkeypatch):
    monkeypatch.setenv("GIE_OPS_IMPL", "REF")
    assert _cuda._impl_from_env() == "ref"
    monkeypatch.setenv("GIE_OPS_IMPL", "bogus")
    with pytest.warns(RuntimeWarning, match="GIE_OPS_IMPL"):
        assert _cuda._impl_from_env() == "auto"
    env = {**os.environ, "GIE_OPS_IMPL": "ref"}
    code = "from gie_cli import ops; print(ops.get_default_impl())"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ref"


# ---------------------------------------------------------------------------------------------------------------------
# The autograd wrappers of the compiled ops, exercised on CPU with reference primitives (checks the backward math).
# ---------------------------------------------------------------------------------------------------------------------


def _ref_primitive(x, kernel, upx, upy, downx, downy, px0, px1, py0, py1):
    return upfirdn2d_ref(x, kernel, (upx, upy), (downx, downy), (px0, px1, py0, py1))


UPFIRDN_CASES = [
    (2, 1, (2, 1)),
    (1, 1, (1, 1)),
    (1, 2, (2, 2)),
    (2, 2, (-1, 2)),
    ((2, 1), (1, 2), (1, 0, -1, 3)),
    (3, 1, (0, 4)),
]


def _compiled_upfirdn(up, down, pad, kind="odd5x3"):
    args = upfirdn2d_mod._parse_args(up, down, pad)
    k = torch.randn(3, dtype=torch.float64) if kind == "taps3" else _kernel(kind).double()
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)

    def f(x):
        return upfirdn2d_mod._UpFirDn2dFunction.apply(x, k, args, _ref_primitive)

    return f, x, k


@pytest.mark.parametrize("kind", ["odd5x3", "taps3"])  # taps3: a 1-D kernel, run as two passes by the compiled op
@pytest.mark.parametrize(("up", "down", "pad"), UPFIRDN_CASES)
def test_compiled_op_backward_math(up, down, pad, kind):
    f, x, k = _compiled_upfirdn(up, down, pad, kind)
    torch.testing.assert_close(f(x), upfirdn2d_ref(x, k, up, down, pad))
    assert torch.autograd.gradcheck(f, (x,))


@pytest.mark.slow
@pytest.mark.parametrize(("up", "down", "pad"), UPFIRDN_CASES)
def test_compiled_op_second_order_math(up, down, pad):
    f, x, _ = _compiled_upfirdn(up, down, pad)
    assert torch.autograd.gradgradcheck(f, (x,))


def test_grad_args_restore_input_size():
    for n, up, down, p0, p1, k in itertools.product([4, 5, 7], [1, 2, 3], [1, 2, 3], [-1, 0, 2], [-1, 1, 3], [1, 3, 4]):
        if n * up + p0 + p1 < k:
            continue
        out = (n * up + p0 + p1 - k) // down + 1
        g = upfirdn2d_mod._grad_args((up, up, down, down, p0, p1, p0, p1), (n, n), (out, out), (k, k))
        assert (out * g[0] + g[4] + g[5] - k) // g[2] + 1 == n


def _compiled_act():
    def prim(x, bias, slope, scale):
        with torch.no_grad():
            return fused_leaky_relu_ref(x, bias, slope, scale)

    def with_bias(x, b):
        return bias_act_mod._FusedLeakyReLUFunction.apply(x, b, 0.2, 2**0.5, prim)

    def without_bias(x):
        return bias_act_mod._FusedLeakyReLUFunction.apply(x, None, 0.2, 2**0.5, prim)

    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    return with_bias, without_bias, x, b


def test_compiled_act_backward_math():
    with_bias, without_bias, x, b = _compiled_act()
    torch.testing.assert_close(with_bias(x, b), fused_leaky_relu_ref(x, b))
    torch.testing.assert_close(without_bias(x), fused_leaky_relu_ref(x))
    for f, inputs in [(with_bias, (x, b)), (without_bias, (x,))]:
        assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.slow
def test_compiled_act_second_order_math():
    with_bias, without_bias, x, b = _compiled_act()
    for f, inputs in [(with_bias, (x, b)), (without_bias, (x,))]:
        assert torch.autograd.gradgradcheck(f, inputs)


# ---------------------------------------------------------------------------------------------------------------------
# Compiled CUDA ops (only with a GPU).
# ---------------------------------------------------------------------------------------------------------------------


@needs_cuda
def test_cuda_upfirdn2d_matches_ref():
    for (up, down, pad), kind in itertools.product(
        [(2, 1, (2, 1)), (1, 1, (1, 1)), (1, 2, (1, 1)), (2, 2, (-1, 2)), ((2, 1), (1, 2), (1, 0, -1, 3))],
        ["sep4", "rand4", "odd5x3"],
    ):
        x = torch.randn(2, 5, 9, 8, device="cuda", requires_grad=True)
        k = _kernel(kind).cuda()
        y = upfirdn2d(x, k, up, down, pad, impl="cuda")
        y_ref = upfirdn2d_ref(x, k, up, down, pad)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        g = torch.randn_like(y)
        (gx,) = torch.autograd.grad(y, x, g)
        (gx_ref,) = torch.autograd.grad(y_ref, x, g)
        torch.testing.assert_close(gx, gx_ref, atol=1e-5, rtol=1e-5)
    x = torch.randn(1, 2, 5, 4, device="cuda", dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: upfirdn2d(x, SEP4.cuda().double(), 2, 1, (2, 1), impl="cuda"), (x,))
    xh = torch.randn(2, 8, 16, 16, device="cuda", dtype=torch.float16)
    torch.testing.assert_close(
        upfirdn2d(xh, SEP4.cuda() * 4, 2, 1, (2, 1), impl="cuda").float(),
        upfirdn2d_ref(xh.float(), SEP4.cuda() * 4, 2, 1, (2, 1)),
        atol=1e-2,
        rtol=1e-2,
    )
    assert ops.active_impl("cuda") == "cuda"


@needs_cuda
def test_cuda_upfirdn2d_tiled_direct_and_separable_kernels_match_ref():
    """The compiled kernels, forced, on maps of several 32x32 tiles and many planes, against the reference."""
    plugin = _cuda.load_plugin()
    VARIANT_DIRECT, VARIANT_TILED = upfirdn2d_mod.VARIANT_DIRECT, upfirdn2d_mod.VARIANT_TILED  # noqa: N806
    for (up, down, pad), kind in itertools.product(
        [((2, 2), (1, 1), (2, 1, 2, 1)), ((1, 1), (2, 2), (1, 1, 1, 1)), ((2, 1), (1, 2), (1, 0, -1, 3))],
        ["sep4", "odd5x3"],
    ):
        x = torch.randn(3, 7, 70, 45, device="cuda")
        k = _kernel(kind).cuda()
        ref = upfirdn2d_ref(x, k, up, down, pad)
        for variant in (VARIANT_DIRECT, VARIANT_TILED):
            y = plugin.upfirdn2d(x, k.float().contiguous(), *up, *down, *pad, variant)
            torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    # the separable kernel, with different taps per axis, and with taps too long for its shared memory (the 2-D
    # kernels then run the outer product)
    for (up, down, pad), (kh, kw) in itertools.product(
        [((2, 2), (1, 1), (2, 1, 2, 1)), ((1, 1), (2, 2), (1, 1, 1, 1)), ((2, 1), (1, 2), (1, 0, -1, 3))],
        [(4, 4), (5, 3), (1, 1), (150, 150)],
    ):
        x = torch.randn(3, 7, 240, 240, device="cuda")
        ky, kx = torch.randn(kh, device="cuda"), torch.randn(kw, device="cuda")
        ref = upfirdn2d_ref(x, torch.outer(ky, kx), up, down, pad)
        y = plugin.upfirdn2d_separable(x, ky, kx, *up, *down, *pad, VARIANT_DIRECT)
        torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)
    assert upfirdn2d_mod.kernel_choice(plugin, torch.device("cuda")) == (upfirdn2d_mod.VARIANT_AUTO, True)


class _FakePlugin:
    """The compiled op's interface on the torch path; ``broken`` names a kernel ("tiled" or "separable") made wrong."""

    def __init__(self, broken: str | None) -> None:
        self.broken, self.calls = broken, []

    def _run(self, x, k, args, wrong):
        y = upfirdn2d(x.float(), k, args[:2], args[2:4], args[4:], impl="torch").to(x.dtype)
        return y + 1e-3 * y.abs().max() if wrong else y

    def upfirdn2d(self, x, k, *args):
        *args, variant = args
        self.calls.append(variant)
        return self._run(x, k, args, self.broken == "tiled" and variant == upfirdn2d_mod.VARIANT_TILED)

    def upfirdn2d_separable(self, x, ky, kx, *args):
        *args, variant = args
        self.calls.append("separable")
        return self._run(x, torch.outer(ky, kx), args, self.broken == "separable")


@pytest.mark.parametrize("broken", [None, "tiled", "separable"])
def test_the_tiled_and_separable_kernels_are_used_only_where_they_reproduced_the_direct_one(broken, monkeypatch):
    """At the compiled op's first use on a device the tiled and the separable kernel are compared with the direct one
    on every probe: agreement lets the op pick them (a 1-D kernel runs the separable one); a disagreement pins the
    direct kernel (and the 2-D path for 1-D kernels), with one warning naming that kernel."""
    mod = upfirdn2d_mod
    monkeypatch.setattr(mod, "_choices", {})
    plugin = _FakePlugin(broken)
    monkeypatch.setattr(_cuda, "load_plugin", lambda: plugin)
    x = torch.randn(1, 2, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = mod._cuda_primitive(x, SEP4, 2, 2, 1, 1, 2, 1, 2, 1)
        probes = len(plugin.calls) - 1
        two_d = mod._cuda_primitive(x, SEP4, 2, 2, 1, 1, 2, 1, 2, 1)
        one_d = mod._cuda_primitive(x, K1 / 8, 2, 2, 1, 1, 2, 1, 2, 1)
    variant = mod.VARIANT_DIRECT if broken == "tiled" else mod.VARIANT_AUTO
    assert plugin.calls[-3:] == [variant, variant, variant if broken == "separable" else "separable"]
    # probed once, not again: the direct and tiled kernels, then the direct and separable ones, up to a disagreement
    n = 2 * len(mod._PROBES)  # float32 and float16 per probe
    assert probes == {None: 4 * n, "tiled": 2 + 2 * n, "separable": 2 * n + 2}[broken]
    messages = [str(w.message) for w in caught if "upfirdn2d kernel disagrees" in str(w.message)]
    assert len(messages) == (0 if broken is None else 1)
    assert broken is None or f"the {broken} upfirdn2d kernel" in messages[0]
    for y in (first, two_d, one_d):
        torch.testing.assert_close(y, upfirdn2d_ref(x, SEP4, 2, 1, (2, 1)))


def test_separable_taps_reproduce_stylegan2_kernels_exactly():
    from gie_cli.models.stylegan2 import Blur, Upsample, make_kernel

    for k, gain in itertools.product([[1, 3, 3, 1], [1, 2, 1], [1]], [1, 4]):
        kernel = make_kernel(k) * gain
        taps = ops.separable_taps(kernel)
        assert taps is not None and torch.equal(torch.outer(taps, taps), kernel)
    g = torch.Generator().manual_seed(0)
    for kernel in [torch.randn(4, 4, generator=g), -SEP4, torch.zeros(4, 4), SEP4[:3], K1, SEP4.to(torch.int64)]:
        assert ops.separable_taps(kernel) is None
    # the filters pass the taps: the same result as their kernel, on the fast path and the reference
    x = torch.randn(2, 3, 9, 7)
    for module, kw in [(Blur([1, 3, 3, 1], (2, 1), 2), {}), (Upsample([1, 3, 3, 1]), {"up": 2})]:
        assert module.filter_kernel().ndim == 1
        for impl in ("torch", "ref"):
            with use_impl(impl):
                assert torch.equal(module(x), upfirdn2d(x, module.kernel, pad=module.pad, impl=impl, **kw))
        # a checkpoint's kernel that is no outer product replaces the taps
        other = torch.randn(4, 4, generator=g)
        module.load_state_dict({"kernel": other})
        assert module.filter_kernel() is module.kernel
        torch.testing.assert_close(module(x), upfirdn2d_ref(x, other, pad=module.pad, **kw))
        module.load_state_dict({"kernel": SEP4 * 4})
        assert module.filter_kernel().ndim == 1
        assert "taps" not in module.state_dict()


@needs_cuda
def test_cuda_fused_leaky_relu_matches_ref():
    x = torch.randn(3, 6, 5, 4, device="cuda", requires_grad=True)
    b = torch.randn(6, device="cuda", requires_grad=True)
    for bias in (b, None):
        y = fused_leaky_relu(x, bias, impl="cuda")
        y_ref = fused_leaky_relu_ref(x, bias)
        torch.testing.assert_close(y, y_ref)
        g = torch.randn_like(y)
        inputs = (x,) if bias is None else (x, bias)
        for a, r in zip(torch.autograd.grad(y, inputs, g), torch.autograd.grad(y_ref, inputs, g), strict=True):
            torch.testing.assert_close(a, r)
    xh = torch.randn(2, 6, 8, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(
        fused_leaky_relu(xh, b.detach(), impl="cuda"), fused_leaky_relu_ref(xh, b.detach()), atol=2e-2, rtol=2e-2
    )

"""The generator's fast paths (issue 21) against the fp32 grouped path: modulated conv implementations, the fused
upsample + blur, autocast precision, torch.compile, CUDA graphs, and their CLI switches.

PSNR is over the data range 2 of images in [-1, 1] (``gie_cli.metrics.ssim.psnr(a, b, 2.0)``), the worst item of
the batch; the precision checks use the trained 64 px demo generator (``world.generator``), whose renders lie in
[-1, 1] as real ones do.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cuda, make_tiny_e4e, slow, write_cli_inputs
from typer.testing import CliRunner

from gie_cli.cli import app
from gie_cli.device import autocast_supported, check_cuda_graphs, resolve_precision, stack_to_device
from gie_cli.errors import UsageError
from gie_cli.methods import create_method, invert_and_render
from gie_cli.metrics.ssim import psnr
from gie_cli.models.stylegan2 import (
    MODCONV_IMPLS,
    FastPath,
    Generator,
    Hook,
    ModulatedConv2d,
    get_default_fast_path,
    set_default_fast_path,
    use_fast_path,
)
from gie_cli.ops import upfirdn2d

MIN_PSNR = 40.0  # dB over range 2, against the fp32 path


def _tiny() -> Generator:
    """A random 32 px generator with noise and non-trivial styles (every layer's terms matter)."""
    torch.manual_seed(0)
    g = Generator(32, style_dim=16, n_mlp=2, channel_max=16).eval()
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, ModulatedConv2d):
                m.modulation.bias.normal_()
            elif hasattr(m, "noise") and hasattr(m.noise, "weight"):
                m.noise.weight.fill_(0.3)
    return g


@pytest.fixture(scope="module")
def world() -> Generator:
    """The trained demo generator (64 px) of the embedded zoo."""
    return create_method("e4e").generator


def _world_codes(g: Generator, n: int = 4) -> torch.Tensor:
    with torch.no_grad():
        return g.broadcast(g.mapping(torch.randn(n, g.style_dim, generator=torch.Generator().manual_seed(3)), 0.7))


# --------------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("upsample", [False, True])
@pytest.mark.parametrize("demodulate", [False, True])
@pytest.mark.parametrize("kernel_size", [1, 3])
def test_modconv_variants_equal_the_grouped_conv(upsample, demodulate, kernel_size):
    torch.manual_seed(1)
    conv = ModulatedConv2d(6, 5, kernel_size, 8, demodulate=demodulate, upsample=upsample)
    conv.modulation.bias.data.normal_()
    x, w = torch.randn(3, 6, 7, 7), torch.randn(3, 8)
    with torch.no_grad():
        ref = conv(x, w)  # the class default: grouped, two-step upsampling
        assert ref.shape == (3, 5, 14 if upsample else 7, 14 if upsample else 7)
        for impl in MODCONV_IMPLS:
            for fused in [False, True] if upsample else [False]:
                conv.modconv, conv.fused_upsample = impl, fused
                torch.testing.assert_close(conv(x, w), ref, atol=1e-4, rtol=1e-4, msg=f"{impl}, fused={fused}")


@pytest.mark.parametrize("impl", MODCONV_IMPLS)
@pytest.mark.parametrize("fused", [False, True])
def test_generator_variants_equal_the_grouped_path(impl, fused):
    g = _tiny()
    wp = torch.randn(3, g.n_latent, g.style_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = g(wp)
        assert g.set_fast_path(modconv=impl, fused_upsample=fused) == FastPath(impl, fused)
        assert all(c.modconv == impl and c.fused_upsample == fused for c in g.modulated_convs())
        torch.testing.assert_close(g(wp), ref, atol=1e-4, rtol=1e-4)
        # StyleSpace offsets and pre-activation hooks run through the same implementations
        off = {2: torch.randn(1, g.style_channels(2))}
        hook = Hook(3, lambda x, layer, style: x * 0.5, "pre_activation")
        g.set_fast_path(modconv="grouped", fused_upsample=False)
        ref_hooked = g.synthesis(wp, style_offsets=off, hooks=[hook]).image
        g.set_fast_path(modconv=impl, fused_upsample=fused)
        torch.testing.assert_close(g.synthesis(wp, style_offsets=off, hooks=[hook]).image, ref_hooked, atol=1e-4,
                                   rtol=1e-4)  # fmt: skip


def test_fused_upsample_gradients_and_kernel_cache():
    """The blurred kernel is differentiable (not cached under autograd) and re-made when the weight changes."""
    torch.manual_seed(4)
    conv = ModulatedConv2d(4, 3, 3, 8, upsample=True)
    x, w = torch.randn(2, 4, 5, 5), torch.randn(2, 8)
    ref = conv(x, w)
    (grad_ref,) = torch.autograd.grad(ref.square().sum(), conv.weight)
    conv.fused_upsample = True
    out = conv(x, w)
    (grad,) = torch.autograd.grad(out.square().sum(), conv.weight)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grad, grad_ref, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        conv(x, w)
        assert conv._blurred is not None
        conv.weight.mul_(2)  # in place: a new version, the cache must not serve the old kernel
        conv.fused_upsample = False
        ref2 = conv(x, w)
        conv.fused_upsample = True
        torch.testing.assert_close(conv(x, w), ref2, atol=1e-4, rtol=1e-4)
    # a kernel cached under inference_mode is not reused where autograd records (a frozen generator, as optim's)
    conv.requires_grad_(False)
    with torch.no_grad():
        conv.weight.mul_(0.5)  # a new weight version: the inference-mode call below makes the kernel anew
    with torch.inference_mode():
        conv(x, w)
    latent = w.clone().requires_grad_(True)
    (g_latent,) = torch.autograd.grad(conv(x, latent).sum(), latent)
    assert torch.isfinite(g_latent).all()


# --------------------------------------------------------------------------------------------------- precision
@pytest.mark.parametrize("impl", MODCONV_IMPLS)
def test_bf16_autocast_psnr_and_fp32_statistics(world, impl):
    wp = _world_codes(world)
    seen: list[torch.dtype] = []
    hook = Hook(2, lambda x, layer, style: seen.append(style.dtype) or x, "pre_activation")
    try:
        with torch.no_grad():
            ref = world(wp)
            world.set_fast_path(modconv=impl, precision="bf16")
            out = world.synthesis(wp, hooks=[hook]).image
            plain = world(wp)
    finally:
        world.set_fast_path(modconv="grouped", precision="fp32")
    assert out.dtype == torch.float32 and seen == [torch.float32]  # styles (and demodulation) in fp32
    assert psnr(out, ref, 2.0).min() >= MIN_PSNR
    assert psnr(plain, ref, 2.0).min() >= MIN_PSNR
    assert not torch.equal(plain, ref)  # autocast did run in bf16


def test_fp16_autocast_on_cpu_is_refused_by_the_cli_and_exact_enough_in_the_library(world):
    """torch autocasts to fp16 on CPU (when ``autocast_supported``), but its float16 convolutions there are hundreds
    of times slower than fp32: the options refuse it; the library computes it (checked on the 64 px generator)."""
    with pytest.raises(UsageError, match="--precision fp16 on CPU") as e:
        resolve_precision("fp16", torch.device("cpu"))
    assert "\n" not in str(e.value) and "bf16" in e.value.hint
    if not autocast_supported("cpu", torch.float16):
        pytest.skip(f"torch {torch.__version__} has no fp16 autocast on CPU")
    wp = _world_codes(world)
    try:
        with torch.no_grad():
            ref = world(wp)
            world.set_fast_path(precision="fp16")
            out = world(wp)
    finally:
        world.set_fast_path(precision="fp32")
    assert psnr(out, ref, 2.0).min() >= MIN_PSNR


def test_upfirdn2d_ignores_autocast():
    """The FIR filters run in their input's dtype under autocast too (the RGB skip path stays fp32)."""
    x, k = torch.randn(2, 3, 8, 8), torch.tensor([1.0, 3.0, 3.0, 1.0])
    for impl in ("torch", "ref"):
        ref = upfirdn2d(x, k, up=2, pad=(2, 1), impl=impl)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = upfirdn2d(x, k, up=2, pad=(2, 1), impl=impl)
        assert out.dtype == torch.float32 and torch.equal(out, ref)


def test_invert_and_render_autocasts_encoder_and_render():
    m = create_method("e4e")
    g = m.generator
    with torch.no_grad():
        x = m.prepare(g(_world_codes(g, 3)).clamp(-1, 1))
    inv, ref, _, _ = invert_and_render(m, x)
    assert ref.is_inference()  # the render runs under inference_mode
    assert not inv.wplus.is_inference()  # the codes do not: label edits take their gradient
    w = inv.wplus.detach().requires_grad_(True)
    assert w.requires_grad
    inv16, out, _, _ = invert_and_render(m, x, precision="bf16")
    assert inv16.wplus.dtype == torch.float32 and out.dtype == torch.float32
    assert psnr(out, ref, 2.0).min() >= MIN_PSNR
    with use_fast_path(precision="bf16"):  # None: the generator's precision (here the process default)
        _, again, _, _ = invert_and_render(m, x)
    torch.testing.assert_close(again, out)


def test_precision_and_graph_options_are_checked():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("BF16", cpu) == "bf16"
    with pytest.raises(UsageError, match="invalid --precision 'tf32'"):
        resolve_precision("tf32", cpu)
    with pytest.raises(UsageError, match="--dtype fp16 casts the whole model") as e:
        resolve_precision("bf16", torch.device("cuda"), torch.float16)  # checked before the device
    assert "\n" not in str(e.value)
    check_cuda_graphs(False, cpu)
    with pytest.raises(UsageError, match="--cuda-graphs needs a CUDA device"):
        check_cuda_graphs(True, cpu)
    with pytest.raises(ValueError, match="modconv must be one of"):
        _tiny().set_fast_path(modconv="winograd")


def test_default_switches_and_generator_overrides():
    g, own = _tiny(), _tiny()
    own.set_fast_path(modconv="input")
    assert get_default_fast_path() == FastPath()
    with use_fast_path(modconv="bmm", precision="bf16") as fp:
        assert fp == FastPath("bmm", precision="bf16") == g.fast_path
        assert own.fast_path.modconv == "input" and own.fast_path.precision == "bf16"
    assert get_default_fast_path() == FastPath() == g.fast_path
    previous = set_default_fast_path(fused_upsample=True)
    try:
        assert previous == FastPath() and g.fast_path.fused_upsample
    finally:
        set_default_fast_path(**vars(previous))
    assert FastPath("bmm", precision="fp16").changed() == {"modconv": "bmm", "precision": "fp16"}


def test_stack_to_device_on_cpu():
    xs = [torch.randn(3, 4, 4) for _ in range(2)]
    out = stack_to_device(xs, torch.device("cpu"), torch.float64)
    assert out.dtype == torch.float64 and torch.equal(out.float(), torch.stack(xs))


# --------------------------------------------------------------------------------------------------- compile, graphs
@slow
def test_compiled_synthesis_matches_eager():
    """torch.compile on CPU (inductor needs a C++ compiler): skipped with the reason when compiling fails here."""
    g = Generator(16, style_dim=8, n_mlp=1, channel_max=8).eval()
    wp = torch.randn(2, g.n_latent, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = g(wp)
        g.set_fast_path(compile=True)
        out = g(wp)
        if g.compile_error is not None:
            pytest.skip(f"torch.compile is unavailable here: {g.compile_error}")
        again = g(wp)
        hooked = g.synthesis(wp, return_features=[1]).image  # with features: the eager path
    assert psnr(out, ref, 2.0).min() >= MIN_PSNR and torch.equal(again, out)
    torch.testing.assert_close(hooked, ref)


@cuda
def test_cuda_graphs_replay_eager_results():
    g = _tiny().cuda()
    wp = torch.randn(2, g.n_latent, g.style_dim, device="cuda")
    with torch.inference_mode():
        ref = g(wp)
        g.set_fast_path(cuda_graphs=True)
        first, second = g(wp), g(wp * 0.5)
        g.set_fast_path(cuda_graphs=False)
        ref_half = g(wp * 0.5)
    torch.testing.assert_close(first, ref)
    torch.testing.assert_close(second, ref_half)


# --------------------------------------------------------------------------------------------------- CLI
runner = CliRunner()


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fastpath_cli")
    write_cli_inputs(root, make_tiny_e4e().generator)
    return root


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_precision_is_recorded_and_cuda_graphs_refused_on_cpu(cli_inputs, tiny_e4e_weights, tmp_path):
    out = tmp_path / "inv"
    common = ["invert", cli_inputs / "in", "-o", out, "-w", tiny_e4e_weights, "--no-align", "--device", "cpu"]
    res = _invoke(*common, "--cuda-graphs")
    assert res.exit_code == 2 and "--cuda-graphs needs a CUDA device" in res.output, res.output
    res = _invoke(*common, "--precision", "bf16", "--json")
    assert res.exit_code == 0, res.output
    assert [json.loads(line)["status"] for line in res.stdout.splitlines()] == ["ok", "ok"]
    assert get_default_fast_path() == FastPath()  # the command's switches end with it
    res = _invoke(*common, "--json")  # fp32: another request, the items are redone
    assert [json.loads(line)["status"] for line in res.stdout.splitlines()] == ["ok", "ok"]
    res = _invoke(*common, "--json")  # fp32 again: skipped (no precision key in fp32 requests)
    assert [json.loads(line)["status"] for line in res.stdout.splitlines()] == ["skipped", "skipped"]
    edits = tmp_path / "edits"
    res = _invoke("edit", out, "-d", cli_inputs / "up.direction.safetensors", "-p", "2", "-o", edits, "--device",
                  "cpu", "--precision", "bf16", "--json")  # fmt: skip
    assert res.exit_code == 0 and json.loads(res.stdout.splitlines()[0])["status"] == "ok", res.output
    assert get_default_fast_path() == FastPath()


@pytest.mark.parametrize("kind", ["e4e", "psp"])
def test_channels_last_encoding_equals_the_default_format(kind, monkeypatch):
    """CPU inference encodes in the channels-last format (faster with oneDNN): the codes and feature pyramid equal the
    default format's to float rounding, the features come back contiguous, and encoding with gradients (training)
    keeps the default format."""
    from gie_cli.methods.e4e import EncoderMethod

    m = make_tiny_e4e(kind).eval()
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    seen: list[bool] = []
    first = next(mod for mod in m.encoder.modules() if isinstance(mod, torch.nn.Conv2d))
    first.register_forward_pre_hook(lambda _m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    results = {}
    for fast in (False, True):
        monkeypatch.setattr(EncoderMethod, "channels_last", fast)
        with torch.no_grad():
            results[fast] = m.encode(x, return_features=True)
    assert seen == [False, True]
    (c0, f0), (c1, f1) = results[False], results[True]
    assert (c1 - c0).abs().max() <= 1e-6 * c0.abs().max()
    assert f0.keys() == f1.keys() and all(f1[k].is_contiguous() for k in f1)
    assert all(torch.allclose(f1[k], f0[k], rtol=1e-5, atol=1e-6 * f0[k].abs().max()) for k in f0)
    m.encode(x).sum().backward()  # with gradients: the default format
    assert seen[-1] is False and first.weight.grad is not None

"""StyleGAN2 (Karras et al. 2020) op speed: gie's fast upfirdn2d / fused_leaky_relu vs the reference formulas.

Usage: python benchmarks/bench_ops.py [--reps 5] [--threads N] [--device cpu] [--no-backward] [--quick] [--json OUT]

Shapes are those of a config-f generator (256 and 1024) at batch 4, plus the encoder/discriminator downsampling.
Each case is warmed up once and timed over ``--reps`` runs (median). ``fwd`` runs without autograd; ``fwd+bwd`` is
forward and backward w.r.t. the input, as in latent optimisation. Prints ms per call and the ref/fast ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch

from gie_cli.ops import fused_leaky_relu, upfirdn2d

K1 = torch.tensor([1.0, 3.0, 3.0, 1.0])
KERNEL = torch.outer(K1, K1) / 64  # make_kernel([1, 3, 3, 1])

# (label, input shape, up, down, pad, kernel gain, in --quick)
UPFIRDN_CASES = [
    ("256 gen: blur after up-conv, 32px, 512ch", (4, 512, 33, 33), 1, 1, (1, 1), 4, True),
    ("256 gen: blur after up-conv, 64px, 512ch", (4, 512, 65, 65), 1, 1, (1, 1), 4, True),
    ("256 gen: blur after up-conv, 256px, 128ch", (4, 128, 257, 257), 1, 1, (1, 1), 4, False),
    ("256 gen: RGB skip upsample 128->256", (4, 3, 128, 128), 2, 1, (2, 1), 4, True),
    ("upsample 512ch 64->128 (up=2, pad 2,1)", (4, 512, 64, 64), 2, 1, (2, 1), 4, True),
    ("1024 gen: RGB skip upsample 512->1024", (4, 3, 512, 512), 2, 1, (2, 1), 4, False),
    ("1024 gen: blur after up-conv, 1024px, 32ch", (1, 32, 1025, 1025), 1, 1, (1, 1), 4, False),
    ("encoder: downsample 256->128, 128ch (down=2)", (4, 128, 256, 256), 1, 2, (1, 1), 1, False),
    ("discriminator: blur before stride-2 conv, 64px, 256ch", (4, 256, 64, 64), 1, 1, (2, 2), 1, True),
]
ACT_CASES = [("fused_leaky_relu 512ch 64px", (4, 512, 64, 64)), ("fused_leaky_relu 128ch 256px", (4, 128, 256, 256))]


def time_ms(fn: Callable[[], object], reps: int, device: torch.device) -> float:
    """Median wall time of ``fn`` in ms over ``reps`` runs after one warm-up run."""
    times = []
    for i in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def bench(op: Callable[[torch.Tensor, str], torch.Tensor], x: torch.Tensor, reps: int, backward: bool) -> dict:
    res = {}
    for impl in ("torch", "ref"):
        with torch.no_grad():
            res[f"{impl}_fwd"] = time_ms(lambda impl=impl: op(x, impl), reps, x.device)
        if backward:
            xg = x.detach().requires_grad_()

            def step(impl: str = impl, xg: torch.Tensor = xg) -> None:
                xg.grad = None
                op(xg, impl).sum().backward()

            res[f"{impl}_fwdbwd"] = time_ms(step, reps, x.device)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-backward", dest="backward", action="store_false", help="time the forward pass only")
    ap.add_argument("--quick", action="store_true", help="only the smaller cases")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "reps": args.reps,
    }
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    header = f"{'case':56s} {'shape':>20s} {'fast fwd':>9s} {'ref fwd':>9s} {'ratio':>6s}"
    if args.backward:
        header += f" {'fast f+b':>9s} {'ref f+b':>9s} {'ratio':>6s}"
    print(header + "   (ms, median)")
    rows = []
    torch.manual_seed(0)
    for label, shape, up, down, pad, gain, quick in UPFIRDN_CASES:
        if args.quick and not quick:
            continue
        x = torch.randn(shape, device=device)
        kernel = (KERNEL * gain).to(device)

        def op(t: torch.Tensor, impl: str, kernel=kernel, up=up, down=down, pad=pad) -> torch.Tensor:
            return upfirdn2d(t, kernel, up=up, down=down, pad=pad, impl=impl)

        rows.append({"case": label, "shape": list(shape), **bench(op, x, args.reps, args.backward)})
        _print_row(rows[-1], args.backward)
    for label, shape in ACT_CASES:
        x = torch.randn(shape, device=device)
        bias = torch.randn(shape[1], device=device)

        def act(t: torch.Tensor, impl: str, bias=bias) -> torch.Tensor:
            return fused_leaky_relu(t, bias, impl=impl)

        rows.append({"case": label, "shape": list(shape), **bench(act, x, args.reps, args.backward)})
        _print_row(rows[-1], args.backward)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)


def _print_row(row: dict, backward: bool) -> None:
    shape = "x".join(map(str, row["shape"]))
    line = f"{row['case']:56s} {shape:>20s} {row['torch_fwd']:9.2f} {row['ref_fwd']:9.2f} "
    line += f"{row['ref_fwd'] / row['torch_fwd']:5.1f}x"
    if backward:
        line += f" {row['torch_fwdbwd']:9.2f} {row['ref_fwdbwd']:9.2f} {row['ref_fwdbwd'] / row['torch_fwdbwd']:5.1f}x"
    print(line, flush=True)


if __name__ == "__main__":
    main()

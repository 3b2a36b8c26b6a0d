"""e4e inversion throughput at batch 1 vs batch N: encode only, and encode + render, tiny and full-size models.

Usage: python benchmarks/bench_invert.py [--configs tiny full] [--batches 1 8] [--images 16] [--device cpu]

Weights are random (throughput does not depend on them). "full" is the official architecture: IR-SE50 e4e encoder at
256x256 input and the 1024 px config-f generator. "tiny" is a 64 px generator with a 1-unit-per-stage encoder.
Each measurement runs one warm-up batch, then ``--images`` images in batches; reported as images/s.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time

import torch

from gie_cli.methods.e4e import EncoderMethod
from gie_cli.models import create_model
from gie_cli.models.encoders import ENCODER_CONFIGS

CONFIGS = {
    "tiny": ({"size": 64, "style_dim": 64, "n_mlp": 2, "channel_max": 64}, ENCODER_CONFIGS["tiny"]),
    "full": ({"size": 1024}, ENCODER_CONFIGS["ir_se50"]),
}


def build(name: str, device: torch.device) -> EncoderMethod:
    gcfg, ecfg = CONFIGS[name]
    torch.manual_seed(0)
    g = create_model("stylegan2", **gcfg)
    enc = create_model("e4e", **ecfg)
    avg = torch.zeros(g.n_latent, g.style_dim)
    return EncoderMethod(g, enc, avg, "e4e", dict(ecfg), True, "random").to(device).eval()


def throughput(fn, batch: int, n_images: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    fn(batch)  # warm-up
    sync()
    n_batches = max(1, n_images // batch)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        fn(batch)
    sync()
    return n_batches * batch / (time.perf_counter() - t0)


def environment(device: torch.device) -> dict:
    """Date, commit, torch version, device name and threads: what a benchmark's figures were measured on."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": commit,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
    }


def environment_line(device: torch.device) -> str:
    """``date=... commit=... torch=... device=... threads=...``: the header line of a benchmark printout."""
    return " ".join(f"{k}={v}" for k, v in environment(device).items())


def bench_args(doc: str, configs: list[str]) -> tuple[argparse.Namespace, torch.device]:
    """The throughput scripts' command line: ``--configs`` (of ``configs``), ``--batches``, ``--images``,
    ``--device``; returns the parsed arguments and the device."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=list(configs), choices=list(configs))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    return args, torch.device(args.device)


def main() -> None:
    args, device = bench_args(__doc__, list(CONFIGS))
    print(environment_line(device))
    for name in args.configs:
        m = build(name, device)
        s = m.input_size
        for b in args.batches:
            x = torch.rand(b, 3, s, s, device=device) * 2 - 1

            def encode(bs: int, x=x, m=m) -> None:
                with torch.no_grad():
                    m.invert(x[:bs])

            def encode_render(bs: int, x=x, m=m) -> None:
                with torch.no_grad():
                    m.render(m.invert(x[:bs]))

            enc = throughput(encode, b, args.images, device)
            full = throughput(encode_render, b, args.images, device)
            print(
                f"{name:5s} batch {b:2d}: encode {enc:8.2f} img/s   encode+render {full:8.2f} img/s "
                f"({m.output_size}px output)"
            )


if __name__ == "__main__":
    main()

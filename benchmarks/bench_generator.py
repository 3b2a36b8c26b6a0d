"""Generator synthesis speed: gie's fast ops vs the reference-formula ops, at 256 and 1024 (config-f widths).

Usage: python benchmarks/bench_generator.py [--sizes 256 1024] [--batch 1] [--reps 3] [--device cpu] [--json OUT]

Weights are random (speed does not depend on them). Each configuration is warmed up once, then timed over
``--reps`` runs (median). Prints ms/image per configuration and the ref/fast ratio (both with the default
grouped modulated conv).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from bench_invert import environment

from gie_cli import ops
from gie_cli.models import Generator, create_model


def time_synthesis(g: Generator, batch: int, reps: int, device: torch.device) -> float:
    wplus = g.broadcast(torch.randn(batch, g.style_dim, device=device))
    times = []
    with torch.no_grad():
        for i in range(reps + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            g(wplus, noise_mode="const")
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:  # first run is warm-up
                times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000 / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    device = torch.device(args.device)
    env = {
        **environment(device),
        "batch": args.batch,
    }
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    rows = []
    for size in args.sizes:
        torch.manual_seed(0)
        g = create_model("stylegan2", size=size).to(device).eval()
        res = {}
        for label, impl, modconv in [
            ("fast", "torch", "grouped"),
            ("fast-actmod", "torch", "input"),
            ("ref", "ref", "grouped"),
        ]:
            ops.set_default_impl(impl)
            g.set_fast_path(modconv=modconv)
            res[label] = time_synthesis(g, args.batch, args.reps, device)
        ops.set_default_impl("auto")
        g.set_fast_path(modconv="grouped")
        row = {
            "size": size,
            **{f"{k}_ms": round(v, 1) for k, v in res.items()},
            "ratio": round(res["ref"] / res["fast"], 2),
        }
        rows.append(row)
        print(
            f"{size:5d}px  fast ops {res['fast']:8.1f} ms/img   fast ops, activation-modulated conv "
            f"{res['fast-actmod']:8.1f} ms/img   "
            f"reference ops {res['ref']:8.1f} ms/img   ref/fast = {row['ratio']:.2f}x"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

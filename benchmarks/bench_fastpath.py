"""Generator synthesis fast paths (issue 21): speed and PSNR of every switch combination against fp32 grouped.

Usage: python benchmarks/bench_fastpath.py [--sizes 256 1024] [--batch 4] [--reps 5] [--device cuda]
       [--modconv grouped bmm input] [--fused-upsample off on] [--precision fp32 bf16 fp16] [--compile off]
       [--cuda-graphs off on] [--weights FILE] [--json OUT]

For each size it builds one generator (config-f widths, random weights unless ``--weights`` names a gie generator
file of that size) and renders the same W+ batch (const noise) with every combination of the switches of
``gie_cli.models.stylegan2.FastPath``: the modulated conv implementation, the fused upsample + blur, the autocast
precision, ``torch.compile`` and CUDA graphs (CUDA only; on CPU ``--cuda-graphs`` is ``off``). Each combination is
warmed up (twice when compiling or capturing), then timed over ``--reps`` runs under ``torch.inference_mode``
(median, CUDA synchronised). Reported: ms/img, images/s, the speed-up over the baseline (fp32, grouped, two-step
upsampling, eager) and the PSNR of its images against the baseline's, over the data range ``max(2, range of the
baseline images)`` (2 for images in [-1, 1]; random weights render wider ranges, so their PSNR is indicative
only: use ``--weights`` for the precision figures). Precisions this torch cannot autocast to on the device are
skipped with a note. Prints a markdown table (and writes ``--json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import time

import torch
from bench_invert import environment

from gie_cli.device import autocast_supported
from gie_cli.models import Generator, create_model
from gie_cli.models.stylegan2 import MODCONV_IMPLS, FastPath
from gie_cli.ops import get_default_impl

SWITCH = {"off": [False], "on": [True], "both": [False, True]}


def load_generator(size: int, weights: str | None, device: torch.device) -> Generator:
    """Random config-f weights (seed 0), or the generator of the gie components file ``weights``."""
    if weights:
        from gie_cli.models.loading import build_generator, read_components

        g = build_generator(read_components(weights))
        if g.size != size:
            raise SystemExit(f"--weights {weights} is a {g.size} px generator, not {size} px")
    else:
        torch.manual_seed(0)
        g = create_model("stylegan2", size=size)
    return g.to(device).eval()


def time_render(g: Generator, wplus: torch.Tensor, reps: int, warmup: int) -> tuple[float, torch.Tensor]:
    """Median seconds of ``g(wplus)`` over ``reps`` runs after ``warmup`` runs; and the last image."""
    device = wplus.device
    times = []
    with torch.inference_mode():
        for i in range(warmup + reps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            image = g(wplus, noise_mode="const")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times), image.float()


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR (dB) of ``x`` against ``ref`` over ``max(2, ref range)``, worst item of the batch."""
    data_range = max(2.0, float(ref.max() - ref.min()))
    mse = (x - ref).square().flatten(1).mean(1)
    worst = float(mse.max())
    return math.inf if worst == 0 else 10 * math.log10(data_range**2 / worst)


def combinations(args: argparse.Namespace, device: torch.device) -> tuple[list[FastPath], list[str]]:
    """The switch combinations to time (baseline first) and notes on those left out."""
    notes = []
    precisions = []
    if args.precision is None:
        args.precision = ["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"]
        if device.type == "cpu":
            notes.append("fp16 left out on CPU (no fast float16 convolutions: minutes per image); --precision fp16")
    for p in args.precision:
        if p == "fp32" or autocast_supported(device.type, {"bf16": torch.bfloat16, "fp16": torch.float16}[p]):
            precisions.append(p)
        else:
            notes.append(f"{p}: torch {torch.__version__} cannot autocast to it on {device.type}; skipped")
    graphs = SWITCH[args.cuda_graphs] if device.type == "cuda" else [False]
    if device.type != "cuda" and args.cuda_graphs != "off":
        notes.append("CUDA graphs: CUDA only; off")
    grid = itertools.product(args.modconv, SWITCH[args.fused_upsample], precisions, SWITCH[args.compile], graphs)
    combos = [FastPath(m, f, p, c, gr) for m, f, p, c, gr in grid]
    base = FastPath()
    return [base, *(c for c in combos if c != base)], notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--modconv", nargs="+", choices=MODCONV_IMPLS, default=list(MODCONV_IMPLS))
    ap.add_argument("--fused-upsample", choices=list(SWITCH), default="both")
    ap.add_argument(
        "--precision", nargs="+", choices=["fp32", "bf16", "fp16"], help="default: all (CPU: fp32 bf16, fp16 is slow)"
    )
    ap.add_argument("--compile", choices=list(SWITCH), default="off", help="torch.compile variants (slow to build)")
    ap.add_argument("--cuda-graphs", choices=list(SWITCH), default="both", help="CUDA graph variants (CUDA only)")
    ap.add_argument("--weights", default=None, help="a gie generator/method file (one size) instead of random weights")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    device = torch.device(args.device)
    env = {
        **environment(device),
        "batch": args.batch,
        "reps": args.reps,
        "ops": get_default_impl(),
        "weights": args.weights or "random",
    }
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    combos, notes = combinations(args, device)
    for note in notes:
        print(f"note: {note}")
    rows = []
    print("\n| size | modconv | fused up | precision | compile | graphs | ms/img | img/s | speed-up | PSNR dB |")
    print("|---:|---|---|---|---|---|---:|---:|---:|---:|")
    for size in args.sizes:
        g = load_generator(size, args.weights, device)
        gen = torch.Generator().manual_seed(1)
        with torch.inference_mode():
            wplus = g.broadcast(g.mapping(torch.randn(args.batch, g.style_dim, generator=gen).to(device), 0.7))
        base_s = base_img = None
        for fp in combos:
            g.set_fast_path(**vars(fp))
            warmup = 2 if fp.compile or fp.cuda_graphs else 1
            secs, image = time_render(g, wplus, args.reps, warmup)
            if base_img is None:
                base_s, base_img = secs, image
            row = {
                "size": size,
                **{k: getattr(fp, k) for k in ("modconv", "fused_upsample", "precision", "compile", "cuda_graphs")},
                "ms_per_img": round(secs * 1000 / args.batch, 2),
                "img_per_s": round(args.batch / secs, 2),
                "speedup": round(base_s / secs, 2),
                "psnr_db": None if math.isinf(db := psnr(image, base_img)) else round(db, 1),  # None: identical
                "compile_error": g.compile_error,
            }
            rows.append(row)
            flag = "yes" if fp.compile and g.compile_error is None else ("FAILED" if fp.compile else "")
            print(
                f"| {size} | {fp.modconv} | {'yes' if fp.fused_upsample else ''} | {fp.precision} | {flag} | "
                f"{'yes' if fp.cuda_graphs else ''} | {row['ms_per_img']:.2f} | {row['img_per_s']:.2f} | "
                f"{row['speedup']:.2f}x | {'exact' if row['psnr_db'] is None else row['psnr_db']} |",
                flush=True,
            )
        g.set_fast_path(**vars(FastPath()))
        del g
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "notes": notes, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

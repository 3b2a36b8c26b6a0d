"""HFGI's alignment loss and ADA learning rate on the world: the appendix's (mean L1 at 0.1, lr 1e-4) against gie's
(relative L1 at 1, ADA at lr 1e-3), each trained from scratch for the same steps on the same faces and seed, then
probed on held-out faces.

Usage: python benchmarks/hfgi_align_loss.py --data build/zoo/faces [--steps 300] [-o OUT.md]

Columns: ADA's relative L1 error against the unwarped residual for residuals warped by random perspectives
(distortion 0.15, fixed seed), the warped residual's own error (what injecting it unaligned would give), and the
reconstruction PSNR of HFGI, of HFGI with the residual unaligned (``use_ada=false``) and of the bare e4e.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import torch

from gie_cli.benchmark.data import synthface_data
from gie_cli.methods.hfgi.train import HFGITrainer
from gie_cli.metrics.ssim import psnr
from gie_cli.ops.warp import random_perspective

VARIANTS = {
    "appendix: mean L1, weight 0.1, ADA lr 1e-4": {"align_loss": "l1", "align_lambda": "0.1", "ada_lr": "1e-4"},
    "relative L1, weight 1, ADA lr 1e-4": {"align_loss": "relative", "align_lambda": "1", "ada_lr": "1e-4"},
    "gie: relative L1, weight 1, ADA lr 1e-3": {"align_loss": "relative", "align_lambda": "1", "ada_lr": "1e-3"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("-w", "--weights", default="world.e4e")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--faces", type=int, default=32)
    ap.add_argument("-o", "--output", type=Path)
    ap.add_argument("--variants", nargs="*", type=int, help="indices into the variants (default: all)")
    args = ap.parse_args()
    x = synthface_data(args.faces, 64, seed=20261121).images
    warp = random_perspective(len(x), 0.15, torch.Generator().manual_seed(5))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# HFGI alignment loss on the world",
        "",
        f"`python benchmarks/hfgi_align_loss.py --data {args.data} --steps {args.steps}` (commit {commit}, "
        f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {torch.get_num_threads()} threads). Each variant: "
        f"`gie train --method hfgi -w {args.weights}` settings, batch 8, seed 0, {args.steps} steps; probed on "
        f"{args.faces} held-out faces (seed 20261121).",
        "",
        "| alignment loss | ADA error | warped residual error | HFGI PSNR dB | unaligned PSNR dB | e4e PSNR dB |",
        "|---|---|---|---|---|---|",
    ]
    chosen = [list(VARIANTS)[i] for i in args.variants] if args.variants else list(VARIANTS)
    for name in chosen:
        settings = VARIANTS[name]
        t = HFGITrainer(args.data, args.weights, "cpu", 8, 0, **settings)
        batches = t.batches()
        for step in range(args.steps):
            t.train_step(next(batches), step)
        m = t.method.eval()
        with torch.no_grad():
            e = m.probe_alignment(x, *warp).stages[f"residual ({m.residual_size} px)"]
            inv = m.invert(x)
            scores = [m.render(inv)]
            m.use_ada = False
            scores.append(m.render(inv))
            scores.append(m.generator(inv.wplus))
        db = [float(psnr(y.clamp(-1, 1), x, data_range=2.0).mean()) for y in scores]
        lines.append(
            f"| {name} | {float(e['aligned'].mean()):.3f} | {float(e['unaligned'].mean()):.3f} | {db[0]:.2f} "
            f"| {db[1]:.2f} | {db[2]:.2f} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""Where should GradStyle's Aligner take its keys from? Fresh Aligners trained on L_aligner alone, on the residuals and
features of a trained GradStyle checkpoint's Reconstruction Stream, with the paper's keys (the residual's own tokens,
Eq. 7) and gie's (the generator feature the residual was computed on, W_k tied to W_q at the start).

Usage: python benchmarks/gradstyle_aligner_keys.py [-w world.gradstyle] [--layers 1,4] [--steps 300] [--out FILE.md]

Training: 256 aligned world training faces (build/zoo/faces, made by scripts/build_zoo.sh), batch 8, Adam lr 1e-3,
half the items warped (distortion 0.15), as `gie train --method gradstyle`. Evaluation: 32 held-out world faces, one
fixed warp each; relative L1 error against the unwarped residual of the aligned warped residual, of the warped
residual itself, and of the aligned unwarped residual (what an Aligner does to a residual that needs no alignment).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from gie_cli.benchmark.data import synthface_data
from gie_cli.methods import create_method
from gie_cli.methods.gradstyle.modules import Aligner
from gie_cli.metrics.alignment import relative_l1
from gie_cli.ops.warp import random_perspective, warp_features
from gie_cli.training.data import ImageFolder


@torch.no_grad()
def stage_data(method, images: torch.Tensor, stop: int) -> tuple[dict, dict]:
    """Residuals ``F`` and source features ``f`` per stage layer for ``images``."""
    record: dict = {}
    wplus, pyramid = method.encode(images, return_features=True)
    hooks = method.net.reconstruction_hooks(pyramid, record)
    method.generator.synthesis(wplus, noise_mode="const", feature_hooks=hooks, stop_at_layer=stop)
    return {k: v.float() for k, v in record["residual"].items()}, {k: v.float() for k, v in record["feature"].items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-w", "--weights", default=None, help="GradStyle checkpoint (default: world.gradstyle)")
    ap.add_argument("--faces", default="build/zoo/faces")
    ap.add_argument("--layers", default="1,4")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    method = create_method("gradstyle", args.weights, "cpu").eval()
    layers = [int(v) for v in args.layers.split(",")]
    data = ImageFolder(args.faces, 64)
    train_x = torch.stack([data[i] for i in range(256)])
    F_tr, f_tr = stage_data(method, train_x, max(layers))
    test_x = synthface_data(32).images
    F_te, f_te = stage_data(method, test_x, max(layers))
    src, dst = random_perspective(32, 0.15, torch.Generator().manual_seed(123))
    lines = [
        "| stage | keys | warped, unaligned | warped, aligned | unwarped, aligned | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for layer in layers:
        F_w, f_w = warp_features(F_te[layer], src, dst), warp_features(f_te[layer], src, dst)
        base = float(relative_l1(F_w, F_te[layer]).mean())
        for keys in ("residual", "source"):
            al = Aligner(F_tr[layer].shape[1], 50.0, 2, keys)
            opt = torch.optim.Adam(al.parameters(), lr=1e-3)
            rng = torch.Generator().manual_seed(0)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                idx = torch.randint(0, len(train_x), (8,), generator=rng)
                s, d = random_perspective(8, 0.15, rng)
                d = torch.where((torch.rand(8, generator=rng) >= 0.5)[:, None, None], s, d)
                F, f = F_tr[layer][idx], f_tr[layer][idx]
                loss = relative_l1(al(warp_features(F, s, d), warp_features(f, s, d), f), F).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            secs = time.perf_counter() - t0
            with torch.no_grad():
                aligned = float(relative_l1(al(F_w, f_w, f_te[layer]), F_te[layer]).mean())
                same = float(relative_l1(al(F_te[layer], f_te[layer], f_te[layer]), F_te[layer]).mean())
            stage = f"layer {layer} ({method.generator.layer_resolution(layer)} px)"
            lines.append(f"| {stage} | {keys} | {base:.3f} | {aligned:.3f} | {same:.3f} | {secs:.0f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(f"`python benchmarks/gradstyle_aligner_keys.py --steps {args.steps} --layers "
                            f"{args.layers}` ({args.steps} Aligner-only steps per row)\n\n" + text)  # fmt: skip


if __name__ == "__main__":
    main()

"""Peak memory of `gie invert --pack-latents`' packer (`save_packed_latents`) on N synthetic FFHQ-size latent files.

Usage: python benchmarks/bench_pack.py [--n 5000] [--shape 18 512]

Writes N latent files of one random W+ shape to a temp folder, then packs them; prints the pack's size and the
process's peak RSS before and during packing (``ru_maxrss``), and checks the last item round-trips.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import torch
from bench_invert import environment_line

from gie_cli.io.latents import load_packed_latents, save_latent, save_packed_latents


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--shape", type=int, nargs=2, default=[18, 512])
    args = ap.parse_args()
    print(environment_line(torch.device("cpu")))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        w = torch.randn(*args.shape)
        files = [(f"{i:06d}", folder / f"{i:06d}.latent.safetensors") for i in range(args.n)]
        for i, (_, f) in enumerate(files):
            save_latent(f, w + i, {"method": "e4e", "source": f"/data/{i:06d}.png", "source_sha256": "0" * 64})
        before = peak_mib()
        t0 = time.perf_counter()
        save_packed_latents(folder / "latents.safetensors", files)
        secs, during = time.perf_counter() - t0, peak_mib()
        packed = load_packed_latents(folder / "latents.safetensors")
        assert torch.equal(packed.wplus[-1], w + args.n - 1), "the last item does not round-trip"
        size = os.path.getsize(folder / "latents.safetensors") / 2**20
    print(
        f"{args.n} latents {args.shape}: pack {size:.0f} MiB in {secs:.1f} s; peak RSS {before:.0f} MiB before "
        f"packing, {during:.0f} MiB after"
    )


if __name__ == "__main__":
    main()

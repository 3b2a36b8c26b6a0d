"""End-to-end `gie invert` throughput and memory: serial (--workers 0) vs the overlapped pipeline, and peak RSS as
the input count grows (issue 21).

Usage: python benchmarks/bench_pipeline.py [--images 512] [--rss 500 2000 5000] [--workers 2] [-o results.md]

Inputs are `gie synth --faces` crops of the synthetic world, inverted with the embedded demo zoo (world.e4e, the
default weights). Each configuration runs `gie invert` as its own process on a fresh output folder (model load and
Python start included, as a user runs it); images/s = inputs / wall time. Peak RSS is the process's ru_maxrss. The
throughput rows write reconstructions and latents (the default --save); the RSS rows use --save latent.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def synth(folder: Path, n: int) -> Path:
    """``n`` aligned world faces (64 px) in ``folder`` (made once, reused)."""
    if len(list(folder.glob("*.png"))) != n:
        shutil.rmtree(folder, ignore_errors=True)
        run([sys.executable, "-m", "gie_cli", "synth", "--faces", "-n", str(n), "-s", "64", "-o", str(folder)])
    return folder


def run(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; returns (wall seconds, peak RSS in MiB)."""
    env = dict(os.environ, GIE_DISABLE_PROGRESS_BARS="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024  # Linux: KiB


def invert(inputs: Path, out: Path, *extra: str) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)
    return run([sys.executable, "-m", "gie_cli", "invert", str(inputs), "-o", str(out), "-b", "8", *extra])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--rss", type=int, nargs="*", default=[500, 2000, 5000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gie-bench-pipeline")
    ap.add_argument("-o", "--output", type=Path, default=None, help="also write the table to this markdown file")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = ["| run | inputs | --workers | --save | wall s | images/s | peak RSS MiB |", "|---|---|---|---|---|---|---|"]
    faces = synth(args.work / f"faces{args.images}", args.images)
    for workers in (0, args.workers):
        wall, rss = invert(faces, args.work / "out", "--workers", str(workers))
        rows.append(f"| throughput | {args.images} | {workers} | default | {wall:.1f} | {args.images / wall:.1f} | "
                    f"{rss:.0f} |")  # fmt: skip
        print(rows[-1], flush=True)
    for n in args.rss:
        faces = synth(args.work / f"faces{n}", n)
        wall, rss = invert(faces, args.work / "out", "--workers", str(args.workers), "--save", "latent")
        rows.append(f"| memory | {n} | {args.workers} | latent | {wall:.1f} | {n / wall:.1f} | {rss:.0f} |")
        print(rows[-1], flush=True)
    head = (
        f"`python benchmarks/bench_pipeline.py {' '.join(sys.argv[1:])}`: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}.\n\n"
    )
    text = head + "\n".join(rows) + "\n"
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)


if __name__ == "__main__":
    main()

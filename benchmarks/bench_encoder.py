"""e4e encoder speed on CPU: the channels-last memory format (``EncoderMethod.channels_last``, gie's default) vs the
default contiguous format, at the official IR-SE50 size (256 px input) and the demo zoo's tiny encoder.

Usage: python benchmarks/bench_encoder.py [--configs tiny full] [--batches 1 4 8] [--reps 5] [--json FILE]

Weights are random (speed does not depend on them). Each (config, batch) times ``--reps`` rounds; a round encodes one
batch in each format, in alternating order, after one warm-up batch each; reported: the median ms per image of each
format, their ratio, and the largest absolute difference of the codes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from bench_invert import CONFIGS, build, environment, environment_line

from gie_cli.methods.e4e import EncoderMethod


def encode_ms(m: EncoderMethod, x: torch.Tensor, channels_last: bool) -> tuple[float, torch.Tensor]:
    """(ms per image, codes) of one batch with the format switch set to ``channels_last``."""
    EncoderMethod.channels_last = channels_last
    with torch.no_grad():
        t0 = time.perf_counter()
        codes = m.encode(x)
        return (time.perf_counter() - t0) * 1000 / x.shape[0], codes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    device = torch.device("cpu")
    print(environment_line(device))
    rows = []
    for name in args.configs:
        m = build(name, device)
        s = m.input_size
        for b in args.batches:
            x = torch.rand(b, 3, s, s, generator=torch.Generator().manual_seed(b)) * 2 - 1
            encode_ms(m, x, False), encode_ms(m, x, True)  # warm-up
            times: dict[bool, list[float]] = {False: [], True: []}
            diff = 0.0
            for r in range(args.reps):
                order = (False, True) if r % 2 == 0 else (True, False)
                out = {}
                for fmt in order:
                    ms, out[fmt] = encode_ms(m, x, fmt)
                    times[fmt].append(ms)
                diff = max(diff, float((out[True] - out[False]).abs().max()))
            row = {
                "config": name, "input": s, "batch": b, "contiguous_ms": statistics.median(times[False]),
                "channels_last_ms": statistics.median(times[True]), "max_abs_diff": diff,
                "codes_scale": float(out[False].abs().max()),
            }  # fmt: skip
            row["speedup"] = row["contiguous_ms"] / row["channels_last_ms"]
            rows.append(row)
            print(
                f"{name:5s} {s:4d}px batch {b:2d}: contiguous {row['contiguous_ms']:8.1f} ms/img   channels-last "
                f"{row['channels_last_ms']:8.1f} ms/img   {row['speedup']:.2f}x   max |diff| {diff:.1e} "
                f"(codes up to {row['codes_scale']:.2f})",
                flush=True,
            )
    EncoderMethod.channels_last = True
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment(device), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

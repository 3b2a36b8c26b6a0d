"""Summarise a `gie train` run's metrics.jsonl as a markdown table of window means (the training curves quoted in the
README), and copy the raw log beside it so the figures can be checked.

Usage: python benchmarks/training_curve.py RUN_DIR -o benchmarks/results/gradstyle/training.md [--window 100]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path


def windows(rows: list[dict], window: int) -> list[tuple[int, int, dict[str, float]]]:
    """``(first step, last step, {metric: mean})`` per ``window`` steps (metrics logged in that range)."""
    out: list[tuple[int, int, dict[str, float]]] = []
    buckets: dict[int, list[dict]] = {}
    for r in rows:
        buckets.setdefault((int(r["step"]) - 1) // window, []).append(r)
    for k in sorted(buckets):
        rs = buckets[k]
        keys = [key for key in rs[0] if key not in ("step", "time_s")]
        means = {}
        for key in keys:
            vals = [float(r[key]) for r in rs if key in r and r[key] is not None and math.isfinite(float(r[key]))]
            if vals:
                means[key] = sum(vals) / len(vals)
        out.append((k * window + 1, (k + 1) * window, means))
    return out


def markdown(run: Path, rows: list[dict], window: int) -> str:
    opts = json.loads((run / "options.json").read_text()) if (run / "options.json").is_file() else {}
    ws = windows(rows, window)
    keys = [k for k in ws[0][2] if k != "sec_per_step"] if ws else []
    lines = [
        f"# Training curve of `{run.name}`",
        "",
        f"Means over windows of {window} steps of the values in `metrics.jsonl` (logged every few steps; where a "
        f"resumed run logged a step twice, the later record; the raw log is `{run.name}.metrics.jsonl` beside this "
        f"file). Method `{opts.get('method', '?')}`, batch size "
        f"{opts.get('batch_size', '?')}, seed {opts.get('seed', '?')}, trainer settings: "
        f"`{json.dumps(opts.get('trainer', {}), sort_keys=True)}`.",
        "",
        "| steps | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for a, b, m in ws:
        lines.append(f"| {a}-{b} | " + " | ".join(f"{m[k]:.4g}" if k in m else "" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--window", type=int, default=100)
    args = ap.parse_args()
    rows = [json.loads(x) for x in (args.run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    # a resumed run logs the steps after its snapshot again: keep the last record of each step
    rows = list({int(r["step"]): r for r in rows}.values())
    rows.sort(key=lambda r: int(r["step"]))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(markdown(args.run, rows, args.window))
    shutil.copyfile(args.run / "metrics.jsonl", args.output.parent / f"{args.run.name}.metrics.jsonl")
    print(args.output)


if __name__ == "__main__":
    main()

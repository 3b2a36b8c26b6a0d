"""The README's tables of feature-level methods (GradStyle, HFGI), printed from `gie benchmark` results (one run per
table, every column from it).

Usage: python benchmarks/gradstyle_tables.py benchmarks/results/gradstyle/benchmark.json [more benchmark.json ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _f(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def table(doc: dict) -> str:
    """One row per method: speed, reconstruction, per-stage alignment, zero edit, and per edit the PSNR against the
    ground-truth edit and the target attribute's change."""
    rows = [r for r in doc["results"] if r["status"] == "ok"]
    edits = doc["settings"]["edits"]
    stages = sorted({s for r in rows for s in (r.get("alignment") or {}).get("stages", {})},
                    key=lambda s: (s.split(" (")[0].split()[0], int(s.split("(")[1].split()[0])))  # fmt: skip
    head = ["method", "images/s", "PSNR dB", "SSIM", "attr MAE"]
    head += [f"align {s.split('(')[1].rstrip(')')}" if s.startswith("layer") else f"align {s}" for s in stages]
    head += ["zero edit dB"]
    head += [f"{e} GT PSNR (attr change)" for e in edits]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m, al = r["metrics"], r.get("alignment") or {}
        cells = [r["method"], _f(r["timing"]["images_per_s"], ".1f"), _f(m.get("psnr"), ".2f")]
        cells += [_f(m.get("ssim"), ".3f"), _f(m.get("attr_mae"), ".3f")]
        for s in stages:
            e = al.get("stages", {}).get(s)
            cells.append(f"{e['aligned']:.3f} / {e['unaligned']:.3f}" if e else "")
        z = al.get("zero_edit_psnr")
        cells.append(_f(z - m["psnr"], "+.2f") if z is not None else "")
        by = {e["edit"]: e for e in r["edits"]}
        for e in edits:
            em = (by.get(e) or {}).get("metrics") or {}
            cells.append(f"{_f(em.get('gt_psnr'), '.2f')} ({_f(em.get('edit_attr'), '+.3f')})")
        out.append("| " + " | ".join(cells) + " |")
    note = (
        "align: relative L1 error of the aligned / the unaligned warped residual per stage (lower is better); "
        "zero edit: the editing path's PSNR at zero edit minus the reconstruction's (methods with a separate one)."
    )
    return "\n".join(out) + "\n\n" + note + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, nargs="+")
    args = ap.parse_args()
    for path in args.results:
        doc = json.loads(path.read_text())
        print(f"{path} (commit {doc['environment']['git_commit']}, {doc['environment']['date']}):\n")
        print(table(doc))


if __name__ == "__main__":
    main()

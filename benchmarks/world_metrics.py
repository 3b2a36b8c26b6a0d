"""Quality of the embedded demo zoo on held-out synthetic-world faces (until `gie benchmark` covers it).

Measures, on the 2-core CPU in a few minutes:
  * e4e and latent optimisation (W+): PSNR / SSIM of reconstructions of held-out 64 px world faces with fine detail
    (detail strength 1, no objects), images in [0, 1];
  * the generator's expressivity: W+ projection (latent optimisation, more steps) of clean renders (detail 0, the
    generator's training distribution);
  * every world direction on sampled W codes: the attribute estimator's change of the target attribute per unit
    power (slope between powers -P and +P), and the mean absolute change of the other attributes per unit power.

Usage: python benchmarks/world_metrics.py [--n 64] [--optim-steps 300] [--project-steps 600] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gie_cli.editing import (
    apply,
    generator_fingerprint,
    list_directions,
    load_direction,
    render_edit,
)
from gie_cli.methods import Inversion, create_method
from gie_cli.metrics.ssim import psnr, ssim
from gie_cli.synth.estimator import AttributeEstimator
from gie_cli.synth.params import ATTRIBUTES, sample_params
from gie_cli.synth.render import render
from gie_cli.weights import resolve_weights


def world_faces(n: int, seed: int, size: int, detail: float, detail_seed: int | None = None) -> torch.Tensor:
    """``[n, 3, size, size]`` renders in [-1, 1] (no objects)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = sample_params(rng, 0.0, detail_strength=detail)
        if detail_seed is not None:
            p = dataclasses.replace(p, detail_seed=detail_seed)
        out.append(torch.from_numpy(render(p, size=size).image).permute(2, 0, 1).float() / 127.5 - 1)
    return torch.stack(out)


def quality(method, x: torch.Tensor, batch: int) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of ``method``'s reconstructions of ``x`` (in [0, 1]) and images/s."""
    ps, ss = [], []
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        inv = method.invert(xb)  # latent optimisation needs gradients; encoders run without them anyway
        with torch.no_grad():
            y = method.render(inv).float().clamp(-1, 1)
        a, b = (y + 1) / 2, (xb + 1) / 2
        ps.append(psnr(a, b))
        ss.append(ssim(a, b))
    dt = time.perf_counter() - t0
    return {"psnr": float(torch.cat(ps).mean()), "ssim": float(torch.cat(ss).mean()), "images_per_s": len(x) / dt}


@torch.no_grad()
def direction_effects(g, estimator, n: int, power: float, seed: int) -> list[dict]:
    """Per world direction bound to ``g``: estimator change per unit power of the target and the others."""
    fp = generator_fingerprint(g)
    names = [a.name for a in ATTRIBUTES]
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, g.style_dim, generator=gen)
    wplus = g.broadcast(g.mapping(z))
    rows = []
    for info in list_directions():
        if (info.get("generator") or {}).get("fingerprint") != fp:
            continue
        d = load_direction(info["path"])
        target = names.index(d.name) if d.name in names else None
        est = []
        for p in (-power, power):
            edit = apply(d, p, wplus)
            imgs = render_edit(_Renderer(g), Inversion(wplus, {}), edit)
            est.append(estimator(imgs.clamp(-1, 1)))
        slope = (est[1] - est[0]) / (2 * power)  # [n, A] attribute change per unit power
        mean = slope.mean(0)
        row = {"direction": d.name, "power_range": d.power_range}
        if target is not None:
            others = [i for i in range(len(names)) if i != target]
            row["target_per_power"] = float(mean[target])
            row["others_mean_abs_per_power"] = float(slope[:, others].abs().mean())
            worst = max(others, key=lambda i: float(mean[i].abs()))
            row["most_entangled"] = f"{names[worst]} {float(mean[worst]):+.3f}"
        rows.append(row)
    return rows


class _Renderer:
    """A bare generator seen as an inversion method (for :func:`render_edit`)."""

    def __init__(self, g) -> None:
        self.generator = g

    def render(self, inv: Inversion, delta: torch.Tensor | None = None, style_offsets=None) -> torch.Tensor:
        w = inv.wplus if delta is None else inv.wplus + delta
        return self.generator(w, noise_mode="const", style_offsets=style_offsets)


def _git() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="held-out faces")
    ap.add_argument("--seed", type=int, default=20261121, help="held-out seed (training used seeds 0, 1, 7)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--optim-steps", type=int, default=300)
    ap.add_argument("--project-n", type=int, default=16)
    ap.add_argument("--project-steps", type=int, default=600)
    ap.add_argument("--edit-n", type=int, default=128)
    ap.add_argument("--edit-power", type=float, default=2.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    res: dict = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "commit": _git(),
        "date": time.strftime("%Y-%m-%d"),
        "args": {k: str(v) for k, v in vars(args).items()},
        "command": " ".join(["python", "benchmarks/world_metrics.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    e4e = create_method("e4e", None, "cpu")
    g = e4e.generator
    size = g.size
    x = world_faces(args.n, args.seed, size, detail=1.0)
    res["e4e"] = quality(e4e, x, args.batch)
    print(f"e4e: {res['e4e']}", file=sys.stderr)
    opt = create_method("optim", None, "cpu", steps=str(args.optim_steps))
    res["optim"] = quality(opt, x, args.batch)
    res["optim"]["steps"] = args.optim_steps
    print(f"optim: {res['optim']}", file=sys.stderr)
    clean = world_faces(args.project_n, args.seed + 1, size, detail=0.0, detail_seed=0)
    proj = create_method("optim", None, "cpu", steps=str(args.project_steps))
    res["projection"] = quality(proj, clean, args.batch)
    res["projection"]["steps"] = args.project_steps
    print(f"projection: {res['projection']}", file=sys.stderr)
    est = AttributeEstimator.load(resolve_weights(None, method="attributes"))
    res["directions"] = direction_effects(g, est, args.edit_n, args.edit_power, args.seed)
    print(markdown(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


def markdown(res: dict) -> str:
    """The README tables, under a title and the command line that made them."""
    a = res["args"]
    lines = [
        "# Embedded demo zoo on the synthetic world",
        "",
        f"Command: `{res['command']}` (n {a['n']}, optim {a['optim_steps']} "
        f"steps, projection {a['project_steps']} steps; the first batch's warm-up is inside images/s).",
        "",
        f"Held-out world faces (64 px, fine detail), {res['args']['n']} images; commit {res['commit']}, "
        f"{res['date']}, {res['machine']}:",
        "",
        "| inversion | PSNR (dB) | SSIM | images/s |",
        "|---|---|---|---|",
        f"| e4e (world.e4e) | {res['e4e']['psnr']:.2f} | {res['e4e']['ssim']:.3f} | {res['e4e']['images_per_s']:.1f} |",
        f"| latent optimisation, W+, {res['optim']['steps']} steps | {res['optim']['psnr']:.2f} | "
        f"{res['optim']['ssim']:.3f} | {res['optim']['images_per_s']:.2f} |",
        f"| W+ projection of clean renders ({res['args']['project_n']} images, {res['projection']['steps']} steps) | "
        f"{res['projection']['psnr']:.2f} | {res['projection']['ssim']:.3f} | |",
        "",
        f"Directions on {res['args']['edit_n']} sampled W codes, powers +-{res['args']['edit_power']} (attribute "
        "estimator, world scale [-1, 1]):",
        "",
        "| direction | target change / unit power | mean abs change of the others / unit power | largest other |",
        "|---|---|---|---|",
    ]
    for r in res["directions"]:
        if "target_per_power" in r:
            lines.append(
                f"| {r['direction']} | {r['target_per_power']:+.3f} | {r['others_mean_abs_per_power']:.3f} | "
                f"{r['most_entangled']} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

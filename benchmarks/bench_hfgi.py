"""HFGI vs e4e throughput (images/s) at batch 1 and 8: inversion with its reconstruction, and an edit of a stored
inversion (what `gie edit` does per power). Prints a markdown table.

Usage: python benchmarks/bench_hfgi.py [--configs world full] [--batches 1 8] [--images 16] [--device cpu]

"world" is the embedded zoo (world.e4e and world.hfgi: 64 px generator, 64 px encoder input, conditions at 32 px).
"full" is the official architecture with random weights (throughput does not depend on them): IR-SE50 e4e at 256 px,
the 1024 px config-f generator, ADA at 256 px, the consultation encoder conditioning the 64 px block. Each cell runs
one warm-up batch, then ``--images`` images in batches.
"""

from __future__ import annotations

import torch
from bench_invert import bench_args, build, environment_line, throughput

from gie_cli.methods import create_method
from gie_cli.methods.e4e import EncoderMethod
from gie_cli.methods.hfgi import CONDITION_LAYER, ResidualAligner, ResidualEncoder
from gie_cli.methods.hfgi.method import HFGIMethod


def methods(name: str, device: torch.device) -> tuple[EncoderMethod, HFGIMethod]:
    """``(e4e, hfgi)`` sharing one encoder and generator."""
    if name == "world":
        hfgi = create_method("hfgi", "world.hfgi")
        e4e = EncoderMethod(hfgi.generator, hfgi.encoder, hfgi.latent_avg, "e4e", hfgi.encoder_config)
    else:
        e4e = build("full", device)
        g = e4e.generator
        residue = ResidualEncoder(g.layer_channels(CONDITION_LAYER), g.layer_resolution(CONDITION_LAYER))
        hfgi = HFGIMethod(g, e4e.encoder, e4e.latent_avg, e4e.encoder_config, ResidualAligner(), residue)
    return e4e.to(device).eval(), hfgi.to(device).eval()


def main() -> None:
    args, device = bench_args(__doc__, ["world", "full"])
    print(f"{environment_line(device)} images={args.images}\n")
    print("| config | batch | e4e invert+render img/s | HFGI invert+render img/s | HFGI / e4e time per image "
          "| e4e edit img/s | HFGI edit img/s | HFGI / e4e edit time |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name in args.configs:
        e4e, hfgi = methods(name, device)
        s, g = e4e.input_size, e4e.generator
        for b in args.batches:
            x = torch.rand(b, 3, s, s, device=device) * 2 - 1
            delta = torch.randn(1, g.n_latent, g.style_dim, device=device) * 0.3
            with torch.no_grad():
                stored = {"e4e": e4e.invert(x), "hfgi": hfgi.invert(x)}
            stored = {k: type(v)(v.wplus.clone(), dict(v.extras)) for k, v in stored.items()}  # as `gie edit` loads

            def invert(bs: int, m=None, x=x) -> None:
                with torch.no_grad():
                    m.render(m.invert(x[:bs]))

            def edit(bs: int, m=None, key: str = "", stored=stored, delta=delta) -> None:
                with torch.no_grad():
                    m.render(stored[key], delta)

            rates = [
                throughput(lambda bs, m=e4e: invert(bs, m), b, args.images, device),
                throughput(lambda bs, m=hfgi: invert(bs, m), b, args.images, device),
                throughput(lambda bs, m=e4e: edit(bs, m, "e4e"), b, args.images, device),
                throughput(lambda bs, m=hfgi: edit(bs, m, "hfgi"), b, args.images, device),
            ]
            print(
                f"| {name} ({g.size} px) | {b} | {rates[0]:.2f} | {rates[1]:.2f} | {rates[0] / rates[1]:.2f}x "
                f"| {rates[2]:.2f} | {rates[3]:.2f} | {rates[2] / rates[3]:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Style Transformer vs e4e vs pSp throughput (images/s): encode only, and encode + render, at batch 1 and 8.
Prints a markdown table.

Usage: python benchmarks/bench_style_transformer.py [--configs world full] [--batches 1 8] [--images 16]
       [--device cpu]

"world" is the embedded zoo (world.e4e, world.style_transformer; pSp gets world.e4e's IR-SE preset with random
weights, as it is not in the zoo). "full" is the official architectures with random weights (throughput does not
depend on them): IR-SE50 encoders at 256 px, Style Transformer's three decoder layers (d_model 512, 4 heads, FFN
1024) over the 16/32/64 px pyramid, the 1024 px config-f generator. Each cell runs one warm-up batch, then
``--images`` images in batches.
"""

from __future__ import annotations

import torch
from bench_invert import bench_args, build, environment_line, throughput

from gie_cli.methods import create_method
from gie_cli.methods.e4e import EncoderMethod
from gie_cli.methods.style_transformer import StyleTransformerEncoder
from gie_cli.methods.style_transformer.method import StyleTransformerMethod
from gie_cli.models import create_model


def methods(name: str, device: torch.device) -> dict[str, EncoderMethod]:
    """``{"e4e", "psp", "style_transformer"}`` sharing one generator."""
    if name == "world":
        e4e = create_method("e4e", "world.e4e")
        st = create_method("style_transformer", "world.style_transformer")
        cfg = dict(e4e.encoder_config)
    else:
        e4e = build("full", device)
        cfg = dict(e4e.encoder_config)
        enc = StyleTransformerEncoder(n_styles=e4e.generator.n_latent, input_size=256)
        st = StyleTransformerMethod(e4e.generator, enc, e4e.latent_avg, "style_transformer", {}, True, "random")
    torch.manual_seed(0)
    psp = EncoderMethod(e4e.generator, create_model("psp", **cfg), e4e.latent_avg, "psp", cfg, True, "random")
    return {k: m.to(device).eval() for k, m in {"e4e": e4e, "psp": psp, "style_transformer": st}.items()}


def main() -> None:
    args, device = bench_args(__doc__, ["world", "full"])
    print(f"{environment_line(device)} images={args.images}\n")
    names = ("e4e", "psp", "style_transformer")
    print(
        "| config | batch | "
        + " | ".join(f"{n} encode img/s" for n in names)
        + " | "
        + " | ".join(f"{n} invert+render img/s" for n in names)
        + " | ST / e4e time per image (invert+render) |"
    )
    print("|---|---|" + "---|" * (2 * len(names) + 1))  # fmt: skip
    for name in args.configs:
        ms = methods(name, device)
        s, size = ms["e4e"].input_size, ms["e4e"].generator.size
        for b in args.batches:
            x = torch.rand(b, 3, s, s, device=device) * 2 - 1

            def encode(bs: int, m=None, x=x) -> None:
                with torch.no_grad():
                    m.encode(x[:bs])

            def invert(bs: int, m=None, x=x) -> None:
                with torch.no_grad():
                    m.render(m.invert(x[:bs]))

            enc = [throughput(lambda bs, m=ms[n]: encode(bs, m), b, args.images, device) for n in names]
            inv = [throughput(lambda bs, m=ms[n]: invert(bs, m), b, args.images, device) for n in names]
            cells = " | ".join(f"{r:.2f}" for r in [*enc, *inv])
            print(f"| {name} ({size} px) | {b} | {cells} | {inv[0] / inv[2]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()

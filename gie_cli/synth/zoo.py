"""The embedded demo zoo: gie's own models of the synthetic face world, packed into ``gie_cli/zoo/``.

``scripts/build_zoo.sh`` trains them with ``gie train`` and calls ``python -m gie_cli.synth.zoo pack KIND FILE`` for
each: the float32 weights are stored as float16 (loading returns float32; ``latent_avg`` stays float32), a model
trained on another zoo model stores only its own parts (:data:`ZOO_BASES`), and the registry entries (``world.*`` in
``weights.toml``) get the new sha256 and size.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import torch

ZOO_DIR = Path(__file__).resolve().parents[1] / "zoo"

#: kind -> (file in gie_cli/zoo, registry name)
ZOO_FILES: dict[str, tuple[str, str]] = {
    "generator": ("world-generator.safetensors", "world.generator"),
    "e4e": ("world-e4e.safetensors", "world.e4e"),
    "attributes": ("world-attributes.safetensors", "world.attributes"),
    "gradstyle": ("world-gradstyle.safetensors", "world.gradstyle"),
    "hfgi": ("world-hfgi.safetensors", "world.hfgi"),
    "style_transformer": ("world-style-transformer.safetensors", "world.style_transformer"),
    "latent_classifier": ("world-latent-classifier.safetensors", "world.latent_classifier"),
    "edit_transformer": ("world-edit-transformer.safetensors", "world.edit_transformer"),
    "sfe": ("world-sfe.safetensors", "world.sfe"),
    "ood": ("world-ood.safetensors", "world.ood"),
}
#: kind -> (registry name of the zoo model it was trained on, the parts stored only there): a packed file keeps its
#: own weights and refers to the base for the rest (``gie_cli.models.loading.save_on_base``), so no zoo model is
#: stored twice (pack the base first: the reference records its sha256).
ZOO_BASES: dict[str, tuple[str, list[str]]] = {
    "e4e": ("world.generator", ["decoder"]),
    "gradstyle": ("world.e4e", ["encoder", "decoder", "latent_avg"]),
    "hfgi": ("world.e4e", ["encoder", "decoder", "latent_avg"]),
    "sfe": ("world.e4e", ["encoder", "decoder", "latent_avg"]),  # its Inverter and Feature Editor are its own
    "ood": ("world.e4e", ["encoder", "decoder", "latent_avg"]),  # its SAMM (feats_conv, modulation) is its own
    # the synthesis network only: Style Transformer fine-tunes the mapping MLP (decoder.style.*), which it keeps
    "style_transformer": (
        "world.generator",
        [f"decoder.{p}" for p in ("input", "conv1", "to_rgb1", "convs", "to_rgbs", "noises")],
    ),
}

log = logging.getLogger(__name__)


def pack(kind: str, src: str | Path, zoo_dir: str | Path = ZOO_DIR) -> Path:
    """Copy a trained model into the zoo in half precision.

    Args:
        kind: one of :data:`ZOO_FILES`.
        src: the file ``gie train`` exported.
        zoo_dir: destination folder.

    Returns:
        The packed file.
    """
    from gie_cli.io.checkpoint import half_precision_copy
    from gie_cli.weights import pack_on_base

    if kind not in ZOO_FILES:
        raise ValueError(f"unknown zoo kind {kind!r} (known: {', '.join(ZOO_FILES)})")
    dst = Path(zoo_dir) / ZOO_FILES[kind][0]
    dst.parent.mkdir(parents=True, exist_ok=True)
    if kind in ZOO_BASES:
        base, parts = ZOO_BASES[kind]
        # the base was stored in fp16 and trained frozen: the dropped parts must be exactly the base's
        pack_on_base(dst, src, base, parts, half=True)
    else:
        half_precision_copy(src, dst, keep_fp32=("latent_avg", "w_avg"))
    log.info("packed %s -> %s (%.1f MB)", src, dst, dst.stat().st_size / 1e6)
    return dst


@torch.no_grad()
def ground_truth_labels(
    generator_path: str | Path, out: str | Path, n: int = 10000, seed: int = 0, estimator: str | Path | None = None
) -> Path:
    """Labelled W codes of the world generator for ``gie directions fit interfacegan --labels``.

    ``z ~ N(0, I)`` is sampled and mapped to ``w``; the labels are the attributes the generator was trained to render
    from that ``z`` (its first coordinates, :func:`gie_cli.synth.latent.z_attributes`), i.e. the world's ground truth,
    one column per attribute in :data:`gie_cli.synth.params.ATTRIBUTES` order. With ``estimator`` the labels are
    instead the attribute estimator's readings of the rendered samples (what the generator actually draws).

    Args:
        generator_path: the world generator (gie checkpoint with a ``world`` config).
        out: ``.safetensors`` file with ``w [n, D]`` and ``labels [n, A]``.
        n: samples.
        seed: sampling seed.
        estimator: an attribute estimator file to label the rendered samples with (None: the z attributes).

    Returns:
        ``out``.
    """
    from gie_cli.io.checkpoint import save_safetensors
    from gie_cli.models.loading import build_generator
    from gie_cli.synth.latent import z_attributes
    from gie_cli.synth.params import ATTRIBUTES
    from gie_cli.weights import load_components

    comp = load_components(generator_path)
    names = (comp.config.get("world") or {}).get("z_attributes")
    if names != [a.name for a in ATTRIBUTES]:
        raise ValueError(f"{generator_path} is not a world generator of this world version (z_attributes {names})")
    g = build_generator(comp).eval()
    z = torch.randn(n, g.style_dim, generator=torch.Generator().manual_seed(seed))
    w = torch.cat([g.mapping(z[i : i + 1000]) for i in range(0, n, 1000)])
    if estimator is None:
        z = z / z.norm(dim=1, keepdim=True) * math.sqrt(g.style_dim)  # what the mapping sees after pixel norm
        labels = z_attributes(z[:, : len(ATTRIBUTES)])
    else:  # what the estimator reads on the rendered images
        from gie_cli.synth.estimator import AttributeEstimator

        est = AttributeEstimator.load(estimator)
        labels = torch.cat([est(g(g.broadcast(w[i : i + 100]), noise_mode="const")) for i in range(0, n, 100)])
    meta = {"columns": names, "source": str(generator_path), "seed": seed, "labelled_by": str(estimator or "z")}
    save_safetensors(out, {"w": w, "labels": labels}, meta)
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m gie_cli.synth.zoo", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="store a trained model in gie_cli/zoo (fp16) and update the registry hashes")
    p.add_argument("kind", choices=sorted(ZOO_FILES))
    p.add_argument("file", type=Path)
    q = sub.add_parser("labels", help="ground-truth labelled W codes of the world generator (for directions fit)")
    q.add_argument("generator", type=Path)
    q.add_argument("-o", "--output", type=Path, required=True)
    q.add_argument("-n", type=int, default=10000)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--estimator", type=Path, help="label the rendered samples with this attribute estimator")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cmd == "labels":
        print(ground_truth_labels(args.generator, args.output, args.n, args.seed, args.estimator))
        return
    dst = pack(args.kind, args.file)
    from gie_cli.weights.embed_hashes import embed_hashes

    changes, missing = embed_hashes()  # the other zoo files may not exist yet while the zoo is being built
    if dst in missing:
        raise SystemExit(f"could not update the registry hashes for {dst}")
    for reg, names in changes.items():
        log.info("%s: updated %s", reg, ", ".join(names) or "nothing")
    print(dst)


if __name__ == "__main__":
    main()

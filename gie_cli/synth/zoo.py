"""The embedded demo zoo: gie's own models of the synthetic face world, packed into ``gie_cli/zoo/``.

``scripts/build_zoo.sh`` trains them with ``gie train`` and calls ``python -m gie_cli.synth.zoo pack KIND FILE`` for
each: the float32 weights are stored as float16 (loading returns float32; ``latent_avg`` stays float32) and the
registry entries (``world.*`` in ``weights.toml``) get the new sha256 and size.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parents[1] / "zoo"

#: kind -> (file in gie_cli/zoo, registry name)
ZOO_FILES: dict[str, tuple[str, str]] = {
    "generator": ("world-generator.safetensors", "world.generator"),
    "e4e": ("world-e4e.safetensors", "world.e4e"),
    "attributes": ("world-attributes.safetensors", "world.attributes"),
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

    if kind not in ZOO_FILES:
        raise ValueError(f"unknown zoo kind {kind!r} (known: {', '.join(ZOO_FILES)})")
    dst = Path(zoo_dir) / ZOO_FILES[kind][0]
    dst.parent.mkdir(parents=True, exist_ok=True)
    half_precision_copy(src, dst, keep_fp32=("latent_avg", "w_avg"))
    log.info("packed %s -> %s (%.1f MB)", src, dst, dst.stat().st_size / 1e6)
    return dst


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m gie_cli.synth.zoo", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="store a trained model in gie_cli/zoo (fp16) and update the registry hashes")
    p.add_argument("kind", choices=sorted(ZOO_FILES))
    p.add_argument("file", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dst = pack(args.kind, args.file)
    from gie_cli.weights.embed_hashes import main as embed_hashes

    if embed_hashes([]) != 0:
        raise SystemExit(f"could not update the registry hashes for {dst}")
    print(dst)


if __name__ == "__main__":
    main()

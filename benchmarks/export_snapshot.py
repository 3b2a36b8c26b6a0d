"""Export the weights of a `gie train` snapshot taken mid-run (e.g. a 500-step point of a longer run, for an ablation
at equal training length).

Usage: python benchmarks/export_snapshot.py RUN_DIR/snapshot-0000500.pt -o full-500.safetensors

The trainer is rebuilt from the run's ``options.json`` (method, data, weights, batch size, seed, trainer settings),
loaded with the snapshot, and exported exactly as ``gie train`` exports at the end of a run.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from gie_cli.training import create_trainer
from gie_cli.training.run import load_snapshot


def export_snapshot(snapshot: Path, out: Path, device: str = "cpu") -> Path:
    """Rebuild the run's trainer, load ``snapshot`` into it and export to ``out``."""
    opts = json.loads((snapshot.parent / "options.json").read_text())
    settings = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in opts.get("trainer", {}).items()}
    trainer = create_trainer(
        opts["method"],
        data=opts["data"],
        weights=opts.get("weights"),
        device=device,
        batch_size=int(opts["batch_size"]),
        seed=int(opts["seed"]),
        **settings,
    )
    state = load_snapshot(snapshot)
    trainer.load_state_dict(state)
    trainer.export(out)
    logging.info("exported step %s of %s -> %s", state["step"], snapshot.parent, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("snapshot", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(export_snapshot(args.snapshot, args.output, args.device))


if __name__ == "__main__":
    main()

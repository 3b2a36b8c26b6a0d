"""`gie info`: what gie would run on (device, dtype, ops implementation, versions), as text or JSON."""

from __future__ import annotations

import json
import platform

import typer

from gie_cli import __version__
from gie_cli.cli import command
from gie_cli.cli.options import DeviceOpt, JsonOpt, examples


@command(epilog=examples("gie info", "gie info --json --device cuda:1"))
def info(device: DeviceOpt = "auto", json_out: JsonOpt = False) -> None:
    """Show the resolved device, the ops implementation, library versions, methods and trainable parts."""
    import torch

    from gie_cli.device import resolve_device
    from gie_cli.methods import list_methods
    from gie_cli.ops import active_impl
    from gie_cli.training import list_trainers

    dev = resolve_device(device)
    facts = {
        "gie": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "ops_impl": active_impl(dev),
        "methods": list_methods(),
        "trainable": sorted(list_trainers()),
    }
    if json_out:
        typer.echo(json.dumps(facts))
    else:
        for k, v in facts.items():
            if isinstance(v, dict):
                typer.echo(f"{k}:")
                for name, summary in v.items():
                    typer.echo(f"  {name:10s} {summary}")
            else:
                typer.echo(f"{k:12s} {', '.join(v) if isinstance(v, list) else v}")

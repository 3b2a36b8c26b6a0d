"""`gie train`: train a method's trainable parts in a run folder (snapshots, metrics, resume, export)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from gie_cli.cli import command
from gie_cli.cli.options import DeviceOpt, batch_size_option, examples, parse_settings, settings_option, weights_option
from gie_cli.cli.ranks import launch_local, ranks_from_env
from gie_cli.errors import UsageError

log = logging.getLogger(__name__)


_EPILOG = examples(
    "gie train --method e4e --data aligned/ -w generator.safetensors --steps 20000",
    "gie train --method gradstyle --data aligned/ -w e4e.ffhq --set discriminator=stylegan2.ffhq",
    "gie train --method e4e --data aligned/ --resume latest",
    "torchrun --nproc-per-node 4 -m gie_cli train --method e4e --data aligned/ -w generator.safetensors -b 32",
    "gie train --method e4e --data aligned/ -w generator.safetensors -b 32 --nproc 4",
)


@command(epilog=_EPILOG)
def train(
    method: Annotated[str, typer.Option("--method", "-m", help="Method whose trainable parts are trained.")],
    data: Annotated[str, typer.Option("--data", help="Folder of aligned training images.")],
    weights: Annotated[str | None, weights_option("Frozen parts (e.g. the generator) or weights to fine-tune.")] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Total optimisation steps.")] = 1000,
    batch_size: Annotated[
        int, batch_size_option("Images per training step (over all processes of a torchrun launch).")
    ] = 8,
    settings: Annotated[list[str] | None, settings_option("Trainer setting KEY=VALUE (repeatable).")] = None,
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Folder holding the numbered run folders.")] = Path("runs"),
    resume: Annotated[
        str | None, typer.Option("--resume", help="Continue: a snapshot file, a run folder, or 'latest'.")
    ] = None,
    snapshot_every: Annotated[int, typer.Option("--snapshot-every", min=1)] = 500,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = "auto",
    workers: Annotated[
        int, typer.Option("--workers", min=0, help="Data loader worker processes (0: load in the training process).")
    ] = 0,
    nproc: Annotated[
        int, typer.Option("--nproc", min=1, help="Train as N local processes (as torchrun --nproc-per-node N).")
    ] = 1,
    quiet: Annotated[bool, typer.Option("--no-progress", help="No progress bar (log lines instead).")] = False,
) -> None:
    """Train METHOD on aligned images; prints the exported weights file on stdout.

    Under torchrun (WORLD_SIZE > 1) or with --nproc, each process trains on its share of every batch, gradients
    averaged over the processes; rank 0 alone writes the run folder and prints.
    """
    import torch

    from gie_cli.device import resolve_device
    from gie_cli.training import create_trainer, dist, list_trainers
    from gie_cli.training.loop import run_training

    if method not in list_trainers():
        raise UsageError(f"no trainer for method {method!r}", hint=f"trainable: {', '.join(list_trainers())}")
    ranks = ranks_from_env()
    world = ranks.world if ranks is not None else 1
    if nproc > 1:
        if world > 1:
            raise UsageError("--nproc inside a torchrun launch", hint="use one or the other", param="nproc")
        raise typer.Exit(launch_local(nproc, process_group=True))
    if batch_size % world:
        raise UsageError(
            f"must be divisible by the {world} processes of this launch (WORLD_SIZE)",
            hint="the batch size is the global one: use a multiple of the process count",
            param="batch_size",
            value=batch_size,
        )
    if ranks is not None and ranks.rank != 0:
        logging.getLogger("gie_cli").setLevel(logging.WARNING)  # rank 0 reports
    dev = resolve_device(device)
    if world > 1:
        dev = dist.init_from_env(dev)
    try:
        torch.manual_seed(seed)
        trainer = create_trainer(
            method,
            data=data,
            weights=weights,
            device=dev,
            batch_size=batch_size,
            seed=seed,
            **parse_settings(settings or []),
        )
        out = run_training(
            trainer,
            steps,
            run_dir,
            resume,
            snapshot_every,
            options={"data": data, "weights": weights, "batch_size": batch_size, "seed": seed, "device": str(dev)},
            quiet=quiet,
            workers=workers,
            pin_memory=dev.type == "cuda",
        )
        main = dist.rank() == 0
    finally:
        if world > 1:
            dist.shutdown()
    if main:
        typer.echo(str(out))

"""The shared training loop behind `gie train`: steps, metrics, periodic snapshots, resume, export; data-parallel
when launched in a torch.distributed process group (:mod:`gie_cli.training.dist`)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import Tensor

from gie_cli.errors import UsageError
from gie_cli.training import dist
from gie_cli.training.base import Trainer
from gie_cli.training.data import LoaderScope, LoaderSettings, loader_settings
from gie_cli.training.run import RunLog, find_resume, load_snapshot, new_run_dir

log = logging.getLogger(__name__)


def run_training(
    trainer: Trainer,
    steps: int,
    run_root: Path,
    resume: str | None = None,
    snapshot_every: int = 1000,
    log_every: int = 10,
    options: dict | None = None,
    quiet: bool = False,
    workers: int = 0,
    pin_memory: bool = False,
) -> Path:
    """Train ``trainer`` up to ``steps`` total steps and export its weights; returns the exported file.

    A fresh run gets ``run_root/NNNNN-<method>/``; ``resume`` (snapshot, run folder or ``latest``) continues a run in
    its own folder from its last step (the data order restarts). Ctrl-C writes a snapshot before exiting.

    In an initialised process group of several ranks, each rank trains on its share of every global batch with
    gradients averaged over the ranks (:class:`~gie_cli.training.dist.Replicas`); every rank loads a resumed
    snapshot, only rank 0 creates the run folder and writes logs, metrics (averaged over the ranks), snapshots and
    the export.

    Args:
        workers: data loader worker processes (0: load in this process; the data order does not depend on it).
        pin_memory: page-locked batches (CUDA).
    """
    name = trainer.name
    rank, world = dist.rank(), dist.world_size()
    start = 0
    if resume:
        snap = find_resume(resume, run_root, name)
        state = load_snapshot(snap)
        trainer.load_state_dict(state)
        start = int(state["step"])
        run_dir = snap.parent
        log.info("resuming %s from %s (step %d)", name, snap, start)
    else:
        run_dir = Path(dist.broadcast_object(str(new_run_dir(run_root, name)) if rank == 0 else None))
    replicas = None
    if world > 1:
        replicas = dist.Replicas(list(trainer.modules().values()), list(trainer.optimizers().values()))
        dist.reseed_rank()
    runlog = None
    if rank == 0:
        runlog = RunLog(run_dir)
        runlog.write_options(
            {
                "method": name,
                "steps": steps,
                "snapshot_every": snapshot_every,
                "resumed_from": resume,
                "world_size": world,
                "workers": workers,
                **(options or {}),
                **trainer.options(),
            }
        )
        log.info("run folder: %s", run_dir)
    progress = _progress(quiet or rank > 0, steps, start, name)
    step = start
    t0 = time.perf_counter()
    try:
        with loader_settings(LoaderSettings(workers=workers, pin_memory=pin_memory, rank=rank, world=world)) as scope:
            batches = _rank_batches(trainer.batches(), scope)
            while step < steps:
                metrics = trainer.train_step(next(batches), step)
                step += 1
                if step % log_every == 0 or step == steps or step == start + 1:
                    if replicas is not None:
                        metrics = replicas.mean_metrics(metrics)
                    metrics["sec_per_step"] = (time.perf_counter() - t0) / (step - start)
                    if runlog is not None:
                        runlog.metrics(step, metrics)
                        if progress is None:
                            log.info("step %d/%d %s", step, steps, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
                if progress is not None:
                    progress[0].update(
                        progress[1],
                        completed=step,
                        description=f"{name} " + " ".join(f"{k}={v:.3g}" for k, v in metrics.items()),
                    )
                if runlog is not None and step % snapshot_every == 0 and step < steps:
                    runlog.save_snapshot(step, trainer.state_dict())
            batches.close()
    except KeyboardInterrupt:
        if runlog is not None:
            path = runlog.save_snapshot(step, trainer.state_dict())
            log.warning("interrupted at step %d; snapshot %s (continue with --resume %s)", step, path, run_dir)
        raise
    finally:
        if progress is not None:
            progress[0].stop()
        if runlog is not None:
            runlog.close()
        if replicas is not None:
            replicas.close()
    out = run_dir / f"{name}.safetensors"
    if runlog is not None:
        runlog.save_snapshot(step, trainer.state_dict())
        trainer.export(out)
        log.info("exported %s", out)
    dist.barrier()  # the export exists when any rank returns
    return out


def _rank_batches(batches: Iterator[Any], scope: LoaderScope) -> Iterator[Any]:
    """The trainer's stream as this rank's shares: streams of :func:`~gie_cli.training.data.endless` and
    :func:`~gie_cli.training.data.index_batches` shard themselves (seen at the first batch); others yield global
    batches, cut here."""
    scope.sharded = False
    first = next(batches)  # starts the stream: a sharding one says so
    s = scope.settings
    if scope.sharded or s.world == 1:
        yield first
        yield from batches
        return
    yield _share(first, s.rank, s.world)
    for b in batches:
        yield _share(b, s.rank, s.world)


def _share(batch: Any, rank: int, world: int) -> Any:
    """Rank ``rank``'s contiguous share of a global batch (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(batch, Tensor):
        per = len(batch) // world
        if per < 1:
            raise UsageError(f"a global batch of {len(batch)} cannot be split over {world} processes")
        return batch[rank * per : (rank + 1) * per]
    if isinstance(batch, (tuple, list)):
        return type(batch)(_share(b, rank, world) for b in batch)
    if isinstance(batch, dict):
        return {k: _share(v, rank, world) for k, v in batch.items()}
    raise UsageError(f"cannot split training batches of type {type(batch).__name__} over processes")


def _progress(quiet: bool, total: int, start: int, name: str):
    if quiet or not sys.stderr.isatty() or os.environ.get("GIE_DISABLE_PROGRESS_BARS"):
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = p.add_task(name, total=total, completed=start)
    p.start()
    return p, task

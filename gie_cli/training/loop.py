"""The shared training loop behind `gie train`: steps, metrics, periodic snapshots, resume, export."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from gie_cli.training.base import Trainer
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
) -> Path:
    """Train ``trainer`` up to ``steps`` total steps and export its weights; returns the exported file.

    A fresh run gets ``run_root/NNNNN-<method>/``; ``resume`` (snapshot, run folder or ``latest``) continues a run in
    its own folder from its last step (the data order restarts). Ctrl-C writes a snapshot before exiting.
    """
    name = trainer.name
    start = 0
    if resume:
        snap = find_resume(resume, run_root, name)
        state = load_snapshot(snap)
        trainer.load_state_dict(state)
        start = int(state["step"])
        run_dir = snap.parent
        log.info("resuming %s from %s (step %d)", name, snap, start)
    else:
        run_dir = new_run_dir(run_root, name)
    runlog = RunLog(run_dir)
    runlog.write_options(
        {
            "method": name,
            "steps": steps,
            "snapshot_every": snapshot_every,
            "resumed_from": resume,
            **(options or {}),
            **trainer.options(),
        }
    )
    log.info("run folder: %s", run_dir)
    progress = _progress(quiet, steps, start, name)
    batches = trainer.batches()
    step = start
    t0 = time.perf_counter()
    try:
        while step < steps:
            metrics = trainer.train_step(next(batches), step)
            step += 1
            if step % log_every == 0 or step == steps or step == start + 1:
                metrics["sec_per_step"] = (time.perf_counter() - t0) / (step - start)
                runlog.metrics(step, metrics)
                if progress is None:
                    log.info("step %d/%d %s", step, steps, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            if progress is not None:
                progress[0].update(
                    progress[1],
                    completed=step,
                    description=f"{name} " + " ".join(f"{k}={v:.3g}" for k, v in metrics.items()),
                )
            if step % snapshot_every == 0 and step < steps:
                runlog.save_snapshot(step, trainer.state_dict())
    except KeyboardInterrupt:
        path = runlog.save_snapshot(step, trainer.state_dict())
        log.warning("interrupted at step %d; snapshot %s (continue with --resume %s)", step, path, run_dir)
        raise
    finally:
        if progress is not None:
            progress[0].stop()
        runlog.close()
    runlog.save_snapshot(step, trainer.state_dict())
    out = run_dir / f"{name}.safetensors"
    trainer.export(out)
    log.info("exported %s", out)
    return out


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

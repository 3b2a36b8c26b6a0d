"""Training runs: run folders, options and metrics logs, snapshots, resume (after StyleGAN's training_loop layout)."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import torch

from gie_cli.errors import CheckpointError, UsageError
from gie_cli.io.atomic import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

SNAPSHOT_RE = re.compile(r"^snapshot-(\d{7})\.pt$")


def new_run_dir(root: Path, name: str) -> Path:
    """Create ``root/NNNNN-name`` with the next free number."""
    root.mkdir(parents=True, exist_ok=True)
    nums = [int(m.group(1)) for p in root.iterdir() if (m := re.match(r"^(\d{5})-", p.name))]
    run = root / f"{(max(nums) + 1) if nums else 0:05d}-{name}"
    run.mkdir()
    return run


def latest_snapshot(run_dir: Path) -> Path | None:
    """The newest ``snapshot-NNNNNNN.pt`` of a run folder, or None."""
    snaps = sorted(p for p in run_dir.glob("snapshot-*.pt") if SNAPSHOT_RE.match(p.name))
    return snaps[-1] if snaps else None


def find_resume(resume: str, root: Path, name: str) -> Path:
    """Resolve ``--resume``: a snapshot file, a run folder, or ``latest`` (newest run of ``name`` under ``root``).

    Raises:
        UsageError: nothing to resume from.
    """
    if resume == "latest":
        runs = sorted(p for p in root.glob(f"*-{name}") if p.is_dir()) if root.is_dir() else []
        for run in reversed(runs):
            snap = latest_snapshot(run)
            if snap is not None:
                return snap
        raise UsageError(
            f"no snapshot of a '{name}' run under {root}", hint="start without resuming", param="resume", value=resume
        )
    p = Path(resume)
    if p.is_dir():
        snap = latest_snapshot(p)
        if snap is None:
            raise UsageError(f"run folder {resume} has no snapshot-*.pt", param="resume", value=resume)
        return snap
    if not p.is_file():
        raise UsageError(
            f"snapshot {resume} not found", hint="pass a snapshot file, a run folder or 'latest'", param="resume",
            value=resume,
        )  # fmt: skip
    return p


class RunLog:
    """A run folder: ``options.json`` at start, ``metrics.jsonl`` lines, ``log.txt``, snapshots and exports."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        self._t0 = time.time()
        handler = logging.FileHandler(run_dir / "log.txt", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._handler = handler
        logging.getLogger("gie_cli").addHandler(handler)

    def write_options(self, options: dict) -> None:
        atomic_write_text(self.dir / "options.json", json.dumps(options, indent=1, sort_keys=True, default=str))

    def metrics(self, step: int, values: dict[str, float]) -> None:
        rec = {"step": step, "time_s": round(time.time() - self._t0, 2), **{k: float(v) for k, v in values.items()}}
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    def save_snapshot(self, step: int, state: dict) -> Path:
        """Atomically write ``snapshot-<step>.pt`` (tensors and plain values only: loadable with weights_only)."""
        path = self.dir / f"snapshot-{step:07d}.pt"
        with atomic_write(path) as f:
            torch.save({"step": step, **state}, f)
        return path

    def close(self) -> None:
        logging.getLogger("gie_cli").removeHandler(self._handler)
        self._handler.close()


def load_snapshot(path: Path) -> dict:
    """Read a snapshot written by :meth:`RunLog.save_snapshot`."""
    from gie_cli.io.checkpoint import read_checkpoint

    snap = read_checkpoint(path)
    if "step" not in snap:
        raise CheckpointError(path, "not a gie training snapshot (no 'step')")
    return snap

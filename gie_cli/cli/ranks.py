"""Multi-process batch runs: one process per GPU (``torchrun`` or ``--nproc``) on one output folder.

Each rank takes its own shard of the inputs (composed with ``--shard i/N``, so job arrays of torchrun groups work),
runs on its own device, and logs to its own manifest, merged into ``manifest.jsonl`` when it ends
(:func:`~gie_cli.cli.batch.merge_rank_manifests`). The ranks never talk to each other: the output folder's locks and
done records keep a rank's items its own, and a repeated run skips what a killed rank finished.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from gie_cli.cli.batch import Shard
from gie_cli.errors import UsageError

log = logging.getLogger(__name__)

__all__ = [
    "Ranks",
    "gather_to_first",
    "launch_local",
    "rank_device",
    "rank_shard",
    "ranks_from_env",
    "require_rendezvous",
    "setup_ranks",
]


@dataclass(frozen=True)
class Ranks:
    """This process's place in a multi-process run (torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""

    rank: int
    world: int
    local_rank: int


def ranks_from_env(env: dict[str, str] | None = None) -> Ranks | None:
    """The run's :class:`Ranks` from torchrun's environment variables, or None for a single process.

    Raises:
        UsageError: the variables are malformed.
    """
    env = os.environ if env is None else env
    raw = env.get("WORLD_SIZE", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise UsageError(f"environment WORLD_SIZE={raw!r} is not a positive integer", hint="launch with torchrun")
    if int(raw) == 1:
        return None
    try:
        ranks = Ranks(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"])))
    except (KeyError, ValueError):
        raise UsageError(
            f"WORLD_SIZE={env.get('WORLD_SIZE')} but RANK={env.get('RANK')!r}: not a torchrun environment",
            hint="launch with torchrun or gie ... --nproc N, or unset WORLD_SIZE",
        ) from None
    if not 0 <= ranks.rank < ranks.world:
        raise UsageError(f"RANK={ranks.rank} is outside 0..{ranks.world - 1}", hint="launch with torchrun")
    return ranks


def rank_shard(shard: Shard | None, ranks: Ranks | None) -> Shard | None:
    """The shard of one rank: ``shard`` (``--shard i/N``, None = everything) split ``world`` ways.

    Rank ``r`` of ``W`` inside shard ``i/N`` takes shard ``i + r N`` of ``N W``: an input's shard number modulo ``N``
    is still ``i``, so the ranks' shards are disjoint and their union is exactly shard ``i/N``.
    """
    if ranks is None:
        return shard
    i, n = (shard.index, shard.count) if shard is not None else (0, 1)
    return Shard(i + ranks.rank * n, n * ranks.world)


def rank_device(device: str, ranks: Ranks | None) -> str:
    """``--device`` of one rank: ``auto`` and ``cuda`` become ``cuda:<local rank>`` when CUDA is usable."""
    if ranks is None or device not in ("auto", "cuda"):
        return device
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return f"cuda:{ranks.local_rank % torch.cuda.device_count()}"
    return device


def setup_ranks(nproc: int, shard: str | None, device: str) -> tuple[Shard | None, str, int | None]:
    """What a batch command's process takes: ``(shard, device, rank)``, from ``--shard``, ``--device`` and torchrun's
    environment (rank None: a single process). With ``--nproc N`` > 1 it launches the N ranks, waits for them and
    exits with their exit code instead (:func:`launch_local`).

    Raises:
        UsageError: a malformed ``--shard`` or environment, or ``--nproc`` inside a torchrun rank.
        typer.Exit: after ``--nproc`` ranks ran.
    """
    import typer

    from gie_cli.cli.batch import parse_shard

    parsed = parse_shard(shard) if shard else None
    ranks = ranks_from_env()
    if nproc > 1:
        if ranks is not None:
            raise UsageError("--nproc inside a torchrun rank", hint="drop --nproc (torchrun starts the processes)")
        raise typer.Exit(launch_local(nproc))
    if ranks is not None:
        log.info("rank %d of %d: shard %s", ranks.rank, ranks.world, rank_shard(parsed, ranks))
    return rank_shard(parsed, ranks), rank_device(device, ranks), ranks.rank if ranks else None


def require_rendezvous(ranks: Ranks) -> None:
    """Check that the ranks can meet (:func:`gather_to_first`): the launcher's ``MASTER_ADDR`` and ``MASTER_PORT``.

    Raises:
        UsageError: they are not set (not launched by torchrun or ``--nproc``).
    """
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise UsageError(
            f"WORLD_SIZE={ranks.world} but {', '.join(missing)} is not set",
            hint="launch with torchrun --nproc-per-node N or --nproc N",
        )


def gather_to_first(obj: object, ranks: Ranks) -> list | None:
    """Collect every rank's picklable ``obj`` on rank 0 (a gloo group over the launcher's ``MASTER_ADDR`` /
    ``MASTER_PORT``, whatever the ranks compute on; joined and left here).

    Returns:
        On rank 0 the ranks' objects in rank order; None on the other ranks.

    Raises:
        UsageError: the environment names no rendezvous (:func:`require_rendezvous`).
    """
    import torch.distributed as tdist

    require_rendezvous(ranks)
    joined = not tdist.is_initialized()
    if joined:
        tdist.init_process_group("gloo", rank=ranks.rank, world_size=ranks.world)
    try:
        out: list | None = [None] * ranks.world if ranks.rank == 0 else None
        tdist.gather_object(obj, out, dst=0)
        return out
    finally:
        if joined:
            tdist.destroy_process_group()


def _child_args(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def launch_local(nproc: int, argv: list[str] | None = None, process_group: bool = False) -> int:
    """Run this command as ``nproc`` processes on this machine (ranks 0..nproc-1, with torchrun's environment
    variables) and wait for them.

    Args:
        nproc: processes.
        argv: the command line (default ``sys.argv[1:]``); ``--nproc`` is dropped from it.
        process_group: the ranks form a torch.distributed group (``gie train``): they get ``MASTER_ADDR`` and a
            free ``MASTER_PORT``, and when one fails the others are stopped (they would wait for it forever).
            Otherwise (batch commands) the ranks are independent, and the manifests of ranks that died are merged.

    Returns:
        The exit code: 1 when a rank was killed by a signal, else the largest of the ranks' (2 usage error, 1 an item
        failed, 0 all ok).

    Raises:
        UsageError: ``-`` (paths on stdin) among the arguments: the ranks cannot share stdin.
    """
    args = _child_args(list(sys.argv[1:] if argv is None else argv))
    if "-" in args:
        raise UsageError("--nproc cannot read paths from stdin (-)", hint="pass files or folders, or a list via xargs")
    group: dict[str, str] = {}
    if process_group:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            group = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(sock.getsockname()[1])}
    procs = []
    for r in range(nproc):
        env = dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                   **group)  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-m", "gie_cli", *args], env=env))
    log.info("launched %d ranks (pids %s)", nproc, ", ".join(str(p.pid) for p in procs))
    try:
        while any(p.poll() is None for p in procs):
            if process_group and any(p.poll() not in (None, 0) for p in procs):
                _stop(procs, signal.SIGTERM)
            time.sleep(0.2)
    except KeyboardInterrupt:  # Ctrl-C reached the ranks too (one process group); else they get SIGINT in 5 s
        _stop(procs, signal.SIGINT, grace=5)  # a training rank 0 writes a snapshot
        raise
    if not process_group:
        from gie_cli.cli.batch import merge_rank_manifests

        out = _output_folder(args)
        if out is not None:
            merge_rank_manifests(out)  # ranks that died left their lines unmerged
    codes = [p.returncode for p in procs]
    return 1 if any(c < 0 for c in codes) else max(codes)


def _stop(procs: list[subprocess.Popen], sig: int, grace: float = 0) -> None:
    """Send ``sig`` to the ``procs`` still running after ``grace`` seconds, kill those still running 30 s later."""
    deadline = time.monotonic() + grace
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _output_folder(args: list[str]):
    from pathlib import Path

    for i, a in enumerate(args):
        if a in ("-o", "--output") and i + 1 < len(args):
            return Path(args[i + 1])
        if a.startswith("--output="):
            return Path(a.split("=", 1)[1])
    return None

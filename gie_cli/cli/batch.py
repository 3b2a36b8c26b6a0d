"""Batch-job plumbing shared by invert, edit and align: inputs, output naming, skip policy, manifest, reporting."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from gie_cli.errors import UsageError

ON_EXISTING = ("skip", "overwrite", "error")

OnExistingOpt = Annotated[
    str,
    typer.Option("--on-existing", help="What to do when an item's outputs exist: skip (resume) | overwrite | error."),
]
RecursiveOpt = Annotated[bool, typer.Option("--recursive", "-r", help="Descend into sub-folders of input folders.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="List the planned work and exit without running.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per model batch.")]
FailFastOpt = Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failed item.")]


@dataclass
class Item:
    """One unit of work.

    Attributes:
        source: input path.
        name: output name relative to the output folder, without suffix (mirrors the input's relative path).
        outputs: role -> output path.
    """

    source: Path
    name: str
    outputs: dict[str, Path] = field(default_factory=dict)


@dataclass
class Record:
    """One manifest line."""

    input: str
    status: str  # ok | skipped | failed | no_face
    outputs: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def read_stdin_paths(stream=None, keys: Sequence[str] = ("input",)) -> list[str]:
    """Newline-separated paths from stdin. JSON lines (``--json`` output of another gie command) are accepted too:
    the first of ``keys`` found in the record's ``outputs`` (then at top level) is taken; failed records are skipped.
    """
    stream = stream or sys.stdin
    out = []
    for line in stream.read().splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"stdin: not a JSON line: {line[:60]!r} ({e.msg})") from None
            if obj.get("status") in ("failed", "no_face"):
                continue
            outputs = obj.get("outputs") if isinstance(obj.get("outputs"), dict) else {}
            for key in keys:
                val = outputs.get(key, obj.get(key))
                if isinstance(val, str):
                    out.append(val)
                    break
        else:
            out.append(line)
    return out


def collect_inputs(
    inputs: Sequence[str],
    recursive: bool,
    suffixes: Iterable[str],
    exclude: Path | None = None,
    stdin_keys: Sequence[str] = ("input",),
) -> list[tuple[Path, str]]:
    """Expand files, folders and ``-`` (paths on stdin) to ``(path, output name)`` pairs.

    Files given explicitly are kept whatever their suffix (they fail later if unreadable); folders are scanned for
    ``suffixes``. Output names mirror paths relative to the folder they were found in; explicit files use their stem.
    Name clashes get a numeric suffix. Paths under ``exclude`` (the output folder) are skipped.

    Raises:
        UsageError: a missing input, or no inputs at all.
    """
    if not inputs:
        raise UsageError("no inputs given", hint="pass files, folders, or - to read paths from stdin")
    suffixes = tuple(s.lower() for s in suffixes)
    expanded: list[str] = []
    for raw in inputs:
        expanded.extend(read_stdin_paths(keys=stdin_keys) if raw == "-" else [raw])
    found: list[tuple[Path, str]] = []
    excl = exclude.resolve() if exclude is not None else None
    for raw in expanded:
        p = Path(raw).expanduser()
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            for f in sorted(p.glob(pattern)):
                if not f.is_file() or not f.name.lower().endswith(suffixes) or f.name.startswith("."):
                    continue
                if excl is not None and excl in f.resolve().parents:
                    continue
                found.append((f, _strip_suffix(f.relative_to(p).as_posix(), suffixes)))
        elif p.exists():
            found.append((p, _strip_suffix(p.name, suffixes)))
        else:
            raise UsageError(f"input not found: {raw}", hint="check the path")
    if not found:
        raise UsageError(
            f"no input files found in {', '.join(expanded) or 'stdin'}", hint="check the paths/--recursive"
        )
    seen: Counter[str] = Counter()
    out = []
    for path, name in found:
        seen[name] += 1
        out.append((path, name if seen[name] == 1 else f"{name}-{seen[name]}"))
    return out


def _strip_suffix(name: str, suffixes: tuple[str, ...]) -> str:
    low = name.lower()
    for s in sorted(suffixes, key=len, reverse=True):
        if low.endswith(s):
            return name[: -len(s)]
    return Path(name).stem if "." in Path(name).name else name


def check_output_dir(out: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output folder that is one of the input folders (outputs would mix with, or replace, inputs)."""
    o = out.resolve()
    for p in inputs:
        rp = p.resolve()
        folder = rp if rp.is_dir() else rp.parent
        if folder == o:
            raise UsageError(f"output folder {out} is an input folder", hint="choose a different -o folder")


def is_done(item: Item) -> bool:
    return all(p.exists() for p in item.outputs.values())


def check_on_existing(value: str) -> None:
    """Validate ``--on-existing``."""
    if value not in ON_EXISTING:
        raise UsageError(f"--on-existing must be one of {', '.join(ON_EXISTING)}")


def existing_record(item: Item, on_existing: str, done: bool | None = None) -> Record | None:
    """The record of an item whose outputs exist and must not be (re)done: ``skipped`` when all exist under
    ``skip``, ``failed`` when any exists under ``error``; None when the item is to be processed."""
    done = is_done(item) if done is None else done
    outs = {k: str(v) for k, v in item.outputs.items()}
    if done and on_existing == "skip":
        return Record(str(item.source), "skipped", outs, "outputs exist")
    if on_existing == "error" and any(p.exists() for p in item.outputs.values()):
        return Record(str(item.source), "failed", outs, "outputs exist (--on-existing error)")
    return None


def split_existing(items: Sequence[Item], on_existing: str, reporter: Reporter, done=is_done) -> list[Item]:
    """Report the items :func:`existing_record` settles; return the rest (the work to do)."""
    todo = []
    for it in items:
        rec = existing_record(it, on_existing, done(it))
        if rec is None:
            todo.append(it)
        else:
            reporter.add(rec)
    return todo


class Reporter:
    """Per-item records -> manifest (JSON lines), stdout JSON lines (``--json``), progress and a summary on stderr."""

    def __init__(self, out_dir: Path, total: int, json_out: bool, command: str, quiet: bool = False) -> None:
        self.out_dir = out_dir
        self.json_out = json_out
        self.counts: Counter[str] = Counter()
        self.problems: list[tuple[str, str, str]] = []  # (status, input, reason) of failed and no-face items
        self.run_id = time.strftime("%Y%m%dT%H%M%S")
        self.command = command
        self.manifest = out_dir / "manifest.jsonl"
        self._t0 = time.perf_counter()
        self._progress = None
        show = not quiet and sys.stderr.isatty() and not os.environ.get("GIE_DISABLE_PROGRESS_BARS")
        if show:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn(f"[bold]{command}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._progress.add_task(command, total=total)
            self._progress.start()

    def add(self, rec: Record) -> None:
        """Record one finished item (written to the manifest immediately, so an interrupted run keeps its log)."""
        self.counts[rec.status] += 1
        if rec.status in ("failed", "no_face"):
            self.problems.append((rec.status, rec.input, rec.reason or rec.status))
        line = json.dumps({"run": self.run_id, "command": self.command, **asdict(rec)})
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.manifest, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        if self.json_out:
            sys.stdout.write(json.dumps(asdict(rec)) + "\n")
            sys.stdout.flush()
        if self._progress is not None:
            self._progress.advance(self._task)

    def finish(self) -> int:
        """Print the summary on stderr; return the exit code (0 all ok/skipped, 1 any failure)."""
        if self._progress is not None:
            self._progress.stop()
        secs = time.perf_counter() - self._t0
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        typer.echo(f"{self.command}: {parts or 'nothing to do'} in {secs:.1f}s (manifest: {self.manifest})", err=True)
        for status, path, reason in self.problems[:20]:
            typer.echo(f"  {status.replace('_', ' ')}: {path}: {reason}", err=True)
        if len(self.problems) > 20:
            typer.echo(f"  ... and {len(self.problems) - 20} more (see the manifest)", err=True)
        return 1 if self.counts["failed"] else 0

"""The batch engine of invert, edit, align and paste: inputs -> items, skip policy, dry run, manifest and
reporting, the item/batch loop with failure capture, ``--fail-fast``, CUDA out-of-memory back-off, exit code.

A command validates its options, builds its :class:`Item` list (:func:`plan_items`) and hands a :class:`BatchJob`
the per-item (:class:`PerItem`) or per-batch (:class:`PerBatch`) work; everything else happens here, the same way
for every command.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import typer

from gie_cli.cli.options import (  # noqa: F401 - re-exported: the option aliases used to live here
    BatchSizeOpt,
    DryRunOpt,
    FailFastOpt,
    OnExisting,
    OnExistingOpt,
    RecursiveOpt,
    render_error,
)
from gie_cli.errors import GieError, UsageError

log = logging.getLogger(__name__)


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
    data: dict[str, Any] = field(default_factory=dict)  # what a command's precheck found out about the item


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

    def close(self) -> None:
        """Stop the progress bar (a run-level error ends the run without a summary)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

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
        self.close()
        secs = time.perf_counter() - self._t0
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        typer.echo(f"{self.command}: {parts or 'nothing to do'} in {secs:.1f}s (manifest: {self.manifest})", err=True)
        for status, path, reason in self.problems[:20]:
            typer.echo(f"  {status.replace('_', ' ')}: {path}: {reason}", err=True)
        if len(self.problems) > 20:
            typer.echo(f"  ... and {len(self.problems) - 20} more (see the manifest)", err=True)
        return 1 if self.counts["failed"] else 0


# --------------------------------------------------------------------------------------------------- the engine
def plan_items(
    inputs: Sequence[str] | None,
    output: Path,
    recursive: bool,
    suffixes: Iterable[str],
    outputs: Callable[[Path, str], dict[str, Path]],
    stdin_keys: Sequence[str] = ("input",),
) -> list[Item]:
    """Inputs (files, folders, ``-``) -> items whose outputs are ``outputs(source, name)``.

    Raises:
        UsageError: The output folder is an input folder, a missing input, or no inputs at all.
    """
    raw = list(inputs or [])
    check_output_dir(output, [Path(p) for p in raw if p != "-"])
    found = collect_inputs(raw, recursive, suffixes, exclude=output, stdin_keys=stdin_keys)
    return [Item(src, name, outputs(src, name)) for src, name in found]


@dataclass
class PerItem:
    """Work done one item at a time.

    Attributes:
        process: ``(item, batch_size) -> Record``. An exception fails the item (a :class:`GieError` with its
            message, anything else as ``Type: message``); CUDA out-of-memory halves ``batch_size`` and retries the
            item when there is a batch size to halve.
        batch_size: The model batch size the item's work uses inside (e.g. edit powers per batch), or None.
    """

    process: Callable[[Item, int | None], Record]
    batch_size: int | None = None


@dataclass
class PerBatch:
    """Work done on batches of items (one model call per batch).

    Attributes:
        compute: ``payloads -> results`` (one result per payload, same order): the model call. CUDA out-of-memory
            halves the batch size and retries; at batch size 1 the items fail. Any other exception fails the batch's
            items with ``Type: message``.
        finish: ``(item, payload, result) -> Record``: save one item's outputs; an exception fails that item.
        batch_size: Items per batch at the start.
        prepare: ``item -> payload`` (e.g. load the image), or a :class:`Record` that settles the item (e.g.
            ``no_face``); an exception fails the item. Runs once per item, even when its batch is retried.
    """

    compute: Callable[[list[Any]], Sequence[Any]]
    finish: Callable[[Item, Any, Any], Record]
    batch_size: int
    prepare: Callable[[Item], Any] = lambda item: item


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is CUDA out-of-memory (torch is only looked at when it is imported already)."""
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    return oom is not None and isinstance(e, oom)


def _free_cuda_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def failure_reason(e: BaseException, command: str | None = None) -> str:
    """The manifest reason of a failed item: a :class:`GieError`'s message (a usage error naming a library parameter
    gets the ``command``'s flag, as on the command line), else ``Type: message``."""
    return render_error(e, command) if isinstance(e, GieError) else f"{type(e).__name__}: {e}"


@dataclass
class BatchJob:
    """One batch command's run over its items.

    Attributes:
        command: The command name (manifest ``command``, summary, progress bar).
        output: The output folder (``manifest.jsonl`` goes there).
        items: All items, in input order.
        on_existing: ``skip`` (items whose outputs all exist are ``skipped``), ``overwrite``, or ``error`` (items
            with any existing output fail).
        fail_fast: Stop at the first failed item (the others are not processed; they get no record).
        json_out: One JSON line per item on stdout.
        done: Whether an item's outputs are complete (default: all of ``item.outputs`` exist).
        precheck: Runs on every item before the skip policy; an exception fails the item (e.g. paste: the item's
            alignment record must exist even when its composite does).
    """

    command: str
    output: Path
    items: list[Item]
    on_existing: str = "skip"
    fail_fast: bool = False
    json_out: bool = False
    done: Callable[[Item], bool] = is_done
    precheck: Callable[[Item], None] | None = None
    reporter: Reporter | None = field(default=None, init=False)
    stopped: bool = field(default=False, init=False)

    def dry_run(self, note: str = "") -> int:
        """List every item on stdout (``exists|todo``, input, outputs; tab-separated) and a summary on stderr;
        write nothing. Returns the exit code (0)."""
        for it in self.items:
            state = "exists" if self.done(it) else "todo"
            typer.echo(f"{state}\t{it.source}\t" + "\t".join(str(p) for p in it.outputs.values()))
        typer.echo(f"dry run: {len(self.items)} input(s){note}", err=True)
        return 0

    def run(self, work: Callable[[list[Item]], PerItem | PerBatch]) -> int:
        """Settle existing items, then process the rest with ``work(todo)`` (called only when there is work, so
        models load only then; its exceptions end the run). Returns the exit code: 0 when every item is ok,
        skipped or no_face, 1 when any failed."""
        self.reporter = Reporter(self.output, len(self.items), self.json_out, self.command)
        try:
            todo = self._split()
            if todo and not self.stopped:
                plan = work(todo)
                if isinstance(plan, PerBatch):
                    self._run_batches(todo, plan)
                else:
                    self._run_items(todo, plan)
        except BaseException:
            self.reporter.close()
            raise
        return self.reporter.finish()

    # ----------------------------------------------------------------------------------------------- internals
    def add(self, rec: Record) -> None:
        """Record one finished item; under ``fail_fast`` a failure stops the run."""
        assert self.reporter is not None
        self.reporter.add(rec)
        if rec.status == "failed" and self.fail_fast:
            self.stopped = True

    def _fail(self, it: Item, e: BaseException) -> None:
        if not isinstance(e, GieError):
            log.debug("%s: %s failed", self.command, it.source, exc_info=True)
        self.add(Record(str(it.source), "failed", reason=failure_reason(e, self.command)))

    def _split(self) -> list[Item]:
        todo = []
        for it in self.items:
            if self.stopped:
                break
            if self.precheck is not None:
                try:
                    self.precheck(it)
                except Exception as e:  # noqa: BLE001 - a failed check fails this item only
                    self._fail(it, e)
                    continue
            rec = existing_record(it, self.on_existing, self.done(it))
            if rec is None:
                todo.append(it)
            else:
                self.add(rec)
        return todo

    def _run_items(self, todo: list[Item], plan: PerItem) -> None:
        bs = plan.batch_size
        for it in todo:
            while not self.stopped:
                try:
                    rec = plan.process(it, bs)
                except Exception as e:  # noqa: BLE001 - a failure fails this item; the run goes on
                    if is_out_of_memory(e):
                        _free_cuda_cache()
                        if bs is not None and bs > 1:
                            bs = max(1, bs // 2)
                            log.warning("CUDA out of memory: batch size reduced to %d", bs)
                            continue
                        e = GieError("CUDA out of memory" + (" at batch size 1" if bs == 1 else ""))
                    self._fail(it, e)
                else:
                    self.add(rec)
                break
            if self.stopped:
                return

    def _run_batches(self, todo: list[Item], plan: PerBatch) -> None:
        pending = list(todo)
        prepared: dict[int, Any] = {}  # id(item) -> payload, kept across retries
        bs = plan.batch_size
        while pending and not self.stopped:
            chunk, pending = pending[:bs], pending[bs:]
            ready: list[Item] = []
            for it in chunk:
                if id(it) not in prepared:
                    try:
                        payload = plan.prepare(it)
                    except Exception as e:  # noqa: BLE001 - a failure fails this item; the run goes on
                        self._fail(it, e)
                        if self.stopped:
                            return
                        continue
                    if isinstance(payload, Record):
                        self.add(payload)
                        if self.stopped:
                            return
                        continue
                    prepared[id(it)] = payload
                ready.append(it)
            if not ready:
                continue
            try:
                results = plan.compute([prepared[id(it)] for it in ready])
            except Exception as e:  # noqa: BLE001 - a model failure fails these items, the run goes on
                if is_out_of_memory(e):
                    _free_cuda_cache()
                    if bs > 1:
                        bs = max(1, bs // 2)
                        log.warning("CUDA out of memory: batch size reduced to %d", bs)
                        pending = ready + pending
                        continue
                    e = GieError("CUDA out of memory at batch size 1")
                    reason = str(e)
                else:
                    log.debug("batch failed", exc_info=True)
                    reason = f"{type(e).__name__}: {e}"
                for it in ready:
                    prepared.pop(id(it), None)
                    self.add(Record(str(it.source), "failed", reason=reason))
                if self.stopped:
                    return
                continue
            for it, result in zip(ready, results, strict=True):
                payload = prepared.pop(id(it))
                try:
                    rec = plan.finish(it, payload, result)
                except Exception as e:  # noqa: BLE001 - a failed save fails this item only
                    self._fail(it, e)
                else:
                    self.add(rec)
                if self.stopped:
                    return

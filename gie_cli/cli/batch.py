"""The batch engine of invert, edit, align and paste: inputs -> items, skip policy, dry run, manifest and
reporting, the item/batch loop with failure capture, ``--fail-fast``, CUDA out-of-memory back-off, exit code.

A command validates its options, builds its :class:`Item` list (:func:`plan_items`) and hands a :class:`BatchJob`
the per-item (:class:`PerItem`) or per-batch (:class:`PerBatch`) work; everything else happens here, the same way
for every command.

What a run keeps in the output folder besides the outputs:

- ``manifest.jsonl``: one JSON line per item and run, each written whole by one append (a line torn by a crash,
  e.g. a full disk, is moved to ``manifest.jsonl.torn`` by the next run before it appends);
- ``.gie/done/``: per item, what made its outputs (input path and sha256, the command's options, the files the
  item depended on). ``--on-existing skip`` skips an item only when this record matches the request;
- ``.gie/locks/``: one lock per item, so concurrent runs into one folder never do an item twice (the second run
  waits for the item and then skips it), and one per running run.

Output names are a function of the input path alone (see :func:`assign_names`), never of argument order.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
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

STATE_DIR = ".gie"
"""The engine's own folder inside an output folder (done records and locks)."""
MANIFEST = "manifest.jsonl"
TORN_SUFFIX = ".torn"
_DONE_FORMAT = "gie-done/1"
CLAIM_WINDOW = 256
"""Items a run claims (locks, hashes and checks) at a time."""
PREFETCH_BATCHES = 2
"""Overlapped runs (``workers`` >= 1): batches loaded ahead of the one the model computes."""
WRITE_QUEUE = 64
"""Overlapped runs: writes queued at most on the background writer (beyond that the model waits)."""
_MAX_DONE_ENTRIES = 16  # option sets remembered per item (e.g. `gie edit` with other directions into one folder)


@dataclass
class Item:
    """One unit of work.

    Attributes:
        source: input path.
        name: output name relative to the output folder, without suffix (mirrors the input's relative path).
        outputs: role -> output path.
        data: What a command's precheck found out about the item. ``data["deps"]`` (paths) lists files besides the
            source that the outputs depend on (e.g. paste's alignment record and photo): a change to one of them
            makes a finished item stale.
        error: Why the item cannot be processed at all (a missing input, a broken link): it is recorded as failed.
    """

    source: Path
    name: str
    outputs: dict[str, Path] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Record:
    """One manifest line."""

    input: str
    status: str  # ok | skipped | failed | no_face
    outputs: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- inputs
def read_stdin_paths(stream: Any = None, keys: Sequence[str] = ("input",)) -> list[str]:
    """Newline-separated paths from stdin. JSON lines (``--json`` output of another gie command) are accepted too:
    the first of ``keys`` found in the record's ``outputs`` (then at top level) is taken; failed records are skipped.

    Args:
        stream: A text or binary stream (default: stdin; its bytes are read and decoded as UTF-8).
        keys: Output roles to take from JSON lines, in order of preference.

    Returns:
        The paths, in stream order.

    Raises:
        UsageError: Binary data (NUL bytes, text that is not UTF-8) or a line starting with ``{`` that is not JSON.
    """
    stream = stream or sys.stdin
    raw = stream.buffer.read() if hasattr(stream, "buffer") else stream.read()
    if isinstance(raw, bytes):
        bad = raw.find(b"\0")
        if bad < 0:
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = e.start
        if isinstance(raw, bytes):
            line = raw.count(b"\n", 0, bad) + 1
            raise UsageError(
                f"stdin: binary data, not paths (byte 0x{raw[bad]:02x} on line {line} is not UTF-8 text)",
                hint="pipe file paths or --json lines of gie, one per line (e.g. find DIR -name '*.png' | gie ...)",
            )
    out = []
    for line in raw.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"stdin: not a JSON line: {line[:60]!r} ({e.msg})") from None
            if not isinstance(obj, dict) or obj.get("status") in ("failed", "no_face"):
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


def _broken_link(p: Path) -> str:
    try:
        target = os.readlink(p)
    except OSError:
        target = "?"
    return f"broken symbolic link (its target {target} does not exist or is a loop); fix or remove the link"


def collect_inputs(
    inputs: Sequence[str],
    recursive: bool,
    suffixes: Iterable[str],
    exclude: Path | None = None,
    stdin_keys: Sequence[str] = ("input",),
) -> list[tuple[Path, str, str | None]]:
    """Expand files, folders and ``-`` (paths on stdin) to ``(path, base name, error)`` triples.

    Files given explicitly are kept whatever their suffix (they fail later if unreadable); folders are scanned for
    ``suffixes``. Base names mirror paths relative to the folder they were found in; explicit files use their stem
    (:func:`assign_names` makes them unique). A missing explicit input or a broken symbolic link (named or found in
    a folder) comes with an ``error``: the batch records it as a failed item. Paths under ``exclude`` (the output
    folder) are skipped; an input given twice is kept once.

    Raises:
        UsageError: No inputs at all, or binary data on stdin.
    """
    if not inputs:
        raise UsageError("no inputs given", hint="pass files, folders, or - to read paths from stdin")
    suffixes = tuple(s.lower() for s in suffixes)
    expanded: list[str] = []
    for raw in inputs:
        expanded.extend(read_stdin_paths(keys=stdin_keys) if raw == "-" else [raw])
    found: list[tuple[Path, str, str | None]] = []
    excl = exclude.resolve() if exclude is not None else None
    for raw in expanded:
        p = Path(raw).expanduser()
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            for f in sorted(p.glob(pattern)):
                if not f.name.lower().endswith(suffixes) or f.name.startswith("."):
                    continue
                dangling = f.is_symlink() and not f.exists()
                if not dangling and not f.is_file():
                    continue
                if excl is not None and excl in f.resolve().parents:
                    continue
                found.append(
                    (f, _strip_suffix(f.relative_to(p).as_posix(), suffixes), _broken_link(f) if dangling else None)
                )
        elif p.exists():
            found.append((p, _strip_suffix(p.name, suffixes), None))
        elif p.is_symlink():
            found.append((p, _strip_suffix(p.name, suffixes), _broken_link(p)))
        else:
            found.append((p, _strip_suffix(p.name, suffixes), "input not found (check the path)"))
    if not found:
        raise UsageError(
            f"no input files found in {', '.join(expanded) or 'stdin'}", hint="check the paths/--recursive"
        )
    seen: set[str] = set()
    unique = []
    for path, name, error in found:
        key = _resolved(path)
        if key not in seen:
            seen.add(key)
            unique.append((path, name, error))
    return unique


def _strip_suffix(name: str, suffixes: tuple[str, ...]) -> str:
    low = name.lower()
    for s in sorted(suffixes, key=len, reverse=True):
        if low.endswith(s):
            return name[: -len(s)]
    return Path(name).stem if "." in Path(name).name else name


def _resolved(path: Path) -> str:
    try:
        return str(Path(path).expanduser().resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return os.path.abspath(path)


def path_tag(path: Path) -> str:
    """8 hex digits identifying an input by its resolved path (the suffix of clashing output names)."""
    return hashlib.sha256(_resolved(path).encode("utf-8", "surrogateescape")).hexdigest()[:8]


def assign_names(found: Sequence[tuple[Path, str]], owner: Callable[[str], str | None] | None = None) -> list[str]:
    """Output names that depend on the input path alone, never on argument order or on the other inputs.

    An input keeps its base name (``x/a.png`` -> ``a``) unless the name belongs to another input: another input
    of this run with the same base name, or the input whose finished outputs the output folder holds under that
    name (``owner(base)``: its resolved path). Of inputs sharing a base name, the owner keeps it (when none, the
    one whose resolved path sorts first); the others get ``<base>-<8 hex digits of their resolved path>``
    (``y/a.png`` -> ``a-1b2c3d4e``), the same in every run.

    Args:
        found: ``(path, base name)`` per input.
        owner: ``base name -> resolved path`` of the input that made the outputs of that name, or None.

    Returns:
        One name per input, in order.
    """
    groups: dict[str, list[int]] = {}
    for i, (_, base) in enumerate(found):
        groups.setdefault(base, []).append(i)
    names = [""] * len(found)
    for base, idx in groups.items():
        keys = {i: _resolved(found[i][0]) for i in idx}
        held = owner(base) if owner is not None else None
        if held is not None:
            keeper = next((i for i in idx if keys[i] == held), None)
        else:
            keeper = min(idx, key=lambda i: keys[i])
        for i in idx:
            names[i] = base if i == keeper else f"{base}-{path_tag(found[i][0])}"
    return names


def check_output_dir(out: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output folder that is a file, cannot be created, or is one of the input folders (outputs would
    mix with, or replace, inputs).

    Raises:
        UsageError: One line naming ``-o`` and the fix.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out}: exists and is not a folder", hint="choose a folder (it is created if missing)")
    if not out.exists():
        parent = out.absolute().parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise UsageError(f"-o {out}: cannot be created ({parent} is not a folder)", hint="choose another -o")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"-o {out}: cannot be created ({parent} is not writable)", hint="choose another -o")
    elif not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"-o {out}: the folder is not writable", hint="choose another -o or fix its permissions")
    o = out.resolve()
    for p in inputs:
        rp = p.resolve()
        folder = rp if rp.is_dir() else rp.parent
        if folder == o:
            raise UsageError(f"output folder {out} is an input folder", hint="choose a different -o folder")


def is_done(item: Item) -> bool:
    """Whether every output of ``item`` exists."""
    return all(p.exists() for p in item.outputs.values())


def option_identity(value: Any) -> Any:
    """What identifies an option value in a done record: a path to an existing file -> its resolved path, size and
    modification time (a replaced file makes finished items stale); anything else as it is."""
    if isinstance(value, (str, Path)) and str(value):
        p = Path(value).expanduser()
        try:
            if p.is_file():
                st = p.stat()
                return {"file": _resolved(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        except OSError:
            pass
        return str(value)
    return value


def source_sha256(it: Item) -> str:
    """The sha256 of ``it``'s input: the hash the engine took for its done record, else read now."""
    entry = it.data.get("_entry")
    if entry and entry.get("source_sha256"):
        return entry["source_sha256"]
    from gie_cli.io.images import sha256_file

    return sha256_file(it.source)


def _normalized(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


# --------------------------------------------------------------------------------------------------- state
def _key(command: str, name: str) -> str:
    return f"{command}.{hashlib.sha256(name.encode('utf-8', 'surrogateescape')).hexdigest()[:24]}"


class DoneRecords:
    """Per item of one command in one output folder: what made its outputs (``.gie/done/<command>.<hash>.json``).

    A record holds the item's input (resolved path) and, per option set that finished it, the input's sha256, the
    request (the command's options), the identity of the files it depended on, and the outputs.
    """

    def __init__(self, out: Path, command: str) -> None:
        self.folder = out / STATE_DIR / "done"
        self.command = command

    def path(self, name: str) -> Path:
        """The record file of output name ``name``."""
        return self.folder / f"{_key(self.command, name)}.json"

    def read(self, name: str) -> dict | None:
        """The record of ``name``, or None (none, or unreadable: then the item is simply redone)."""
        try:
            rec = json.loads(self.path(name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(rec, dict) or rec.get("format") != _DONE_FORMAT or not isinstance(rec.get("entries"), list):
            return None
        return rec

    def owner(self, name: str) -> str | None:
        """The resolved input path whose outputs the folder holds under ``name``, or None."""
        rec = self.read(name)
        return rec.get("source") if rec is not None and isinstance(rec.get("source"), str) else None

    def stale_reason(self, it: Item, entry: dict) -> str | None:
        """Why ``it``'s existing outputs do not answer the request ``entry`` (None: they do)."""
        rec = self.read(it.name)
        if rec is None:
            return "no record of what made them"
        if rec.get("source") != entry["source"]:
            return f"they were made from another input ({rec.get('source')})"
        entries = [e for e in rec["entries"] if isinstance(e, dict)]
        if not any(e.get("source_sha256") == entry["source_sha256"] for e in entries):
            return "the input changed since they were made"
        same = [e for e in entries if e.get("source_sha256") == entry["source_sha256"]]
        if not any(e.get("request") == entry["request"] for e in same):
            return "they were made with other options (method, weights or settings)"
        same = [e for e in same if e.get("request") == entry["request"]]
        if not any(e.get("deps") == entry["deps"] for e in same):
            return "a file they depend on changed"
        if not any(e.get("outputs") == entry["outputs"] for e in same):
            return "they were made as other outputs"
        return None

    def write(self, it: Item, entry: dict, run: str) -> None:
        """Record that ``entry`` (the request) finished ``it`` (call while holding the item's lock)."""
        from gie_cli.io.atomic import atomic_write_text

        rec = self.read(it.name)
        entries = [] if rec is None or rec.get("source") != entry["source"] else rec["entries"]
        keep = [e for e in entries if isinstance(e, dict) and e.get("request") != entry["request"]]
        new = {k: v for k, v in entry.items() if k != "source"}
        new.update(run=run, time=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        body = {
            "format": _DONE_FORMAT,
            "command": self.command,
            "name": it.name,
            "source": entry["source"],
            "entries": [*keep, new][-_MAX_DONE_ENTRIES:],
        }
        atomic_write_text(self.path(it.name), json.dumps(body, indent=1) + "\n")


class Claims:
    """Locks of one run in an output folder: one for the run (so others know it is running) and one per item it
    works on (so two runs never do one item twice). Lock files live in ``.gie/locks/``."""

    def __init__(self, out: Path, command: str, run_id: str) -> None:
        from filelock import FileLock

        self.command = command
        self.locks = out / STATE_DIR / "locks"
        self.runs = self.locks / "runs"
        self.runs.mkdir(parents=True, exist_ok=True)
        self._run = FileLock(str(self.runs / f"{run_id}.lock"))
        self._run.acquire()
        self._held: dict[int, Any] = {}
        self.alone = not self._other_runs()

    def _other_runs(self) -> bool:
        """Whether another run into this folder is running now (locks of finished runs are removed)."""
        from filelock import FileLock, Timeout

        busy = False
        for p in self.runs.glob("*.lock"):
            if Path(p) == Path(self._run.lock_file):
                continue
            lock = FileLock(str(p))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                busy = True
                continue
            lock.release()
            p.unlink(missing_ok=True)
        return busy

    def claim(self, it: Item, wait: bool = False) -> bool:
        """Lock ``it`` for this run; False when another run holds it (``wait``: block until it is free)."""
        from filelock import FileLock, Timeout

        if id(it) in self._held:
            return True
        lock = FileLock(str(self.locks / f"{_key(self.command, it.name)}.lock"))
        try:
            lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            return False
        self._held[id(it)] = lock
        return True

    def release(self, it: Item) -> None:
        """Unlock ``it`` (no-op when not held)."""
        lock = self._held.pop(id(it), None)
        if lock is not None:
            lock.release()

    def close(self) -> None:
        """Release every lock of this run."""
        for lock in self._held.values():
            lock.release()
        self._held.clear()
        if self._run.is_locked:
            self._run.release()
        Path(self._run.lock_file).unlink(missing_ok=True)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a short write continues where it stopped)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def repair_manifest(path: Path, fd: int | None = None) -> bytes:
    """Move a torn last line of a JSON-lines file (no final newline: a run was cut off mid-write) to
    ``<path>.torn`` and cut it off; the file then ends with a complete line. Returns the torn bytes (b"" when none).

    Call it with the file locked against other writers.
    """
    own = fd is None
    if own:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return b""
    try:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return b""
        pos, chunk = size, 1 << 16
        cut = 0
        while pos > 0:
            start = max(0, pos - chunk)
            block = os.pread(fd, pos - start, start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                cut = start + nl + 1
                break
            pos = start
        torn = os.pread(fd, size - cut, cut)
        with open(str(path) + TORN_SUFFIX, "ab") as q:
            q.write(torn + b"\n")
            q.flush()
            os.fsync(q.fileno())
        os.ftruncate(fd, cut)
        log.warning(
            "%s ended in a partial record (%d bytes; an earlier run was cut off): moved to %s%s",
            path,
            len(torn),
            path.name,
            TORN_SUFFIX,
        )
        return torn
    finally:
        if own:
            os.close(fd)


class Reporter:
    """Per-item records -> manifest (JSON lines), stdout JSON lines (``--json``), progress and a summary on stderr.

    Each manifest record is one complete line written by one append under a lock, then flushed to disk; a failed
    write is cut off again, and a torn line left by a crash is moved aside (:func:`repair_manifest`) before the
    next append.
    """

    def __init__(
        self, out_dir: Path, total: int, json_out: bool, command: str, quiet: bool = False, rank: int | None = None
    ) -> None:
        self.out_dir = out_dir
        self.json_out = json_out
        self.counts: Counter[str] = Counter()
        self.problems: list[tuple[str, str, str]] = []  # (status, input, reason) of failed and no-face items
        self.run_id = new_run_id()
        self.command = command
        self.final_manifest = out_dir / MANIFEST
        # a rank of a multi-process run logs to its own file, merged into the manifest when it ends
        self.manifest = self.final_manifest if rank is None else rank_manifest(out_dir, self.run_id, rank)
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
        """Record one finished item (written to the manifest immediately, so an interrupted run keeps its log).

        Raises:
            GieError: The manifest cannot be written (e.g. the disk is full); nothing partial is left in it.
        """
        self.counts[rec.status] += 1
        if rec.status in ("failed", "no_face"):
            self.problems.append((rec.status, rec.input, rec.reason or rec.status))
        line = json.dumps({"run": self.run_id, "command": self.command, **asdict(rec)}, ensure_ascii=True)
        self._append((line + "\n").encode("ascii"))
        if self.json_out:
            sys.stdout.write(json.dumps(asdict(rec)) + "\n")
            sys.stdout.flush()
        if self._progress is not None:
            self._progress.advance(self._task)

    def _append(self, data: bytes) -> None:
        from filelock import FileLock

        self.out_dir.mkdir(parents=True, exist_ok=True)
        locks = self.out_dir / STATE_DIR / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        self.manifest.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(locks / ("manifest.lock" if self.manifest == self.final_manifest else "ranks.lock"))):
            fd = os.open(self.manifest, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                repair_manifest(self.manifest, fd)
                size = os.fstat(fd).st_size
                try:
                    _write_all(fd, data)
                    os.fsync(fd)
                except OSError as e:
                    try:
                        os.ftruncate(fd, size)  # never leave half a record behind
                    except OSError:
                        pass  # the next run moves the torn line aside
                    why = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
                    raise GieError(
                        f"cannot write the manifest {self.manifest}: {why}",
                        hint="free space and re-run: finished items are skipped",
                    ) from e
            finally:
                os.close(fd)

    def finish(self) -> int:
        """Print the summary on stderr; return the exit code (0 all ok/skipped, 1 any failure)."""
        self.close()
        secs = time.perf_counter() - self._t0
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        typer.echo(
            f"{self.command}: {parts or 'nothing to do'} in {secs:.1f}s (manifest: {self.final_manifest})", err=True
        )
        for status, path, reason in self.problems[:20]:
            typer.echo(f"  {status.replace('_', ' ')}: {path}: {reason}", err=True)
        if len(self.problems) > 20:
            typer.echo(f"  ... and {len(self.problems) - 20} more (see the manifest)", err=True)
        return 1 if self.counts["failed"] else 0


RANKS_DIR = "ranks"
"""Under ``.gie/``: the manifests of the ranks of multi-process runs until they are merged."""
_RANK_SEP = ".rank-"
_MERGING = ".merging"


def rank_manifest(out: Path, run_id: str, rank: int) -> Path:
    """The manifest file of rank ``rank`` of a multi-process run (``.gie/ranks/<run id>.rank-<rank>.jsonl``)."""
    return out / STATE_DIR / RANKS_DIR / f"{run_id}{_RANK_SEP}{rank}.jsonl"


def run_alive(out: Path, run_id: str) -> bool:
    """Whether run ``run_id`` into ``out`` is running now (it holds its run lock)."""
    from filelock import FileLock, Timeout

    path = out / STATE_DIR / "locks" / "runs" / f"{run_id}.lock"
    if not path.exists():
        return False
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def merge_rank_manifests(out: Path) -> int:
    """Append the manifests of finished ranks (:func:`rank_manifest`) to ``manifest.jsonl`` and remove them;
    returns the number of lines merged.

    Ranks still running are left alone; those of killed runs are merged by the next run, so no line is lost. Each file
    is renamed to ``*.merging`` before its lines are appended: a merge cut off between the append and the removal
    is finished by the next one without appending the lines twice.
    """
    from filelock import FileLock

    folder = out / STATE_DIR / RANKS_DIR
    if not folder.is_dir():
        return 0
    merged = 0
    manifest = out / MANIFEST
    (out / STATE_DIR / "locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(out / STATE_DIR / "locks" / "manifest.lock")):
        # a cut-off merge first: its lines are then still the manifest's last if it appended them
        for p in sorted(folder.glob(f"*.jsonl{_MERGING}")) + sorted(folder.glob("*.jsonl")):
            run_id = p.name.split(_RANK_SEP)[0]
            if p.suffix == ".jsonl":
                if run_alive(out, run_id) or not p.exists():
                    continue
                if repair_manifest(p):  # the torn line goes where the manifest's own go
                    aside = Path(str(p) + TORN_SUFFIX)
                    with open(str(manifest) + TORN_SUFFIX, "ab") as q:
                        q.write(aside.read_bytes())
                    aside.unlink()
                p = p.rename(p.with_name(p.name + _MERGING))
            data = p.read_bytes()
            fd = os.open(manifest, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                repair_manifest(manifest, fd)
                size = os.fstat(fd).st_size
                tail = os.pread(fd, len(data), size - len(data)) if data and size >= len(data) else b""
                if data and tail != data:  # not appended yet (else a cut-off merge appended it already)
                    _write_all(fd, data)
                    os.fsync(fd)
                    merged += data.count(b"\n")
            finally:
                os.close(fd)
            p.unlink()
    return merged


def new_run_id() -> str:
    """A run id, unique across concurrent runs: ``<UTC time to the millisecond>-<8 random hex digits>``."""
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    return f"{stamp}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Shard:
    """``--shard i/N``: this process takes the inputs whose shard number (:func:`shard_number`) is ``index``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(spec: str) -> Shard:
    """``"i/N"`` (``0 <= i < N``, as a job array's task id) -> :class:`Shard`.

    Raises:
        UsageError: another form.
    """
    i, sep, n = spec.partition("/")
    try:
        shard = Shard(int(i), int(n))
    except ValueError:
        shard = None
    if not sep or shard is None or shard.count < 1 or not 0 <= shard.index < shard.count:
        raise UsageError(f"--shard {spec!r}: expected i/N with 0 <= i < N", hint="e.g. --shard $SLURM_ARRAY_TASK_ID/8")
    return shard


def shard_number(source: Path, count: int) -> int:
    """Which of ``count`` shards an input belongs to: its resolved path's sha256 modulo ``count``. It depends on that
    input alone, so the shards are disjoint, cover every input, and an input stays in its shard when others are
    added or removed (a failed shard is re-run alone)."""
    digest = hashlib.sha256(_resolved(source).encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count


# --------------------------------------------------------------------------------------------------- the engine
def plan_items(
    inputs: Sequence[str] | None,
    output: Path,
    recursive: bool,
    suffixes: Iterable[str],
    outputs: Callable[[Path, str], dict[str, Path]],
    stdin_keys: Sequence[str] = ("input",),
    command: str | None = None,
    shard: Shard | None = None,
) -> list[Item]:
    """Inputs (files, folders, ``-``) -> items whose outputs are ``outputs(source, name)``.

    Names come from :func:`assign_names` (``command``: whose done records in ``output`` say which input owns a
    name) over all inputs, so a shard (``shard``: only the items of :func:`shard_number` ``shard.index``) names its
    items as a run over all of them does. Missing inputs and broken links become items with an ``error`` (no
    outputs).

    Raises:
        UsageError: ``output`` is a file, cannot be created, or is an input folder; no inputs at all; binary data
            on stdin.
    """
    raw = list(inputs or [])
    check_output_dir(output, [Path(p) for p in raw if p != "-"])
    found = collect_inputs(raw, recursive, suffixes, exclude=output, stdin_keys=stdin_keys)
    owner = DoneRecords(output, command).owner if command else None
    names = assign_names([(src, base) for src, base, _ in found], owner)
    return [
        Item(src, name, error=err) if err else Item(src, name, outputs(src, name))
        for (src, _, err), name in zip(found, names, strict=True)
        if shard is None or shard_number(src, shard.count) == shard.index
    ]


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
    """After CUDA out-of-memory: drop the generators' CUDA graphs (their memory pools outlive ``empty_cache``; only
    when the generator module is loaded, else there are none), then return the cached blocks to the device."""
    generators = sys.modules.get("gie_cli.models.stylegan2")
    if generators is not None:
        generators.drop_cuda_graphs()
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
        on_existing: ``skip`` (items whose outputs exist and were made from this input, unchanged, with these
            options are ``skipped``; others are redone), ``overwrite``, or ``error`` (items with any existing output
            fail).
        fail_fast: Stop at the first failed item (the others are not processed; they get no record).
        json_out: One JSON line per item on stdout.
        done: Whether an item's outputs are complete (default: all of ``item.outputs`` exist).
        precheck: Runs on every item before the skip policy; an exception fails the item (e.g. paste: the item's
            alignment record must exist even when its composite does).
        request: What the outputs depend on besides the input: the command's options (paths of option files as
            :func:`option_identity`). Recorded for every finished item; a skip needs the same request.
        workers: 0 runs each item's stages one after another (load, compute, write). N >= 1 overlaps them: N
            threads load the next batches (:class:`PerBatch` ``prepare``) while the model computes, and one
            background thread encodes and writes the outputs (:mod:`gie_cli.io.writer`), through bounded queues.
            Records, manifest lines and done records are the same and in the same order as with 0; an item is
            recorded only once its outputs are on disk (a failed write fails it).
        rank: This run's rank in a multi-process run (``torchrun``, ``--nproc``): its manifest lines go to a file
            of its own, merged into ``manifest.jsonl`` when the rank ends (:func:`merge_rank_manifests`).
    """

    command: str
    output: Path
    items: list[Item]
    on_existing: str = "skip"
    fail_fast: bool = False
    json_out: bool = False
    done: Callable[[Item], bool] = is_done
    precheck: Callable[[Item], None] | None = None
    request: dict[str, Any] = field(default_factory=dict)
    workers: int = 0
    rank: int | None = None
    reporter: Reporter | None = field(default=None, init=False)
    stopped: bool = field(default=False, init=False)
    _claims: Claims | None = field(default=None, init=False, repr=False)
    _records: DoneRecords | None = field(default=None, init=False, repr=False)

    def dry_run(self, note: str = "") -> int:
        """List every item on stdout (``exists|stale|todo|failed``, input, outputs; tab-separated) and a summary on
        stderr; write nothing. Returns the exit code (0)."""
        records = DoneRecords(self.output, self.command)
        for it in self.items:
            if it.error:
                typer.echo(f"failed\t{it.source}\t{it.error}")
                continue
            state = "todo"
            if self.done(it):
                try:
                    state = "stale" if records.stale_reason(it, self._entry(it)) else "exists"
                except OSError:
                    state = "todo"
            typer.echo(f"{state}\t{it.source}\t" + "\t".join(str(p) for p in it.outputs.values()))
        typer.echo(f"dry run: {len(self.items)} input(s){note}", err=True)
        return 0

    def run(self, work: Callable[[list[Item]], PerItem | PerBatch]) -> int:
        """Settle existing items, then process the rest with ``work(todo)`` (called only when there is work, so
        models load only then; its exceptions end the run). Returns the exit code: 0 when every item is ok,
        skipped or no_face, 1 when any failed.

        Items another run into the same folder is working on are taken last: the run waits for each, then skips it
        when that run finished it (or does it when that run did not).
        """
        from gie_cli.io.atomic import remove_temp_files

        self.reporter = Reporter(self.output, len(self.items), self.json_out, self.command, rank=self.rank)
        self.output.mkdir(parents=True, exist_ok=True)
        merge_rank_manifests(self.output)  # lines of ranks of earlier, killed runs go before this run's
        self._records = DoneRecords(self.output, self.command)
        self._claims = Claims(self.output, self.command, self.reporter.run_id)
        try:
            if self._claims.alone:
                remove_temp_files(self.output)
            plan: PerItem | PerBatch | None = None
            pending = list(self.items)
            wait = False
            with self._stages() as stages:
                while pending and not self.stopped:
                    busy: list[Item] = []
                    # claim (and hash) a window of items at a time: a run over any number of inputs holds a bounded
                    # number of lock files open
                    for start in range(0, len(pending), CLAIM_WINDOW):
                        if self.stopped:
                            break
                        todo, held = self._split(pending[start : start + CLAIM_WINDOW], wait)
                        busy += held
                        if todo and not self.stopped:
                            plan = plan or work(todo)
                            if isinstance(plan, PerBatch):
                                self._run_batches(todo, plan, stages)
                            else:
                                self._run_items(todo, plan, stages)
                    pending, wait = busy, True  # what is left is being done by another run: wait for it
        except BaseException:
            self.reporter.close()
            raise
        finally:
            self._claims.close()
            if self.rank is not None:
                merge_rank_manifests(self.output)
        return self.reporter.finish()

    @contextlib.contextmanager
    def _stages(self) -> Iterator[_Stages]:
        """The loader threads and background writer of an overlapped run (none when ``workers`` is 0); settles every
        item whose writes are queued before returning, also when the run stops with an exception."""
        st = _Stages()
        if self.workers > 0:
            from concurrent.futures import ThreadPoolExecutor

            from gie_cli.io.writer import BackgroundWriter

            st.loader = ThreadPoolExecutor(self.workers, thread_name_prefix="gie-load")
            st.writer = BackgroundWriter(WRITE_QUEUE)
        try:
            yield st
            self._settle(st, block=True)
        finally:
            if st.loader is not None:
                st.loader.shutdown(wait=True, cancel_futures=True)
            if st.writer is not None:
                st.writer.close()  # queued writes finish: nothing is left half-written

    # ----------------------------------------------------------------------------------------------- internals
    def add(self, rec: Record, it: Item | None = None) -> None:
        """Record one finished item (``it``: remember what made its outputs when ok, and release it); under
        ``fail_fast`` a failure stops the run."""
        assert self.reporter is not None
        try:
            if it is not None and rec.status == "ok" and self._records is not None and "_entry" in it.data:
                entry = dict(it.data["_entry"])
                sha = rec.info.get("source_sha256") if isinstance(rec.info, dict) else None
                if isinstance(sha, str) and len(sha) == 64:
                    entry["source_sha256"] = sha  # the bytes the command really read
                try:
                    self._records.write(it, entry, self.reporter.run_id)
                except OSError as e:
                    log.warning("cannot record what made %s (%s): a re-run redoes it", it.source, e)
            if it is not None and rec.status != "skipped" and it.data.get("redone") and isinstance(rec.info, dict):
                rec.info.setdefault("redone", it.data["redone"])  # why existing outputs were not skipped
            self.reporter.add(rec)
        finally:
            if it is not None and self._claims is not None:
                self._claims.release(it)
        if rec.status == "failed" and self.fail_fast:
            self.stopped = True

    def _fail(self, it: Item, e: BaseException) -> None:
        if not isinstance(e, GieError):
            log.debug("%s: %s failed", self.command, it.source, exc_info=True)
        self.add(Record(str(it.source), "failed", reason=failure_reason(e, self.command)), it)

    def _entry(self, it: Item) -> dict:
        """The done-record entry of the request for ``it`` (reads the input to hash it)."""
        from gie_cli.io.images import sha256_file

        deps = {}
        for p in it.data.get("deps", ()):
            deps[str(p)] = option_identity(p)
        return {
            "source": _resolved(it.source),
            "source_sha256": sha256_file(it.source),
            "request": _normalized(self.request),
            "deps": _normalized(deps),
            "outputs": {k: str(v) for k, v in it.outputs.items()},
        }

    def _existing(self, it: Item) -> Record | None:
        """The record of an item that must not be (re)done: ``skipped`` when its outputs exist and answer the
        request, ``failed`` under ``error`` when any output exists; None when the item is to be processed."""
        outs = {k: str(v) for k, v in it.outputs.items()}
        if self.on_existing == "error" and any(p.exists() for p in it.outputs.values()):
            return Record(str(it.source), "failed", outs, "outputs exist (--on-existing error)")
        if self.on_existing != "skip" or not self.done(it):
            return None
        assert self._records is not None
        why = self._records.stale_reason(it, it.data["_entry"])
        if why is None:
            return Record(str(it.source), "skipped", outs, "outputs exist (same input and options)")
        log.info("%s: redoing %s: its outputs exist but %s", self.command, it.source, why)
        it.data["redone"] = why
        return None

    def _split(self, items: list[Item], wait: bool) -> tuple[list[Item], list[Item]]:
        """Claim and settle ``items``: ``(todo, busy)`` where busy items are claimed by another run (``wait``:
        block until each is free instead)."""
        assert self._claims is not None
        todo: list[Item] = []
        busy: list[Item] = []
        for it in items:
            if self.stopped:
                break
            if it.error:
                self.add(Record(str(it.source), "failed", reason=it.error), it)
                continue
            if not self._claims.claim(it):
                if not wait:
                    busy.append(it)
                    continue
                log.info("%s: waiting for another run working on %s", self.command, it.source)
                self._claims.claim(it, wait=True)
            try:
                if not self._claims.alone:
                    self._remove_item_temps(it)
                if self.precheck is not None:
                    self.precheck(it)
                it.data["_entry"] = self._entry(it)
                rec = self._existing(it)
            except Exception as e:  # noqa: BLE001 - a failed check fails this item only
                self._fail(it, e)
                continue
            if rec is None:
                todo.append(it)
            else:
                self.add(rec, it)
        return todo, busy

    @staticmethod
    def _remove_item_temps(it: Item) -> None:
        """Temp files of ``it``'s outputs left by a killed run (safe: this run holds the item)."""
        import glob

        from gie_cli.io.atomic import is_temp_name

        for p in it.outputs.values():
            for t in p.parent.glob(f"{glob.escape(p.name)}.tmp-*"):
                if is_temp_name(t.name) and t.is_file() and not t.is_symlink():
                    t.unlink(missing_ok=True)

    def _finish_item(self, it: Item, make: Callable[[], Record], stages: _Stages) -> None:
        """Run ``make`` (which writes ``it``'s outputs) and record its result once the writes are on disk."""
        from gie_cli.io.writer import collect_writes

        with collect_writes(stages.writer) as writes:
            try:
                rec = make()
            except Exception as e:  # noqa: BLE001 - a failed save fails this item only
                stages.done.append((it, None, e, writes))
            else:
                stages.done.append((it, rec, None, writes))
        failed = stages.done[-1][2] is not None or stages.done[-1][1].status == "failed"
        self._settle(stages, block=failed and self.fail_fast)  # --fail-fast stops at this item, as a serial run

    def _settle(self, stages: _Stages, block: bool = False) -> None:
        """Record finished items in order: the head of the queue once its writes are done (``block``: all)."""
        while stages.done:
            it, rec, err, writes = stages.done[0]
            if not block and not all(f.done() for f in writes):
                return
            stages.done.popleft()
            t_write = 0.0
            for f in writes:
                try:
                    t_write += f.result()
                except Exception as e:  # noqa: BLE001 - a failed write fails its item
                    err = err or (GieError(str(e)) if isinstance(e, OSError) else e)
            if err is not None:
                self._fail(it, err)
            else:
                assert rec is not None
                if writes and "save" in rec.timings_ms:
                    rec.timings_ms["save"] = round(rec.timings_ms["save"] + t_write, 2)
                self.add(rec, it)

    def _run_items(self, todo: list[Item], plan: PerItem, stages: _Stages) -> None:
        bs = plan.batch_size

        def process(it: Item) -> Record:
            nonlocal bs
            while True:
                try:
                    return plan.process(it, bs)
                except Exception as e:
                    if not is_out_of_memory(e):
                        raise
                    _free_cuda_cache()
                    if bs is None or bs <= 1:
                        raise GieError("CUDA out of memory" + (" at batch size 1" if bs == 1 else "")) from None
                    bs = max(1, bs // 2)
                    log.warning("CUDA out of memory: batch size reduced to %d", bs)

        for it in todo:
            if self.stopped:
                return
            self._finish_item(it, lambda it=it: process(it), stages)

    def _run_batches(self, todo: list[Item], plan: PerBatch, stages: _Stages) -> None:
        pending = list(todo)
        prepared: dict[int, Any] = {}  # id(item) -> payload (or the exception / Record that settles it)
        loading: dict[int, Any] = {}  # id(item) -> future of its payload (overlapped runs)
        bs = plan.batch_size

        def prepare(it: Item) -> Any:
            try:
                return plan.prepare(it)
            except Exception as e:  # noqa: BLE001 - a failure fails this item; the run goes on
                return _Failed(e)

        def prefetch() -> None:  # keep the loaders PREFETCH_BATCHES batches ahead of the model
            if stages.loader is None:
                return
            for it in pending[: bs * PREFETCH_BATCHES]:
                if id(it) not in prepared and id(it) not in loading:
                    loading[id(it)] = stages.loader.submit(prepare, it)

        while pending and not self.stopped:
            prefetch()
            chunk, pending = pending[:bs], pending[bs:]
            ready: list[Item] = []
            for it in chunk:
                if id(it) not in prepared:
                    fut = loading.pop(id(it), None)
                    payload = fut.result() if fut is not None else prepare(it)
                    if isinstance(payload, (_Failed, Record)):
                        if isinstance(payload, Record):
                            self._finish_item(it, lambda p=payload: p, stages)
                        else:
                            self._finish_item(it, lambda p=payload: p.raise_(), stages)
                        if self.stopped:
                            return
                        continue
                    prepared[id(it)] = payload
                ready.append(it)
            if not ready:
                continue
            prefetch()  # the next batches load while this one computes
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
                    self._finish_item(it, lambda it=it, r=reason: Record(str(it.source), "failed", reason=r), stages)
                if self.stopped:
                    return
                continue
            for it, result in zip(ready, results, strict=True):
                payload = prepared.pop(id(it))
                self._finish_item(it, lambda it=it, p=payload, r=result: plan.finish(it, p, r), stages)
                if self.stopped:
                    return


@dataclass
class _Failed:
    """A stage's exception, carried to where the item is recorded."""

    error: Exception

    def raise_(self) -> Record:
        raise self.error


@dataclass
class _Stages:
    """An overlapped run's loader threads and writer (None: serial), and its items waiting for their writes."""

    loader: Any = None
    writer: Any = None
    done: deque = field(default_factory=deque)

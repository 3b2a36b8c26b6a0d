"""The weights cache: its folder, per-file locks, verification records and hash/size checks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gie_cli.weights.registry import WeightEntry

__all__ = [
    "CACHE_ENV",
    "OFFLINE_ENV",
    "cache_dir",
    "is_offline",
    "entry_path",
    "meta_path",
    "lock_path",
    "partial_path",
    "file_lock",
    "sha256_file",
    "Verification",
    "check_file",
    "plain_pickle_reason",
    "verify_cached",
    "read_meta",
    "write_meta",
]

logger = logging.getLogger(__name__)

CACHE_ENV = "GIE_CACHE_DIR"
OFFLINE_ENV = "GIE_OFFLINE"
APPROX_MIN_FRACTION = 0.5
"""A file smaller than this fraction of ``size_approx`` is rejected (truncated, or not the expected file)."""
APPROX_TOLERANCE = 0.25
"""Relative deviation from ``size_approx`` beyond which a warning says the file may not be the expected one."""
_TRUE = {"1", "true", "yes", "on"}
_CHUNK = 1 << 20


def cache_dir(override: str | Path | None = None) -> Path:
    """The weights cache folder (not created).

    Precedence: ``override`` (``--cache-dir``) > ``$GIE_CACHE_DIR`` > ``$XDG_CACHE_HOME/gie`` >
    ``platformdirs.user_cache_dir("gie")``. Never relative to the working directory: relative values are made
    absolute at once, and an empty ``XDG_CACHE_HOME`` or a relative one is ignored (as the XDG spec says).

    Args:
        override: Explicit folder, or None.

    Returns:
        Absolute path of the cache folder.
    """
    if override is not None and str(override):
        return Path(override).expanduser().absolute()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).expanduser().is_absolute():
        return Path(xdg).expanduser() / "gie"
    import platformdirs

    return Path(platformdirs.user_cache_dir("gie", appauthor=False))


def is_offline(flag: bool | None = None) -> bool:
    """Offline mode: ``flag`` (``--offline``) when set, else ``$GIE_OFFLINE`` in ``1/true/yes/on``."""
    if flag:
        return True
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE


def entry_path(entry: WeightEntry, cache: str | Path | None = None) -> Path:
    """Where ``entry`` lives in the cache: ``<cache>/<entry.folder>/<entry.filename>``."""
    return cache_dir(cache) / entry.folder / entry.filename


def meta_path(path: Path) -> Path:
    """The verification record beside a cached file (``<file>.meta.json``)."""
    return path.with_name(path.name + ".meta.json")


def lock_path(path: Path) -> Path:
    """The lock file guarding downloads/imports of ``path``."""
    return path.with_name(path.name + ".lock")


def partial_path(path: Path) -> Path:
    """The temp file a download streams into (kept after a network failure, so a later try resumes it)."""
    return path.with_name(path.name + ".part")


# ----------------------------------------------------------------------------------------------- locking


def _lock_fd(fd: int, blocking: bool) -> bool:
    """Exclusive advisory lock on ``fd``; returns False if ``blocking`` is False and it is held elsewhere."""
    if os.name == "nt":  # pragma: no cover - Windows
        import msvcrt

        mode = msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK
        try:
            msvcrt.locking(fd, mode, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False


def _unlock_fd(fd: int) -> None:
    if os.name == "nt":  # pragma: no cover - Windows
        import msvcrt

        with contextlib.suppress(OSError):
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def file_lock(path: Path, poll: float = 0.1, timeout: float | None = None) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` (a lock file, created) for the ``with`` block.

    Works across processes and across threads of one process (every acquisition opens its own file description).
    The lock file is removed on release; an acquirer re-checks after locking that the file it locked is still the
    one at ``path``, so the removal cannot let two holders in.

    Args:
        path: The lock file.
        poll: Seconds between attempts while another holder has it.
        timeout: Give up after this many seconds (None: wait as long as it takes).

    Raises:
        TimeoutError: ``timeout`` passed.
    """
    start = time.monotonic()
    told = False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder does not exist (yet, or again after a failed download removed it)
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        if _lock_fd(fd, blocking=False):
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            _unlock_fd(fd)
        os.close(fd)
        if not told:
            logger.info("waiting for another gie process to finish with %s", path.with_suffix(""))
            told = True
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"could not lock {path} within {timeout} s")
        time.sleep(poll)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        _unlock_fd(fd)
        os.close(fd)


# ----------------------------------------------------------------------------------------------- hashing


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks; ``on_bytes(n)`` is called after each chunk."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return h.hexdigest()


def read_meta(path: Path) -> dict:
    """The verification record of a cached file (``{}`` when absent or unreadable)."""
    try:
        data = json.loads(meta_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_meta(path: Path, entry: WeightEntry, sha256: str, how: str, url: str = "") -> None:
    """Records that ``path`` (as it is now: size, mtime) hashed to ``sha256`` and how it got there."""
    st = path.stat()
    record = {
        "name": entry.name,
        "filename": entry.filename,
        "sha256": sha256,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "source": how,
        "url": url,
        "registry_sha256": entry.sha256 or "unknown",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = meta_path(path).with_name(meta_path(path).name + f".tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, meta_path(path))


# ----------------------------------------------------------------------------------------------- verification


@dataclass
class Verification:
    """Outcome of checking a file against its registry entry.

    Attributes:
        ok: The file is acceptable.
        level: How strongly it was checked: ``sha256`` (full upstream hash), ``sha256-partial`` (known digits of the
            upstream hash), ``recorded`` (hash recorded when gie first stored it; no upstream hash), ``size`` (exact
            upstream size only), ``approx`` (within the approximate size only), ``none`` (nothing to check),
            ``format`` (refused: the content is not of the entry's format, e.g. a plain pickle for a ``pt`` entry).
        sha256: The file's SHA-256 ("" when not computed).
        size: The file's size in bytes.
        reason: Why it is not ok, or a caveat when the check was weak.
    """

    ok: bool
    level: str
    sha256: str
    size: int
    reason: str = ""

    @property
    def weak(self) -> bool:
        """True when no upstream hash (full or partial) confirmed the content."""
        return self.level not in ("sha256", "sha256-partial")


def html_or_text(path: Path) -> str:
    """A reason when the file starts like a web page, Git LFS pointer or plain text; else ``""``."""
    with open(path, "rb") as f:
        head = f.read(1024)
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] == b"<":
        return "is an HTML page, not model weights (an error or confirmation page saved in place of the file)"
    if text.startswith(b"version https://git-lfs"):
        return "is a Git LFS pointer file, not the weights"
    return ""


_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
"""How a legacy (non-zip) ``torch.save`` file starts: protocol 2, then torch's magic number as a LONG1."""
PICKLE_FORMATS = ("pkl",)
"""Registry formats that are Python pickles (NVIDIA network pickles); any other format refuses a plain pickle."""


def plain_pickle_reason(path: Path, entry: WeightEntry) -> str:
    """A reason when ``path`` is a plain Python pickle but ``entry``'s format is not a pickle; else ``""``.

    Zip checkpoints (``torch.save``), legacy ``torch.save`` files (they start with torch's magic number), safetensors
    and ``.npy`` files are not plain pickles. A file is taken as a pickle when its opcodes parse up to a STOP (the
    stream is read until then, never executed).

    Args:
        path: The file.
        entry: Its registry entry.

    Returns:
        The reason (mentioning ``gie weights import --convert`` for NVIDIA network pickles), or ``""``.
    """
    import pickletools

    if entry.format in PICKLE_FORMATS:
        return ""
    with open(path, "rb") as f:
        head = f.read(len(_TORCH_LEGACY_MAGIC))
        if head.startswith((_TORCH_LEGACY_MAGIC, b"PK", b"\x93NUMPY")):
            return ""
        f.seek(0)
        try:
            ops = [op.name for op, _, _ in pickletools.genops(f)]
        except Exception:  # noqa: BLE001 - anything that does not parse as a pickle is not one
            return ""
    if not ops or ops[-1] != "STOP":
        return ""
    nvidia = (
        " (an NVIDIA network pickle? convert it: `gie weights import --convert FILE`)" if path.suffix == ".pkl" else ""
    )
    return (
        f"is a plain Python pickle, but {entry.name} is a {entry.format} file; gie does not accept pickles "
        f"for it{nvidia}"
    )


def check_file(
    path: Path,
    entry: WeightEntry,
    recorded_sha256: str = "",
    on_bytes: Callable[[int], None] | None = None,
) -> Verification:
    """Checks a file's size and hash against ``entry``.

    The strongest available check decides: the full upstream SHA-256; else its known prefix/suffix digits; else a
    hash recorded earlier by gie (``recorded_sha256``); else the exact size; else a sniff for HTML/LFS pointers and
    the approximate size (less than half of it is rejected; more than 25% off is only noted). The hash is always
    computed (it is recorded for later checks).

    Args:
        path: The file.
        entry: Its registry entry.
        recorded_sha256: Hash recorded when gie stored the file, if any.
        on_bytes: Progress callback while hashing.

    Returns:
        The :class:`Verification`.
    """
    size = path.stat().st_size
    if size == 0:
        return Verification(False, "size", "", 0, "empty file (0 bytes)")
    if entry.size and size != entry.size:
        return Verification(False, "size", "", size, f"size {size} bytes, expected {entry.size}")
    if not entry.sha256 and not entry.size:
        junk = html_or_text(path)
        if junk:
            return Verification(False, "none", "", size, junk)
        if entry.size_approx and size < APPROX_MIN_FRACTION * entry.size_approx:
            return Verification(
                False,
                "approx",
                "",
                size,
                f"size {size} bytes is far below the expected ~{entry.size_approx} bytes (truncated or wrong file)",
            )
    if not entry.sha256:
        pickled = plain_pickle_reason(path, entry)
        if pickled:
            return Verification(False, "format", "", size, pickled)
    digest = sha256_file(path, on_bytes)
    if entry.sha256:
        if digest != entry.sha256:
            return Verification(False, "sha256", digest, size, f"sha256 {digest}, expected {entry.sha256}")
        return Verification(True, "sha256", digest, size)
    if entry.sha256_prefix or entry.sha256_suffix:
        if not digest.startswith(entry.sha256_prefix) or not digest.endswith(entry.sha256_suffix):
            want = f"{entry.sha256_prefix or ''}...{entry.sha256_suffix or ''}"
            return Verification(False, "sha256-partial", digest, size, f"sha256 {digest} does not match {want}")
        return Verification(True, "sha256-partial", digest, size, "only part of the upstream sha256 is known")
    if recorded_sha256:
        if digest != recorded_sha256:
            return Verification(
                False, "recorded", digest, size, f"sha256 {digest} differs from {recorded_sha256} recorded earlier"
            )
        return Verification(True, "recorded", digest, size, "no upstream sha256; matches the hash recorded earlier")
    if entry.size:
        return Verification(True, "size", digest, size, "no upstream sha256; verified by size only")
    note = "no upstream sha256 or exact size; content not verified"
    if entry.size_approx and abs(size - entry.size_approx) > APPROX_TOLERANCE * entry.size_approx:
        note += f" (size {size} bytes differs from the expected ~{entry.size_approx} by more than 25%)"
    return Verification(True, "approx" if entry.size_approx else "none", digest, size, note)


def verify_cached(
    path: Path, entry: WeightEntry, rehash: bool = False, on_bytes: Callable[[int], None] | None = None
) -> Verification:
    """Verifies a cached file, reusing its verification record when the file is unchanged.

    Args:
        path: The cached file.
        entry: Its registry entry.
        rehash: Recompute the hash even if the record says the file is unchanged since it was verified.
        on_bytes: Progress callback while hashing.

    Returns:
        The :class:`Verification` (``reason`` ``"missing"`` when the file does not exist).
    """
    if not path.is_file():
        return Verification(False, "none", "", 0, "missing")
    meta = read_meta(path)
    st = path.stat()
    fresh = meta.get("size") == st.st_size and meta.get("mtime_ns") == st.st_mtime_ns and meta.get("sha256")
    if fresh and not rehash and meta.get("registry_sha256") == (entry.sha256 or "unknown"):
        rec = meta["sha256"]
        if entry.sha256 and rec == entry.sha256:
            return Verification(True, "sha256", rec, st.st_size)
        if not entry.sha256:  # recheck the partial/size facts on the recorded hash without reading the file
            quick = _recheck_recorded(entry, rec, st.st_size)
            if quick is not None:
                return quick
    result = check_file(path, entry, recorded_sha256=str(meta.get("sha256", "")), on_bytes=on_bytes)
    if result.ok and result.sha256 and (not fresh or meta.get("sha256") != result.sha256):
        with contextlib.suppress(OSError):
            write_meta(path, entry, result.sha256, meta.get("source", "verified"), meta.get("url", ""))
    return result


def _recheck_recorded(entry: WeightEntry, digest: str, size: int) -> Verification | None:
    if entry.size and size != entry.size:
        return None
    if entry.sha256_prefix or entry.sha256_suffix:
        if digest.startswith(entry.sha256_prefix) and digest.endswith(entry.sha256_suffix):
            return Verification(True, "sha256-partial", digest, size, "only part of the upstream sha256 is known")
        return None
    return Verification(True, "recorded", digest, size, "no upstream sha256; matches the hash recorded earlier")

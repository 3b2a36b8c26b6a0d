"""High-level weights API: resolve a name or path to a verified local file, download, import, remove.

Embedded entries (``embedded = "zoo/..."`` in the registry) are files shipped inside the ``gie_cli`` package: they
resolve to the package file (checked once per process), are never downloaded or cached, and the one marked
``default_for`` a method is what that method uses when ``--weights`` is omitted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from gie_cli.errors import CheckpointError, UsageError, WeightsUnavailableError
from gie_cli.weights import registry as _registry_mod
from gie_cli.weights.cache import (
    PICKLE_FORMATS,
    Verification,
    cache_dir,
    check_file,
    entry_path,
    file_lock,
    html_or_text,
    is_offline,
    lock_path,
    meta_path,
    partial_path,
    verify_cached,
    write_meta,
)
from gie_cli.weights.download import DownloadOptions, ProgressCallback, download_entry, rich_progress
from gie_cli.weights.registry import Registry, WeightEntry, load_registry

__all__ = [
    "EntryStatus",
    "converted_path",
    "embedded_file",
    "embedded_notice",
    "ensure",
    "entry_status",
    "embedded_entry_for",
    "import_file",
    "offline_error",
    "remove",
    "resolve_weights",
    "verify_embedded",
]

logger = logging.getLogger(__name__)

_PATH_SUFFIXES = (".pt", ".pth", ".pkl", ".ckpt", ".safetensors", ".npy", ".bin")
_EMBEDDED_CHECKED: dict[tuple[str, str, int, int, int], Verification] = {}
"""Verification of embedded files, per (path, expected sha256, expected size, file size, mtime): once per process."""
_ANNOUNCED: set[str] = set()
"""Embedded defaults already announced on the log in this process."""


def converted_path(entry: WeightEntry, cache: str | Path | None = None) -> Path:
    """Where ``gie weights import --convert`` stores the gie-format conversion of ``entry``'s file."""
    p = entry_path(entry, cache)
    return p.with_name(p.stem + ".gie.safetensors")


def offline_error(entry: WeightEntry, path: Path, reason: str = "") -> WeightsUnavailableError:
    """The error for a weights file that is not in the cache while downloads are off.

    It names the entry, the exact path to put the file at, the mirrors and the expected sha256/size, so the file
    can be placed by hand.
    """
    sha = entry.sha256 or (
        f"unknown (known digits: {entry.sha256_prefix or ''}...{entry.sha256_suffix or ''})"
        if entry.sha256_prefix or entry.sha256_suffix
        else "unknown"
    )
    size = f"{entry.size} bytes" if entry.size else (f"~{entry.size_approx} bytes" if entry.size_approx else "unknown")
    why = f"{reason}; " if reason else ""
    err = WeightsUnavailableError(
        f"{entry.name} ({entry.filename})",
        path,
        entry.urls,
        hint=(
            f"{why}offline mode (--offline / GIE_OFFLINE=1) makes no network calls; expected sha256 {sha}, size "
            f"{size}; or place the file with `gie weights import FILE --name {entry.name}`"
        ),
    )
    err.entry = entry.name  # type: ignore[attr-defined]
    err.sha256 = entry.sha256 or "unknown"  # type: ignore[attr-defined]
    return err


def ensure(
    entry: WeightEntry | str,
    registry: Registry | None = None,
    cache: str | Path | None = None,
    offline: bool | None = None,
    options: DownloadOptions | None = None,
    progress: ProgressCallback | None = None,
    force: bool = False,
) -> Path:
    """The verified local file of a registry entry, downloading it when needed.

    Args:
        entry: The entry or its name.
        registry: Registry to look names up in (default: :func:`load_registry`).
        cache: Cache folder override (``--cache-dir``).
        offline: Force offline mode (None: ``GIE_OFFLINE``).
        options: Download settings.
        progress: Byte progress callback (None: a rich bar on stderr when enabled).
        force: Download again even when a verified copy exists.

    Returns:
        Path of the verified file in the cache.

    Raises:
        UsageError: Unknown name.
        WeightsUnavailableError: Offline and the file is missing or fails verification (no network call is made).
        DownloadError: Online and the download failed.
    """
    if isinstance(entry, str):
        entry = (registry or load_registry()).get(entry)
    if entry.embedded:  # shipped in the package: nothing to download, offline or not
        return embedded_file(entry)
    path = entry_path(entry, cache)
    if is_offline(offline):
        v = verify_cached(path, entry)
        if not v.ok:
            raise offline_error(entry, path, "" if v.reason == "missing" else f"the cached file is bad: {v.reason}")
        _warn_weak(entry, v)
        return path
    if not force and path.is_file():
        v = verify_cached(path, entry)
        if v.ok:
            _warn_weak(entry, v)
            return path
    if progress is None:
        with rich_progress(f"{entry.name}") as bar:
            download_entry(entry, path, options, bar, force=force)
    else:
        download_entry(entry, path, options, progress, force=force)
    return path


def verify_embedded(entry: WeightEntry) -> Verification:
    """Checks the package file of an embedded entry against its registry sha256/size (no caching, no records).

    With ``sha256 = "unknown"`` and ``size = "unknown"`` (hashes not filled in by ``python -m
    gie_cli.weights.embed_hashes`` yet) the content is not verified: only an empty file or a Git LFS pointer/HTML
    page in its place is rejected, and the result says so (level ``none``).

    Args:
        entry: An entry with ``embedded`` set.

    Returns:
        The :class:`Verification` (``reason`` ``"missing"`` when the file is absent).

    Raises:
        UsageError: ``entry`` is not embedded.
    """
    path = entry.embedded_path
    if path is None:
        raise UsageError(f"{entry.name} is not an embedded entry")
    if not path.is_file():
        return Verification(False, "none", "", 0, "missing")
    if entry.sha256 or entry.size:
        return check_file(path, entry)
    size = path.stat().st_size
    if size == 0:
        return Verification(False, "size", "", 0, "empty file (0 bytes)")
    junk = html_or_text(path)
    if junk:
        return Verification(False, "none", "", size, junk)
    note = "no sha256/size recorded for this embedded file (python -m gie_cli.weights.embed_hashes); not verified"
    return Verification(True, "none", "", size, note)


def _embedded_hint(entry: WeightEntry) -> str:
    other = f"--weights {entry.real}" if entry.real else "--weights NAME|FILE"
    return (
        "the file ships inside the gie package: reinstall it with `pip install --force-reinstall gie` (in a source "
        f"checkout: re-run scripts/build_zoo.sh), or pass {other} (see `gie weights list`)"
    )


def embedded_file(entry: WeightEntry) -> Path:
    """The package file of an embedded entry, checked against the registry once per process.

    A file whose registry sha256/size are ``unknown`` is accepted with one warning (see :func:`verify_embedded`).

    Args:
        entry: An entry with ``embedded`` set.

    Returns:
        Absolute path of the file inside the installed ``gie_cli`` package.

    Raises:
        UsageError: ``entry`` is not embedded.
        WeightsUnavailableError: The file is not in the package (broken install, or a checkout without the zoo).
        CheckpointError: The file does not match the registry's sha256/size.
    """
    path = entry.embedded_path
    if path is None:
        raise UsageError(f"{entry.name} is not an embedded entry")
    try:
        st = path.stat()
    except OSError:
        st = None
    if st is None or not path.is_file():
        err = WeightsUnavailableError(f"{entry.name} ({entry.filename})", path, hint=_embedded_hint(entry))
        err.entry = entry.name  # type: ignore[attr-defined]
        raise err
    key = (str(path), entry.sha256, entry.size, st.st_size, st.st_mtime_ns)
    v = _EMBEDDED_CHECKED.get(key)
    if v is None:
        v = _EMBEDDED_CHECKED[key] = verify_embedded(entry)
        if v.ok and v.weak:
            logger.warning("%s: %s", entry.name, v.reason)
    if not v.ok:
        raise CheckpointError(path, f"is not the embedded {entry.name}: {v.reason}", hint=_embedded_hint(entry))
    return path


def embedded_notice(entry: WeightEntry) -> str:
    """The one-line notice logged when an embedded default stands in for ``--weights``.

    E.g. ``using the embedded demo model world.e4e (64 px synthetic faces, not for real photos; for FFHQ: --weights
    e4e.ffhq, see gie weights list)``; the size comes from ``config.size``, the alternative from ``real``.
    """
    size = entry.config.get("size")
    what = f"{size} px synthetic faces" if isinstance(size, int) and not isinstance(size, bool) else "synthetic faces"
    if entry.real:
        tag = entry.real.rsplit(".", 1)[-1].upper()
        alt = f"for {tag}: --weights {entry.real}, see gie weights list"
    else:
        alt = "see gie weights list"
    return f"using the embedded demo model {entry.name} ({what}, not for real photos; {alt})"


def _warn_weak(entry: WeightEntry, v: Verification) -> None:
    if v.level in ("size", "approx", "none"):
        logger.warning("%s: %s", entry.name, v.reason)
    elif v.weak:
        logger.debug("%s: %s", entry.name, v.reason)


def _looks_like_path(spec: str) -> bool:
    return any(sep in spec for sep in ("/", "\\")) or spec.startswith(("~", ".")) or spec.endswith(_PATH_SUFFIXES)


def resolve_weights(
    spec: str | None,
    method: str | None = None,
    what: str = "weights",
    registry: Registry | None = None,
    cache: str | Path | None = None,
    offline: bool | None = None,
) -> Path:
    """Resolves a ``--weights`` value: an existing file path, or a registry name (downloaded when not cached).

    Args:
        spec: File path or registry name; None/empty means the registry's embedded default for ``method``
            (``default_for``), announced by one info line on the log.
        method: The method asking (for messages and a consistency warning).
        what: Description of what the method needs (for messages).
        registry: Registry (default: :func:`load_registry`).
        cache: Cache folder override.
        offline: Force offline mode (None: ``GIE_OFFLINE``).

    Returns:
        Path of the file to load.

    Raises:
        UsageError: Nothing given and ``method`` has no embedded default, a path that does not exist, an unknown
            name, or an entry that needs ``gie weights import --convert`` first.
        WeightsUnavailableError: Offline and the named file is not cached; or an embedded file is not in the
            package.
        CheckpointError: An embedded file does not match the registry.
        DownloadError: The named file could not be downloaded.
    """
    flag = f"--method {method} " if method else ""  # the wording is kept: library callers (and tests) match it
    if not spec:
        reg = registry or _try_registry()
        default = reg.default_for(method) if reg is not None and method else None
        if default is not None:
            path = embedded_file(default)
            _announce(default)
            return path
        names = [e.name for e in reg.for_method(method)] if reg is not None and method else []
        listing = f"registry names for {method}: {', '.join(names)}; " if names else ""
        defaults = reg.defaults if reg is not None else {}
        if defaults:
            having = ", ".join(sorted(defaults))
            msg = f"{flag or 'this command '}has no embedded default; pass --weights ({what})"
            hint = f"pass a registry name or a file; {listing}embedded defaults exist for: {having}; "
        else:
            # "needs --weights" is kept: library callers (and tests) match it
            msg = f"{flag}needs --weights ({what}); gie has no built-in default weights yet"
            hint = f"pass a registry name or a file; {listing}"
        raise UsageError(msg, hint=hint + "see `gie weights list`", param="weights")
    p = Path(spec).expanduser()
    if p.is_file():
        _announce_embedded_path(p, registry)
        return p
    if p.is_dir():
        raise UsageError(
            f"weights {spec} is a folder, expected a checkpoint file", hint=f"pass {what}", param="weights", value=spec
        )
    reg = registry or load_registry()
    if spec not in reg:
        if _looks_like_path(spec):
            raise UsageError(f"weights {spec}: file not found", hint=f"pass {what}", param="weights", value=spec)
        reg.get(spec)  # raises UsageError with close names
    entry = reg.get(spec)
    if method and entry.method and method not in entry.method:
        logger.warning("--weights %s is registered for %s, not for %s", entry.name, ", ".join(entry.method), method)
    if entry.embedded:
        path = embedded_file(entry)
        _announce(entry)
        return path
    if entry.convert:
        conv = converted_path(entry, cache)
        if conv.is_file():
            return conv
        raw = entry_path(entry, cache)
        raise UsageError(
            f"weights {entry.name}: the {entry.format} file needs a one-time conversion to gie's format",
            param="weights",
            value=entry.name,
            hint=(
                f"run `gie weights download {entry.name}` and then `gie weights import --convert {raw} "
                f"--name {entry.name}` (reading a pickle executes no code in gie, but read the warning it prints)"
            ),
        )
    return ensure(entry, reg, cache, offline)


def _announce(entry: WeightEntry) -> None:
    """Log :func:`embedded_notice` once per process and entry."""
    if entry.name not in _ANNOUNCED:
        _ANNOUNCED.add(entry.name)
        logger.info("%s", embedded_notice(entry))


def _announce_embedded_path(path: Path, registry: Registry | None) -> None:
    """A file given by path that is an embedded model (e.g. recorded in a latent file) is announced like a default,
    so every command says when it runs on the demo models."""
    try:
        package = _registry_mod.package_dir()
        if package not in path.resolve().parents:
            return
        reg = registry or _try_registry()
        for entry in reg or []:
            if entry.embedded_path is not None and entry.embedded_path.resolve() == path.resolve():
                _announce(entry)
                return
    except OSError:  # an unreadable path is reported by whoever opens it
        return


def embedded_entry_for(path: str | Path | None, registry: Registry | None = None) -> WeightEntry | None:
    """The embedded (demo) registry entry whose package file ``path`` is, or None (also for any other file).

    Args:
        path: A weights file, e.g. a method's ``weights_path``.
        registry: Registry (default: :func:`load_registry`).

    Returns:
        The entry, when ``path`` is one of the demo models shipped inside the package.
    """
    if not path:
        return None
    try:
        target = Path(path).resolve()
        if _registry_mod.package_dir() not in target.parents:
            return None
        for entry in registry or _try_registry() or []:
            if entry.embedded_path is not None and entry.embedded_path.resolve() == target:
                return entry
    except OSError:
        return None
    return None


def _try_registry() -> Registry | None:
    try:
        return load_registry()
    except Exception:  # a broken registry must not hide the real message
        return None


@dataclass
class EntryStatus:
    """State of an entry in the cache (or, for an embedded entry, in the package).

    Attributes:
        entry: The registry entry.
        path: Where the file lives (or would live); the package file for an embedded entry.
        cached: The file exists in the cache (always False for an embedded entry).
        partial: Bytes of an unfinished download (0 if none).
        verified: Verification result, when checked.
    """

    entry: WeightEntry
    path: Path
    cached: bool
    partial: int = 0
    verified: Verification | None = None

    @property
    def state(self) -> str:
        """``embedded``, ``cached``, ``partial`` or ``missing``."""
        if self.entry.embedded:
            return "embedded"
        return "cached" if self.cached else "partial" if self.partial else "missing"

    def to_dict(self) -> dict:
        """JSON-friendly view (entry facts + cache state; ``present``: the file exists at ``path``)."""
        d = self.entry.to_dict()
        d.update(
            path=str(self.path),
            cached=self.cached,
            partial_bytes=self.partial,
            status=self.state,
            present=self.path.is_file(),
        )
        if self.verified is not None:
            d.update(
                ok=self.verified.ok,
                check=self.verified.level,
                file_sha256=self.verified.sha256,
                file_size=self.verified.size,
                reason=self.verified.reason,
            )
        return d


def entry_status(entry: WeightEntry, cache: str | Path | None = None, verify: bool = False) -> EntryStatus:
    """Where ``entry`` is and whether it is there; with ``verify``, re-hash it against the registry."""
    if entry.embedded:
        st = EntryStatus(entry, entry.embedded_path, False)  # type: ignore[arg-type]
        if verify:
            st.verified = verify_embedded(entry)
        return st
    path = entry_path(entry, cache)
    part = partial_path(path)
    st = EntryStatus(entry, path, path.is_file(), part.stat().st_size if part.is_file() else 0)
    if verify:
        st.verified = verify_cached(path, entry, rehash=True)
    return st


def import_file(
    src: str | Path,
    entry: WeightEntry,
    cache: str | Path | None = None,
    link: bool = False,
    force: bool = False,
) -> tuple[Path, Verification]:
    """Verifies a file the user already has and places it in the cache as ``entry``.

    Args:
        src: The file.
        entry: The registry entry it should be.
        cache: Cache folder override.
        link: Hard-link instead of copying (falls back to a copy across filesystems).
        force: Replace a cached copy that differs (without it a different cached file is never replaced).

    Returns:
        ``(cache path, verification)``.

    The hash of ``src`` is recorded in the cache's verification record (``<file>.meta.json``), so an entry without
    an upstream sha256 is checked against it later.

    Raises:
        UsageError: ``src`` does not exist, ``entry`` is embedded in the package (nothing to import), or a different
            file is cached for ``entry`` and ``force`` is False (nothing is written).
        CheckpointError: ``src`` fails verification, e.g. a plain pickle for an entry whose format is not a pickle
            (nothing is written).
    """
    if entry.embedded:
        raise UsageError(
            f"{entry.name} is embedded in the gie package ({entry.embedded_path}); it is not imported into the cache",
            hint="use it as --weights " + entry.name,
        )
    s = Path(src).expanduser()
    if not s.is_file():
        raise UsageError(f"{src}: file not found")
    dest = entry_path(entry, cache)
    v = check_file(s, entry)
    if not v.ok:
        raise CheckpointError(
            s,
            f"is not {entry.name} ({entry.filename}): {v.reason}",
            hint=_import_hint(s, entry, v),
        )
    if v.weak and entry.format in PICKLE_FORMATS:  # no hash to go by: the content must be a network at least
        from gie_cli.weights.nvidia import network_pickle_reason

        if reason := network_pickle_reason(s):
            raise CheckpointError(
                s, f"is not {entry.name} ({entry.filename}): {reason}", hint=_import_hint(s, entry, v)
            )
    if v.weak:
        logger.warning("%s: %s (sha256 %s recorded for later checks)", entry.name, v.reason, v.sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(lock_path(dest)):
        if dest.exists() and not force:
            with contextlib.suppress(OSError):
                if os.path.samefile(dest, s):
                    write_meta(dest, entry, v.sha256, "import", str(s.resolve()))
                    return dest, v
            cur = verify_cached(dest, entry)
            if cur.ok and cur.sha256 == v.sha256:
                logger.info("%s is already in the cache at %s", entry.name, dest)
                return dest, v
            had = f"sha256 {cur.sha256}" if cur.sha256 else ("not verifying: " + cur.reason if cur.reason else "")
            raise UsageError(
                f"{entry.name} is already in the cache at {dest} ({had}); {s} (sha256 {v.sha256}) is a different file, "
                "nothing was replaced",
                hint=f"pass --force to replace the cached copy, or `gie weights rm {entry.name}` first",
            )
        tmp = dest.with_name(dest.name + f".import-{os.getpid()}")
        try:
            done = False
            if link:
                try:
                    os.link(s, tmp)
                    done = True
                except OSError as e:
                    logger.info("cannot hard-link %s into the cache (%s); copying", s, e.strerror or e)
            if not done:
                shutil.copyfile(s, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        write_meta(dest, entry, v.sha256, "import", str(s.resolve()))
    logger.info("imported %s into %s (%s)", entry.name, dest, "linked" if link else "copied")
    return dest, v


def _import_hint(src: Path, entry: WeightEntry, v: Verification) -> str:
    """The fix for a refused import: NVIDIA pickles are converted, other files checked against the registry."""
    if v.level == "format" and src.suffix.lower() == ".pkl":
        return (
            f"an NVIDIA stylegan2-ada-pytorch network pickle is converted, not imported: `gie weights import --convert "
            f"{src} --name stylegan2_ada.ffhq` (or --output FILE.safetensors), then pass the .safetensors file"
        )
    return "check you have the right file; `gie weights list --json` shows the expected sha256 and size"


def remove(entry: WeightEntry, cache: str | Path | None = None) -> list[Path]:
    """Deletes ``entry``'s file, its record, partial download and conversion from the cache.

    Returns:
        The paths that were removed.

    Raises:
        UsageError: ``entry`` is embedded in the package (it is not in the cache; gie never deletes package files).
    """
    if entry.embedded:
        raise UsageError(
            f"{entry.name} is embedded in the gie package ({entry.embedded_path}), not in the cache: nothing to remove"
        )
    path = entry_path(entry, cache)
    removed: list[Path] = []
    with file_lock(lock_path(path)):
        for p in (
            path,
            meta_path(path),
            partial_path(path),
            partial_path(path).with_name(partial_path(path).name + ".url"),
            converted_path(entry, cache),
        ):
            if p.is_file() or p.is_symlink():
                p.unlink()
                removed.append(p)
    with contextlib.suppress(OSError):
        if path.parent != cache_dir(cache):
            path.parent.rmdir()
    return removed

"""The weights registry: ``weights.toml`` entries (name, mirrors, hash, size, what they feed), loaded and validated."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from gie_cli.errors import GieError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "REGISTRY_ENV",
    "UNKNOWN",
    "WeightEntry",
    "Registry",
    "RegistryError",
    "registry_path",
    "load_registry",
    "package_dir",
]

logger = logging.getLogger(__name__)

REGISTRY_ENV = "GIE_WEIGHTS_TOML"
"""Environment variable naming an alternative registry file (tests, private mirrors)."""

UNKNOWN = "unknown"
"""Marker for a hash or size that no upstream source states."""

FORMATS = ("pt", "pth", "pkl", "safetensors", "npy")
CONVERTERS = ("nvidia-ada-generator",)
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)+$")
_HEX_RE = re.compile(r"^[0-9a-f]*$")
_KNOWN_KEYS = {
    "name",
    "filename",
    "urls",
    "sha256",
    "sha256_prefix",
    "sha256_suffix",
    "size",
    "size_approx",
    "format",
    "method",
    "arch",
    "config",
    "license",
    "source",
    "paper",
    "description",
    "subdir",
    "convert",
    "notes",
    "embedded",
    "default_for",
    "real",
}


class RegistryError(GieError):
    """The registry file is missing, not valid TOML, or an entry breaks the schema."""


@dataclass(frozen=True)
class WeightEntry:
    """One weights file of the registry.

    Attributes:
        name: Registry name, ``<arch-or-method>.<tag>`` (e.g. ``e4e.ffhq``).
        filename: File name in the cache (the upstream name).
        urls: Ordered download mirrors (first tried first).
        sha256: Full lowercase hex SHA-256, or ``""`` when unknown.
        sha256_prefix: Known leading hex digits of the SHA-256 (e.g. from a torch hub file name), or ``""``.
        sha256_suffix: Known trailing hex digits of the SHA-256, or ``""``.
        size: Exact size in bytes, or 0 when unknown.
        size_approx: Approximate size in bytes for display and a sanity check, or 0.
        format: File format (``pt``, ``pth``, ``pkl``, ``safetensors``, ``npy``).
        method: gie methods or components the file feeds (e.g. ``("e4e",)``).
        arch: Architecture description (e.g. ``stylegan2-1024+e4e-ir_se50``).
        config: Architecture settings (free-form table).
        license: Licence of the weights as far as known.
        source: Upstream project page.
        paper: Paper reference.
        description: One-line description.
        subdir: Folder under the cache dir (default: the entry name).
        convert: Converter needed before gie can use the file (e.g. ``nvidia-ada-generator``), or ``""``.
        notes: Free-form remarks.
        embedded: Path of a file shipped inside the ``gie_cli`` package, relative to the package folder (e.g.
            ``zoo/world-e4e.safetensors``), or ``""``. Embedded files are never downloaded or cached.
        default_for: Methods for which this (embedded) entry is used when ``--weights`` is omitted.
        real: Registry name of the real-world counterpart of an embedded demo model (e.g. ``e4e.ffhq``), or ``""``.
    """

    name: str
    filename: str
    urls: tuple[str, ...]
    sha256: str = ""
    sha256_prefix: str = ""
    sha256_suffix: str = ""
    size: int = 0
    size_approx: int = 0
    format: str = "pt"
    method: tuple[str, ...] = ()
    arch: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)
    license: str = ""
    source: str = ""
    paper: str = ""
    description: str = ""
    subdir: str = ""
    convert: str = ""
    notes: str = ""
    embedded: str = ""
    default_for: tuple[str, ...] = ()
    real: str = ""

    @property
    def embedded_path(self) -> Path | None:
        """Absolute path of the embedded file (inside the installed package), or None for a downloadable entry."""
        return package_dir() / self.embedded if self.embedded else None

    @property
    def hash_known(self) -> bool:
        """True when the full SHA-256 is known."""
        return bool(self.sha256)

    @property
    def folder(self) -> str:
        """Folder of the file under the cache dir."""
        return self.subdir or self.name

    @property
    def display_size(self) -> int:
        """Exact size if known, else the approximate one (0 if neither)."""
        return self.size or self.size_approx

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view of the entry (``sha256``/``size`` are ``"unknown"`` when not known)."""
        return {
            "name": self.name,
            "filename": self.filename,
            "urls": list(self.urls),
            "sha256": self.sha256 or UNKNOWN,
            "sha256_prefix": self.sha256_prefix,
            "sha256_suffix": self.sha256_suffix,
            "size": self.size or UNKNOWN,
            "size_approx": self.size_approx,
            "format": self.format,
            "method": list(self.method),
            "arch": self.arch,
            "config": dict(self.config),
            "license": self.license,
            "source": self.source,
            "paper": self.paper,
            "description": self.description,
            "convert": self.convert,
            "embedded": self.embedded,
            "default_for": list(self.default_for),
            "real": self.real,
        }


class Registry:
    """Ordered collection of :class:`WeightEntry`, looked up by name.

    Args:
        entries: Entries in file order.
        path: The file they came from.
    """

    def __init__(self, entries: list[WeightEntry], path: Path | None = None) -> None:
        self.path = path
        self._entries = {e.name: e for e in entries}

    def __iter__(self) -> Iterator[WeightEntry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    @property
    def names(self) -> list[str]:
        """Entry names in file order."""
        return list(self._entries)

    def get(self, name: str) -> WeightEntry:
        """The entry called ``name``.

        Raises:
            UsageError: No such entry (the message lists close names).
        """
        if name in self._entries:
            return self._entries[name]
        import difflib

        close = difflib.get_close_matches(name, self.names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run `gie weights list` to see the registry"
        raise UsageError(f"no weights named {name!r} in the registry ({self.path})", hint=hint)

    def for_method(self, method: str) -> list[WeightEntry]:
        """Entries whose ``method`` includes ``method``, in file order."""
        return [e for e in self if method in e.method]

    def find_file(self, filename: str) -> list[WeightEntry]:
        """Entries whose file name is ``filename``."""
        return [e for e in self if e.filename == filename]

    def default_for(self, method: str) -> WeightEntry | None:
        """The embedded entry used for ``method`` when ``--weights`` is omitted, or None if there is none."""
        for e in self:
            if method in e.default_for:
                return e
        return None

    @property
    def defaults(self) -> dict[str, str]:
        """Method -> name of its embedded default entry, for every method that has one."""
        return {m: e.name for e in self for m in e.default_for}


def package_dir() -> Path:
    """The folder of the installed ``gie_cli`` package (what ``embedded`` paths are relative to)."""
    return Path(__file__).resolve().parents[1]


def packaged_registry_path() -> Path:
    """gie's ``weights.toml``, shipped inside the package (``gie_cli/weights/weights.toml``; the repository's top-level
    ``weights.toml`` is a link to it)."""
    return Path(__file__).resolve().parent / "weights.toml"


def registry_path(path: str | Path | None = None) -> Path:
    """Locates the registry file.

    Order: the explicit ``path``; ``$GIE_WEIGHTS_TOML``; the file packaged inside ``gie_cli/weights/``.

    Args:
        path: Explicit registry file, or None.

    Returns:
        The registry file path (not checked for existence when given explicitly).
    """
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get(REGISTRY_ENV)
    if env:
        return Path(env).expanduser()
    return packaged_registry_path()


def load_registry(path: str | Path | None = None) -> Registry:
    """Reads and validates the registry.

    Args:
        path: Registry file; None uses :func:`registry_path`.

    Returns:
        The :class:`Registry`.

    Raises:
        RegistryError: Missing or unreadable file, invalid TOML, or an invalid entry (all problems listed).
    """
    p = registry_path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(
            f"weights registry {p} not found", hint=f"unset {REGISTRY_ENV} or point it at a weights.toml"
        ) from None
    except OSError as e:
        raise RegistryError(f"weights registry {p}: cannot read ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise RegistryError(f"weights registry {p} is not valid TOML: {e}") from None
    items = raw.get("weight", [])
    if not isinstance(items, list):
        raise RegistryError(f"weights registry {p}: 'weight' must be an array of tables ([[weight]])")
    entries: list[WeightEntry] = []
    problems: list[str] = []
    for i, item in enumerate(items):
        try:
            entries.append(parse_entry(item))
        except ValueError as e:
            label = item.get("name", f"#{i + 1}") if isinstance(item, dict) else f"#{i + 1}"
            problems.append(f"entry {label}: {e}")
    seen: dict[str, str] = {}
    places: dict[tuple[str, str], str] = {}
    defaults: dict[str, str] = {}
    for e in entries:
        if e.name in seen:
            problems.append(f"entry {e.name}: name used twice")
        seen[e.name] = e.name
        where = ("<package>", e.embedded) if e.embedded else (e.folder, e.filename)
        if where in places:
            problems.append(f"entry {e.name}: same file {'/'.join(where)} as {places[where]}")
        places[where] = e.name
        for m in e.default_for:
            if m in defaults:
                problems.append(f"entry {e.name}: {defaults[m]} is already the default for {m}")
            defaults.setdefault(m, e.name)
    for e in entries:
        if e.real and e.real not in seen:
            problems.append(f"entry {e.name}: real {e.real!r} is not a registry name")
    if problems:
        raise RegistryError(f"weights registry {p} is invalid: " + "; ".join(problems))
    logger.debug("weights registry %s: %d entries", p, len(entries))
    return Registry(entries, p)


def _str(item: dict, key: str, required: bool = False) -> str:
    v = item.get(key, "")
    if not isinstance(v, str):
        raise ValueError(f"'{key}' must be a string")
    if required and not v.strip():
        raise ValueError(f"'{key}' is required")
    return v.strip()


def _hex(item: dict, key: str, full: bool) -> str:
    v = _str(item, key).lower()
    if v in ("", UNKNOWN):
        return ""
    if not _HEX_RE.match(v) or (full and len(v) != 64) or (not full and not 4 <= len(v) < 64):
        want = "64 hex digits or 'unknown'" if full else "4 to 63 hex digits"
        raise ValueError(f"'{key}' must be {want}, got {v!r}")
    return v


def _int(item: dict, key: str) -> int:
    v = item.get(key, 0)
    if v == UNKNOWN:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"'{key}' must be a non-negative integer (bytes) or 'unknown'")
    return v


def _str_list(item: dict, key: str) -> tuple[str, ...]:
    v = item.get(key, [])
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
        raise ValueError(f"'{key}' must be a list of strings")
    return tuple(x.strip() for x in v)


def parse_entry(item: Any) -> WeightEntry:
    """Validates one ``[[weight]]`` table.

    Args:
        item: The parsed TOML table.

    Returns:
        The entry.

    Raises:
        ValueError: A required key is missing or a value is malformed.
    """
    if not isinstance(item, dict):
        raise ValueError("must be a table")
    unknown = sorted(set(item) - _KNOWN_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}")
    name = _str(item, "name", required=True)
    if not _NAME_RE.match(name):
        raise ValueError(f"name {name!r} must look like 'arch.tag' (lowercase letters, digits, _ and -)")
    embedded = _embedded(item)
    filename = _str(item, "filename", required=not embedded) or PurePosixPath(embedded).name
    if "/" in filename or "\\" in filename or filename.startswith("."):
        raise ValueError(f"filename {filename!r} must be a plain file name")
    urls = _str_list(item, "urls")
    if not urls and not embedded:
        raise ValueError("'urls' needs at least one mirror (or 'embedded' for a file shipped in the package)")
    for u in urls:
        if not u.startswith(("https://", "http://")):
            raise ValueError(f"url {u!r} must be http(s)")
    if "sha256" not in item:
        raise ValueError("'sha256' is required (64 hex digits, or 'unknown')")
    if "size" not in item:
        raise ValueError("'size' is required (bytes, or 'unknown')")
    fmt = _str(item, "format", required=True)
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    convert = _str(item, "convert")
    if convert and convert not in CONVERTERS:
        raise ValueError(f"convert {convert!r} is not one of {', '.join(CONVERTERS)}")
    config = item.get("config", {})
    if not isinstance(config, dict):
        raise ValueError("'config' must be a table")
    subdir = _str(item, "subdir")
    if subdir and (subdir.startswith((".", "/")) or "\\" in subdir or ".." in subdir.split("/")):
        raise ValueError(f"subdir {subdir!r} must be a relative folder inside the cache")
    method = _str_list(item, "method")
    default_for = _str_list(item, "default_for")
    real = _str(item, "real")
    if (default_for or real) and not embedded:
        raise ValueError("'default_for' and 'real' need 'embedded' (only files shipped in the package are defaults)")
    if embedded and (convert or subdir):
        raise ValueError("an 'embedded' entry takes no 'convert' or 'subdir' (it is never downloaded or cached)")
    stray = [m for m in default_for if method and m not in method]
    if stray:
        raise ValueError(f"default_for {', '.join(stray)} not in method ({', '.join(method)})")
    if real and not _NAME_RE.match(real):
        raise ValueError(f"real {real!r} must be a registry name ('arch.tag')")
    return WeightEntry(
        name=name,
        filename=filename,
        urls=urls,
        sha256=_hex(item, "sha256", full=True),
        sha256_prefix=_hex(item, "sha256_prefix", full=False),
        sha256_suffix=_hex(item, "sha256_suffix", full=False),
        size=_int(item, "size"),
        size_approx=_int(item, "size_approx"),
        format=fmt,
        method=method,
        arch=_str(item, "arch"),
        config=config,
        license=_str(item, "license"),
        source=_str(item, "source"),
        paper=_str(item, "paper"),
        description=_str(item, "description"),
        subdir=subdir,
        convert=convert,
        notes=_str(item, "notes"),
        embedded=embedded,
        default_for=default_for,
        real=real,
    )


def _embedded(item: dict) -> str:
    """The validated ``embedded`` path: relative to the package folder, forward slashes, no ``..``, no ``~``."""
    v = _str(item, "embedded")
    if not v:
        return ""
    if v.startswith(("/", "~")) or "\\" in v or ":" in v or any(p in ("", ".", "..") for p in v.split("/")):
        raise ValueError(f"embedded {v!r} must be a relative file path inside the gie_cli package (no '..')")
    return v

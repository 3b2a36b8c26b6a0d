"""Fill in the sha256/size of the embedded entries of ``weights.toml`` from the files in ``gie_cli/zoo/``.

Run after (re)building the demo models::

    python -m gie_cli.weights.embed_hashes          # rewrite gie_cli/weights/weights.toml
    python -m gie_cli.weights.embed_hashes --check  # exit 1 if any would change (CI)

Every ``[[weight]]`` block with an ``embedded`` key gets its ``sha256 = ...`` and ``size = ...`` lines replaced by
the actual values; everything else (comments, order, other entries) is left byte for byte. There is one registry
file, ``gie_cli/weights/weights.toml`` (the repository's top-level ``weights.toml`` links to it).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from gie_cli.weights.cache import sha256_file
from gie_cli.weights.registry import load_registry, packaged_registry_path

__all__ = ["default_targets", "embed_hashes", "main", "rewrite_text"]

_BLOCK_RE = re.compile(r"^\[\[weight\]\][ \t]*(?:#.*)?$", re.MULTILINE)
_TABLE_RE = re.compile(r"^\[", re.MULTILINE)
_KEY_RE = {
    "name": re.compile(r'^name[ \t]*=[ \t]*"([^"]*)"', re.MULTILINE),
    "embedded": re.compile(r'^embedded[ \t]*=[ \t]*"([^"]*)"', re.MULTILINE),
}
_SHA_LINE = re.compile(r'^sha256[ \t]*=[ \t]*(?:"[^"\n]*"|[^\s#]+)', re.MULTILINE)
_SIZE_LINE = re.compile(r'^size[ \t]*=[ \t]*(?:"[^"\n]*"|[^\s#]+)', re.MULTILINE)


def _blocks(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of the ``[[weight]]`` tables (each up to the next table header)."""
    starts = [m.start() for m in _BLOCK_RE.finditer(text)]
    spans = []
    for s in starts:
        nxt = _TABLE_RE.search(text, s + 1)
        spans.append((s, nxt.start() if nxt else len(text)))
    return spans


def rewrite_text(text: str, facts: dict[str, tuple[str, int]]) -> tuple[str, list[str]]:
    """Replaces the ``sha256``/``size`` lines of the embedded blocks in a registry's text.

    Args:
        text: The registry file's content.
        facts: ``embedded`` path -> ``(sha256, size)`` of the actual file.

    Returns:
        ``(new text, names of the entries whose lines changed)``.

    Raises:
        ValueError: An embedded block lacks a ``sha256`` or ``size`` line (the registry requires both).
    """
    out: list[str] = []
    changed: list[str] = []
    pos = 0
    for start, end in _blocks(text):
        block = text[start:end]
        emb = _KEY_RE["embedded"].search(block)
        if emb is None or emb.group(1) not in facts:
            continue
        name_m = _KEY_RE["name"].search(block)
        name = name_m.group(1) if name_m else emb.group(1)
        digest, size = facts[emb.group(1)]
        if not _SHA_LINE.search(block) or not _SIZE_LINE.search(block):
            raise ValueError(f"entry {name}: needs 'sha256 = ...' and 'size = ...' lines to rewrite")
        new = _SHA_LINE.sub(f'sha256 = "{digest}"', block, count=1)
        new = _SIZE_LINE.sub(f"size = {size}", new, count=1)
        if new != block:
            changed.append(name)
        out.append(text[pos:start])
        out.append(new)
        pos = end
    out.append(text[pos:])
    return "".join(out), changed


def default_targets() -> list[Path]:
    """The registry file to rewrite: gie's ``weights.toml`` (packaged; the top-level file links to it)."""
    return [packaged_registry_path()]


def embed_hashes(
    targets: Sequence[Path] | None = None, root: Path | None = None, check: bool = False
) -> tuple[dict[Path, list[str]], list[Path]]:
    """Rewrites the sha256/size of every embedded entry in ``targets`` from the files under ``root``.

    Args:
        targets: Registry files (default: :func:`default_targets`).
        root: Folder the ``embedded`` paths are relative to (default: the ``gie_cli`` package folder).
        check: Only report what would change; write nothing.

    Returns:
        ``(registry file -> names of entries changed (or to change), embedded files that are missing)``. Entries
        whose file is missing are left as they are.
    """
    files = list(targets) if targets is not None else default_targets()
    changes: dict[Path, list[str]] = {}
    missing: list[Path] = []
    cache: dict[str, tuple[str, int]] = {}
    for reg_file in files:
        reg = load_registry(reg_file)  # validates first: never rewrite a file gie cannot read
        facts: dict[str, tuple[str, int]] = {}
        for e in reg:
            if not e.embedded:
                continue
            f = root / e.embedded if root is not None else e.embedded_path
            if not f.is_file():
                if f not in missing:
                    missing.append(f)
                continue
            if e.embedded not in cache:
                cache[e.embedded] = (sha256_file(f), f.stat().st_size)
            facts[e.embedded] = cache[e.embedded]
        text = reg_file.read_text(encoding="utf-8")
        new, changed = rewrite_text(text, facts)
        changes[reg_file] = changed
        if changed and not check:
            reg_file.write_text(new, encoding="utf-8")
            load_registry(reg_file)
    return changes, missing


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m gie_cli.weights.embed_hashes [--check] [--root DIR] [REGISTRY ...]``.

    Returns:
        0 when done (or, with ``--check``, nothing would change); 1 when an embedded file is missing or, with
        ``--check``, an entry is out of date.
    """
    ap = argparse.ArgumentParser(
        prog="python -m gie_cli.weights.embed_hashes",
        description="Fill in sha256/size of the embedded (gie_cli/zoo) entries of weights.toml from the files.",
    )
    ap.add_argument("registries", nargs="*", type=Path, help="registry files (default: gie's weights.toml)")
    ap.add_argument("--root", type=Path, default=None, help="folder embedded paths are relative to (default: gie_cli)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if an entry is out of date")
    args = ap.parse_args(argv)
    changes, missing = embed_hashes(args.registries or None, args.root, args.check)
    for reg_file, names in changes.items():
        verb = "out of date" if args.check else "updated"
        print(f"{reg_file}: {verb}: {', '.join(names)}" if names else f"{reg_file}: up to date")
    for m in missing:
        print(f"error: embedded file {m} is missing (build it first: scripts/build_zoo.sh)", file=sys.stderr)
    stale = args.check and any(changes.values())
    return 1 if missing or stale else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

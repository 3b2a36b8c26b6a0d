"""Atomic file writes: write a temp file next to the target, fsync, then `os.replace` it into place."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from PIL import Image

from gie_cli.errors import UsageError
from gie_cli.io.writer import run_or_defer

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_save_image",
    "write_text_output",
    "IMAGE_SAVE_FORMATS",
    "TEMP_NAME",
    "is_temp_name",
    "remove_temp_files",
]

logger = logging.getLogger(__name__)

# Output suffix -> PIL format name.
IMAGE_SAVE_FORMATS: dict[str, str] = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}

TEMP_NAME = re.compile(r".\.tmp-[0-9a-f]{32}$")
"""The names of :func:`atomic_write`'s temp files (``<name>.tmp-<uuid4 hex>``); nothing else matches."""


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temp file name of :func:`atomic_write` (``photo.recon.png.tmp-<32 hex digits>``)."""
    return TEMP_NAME.search(name) is not None


def remove_temp_files(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Removes temp files of :func:`atomic_write` left in ``folder`` by a run that was killed mid-write.

    Only regular files named ``<name>.tmp-<32 hex digits>`` are removed; anything else (and symbolic links) is left
    alone. Call it only while no other writer uses the folder (a running writer's temp file would be removed).

    Args:
        folder: The folder to clean (a missing folder is fine).
        recursive: Also clean its sub-folders (symbolic links to folders are not followed).

    Returns:
        The removed files.
    """
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for root, dirs, files in os.walk(folder):
        for name in files:
            p = Path(root, name)
            if is_temp_name(name) and not p.is_symlink() and p.is_file():
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
        if not recursive:
            break
        dirs[:] = [d for d in dirs if not d.startswith(".")]
    if removed:
        logger.info("removed %d temporary file(s) left in %s by an interrupted run", len(removed), folder)
    return removed


def _fsync_dir(folder: Path) -> None:
    """Best-effort fsync of a directory so the rename itself is durable (POSIX only)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Opens a temp file that replaces ``path`` only if the ``with`` block completes.

    The temp file is ``<name>.tmp-<uuid>`` in the target's folder (same filesystem, so the final
    ``os.replace`` is atomic). Parent folders are created. On any exception (KeyboardInterrupt included)
    the temp file is removed and the target is left untouched.

    Args:
        path: Final file path.
        mode: ``"wb"`` (binary) or ``"w"``/``"wt"`` (text).
        encoding: Text encoding for text modes; ignored for binary.

    Yields:
        The open temp file object.
    """
    if mode not in ("wb", "w", "wt"):
        raise ValueError(f"atomic_write supports modes 'wb', 'w' and 'wt', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
    binary = "b" in mode
    try:
        # "x": never clobber an existing file under the temp name.
        with open(tmp, "xb" if binary else "x", encoding=None if binary else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    logger.debug("wrote %s", path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically writes ``data`` to ``path``."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Atomically writes ``text`` to ``path`` (UTF-8 by default)."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)


def write_text_output(path: str | Path, text: str) -> None:
    """:func:`atomic_write_text` of an item's output: on the batch engine's background writer when one collects
    the item's writes (:mod:`gie_cli.io.writer`), else now."""
    run_or_defer(atomic_write_text, path, text)


def atomic_save_image(img: Image.Image, path: str | Path, quality: int | None = None, **save_kwargs: Any) -> None:
    """Atomically saves a PIL image; the format comes from the suffix (.png, .jpg, .jpeg, .webp).

    Args:
        img: Image to save (RGB or L for JPEG; RGBA also fine for PNG/WebP).
        path: Output path.
        quality: JPEG/WebP quality 1..100 (None: 95); ignored for PNG, which is lossless.
        **save_kwargs: Passed to ``PIL.Image.Image.save``.

    Raises:
        UsageError: The suffix is not a supported output format.
        ValueError: ``quality`` is outside 1..100.
    """
    path = Path(path)
    fmt = IMAGE_SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(
            f"unsupported output image suffix {path.suffix!r} for {path}",
            hint=f"use one of {', '.join(IMAGE_SAVE_FORMATS)}",
        )
    if quality is not None and not 1 <= quality <= 100:
        raise ValueError(f"image quality must be 1..100, got {quality}")
    if fmt in ("JPEG", "WEBP"):
        save_kwargs.setdefault("quality", 95 if quality is None else quality)
    with atomic_write(path, "wb") as f:
        img.save(f, format=fmt, **save_kwargs)

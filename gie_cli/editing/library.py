"""Where directions are found by name: the search path, shipped folders, lookup, listing and saving."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from safetensors import safe_open

from gie_cli.editing.direction import DIRECTION_FORMAT, DIRECTION_SUFFIX, Direction
from gie_cli.errors import UsageError
from gie_cli.io.checkpoint import GIE_CONFIG_KEY

log = logging.getLogger(__name__)

DIRECTIONS_PATH_ENV = "GIE_DIRECTIONS_PATH"
#: package folders of the directions that ship with gie (package data, so wheels carry them), in lookup order.
SHIPPED_FOLDERS = ("world", "shipped")


def user_directions_dir() -> Path:
    """Where imported and fitted directions go by default: ``<gie cache>/directions`` (``GIE_CACHE_DIR`` or the
    platform's user cache)."""
    from gie_cli.weights.cache import cache_dir

    return cache_dir() / "directions"


def shipped_directions_dirs() -> list[Path]:
    """Directions that come with gie, as package data (found from installed wheels too): the synthetic world's
    directions for the embedded demo generator (``gie_cli/editing/world/``), then the official FFHQ set
    (``gie_cli/editing/shipped/``)."""
    package = Path(str(resources.files("gie_cli.editing")))
    return [package / name for name in SHIPPED_FOLDERS]


def search_path() -> list[Path]:
    """Folders searched for directions by name, first match wins: ``$GIE_DIRECTIONS_PATH`` (``os.pathsep``-separated),
    the user folder (:func:`user_directions_dir`), then the shipped folders."""
    env = [Path(p).expanduser() for p in os.environ.get(DIRECTIONS_PATH_ENV, "").split(os.pathsep) if p]
    return [*env, user_directions_dir(), *shipped_directions_dirs()]


def find_direction(name_or_path: str) -> Path:
    """The file of a direction given by name (searched in :func:`search_path`) or by path.

    Raises:
        UsageError: not found.
    """
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    looks_like_path = os.sep in name_or_path or name_or_path.endswith((".safetensors", ".pt", ".npy"))
    if not looks_like_path:
        for folder in search_path():
            cand = folder / f"{name_or_path}{DIRECTION_SUFFIX}"
            if cand.is_file():
                return cand
    known = sorted({d["name"] for d in list_directions()})
    raise UsageError(
        f"direction {name_or_path!r} not found",
        hint=(f"known: {', '.join(known)}; " if known else "")
        + "import official files or fit new ones with `gie directions import|fit`",
    )


def find_direction_candidates(name_or_path: str) -> list[Path]:
    """Every file a direction name could mean, in search-path order (a path gives just itself).

    Names can repeat across folders, e.g. the world's ``smile`` (bound to the embedded generator) and the official
    FFHQ ``smile``; :func:`gie_cli.editing.binding.pick_for_generator` chooses among them for a given generator.

    Raises:
        UsageError: not found.
    """
    first = find_direction(name_or_path)
    p = Path(name_or_path).expanduser()
    if p.is_file() or os.sep in name_or_path or name_or_path.endswith((".safetensors", ".pt", ".npy")):
        return [first]
    out = [first]
    for folder in search_path():
        cand = folder / f"{name_or_path}{DIRECTION_SUFFIX}"
        if cand.is_file() and cand.resolve() not in {c.resolve() for c in out}:
            out.append(cand)
    return out


def load_direction_candidates(name_or_path: str) -> list[Direction]:
    """:func:`load_direction` for every candidate of :func:`find_direction_candidates` (first = search-path winner)."""
    paths = find_direction_candidates(name_or_path)
    first = load_direction(str(paths[0]))
    rest = [Direction.load(p) for p in paths[1:] if p.name.endswith(".safetensors")]
    return [first, *rest]


def load_direction(name_or_path: str) -> Direction:
    """Load a direction by name or path (see :func:`find_direction`).

    Raises:
        UsageError: not found, or an official file that has not been imported.
    """
    path = find_direction(name_or_path)
    if not path.name.endswith(".safetensors"):
        raise UsageError(
            f"{path} is not a gie direction file",
            hint=f"import official files first: gie directions import {path} (see its --convention)",
        )
    return Direction.load(path)


def read_direction_config(path: str | Path) -> dict[str, Any] | None:
    """The JSON config of a direction file without reading its tensors; None if it is not a direction file."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get(GIE_CONFIG_KEY)
        cfg = json.loads(raw) if raw else None
    except Exception:  # noqa: BLE001 - anything unreadable is simply not listed
        log.debug("cannot read %s", path, exc_info=True)
        return None
    return cfg if isinstance(cfg, dict) and cfg.get("format") == DIRECTION_FORMAT else None


def list_directions() -> list[dict[str, Any]]:
    """Every direction on the search path: its config plus ``path`` and ``shadowed`` (a same-named file earlier on
    the path wins)."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for folder in search_path():
        if not folder.is_dir():
            continue
        for f in sorted(folder.glob(f"*{DIRECTION_SUFFIX}")):
            cfg = read_direction_config(f)
            if cfg is None:
                continue
            name = f.name[: -len(DIRECTION_SUFFIX)]
            out.append({**cfg, "path": str(f), "shadowed": name in seen})
            seen.add(name)
    return out


def output_dir(output: Path | None) -> Path:
    """Where new directions go: ``output``, else the user folder (:func:`user_directions_dir`)."""
    return output if output is not None else user_directions_dir()


def save_directions(directions: Sequence[Direction], folder: Path, overwrite: bool = False) -> list[Path]:
    """Save directions as ``folder/NAME.direction.safetensors`` and set each one's ``path``.

    Raises:
        UsageError: a file exists and not ``overwrite`` (nothing is written then).
    """
    targets = [folder / f"{d.name}{DIRECTION_SUFFIX}" for d in directions]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise UsageError(f"direction file(s) exist: {', '.join(existing)}", hint="pass --overwrite or --name")
    for d, t in zip(directions, targets, strict=True):
        d.path = d.save(t)
    log.info("wrote %d direction(s) to %s", len(directions), folder)
    return targets

"""Checkpoints by file path or registry name: :func:`gie_cli.models.loading.read_components` with the weights
registry resolving names (the file itself and the base a file is stored on)."""

from __future__ import annotations

from pathlib import Path

from gie_cli.models.loading import Components, read_components, save_on_base
from gie_cli.weights.registry import load_registry
from gie_cli.weights.store import embedded_file, resolve_weights


def resolve_reference(spec: str) -> Path:
    """The file a registry name refers to. Embedded entries resolve silently (the file that names them as its base
    has already been announced); others go through :func:`resolve_weights` (cache, download, offline errors)."""
    reg = load_registry()
    if spec in reg and reg.get(spec).embedded:
        return embedded_file(reg.get(spec))
    return resolve_weights(spec)


def load_components(spec: str | Path) -> Components:
    """Read a checkpoint given as a file path or a weights-registry name (downloaded when needed) into parts."""
    path = Path(spec).expanduser()
    if not path.is_file():
        path = resolve_weights(str(spec))
    return read_components(path, resolve=resolve_reference)


def pack_on_base(
    path: str | Path, src: str | Path, base: str, parts: list[str], half: bool = False, atol: float = 0.0
) -> Path:
    """:func:`gie_cli.models.loading.save_on_base` with registry names allowed for ``base``."""
    return save_on_base(path, src, base, parts, half=half, atol=atol, resolve=resolve_reference)

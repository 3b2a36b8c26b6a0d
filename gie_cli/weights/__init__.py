"""Weights registry (``weights.toml``), cache, verified resumable downloads, imports and format conversion."""

from gie_cli.weights.cache import Verification, cache_dir, entry_path, is_offline, verify_cached
from gie_cli.weights.components import load_components, pack_on_base, resolve_reference
from gie_cli.weights.download import DownloadError, DownloadOptions, download_entry
from gie_cli.weights.registry import (
    Registry,
    RegistryError,
    WeightEntry,
    load_registry,
    package_dir,
    registry_path,
)
from gie_cli.weights.store import (
    converted_path,
    embedded_entry_for,
    embedded_file,
    embedded_notice,
    ensure,
    entry_status,
    import_file,
    offline_error,
    remove,
    resolve_weights,
    verify_embedded,
)

__all__ = [
    "DownloadError",
    "DownloadOptions",
    "Registry",
    "RegistryError",
    "Verification",
    "WeightEntry",
    "cache_dir",
    "converted_path",
    "download_entry",
    "embedded_entry_for",
    "embedded_file",
    "embedded_notice",
    "ensure",
    "entry_path",
    "entry_status",
    "import_file",
    "is_offline",
    "load_components",
    "load_registry",
    "offline_error",
    "pack_on_base",
    "package_dir",
    "registry_path",
    "remove",
    "resolve_reference",
    "resolve_weights",
    "verify_cached",
    "verify_embedded",
]

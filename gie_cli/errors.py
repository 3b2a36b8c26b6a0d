"""Exception hierarchy shared by gie: every user-facing failure is a `GieError` that prints as one line."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "GieError",
    "UsageError",
    "ImageLoadError",
    "CheckpointError",
    "StateDictMismatchError",
]

_MAX_LISTED = 10  # keys listed per category in StateDictMismatchError


def _one_line(text: str) -> str:
    """Collapses all whitespace runs (newlines included) into single spaces."""
    return " ".join(text.split())


class GieError(Exception):
    """Base class of gie's user-facing errors.

    Attributes:
        message: What went wrong.
        hint: Optional one-line "how to fix".
        exit_code: Process exit code the CLI uses for this error.
    """

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        msg = _one_line(self.message)
        return f"{msg} (hint: {_one_line(self.hint)})" if self.hint else msg

    def __reduce__(self):  # keep pickling (e.g. from worker processes) working with custom __init__ signatures
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type, state: dict) -> GieError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("message", ""))
    err.__dict__.update(state)
    return err


class UsageError(GieError):
    """Bad user input (arguments, paths, option values); the CLI exits with code 2.

    The message is written in the library's terms (parameter names, not command-line flags). The CLI maps ``param``
    to the flag of the running command and shows it in front of the message (``--device xyz: ...``).

    Attributes:
        param: Name of the library parameter at fault (e.g. ``"device"``, ``"weights"``, ``"ood_prob"``), or None.
        value: The offending value as the user gave it, or None.
    """

    exit_code = 2

    def __init__(
        self, message: str, hint: str | None = None, *, param: str | None = None, value: object = None
    ) -> None:
        super().__init__(message, hint)
        self.param = param
        self.value = value


class ImageLoadError(GieError):
    """An input image could not be read or decoded.

    Attributes:
        path: The image path.
        reason: Short description of the failure.
    """

    def __init__(self, path: str | Path, reason: str, hint: str | None = None) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"image {self.path}: {reason}", hint)


class CheckpointError(GieError):
    """A weights/checkpoint file could not be read or written.

    Attributes:
        path: The checkpoint path (or a description of the source).
        reason: Short description of the failure.
    """

    def __init__(self, path: str | Path, reason: str, hint: str | None = None) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"checkpoint {self.path}: {reason}", hint)


def _listing(items: Sequence[str], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(items[:limit])
    more = len(items) - limit
    return f"{shown}, ... and {more} more" if more > 0 else shown


class StateDictMismatchError(GieError):
    """A state dict does not fit a module: missing, unexpected or wrongly shaped keys.

    Attributes:
        source: Where the state dict came from (file name, optionally with key prefix).
        missing: Keys the module expects but the state dict lacks.
        unexpected: Keys in the state dict the module does not have.
        shape_mismatch: ``(key, shape_in_state_dict, shape_in_module)`` triples.
    """

    def __init__(
        self,
        source: str | Path,
        missing: list[str],
        unexpected: list[str],
        shape_mismatch: list[tuple[str, tuple, tuple]],
        hint: str | None = None,
    ) -> None:
        self.source = str(source)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.shape_mismatch = list(shape_mismatch)
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s): {_listing(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s): {_listing(self.unexpected)}")
        if self.shape_mismatch:
            shapes = [f"{k} {tuple(got)} vs expected {tuple(want)}" for k, got, want in self.shape_mismatch]
            parts.append(f"{len(shapes)} key(s) with wrong shape: {_listing(shapes)}")
        detail = "; ".join(parts) if parts else "unknown mismatch"
        super().__init__(f"weights in {self.source} do not match the model: {detail}", hint)


class WeightsUnavailableError(GieError):
    """A required weights file is not on disk (gie never downloads it implicitly).

    Attributes:
        name: File name of the weights, e.g. ``"vgg16-397923af.pth"``.
        path: The exact path where gie expects the file (the first location it checks).
        urls: Where to get the file (official download addresses first).
        checked: Every path that was checked, in lookup order (``path`` first).
    """

    def __init__(
        self,
        name: str,
        path: str | Path,
        urls: Sequence[str] = (),
        checked: Sequence[str | Path] = (),
        hint: str | None = None,
    ) -> None:
        self.name = name
        self.path = str(path)
        self.urls = list(urls)
        self.checked = [str(p) for p in checked] or [self.path]
        others = [p for p in self.checked if p != self.path]
        msg = f"weights file {name} not found: expected at {self.path}"
        if others:
            msg += f" (also checked: {', '.join(others)})"
        if self.urls:
            msg += f"; download it from {' or '.join(self.urls)} and save it there"
        super().__init__(msg, hint)


__all__ += ["WeightsUnavailableError"]

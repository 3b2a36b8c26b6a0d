"""The direction file format (``NAME.direction.safetensors``: tensors + a JSON config) and :class:`Direction`."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gie_cli.editing.edit import Edit
from gie_cli.editing.errors import DirectionError
from gie_cli.editing.label import LatentClassifier
from gie_cli.editing.spaces import SPACES, apply, edit_space
from gie_cli.errors import UsageError
from gie_cli.io.checkpoint import load_safetensors, load_state_dict_strict, save_safetensors

log = logging.getLogger(__name__)

DIRECTION_FORMAT = "gie-direction/1"
DIRECTION_SUFFIX = ".direction.safetensors"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def check_name(name: str) -> str:
    """Validate a direction name (letters, digits, ``_`` and ``-``; used in output file names).

    Raises:
        UsageError: an invalid name.
    """
    if not _NAME_RE.match(name or ""):
        raise UsageError(
            f"invalid direction name {name!r}", hint="use letters, digits, '_' and '-' (it becomes part of file names)"
        )
    return name


@dataclass
class Direction:
    """One edit direction (see :mod:`gie_cli.editing.spaces` for the spaces and the meaning of power).

    Attributes:
        name: short name (letters, digits, ``_``, ``-``).
        space: ``w`` | ``wplus`` | ``ganspace`` | ``stylespace`` | ``label``.
        tensors: ``vector [D]`` (w), ``vector [L, D]`` (wplus), ``component [D]`` + ``mean [D]`` (ganspace),
            ``style.<l> [C_l]`` (stylespace), ``classifier.*`` (label).
        layers: W+ layers it changes (conv layers for stylespace).
        scale: power multiplier (``s = scale * power``), e.g. 0.5 for SFE's ``factor / 2`` convention.
        power_range: recommended ``(low, high)`` powers, or None.
        params: space-specific settings (ganspace: ``component``, ``std``, ``mode``; label: ``attribute``, ``target``,
            ``order``, ``xi``, ``seed``, ``classifier`` config; stylespace: ``channels``).
        generator: what it was made for: ``id``, ``fingerprint`` (None = unbound), ``size``, ``style_dim``,
            ``n_latent``.
        provenance: ``method`` (importer/fitting method), ``source``, ``sha256``, ``created``, extra facts.
        description: one line for humans.
        path: the file it was loaded from (not stored).
    """

    name: str
    space: str
    tensors: dict[str, Tensor]
    layers: list[int]
    scale: float = 1.0
    power_range: tuple[float, float] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    generator: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    path: Path | None = None
    _classifier: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.layers = [int(x) for x in self.layers]
        self.scale = float(self.scale)
        if self.power_range is not None:
            self.power_range = (float(self.power_range[0]), float(self.power_range[1]))
        self.validate()

    # ------------------------------------------------------------------------------------------- checks
    def validate(self) -> None:
        """Check the fields are consistent.

        Raises:
            DirectionError: an unknown space, missing tensors, or inconsistent shapes.
        """
        src = str(self.path) if self.path else self.name

        def bad(msg: str) -> DirectionError:
            return DirectionError(f"direction {src}: {msg}")

        if not _NAME_RE.match(self.name or ""):
            raise bad(f"invalid name {self.name!r} (letters, digits, '_' and '-')")
        if self.space not in SPACES:
            raise bad(f"unknown space {self.space!r} (known: {', '.join(SPACES)})")
        if not self.layers or min(self.layers) < 0:
            raise bad(f"invalid layers {self.layers}")
        problem = edit_space(self.space).check_fields(self)
        if problem:
            raise bad(problem)

    @property
    def depends_on_latent(self) -> bool:
        """True when the offset depends on the code being edited (GANSpace ``set`` mode, label-based paths)."""
        return edit_space(self.space).depends_on_latent(self)

    @property
    def style_dim(self) -> int | None:
        """Latent width the direction's vectors have (None for StyleSpace/label)."""
        return edit_space(self.space).style_dim(self)

    # ------------------------------------------------------------------------------------------- file format
    def config(self) -> dict[str, Any]:
        """The JSON config stored beside the tensors."""
        return {
            "format": DIRECTION_FORMAT,
            "name": self.name,
            "space": self.space,
            "layers": self.layers,
            "scale": self.scale,
            "power_range": list(self.power_range) if self.power_range is not None else None,
            "params": self.params,
            "generator": self.generator,
            "provenance": self.provenance,
            "description": self.description,
        }

    def save(self, path: str | Path) -> Path:
        """Atomically write the direction to ``path`` (a file) or ``path/NAME.direction.safetensors`` (a folder)."""
        p = Path(path)
        if p.is_dir() or not p.name.endswith(".safetensors"):
            p = p / f"{self.name}{DIRECTION_SUFFIX}"
        p.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(p, {k: v.detach().float().cpu() for k, v in self.tensors.items()}, self.config())
        log.debug("saved direction %s to %s", self.name, p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> Direction:
        """Read a direction file.

        Raises:
            DirectionError: not a gie direction file, or inconsistent.
            CheckpointError: unreadable file.
        """
        p = Path(path)
        tensors, cfg = load_safetensors(p)
        if cfg.get("format") != DIRECTION_FORMAT:
            raise DirectionError(
                f"{p}: not a gie direction file (format {cfg.get('format')!r})",
                hint="import official files with `gie directions import`",
            )
        missing = [k for k in ("name", "space", "layers") if k not in cfg]
        if missing:
            raise DirectionError(f"{p}: direction config lacks {', '.join(missing)}")
        return cls(
            name=cfg["name"],
            space=cfg["space"],
            tensors=tensors,
            layers=cfg["layers"],
            scale=cfg.get("scale", 1.0),
            power_range=tuple(cfg["power_range"]) if cfg.get("power_range") else None,
            params=cfg.get("params") or {},
            generator=cfg.get("generator") or {},
            provenance=cfg.get("provenance") or {},
            description=cfg.get("description", ""),
            path=p,
        )

    def summary(self) -> dict[str, Any]:
        """A short JSON-able description (``gie directions list/show``)."""
        gen = self.generator or {}
        out = {
            "name": self.name,
            "space": self.space,
            "layers": self.layers,
            "scale": self.scale,
            "power_range": list(self.power_range) if self.power_range else None,
            "generator": gen.get("id") or "",
            "fingerprint": (gen.get("fingerprint") or "")[:12] or None,
            "method": self.provenance.get("method", ""),
            "description": self.description,
            "path": str(self.path) if self.path else None,
        }
        if self.space == "ganspace":
            out["mode"] = self.params.get("mode", "set")
        return out

    def details(self) -> dict[str, Any]:
        """The config plus ``path`` and per tensor its shape and norm (the classifier as a parameter count), as
        ``gie directions show`` prints it."""
        out: dict[str, Any] = {**self.config(), "path": str(self.path)}
        out["tensors"] = {
            k: {"shape": list(v.shape), "norm": round(float(v.float().norm()), 6)}
            for k, v in self.tensors.items()
            if not k.startswith("classifier.")
        }
        n_clf = sum(v.numel() for k, v in self.tensors.items() if k.startswith("classifier."))
        if n_clf:
            out["tensors"]["classifier.*"] = {"parameters": n_clf}
        return out

    # ------------------------------------------------------------------------------------------- application
    def classifier(self, device: torch.device | str = "cpu") -> LatentClassifier:
        """The stored latent classifier (label directions), built once and moved to ``device``."""
        if self._classifier is None:
            clf = LatentClassifier(**dict(self.params["classifier"]))
            sd = {k[len("classifier.") :]: v for k, v in self.tensors.items() if k.startswith("classifier.")}
            load_state_dict_strict(clf, sd, f"direction {self.name} [classifier.*]")
            self._classifier = clf.eval().requires_grad_(False)
        return self._classifier.to(device)

    def apply(self, power: float, wplus: Tensor) -> Edit:
        """See :func:`gie_cli.editing.spaces.apply`."""
        return apply(self, power, wplus)

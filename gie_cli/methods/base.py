"""The inversion-method interface every method (e4e, pSp, optim, HFGI, GradStyle, ...) implements."""

from __future__ import annotations

import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gie_cli.device import autocast
from gie_cli.errors import CheckpointError, GieError
from gie_cli.models.stylegan2 import Generator

log = logging.getLogger(__name__)

#: An :attr:`Inversion.extras` entry set at edit time (never saved): ``[B|1, 1, H, W]`` in [0, 1], 1 where an edit may
#: change the image (the face). Only methods with ``accepts_edit_mask`` (SFE's masked editing) read it.
EDIT_MASK_KEY = "edit_mask"


@dataclass
class Inversion:
    """Result of inverting a batch.

    Attributes:
        wplus: ``[B, n_latent, style_dim]`` codes (``latent_avg`` already added).
        extras: per-item tensors (first dim ``B``) the method's rendering/editing path needs later
            (e.g. optimized noise maps ``noise_3``), saved in the latent file under ``extra.<name>``.
    """

    wplus: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.wplus.shape[0]

    def item(self, i: int) -> Inversion:
        """The ``i``-th item as a batch of one."""
        return Inversion(self.wplus[i : i + 1], {k: v[i : i + 1] for k, v in self.extras.items()})

    @staticmethod
    def stack(items: list[Inversion]) -> Inversion:
        """Concatenate batches (all must carry the same extras)."""
        keys = set(items[0].extras)
        if any(set(it.extras) != keys for it in items):
            raise ValueError("cannot stack inversions with different extras")
        return Inversion(
            torch.cat([it.wplus for it in items]), {k: torch.cat([it.extras[k] for it in items]) for k in keys}
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Inversion:
        """This inversion on ``device`` (floating tensors in ``dtype``); to CUDA through pinned memory without
        blocking the host (:func:`~gie_cli.device.to_device`)."""
        from gie_cli.device import to_device

        dev = torch.device(device)
        return Inversion(
            to_device(self.wplus, dev, dtype),
            {k: to_device(v, dev, dtype if v.is_floating_point() else None) for k, v in self.extras.items()},
        )


@dataclass
class AlignmentProbe:
    """What a feature-level method's alignment does with warped copies of its own features (``gie benchmark``).

    Attributes:
        stages: stage name (e.g. ``"layer 6 (32 px)"``) -> ``{"aligned": [B], "unaligned": [B]}``: per item the
            relative L1 error ``|X - F|_1 / |F|_1`` against the method's feature ``F`` of what the method injects for
            the warped feature (``aligned``) and of the warped feature itself (``unaligned``); 1 = no better than
            injecting nothing.
        zero_edit: ``[B, 3, S, S]`` the editing path's render of a zero edit (no warp), or None where the method
            has no separate editing path.
    """

    stages: dict[str, dict[str, Tensor]]
    zero_edit: Tensor | None = None


class InversionMethod(nn.Module, ABC):
    """A GAN-inversion method: aligned images in, W+ (+ extras) out; renders reconstructions and edits.

    Subclasses set ``name`` and implement :meth:`invert`; the default :meth:`render` draws ``wplus + delta`` with the
    shared generator using stored noise. Feature-level methods (HFGI, SFE, GradStyle, OOD) override :meth:`render`
    and hook into the generator.

    Args:
        generator: the shared StyleGAN2 generator.
        weights_id: a short id of the weights used (registry name or file name + hash prefix), recorded in outputs.
    """

    name: ClassVar[str] = ""
    #: whether :meth:`invert` needs gradients (optimization methods) or runs under ``torch.no_grad``.
    needs_grad: ClassVar[bool] = False
    #: whether :meth:`render` honours an ``edit_mask`` extra (:data:`EDIT_MASK_KEY`).
    accepts_edit_mask: ClassVar[bool] = False

    def __init__(self, generator: Generator, weights_id: str = "") -> None:
        super().__init__()
        self.generator = generator
        self.weights_id = weights_id
        self.weights_path = ""  # set by create_method; recorded so `gie edit` can rebuild the method
        self.options: dict[str, str] = {}

    @property
    def input_size(self) -> int:
        """Resolution of the aligned images :meth:`invert` expects (256 for the official encoders)."""
        return min(256, self.generator.size)

    @property
    def output_size(self) -> int:
        return self.generator.size

    @property
    def device(self) -> torch.device:
        return self.generator.device

    def prepare(self, images: Tensor) -> Tensor:
        """Resize ``images [B,3,H,W]`` in [-1,1] to ``[B,3,input_size,input_size]`` (bilinear, antialiased)."""
        assert images.ndim == 4 and images.shape[1] == 3, f"images must be [B,3,H,W], got {tuple(images.shape)}"
        s = self.input_size
        if images.shape[-2:] != (s, s):
            images = F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return images

    @abstractmethod
    def invert(self, images: Tensor) -> Inversion:
        """Invert aligned ``images [B,3,H,W]`` in [-1,1]."""

    def render(
        self, inv: Inversion, delta: Tensor | None = None, style_offsets: Mapping[int, Tensor] | None = None
    ) -> Tensor:
        """Render ``inv`` to ``[B,3,S,S]``, optionally edited.

        Args:
            inv: The inversion (``B`` items).
            delta: W+ offset ``[B|1, n_latent, D]``.
            style_offsets: StyleSpace offsets, conv layer -> ``[B|1, C_l]`` added to that layer's style vector.
        """
        wplus = inv.wplus if delta is None else inv.wplus + delta.to(inv.wplus)
        noise = [inv.extras.get(f"noise_{i}") for i in range(self.generator.num_layers)]
        return self.generator(wplus, noise_mode="const", noise=noise, style_offsets=style_offsets)

    def probe_alignment(self, images: Tensor, src: Tensor, dst: Tensor) -> AlignmentProbe | None:
        """Methods that align features to an edit (GradStyle's GAM, HFGI's ADA, ...): invert ``images [B,3,H,W]``,
        warp each stage's feature by the perspective transforms ``src -> dst`` (``[B, 4, 2]`` unit corners, see
        :func:`gie_cli.ops.warp.random_perspective`) and align the warped copies back; None for other methods."""
        return None

    def nonfinite_cause(self) -> str:
        """Why this method's results are NaN/Inf when its weights and inputs are finite (e.g. an optimiser setting);
        "" when the method knows no such cause. Named in the reasons of :class:`NonFiniteError`."""
        return ""

    def nonfinite_weights(self) -> list[str]:
        """Names of the parameters and buffers holding NaN or Inf (checked once, then remembered)."""
        cached = getattr(self, "_nonfinite_weights", None)
        if cached is None:
            cached = [
                name
                for name, t in (*self.named_parameters(), *self.named_buffers())
                if t.is_floating_point() and not bool(torch.isfinite(t).all())
            ]
            self._nonfinite_weights = cached
        return cached

    def describe(self) -> dict:
        """Facts recorded in manifests and latent files."""
        return {
            "method": self.name,
            "weights": self.weights_id,
            "weights_path": self.weights_path,
            "method_options": self.options,
            "image_size": self.output_size,
        }


class NonFiniteError(GieError):
    """A latent, an inversion or a rendered image holds NaN or Inf: the item fails (never ``ok``) with the cause."""


def nonfinite(t: Tensor) -> bool:
    """Whether ``t`` (any shape) holds a NaN or an Inf."""
    return t.is_floating_point() and not bool(torch.isfinite(t).all())


def nonfinite_parts(inv: Inversion) -> list[str]:
    """The parts of ``inv`` holding NaN/Inf: ``"W+"`` and/or ``"extra.<name>"``."""
    bad = ["W+"] if nonfinite(inv.wplus) else []
    return bad + [f"extra.{k}" for k, v in inv.extras.items() if nonfinite(v)]


def nonfinite_reason(method: InversionMethod, what: str) -> str:
    """The reason of a non-finite ``what`` (e.g. "the reconstruction") made by ``method``: its weights when they hold
    NaN/Inf, else the method's own cause (:meth:`InversionMethod.nonfinite_cause`), else a generic one."""
    bad = method.nonfinite_weights()
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        return (
            f"{what} is not finite (NaN/Inf): the weights {method.weights_id or method.weights_path} hold NaN/Inf "
            f"values ({bad[0]}{more}); use an intact checkpoint"
        )
    cause = method.nonfinite_cause()
    return f"{what} is not finite (NaN/Inf)" + (f": {cause}" if cause else f" ({method.name} produced it)")


def check_inversion(method: InversionMethod, inv: Inversion, image: Tensor) -> None:
    """Check one inverted item: its codes (``inv``, one item) and its reconstruction ``image [3|B, ...]``.

    Raises:
        NonFiniteError: any of them holds NaN/Inf; the reason names the cause (weights, optimiser setting).
    """
    bad = nonfinite_parts(inv)
    if bad:
        raise NonFiniteError(nonfinite_reason(method, f"the inversion ({', '.join(bad)})"))
    if nonfinite(image):
        raise NonFiniteError(nonfinite_reason(method, "the reconstruction"))


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work on ``device`` (no-op elsewhere), so wall-clock timings cover the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def invert_and_render(
    method: InversionMethod, images: Tensor, precision: str | None = None
) -> tuple[Inversion, Tensor, float, float]:
    """Invert ``images [B,3,H,W]`` (with gradients only for methods that need them) and render the result (under
    ``torch.inference_mode``).

    Args:
        method: The method.
        images: Aligned images in [-1, 1].
        precision: ``fp32``, or ``bf16`` / ``fp16`` to run the encoder and the render under ``torch.autocast``
            (the generator keeps its fp32 statistics, see :class:`~gie_cli.models.stylegan2.FastPath`); None: the
            precision of the method's generator (its :meth:`~gie_cli.models.Generator.set_fast_path`, else the
            process default).

    Returns:
        ``(inversion, rendered [B,3,S,S], encode seconds, render seconds)``, timed with CUDA synchronisation; the
        codes, extras and render in ``images``'s dtype whatever the precision.
    """
    prec = precision or method.generator.precision
    dev = images.device
    synchronize(dev)
    t0 = time.perf_counter()
    # codes stay normal tensors (callers edit them with autograd, e.g. label edits); the render is output only
    with contextlib.nullcontext() if method.needs_grad else torch.no_grad(), autocast(dev, prec):
        inv = method.invert(images)
    if prec != "fp32":
        inv = inv.to(dev, images.dtype)
    synchronize(dev)
    t1 = time.perf_counter()
    with torch.inference_mode(), autocast(dev, prec):
        rendered = method.render(inv)
    if prec != "fp32" and rendered.dtype != images.dtype:
        rendered = rendered.to(images.dtype)
    synchronize(dev)
    return inv, rendered, t1 - t0, time.perf_counter() - t1


M = TypeVar("M", bound=InversionMethod)


def built_from(path: str | Path, build: Callable[[], M]) -> M:
    """``build()`` a method from the parts of the file ``path``, which it then records as ``weights_path``.

    Raises:
        CheckpointError: parts that do not fit each other (the constructor's ``ValueError``), naming the file.
    """
    try:
        method = build()
    except ValueError as e:
        raise CheckpointError(path, str(e)) from None
    method.weights_path = str(Path(path).resolve())
    return method

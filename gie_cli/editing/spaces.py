"""Edit spaces: what a direction's ``power`` does in W, W+, GANSpace, StyleSpace and label-based paths."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from gie_cli.editing.edit import Edit
from gie_cli.editing.errors import DirectionError
from gie_cli.models.stylegan2 import Generator

GANSPACE_MODES = ("set", "add")


class DirectionLike(Protocol):
    """What an edit space reads of a direction (:class:`gie_cli.editing.direction.Direction` provides it)."""

    name: str
    space: str
    tensors: dict[str, Tensor]
    layers: list[int]
    scale: float
    params: dict[str, Any]

    def classifier(self, device: torch.device | str = "cpu") -> nn.Module:
        """The stored latent classifier (label directions)."""
        ...


def _float_tensors(direction: DirectionLike, device: torch.device) -> dict[str, Tensor]:
    """The direction's tensors (classifier weights left out) in float32 on ``device``."""
    return {k: v.to(device, torch.float32) for k, v in direction.tensors.items() if not k.startswith("classifier.")}


class EditSpace:
    """One edit space. ``s = scale * power`` is the scaled power every space applies.

    Subclasses set :attr:`name` and implement :meth:`check_fields` and :meth:`offsets`; the ones that need it also
    :meth:`style_dim`, :meth:`extra_mismatch` and :meth:`depends_on_latent`.
    """

    name: ClassVar[str]
    #: whether the direction's ``layers`` are W+ layers (False: conv layers, StyleSpace).
    wplus_layers: ClassVar[bool] = True

    def check_fields(self, direction: DirectionLike) -> str | None:
        """What is wrong with the direction's tensors/params for this space, or None."""
        raise NotImplementedError

    def style_dim(self, direction: DirectionLike) -> int | None:
        """Latent width of the direction's vectors (None when it has none)."""
        return None

    def depends_on_latent(self, direction: DirectionLike) -> bool:
        """True when the offset depends on the code being edited."""
        return False

    def offsets(self, direction: DirectionLike, s: float, w: Tensor) -> Edit:
        """The edit at scaled power ``s`` of float32 codes ``w [B, n_latent, D]`` (float32, on ``w``'s device)."""
        raise NotImplementedError

    def extra_mismatch(self, direction: DirectionLike, generator: Generator) -> str | None:
        """A space-specific shape mismatch with ``generator`` (beyond width and W+ layers), or None."""
        return None

    def shape_mismatch(self, direction: DirectionLike, generator: Generator) -> str | None:
        """Why the direction's shapes do not fit ``generator``, or None."""
        sd = self.style_dim(direction)
        if sd is not None and sd != generator.style_dim:
            return f"its vectors have width {sd}, the generator's W has {generator.style_dim}"
        if self.wplus_layers and max(direction.layers) >= generator.n_latent:
            return f"it changes W+ layers {direction.layers}, the generator has {generator.n_latent}"
        return self.extra_mismatch(direction, generator)

    def apply(self, direction: DirectionLike, power: float, wplus: Tensor) -> Edit:
        """Turn ``(direction, power, W+ codes [B, n_latent, D])`` into an :class:`Edit` in ``wplus``'s dtype.

        Raises:
            DirectionError: the direction does not fit the codes' shape.
        """
        assert wplus.ndim == 3, f"W+ codes must be [B, n_latent, D], got {tuple(wplus.shape)}"
        _, n_latent, dim = wplus.shape
        if self.wplus_layers and max(direction.layers) >= n_latent:
            raise DirectionError(f"direction {direction.name}: layers {direction.layers} exceed the codes' {n_latent}")
        sd = self.style_dim(direction)
        if sd is not None and sd != dim:
            raise DirectionError(f"direction {direction.name} has width {sd}, the codes have {dim}")
        edit = self.offsets(direction, direction.scale * float(power), wplus.detach().float())
        return Edit(edit.delta.to(wplus.dtype), {k: v.to(wplus.dtype) for k, v in edit.style_offsets.items()})


class WSpace(EditSpace):
    """``w``: one vector ``d [D]`` added to the listed W+ layers, ``w_l + s * d`` (InterFaceGAN, Shen et al. 2020;
    the official ``[1, 512]`` files, broadcast to every layer). SFE applies these files as ``w + (factor / 2) * d``:
    imported with ``--convention sfe`` that is ``scale = 0.5``, so the same power means the same edit as in SFE."""

    name = "w"
    ndim: ClassVar[int] = 1

    def check_fields(self, direction: DirectionLike) -> str | None:
        v = direction.tensors.get("vector")
        if v is None:
            return "has no 'vector' tensor"
        if v.ndim != self.ndim:
            return f"space {self.name} needs a {self.ndim}-D vector, got {tuple(v.shape)}"
        return None

    def style_dim(self, direction: DirectionLike) -> int | None:
        return int(direction.tensors["vector"].shape[-1])

    def offsets(self, direction: DirectionLike, s: float, w: Tensor) -> Edit:
        delta = torch.zeros_like(w)
        delta[:, direction.layers] = s * _float_tensors(direction, w.device)["vector"]
        return Edit(delta)


class WPlusSpace(WSpace):
    """``wplus``: one vector per W+ layer ``d [L, D]``, ``w_l + s * d_l`` (e4e/HFGI ``pose.pt [1, 18, 512]``, SFE's
    ``[1, 9216]`` boundaries which SFE applies with the full factor, so ``scale = 1``)."""

    name = "wplus"
    ndim = 2

    def check_fields(self, direction: DirectionLike) -> str | None:
        bad = super().check_fields(direction)
        rows = direction.tensors["vector"].shape[0] if bad is None else 0
        if bad is None and max(direction.layers) >= rows:
            return f"layers {direction.layers} exceed the vector's {rows} rows"
        return bad

    def extra_mismatch(self, direction: DirectionLike, generator: Generator) -> str | None:
        rows = direction.tensors["vector"].shape[0]
        return f"it has {rows} W+ rows, the generator {generator.n_latent}" if rows != generator.n_latent else None

    def offsets(self, direction: DirectionLike, s: float, w: Tensor) -> Edit:
        vector = _float_tensors(direction, w.device)["vector"]
        if vector.shape[0] != w.shape[1]:
            rows, n_latent = vector.shape[0], w.shape[1]
            raise DirectionError(f"direction {direction.name} has {rows} W+ rows, the codes have {n_latent}")
        delta = torch.zeros_like(w)
        delta[:, direction.layers] = s * vector[direction.layers]
        return Edit(delta)


class GanSpace(EditSpace):
    """``ganspace``: a PCA component ``c [D]`` of W with the PCA ``mean [D]`` and the component's ``std`` (GANSpace,
    Härkönen et al. 2020).

    Mode ``set`` is the official e4e/HFGI/SFE formula: with ``x = ((w_0 - mean) . c) / std`` the coordinate of W+
    layer 0, layers ``start:end`` get ``(s - x) * c * std``, i.e. the power is the *target coordinate* in units of
    std (the official tuples' ``strength``; power 0 moves the coordinate to the mean, it is not the identity). Mode
    ``add`` moves by ``s * std * c`` (power 0 = identity).
    """

    name = "ganspace"

    def check_fields(self, direction: DirectionLike) -> str | None:
        t = direction.tensors
        if "component" not in t or "mean" not in t or t["component"].shape != t["mean"].shape:
            return "needs 'component' and 'mean' tensors of the same shape [D]"
        if direction.params.get("mode", "set") not in GANSPACE_MODES:
            return f"ganspace mode must be one of {GANSPACE_MODES}"
        if not float(direction.params.get("std", 0)) > 0:
            return "ganspace 'std' must be > 0"
        return None

    def style_dim(self, direction: DirectionLike) -> int | None:
        return int(direction.tensors["component"].shape[-1])

    def depends_on_latent(self, direction: DirectionLike) -> bool:
        return direction.params.get("mode", "set") == "set"

    def offsets(self, direction: DirectionLike, s: float, w: Tensor) -> Edit:
        t = _float_tensors(direction, w.device)
        comp, mean, std = t["component"], t["mean"], float(direction.params["std"])
        if self.depends_on_latent(direction):
            coord = ((w[:, 0] - mean) @ comp) / std  # [B], from W+ layer 0 as the official code
            amount = (s - coord) * std
        else:
            amount = torch.full((w.shape[0],), s * std, device=w.device)
        delta = torch.zeros_like(w)
        delta[:, direction.layers] = amount[:, None, None] * comp
        return Edit(delta)


class StyleSpace(EditSpace):
    """``stylespace``: offsets of single style channels ``style.<l> [C_l]`` of conv layers (StyleSpace, Wu et al.
    2021), ``s_l + s * v_l``; the scale of a fitted channel is its std over sampled styles (power in std units); SFE's
    channel tables use ``scale = 3``. The W+ offset is zero; the style offsets go to the renderer explicitly."""

    name = "stylespace"
    wplus_layers = False

    def check_fields(self, direction: DirectionLike) -> str | None:
        missing = [layer for layer in direction.layers if f"style.{layer}" not in direction.tensors]
        return f"has no style offsets for layers {missing}" if missing else None

    def extra_mismatch(self, direction: DirectionLike, generator: Generator) -> str | None:
        from gie_cli.editing.stylespace import style_channels

        for layer in direction.layers:
            if layer >= generator.num_layers:
                return f"it changes conv layer {layer}, the generator has {generator.num_layers}"
            width = direction.tensors[f"style.{layer}"].shape[-1]
            if width != style_channels(generator, layer):
                return f"layer {layer} has {style_channels(generator, layer)} style channels, not {width}"
        return None

    def offsets(self, direction: DirectionLike, s: float, w: Tensor) -> Edit:
        t = _float_tensors(direction, w.device)
        b = w.shape[0]
        styles = {layer: (s * t[f"style.{layer}"])[None].expand(b, -1).clone() for layer in direction.layers}
        return Edit(torch.zeros_like(w), styles)


class LabelSpace(EditSpace):
    """``label``: an *editing path*, not a fixed vector: Style Transformer's first/second-order label-based edit (Hu
    et al. 2022) with the latent classifier stored in the file (``classifier.*``): ``w + s * d(w)`` with ``d(w)`` the
    per-latent unit-row direction of :func:`gie_cli.editing.label.label_edit_direction`."""

    name = "label"

    def check_fields(self, direction: DirectionLike) -> str | None:
        if not any(k.startswith("classifier.") for k in direction.tensors) or "classifier" not in direction.params:
            return "needs 'classifier.*' tensors and a 'classifier' config"
        if int(direction.params.get("order", 1)) not in (1, 2):
            return "label order must be 1 or 2"
        return None

    def depends_on_latent(self, direction: DirectionLike) -> bool:
        return True

    def extra_mismatch(self, direction: DirectionLike, generator: Generator) -> str | None:
        want = direction.params["classifier"]["fmaps"][0]
        if want != generator.n_latent * generator.style_dim:
            return (
                f"its classifier takes {want} inputs, the generator's W+ has {generator.n_latent}x{generator.style_dim}"
            )
        return None

    def offsets(self, direction: DirectionLike, s: float, w: Tensor) -> Edit:
        from gie_cli.editing.label import label_edit_direction

        p = direction.params
        d = label_edit_direction(
            direction.classifier(w.device),
            w,
            int(p["attribute"]),
            float(p.get("target", 1.0)),
            int(p.get("order", 1)),
            float(p.get("xi", 1e-3)),
            int(p.get("seed", 0)),
            direction.layers,
        )
        return Edit(s * d)


#: space name -> the space, in the order directions list them.
EDIT_SPACES: dict[str, EditSpace] = {
    space.name: space for space in (WSpace(), WPlusSpace(), GanSpace(), StyleSpace(), LabelSpace())
}
SPACES = tuple(EDIT_SPACES)


def edit_space(name: str) -> EditSpace:
    """The space called ``name``.

    Raises:
        DirectionError: an unknown space.
    """
    space = EDIT_SPACES.get(name)
    if space is None:
        raise DirectionError(f"unknown space {name!r} (known: {', '.join(SPACES)})")
    return space


def apply(direction: DirectionLike, power: float, wplus: Tensor) -> Edit:
    """Turn ``(direction, power, W+ codes)`` into an :class:`Edit`.

    Args:
        direction: the direction.
        power: edit strength (its meaning per space is in each space's docstring).
        wplus: codes ``[B, n_latent, D]`` being edited.

    Returns:
        ``Edit`` with ``delta [B, n_latent, D]`` and StyleSpace offsets ``{layer: [B, C_l]}`` (same device/dtype as
        ``wplus``).

    Raises:
        DirectionError: the direction does not fit the codes' shape.
    """
    return edit_space(direction.space).apply(direction, power, wplus)

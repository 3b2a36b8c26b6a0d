"""pSp ``GradualStyleEncoder`` and e4e ``Encoder4Editing`` (Richardson et al. 2021; Tov et al. 2021).

Both share one state-dict layout (the ``encoder.*`` part of ``psp_ffhq_encode.pt`` / ``e4e_ffhq_encode.pt`` / HFGI
``ckpt.pt``)::

    input_layer.*, body.*           IR-SE backbone (see ``ir_se.py``)
    styles.{0..n_styles-1}          GradualStyleBlock: ``convs`` (stride-2 3x3 convs + LeakyReLU(0.01)), ``linear``
    latlayer1                       Conv2d 1x1 (stage-3 width -> feature width), bias
    latlayer2                       Conv2d 1x1 (stage-2 width -> feature width), bias

Feature pyramid (IR-SE50, 256x256 input): ``c1`` = stage-2 output [B,128,64,64], ``c2`` = stage-3 output
[B,256,32,32], ``c3`` = stage-4 output [B,512,16,16]; ``p2 = up(c3) + latlayer1(c2)`` [B,512,32,32],
``p1 = up(p2) + latlayer2(c1)`` [B,512,64,64], ``up`` = bilinear resize with ``align_corners=True`` to the lateral
map's size (so any input divisible by 16 works).

Style rows ``i < coarse_ind`` (3) read ``c3``, ``coarse_ind <= i < middle_ind`` (7) read ``p2`` and the rest ``p1``.
The official code keeps 3 and 7 for every ``n_styles`` (e.g. 16 for cars, 14 for 256 px generators), and so do we.
Outputs are the W+ codes *before* the checkpoint's ``latent_avg`` is added.

Differences from the official classes (none of them affects the state dict or the ``num_layers=50`` numerics):
the pyramid taps are "last unit of stages 2/3/4" instead of the hard-coded unit indices 6/20/23 (identical for 50
layers, correct for 100/152 and tiny configs), and e4e's ``progressive_stage`` is a plain int instead of an enum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gie_cli.models.encoders.ir_se import IRSEBackbone
from gie_cli.models.stylegan2 import EqualLinear

__all__ = [
    "ENCODER_CONFIGS",
    "Encoder4Editing",
    "FPNStyleEncoder",
    "GradualStyleBlock",
    "GradualStyleEncoder",
    "create_encoder",
    "upsample_add",
]

PYRAMID_KEYS = ("c1", "c2", "c3", "p2", "p1")


def upsample_add(x: Tensor, y: Tensor) -> Tensor:
    """Resize ``x`` to ``y``'s spatial size (bilinear, ``align_corners=True``) and add ``y`` (official FPN step)."""
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class GradualStyleBlock(nn.Module):
    """Map a [B,in_c,S,S] feature map to one style vector [B,out_c] (official ``GradualStyleBlock``).

    ``convs`` holds ``log2(spatial)`` stride-2 3x3 convs, each followed by LeakyReLU(0.01) (parameter keys
    ``convs.{0,2,4,...}``), reducing ``spatial`` to 1; ``linear`` is an EqualLinear(out_c, out_c) with lr_mul 1.
    Inputs smaller than ``spatial`` also end at 1x1 (a stride-2 conv keeps a 1x1 map); larger ones are rejected.
    """

    def __init__(self, in_c: int, out_c: int, spatial: int) -> None:
        super().__init__()
        if spatial < 2 or spatial & (spatial - 1):
            raise ValueError(f"spatial must be a power of two >= 2, got {spatial}")
        self.in_c, self.out_c, self.spatial = in_c, out_c, spatial
        num_pools = int(math.log2(spatial))
        layers: list[nn.Module] = [nn.Conv2d(in_c, out_c, kernel_size=3, stride=2, padding=1), nn.LeakyReLU()]
        for _ in range(num_pools - 1):
            layers += [nn.Conv2d(out_c, out_c, kernel_size=3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_c:
            raise ValueError(f"GradualStyleBlock expects [B,{self.in_c},H,W], got {list(x.shape)}")
        x = self.convs(x)
        if x.shape[-2:] != (1, 1):
            raise ValueError(
                f"GradualStyleBlock(spatial={self.spatial}) got a larger map than it was built for "
                f"(left {tuple(x.shape[-2:])} after the convs); build the encoder with a larger input_size"
            )
        return self.linear(x.flatten(1))


class FPNStyleEncoder(IRSEBackbone):
    """Shared body of pSp and e4e: IR-SE backbone + feature pyramid + one GradualStyleBlock per W+ row.

    Args:
        num_layers: backbone depth (50, 100, 152); ignored when ``unit_counts`` is given.
        mode: ``"ir_se"`` (official) or ``"ir"``.
        n_styles: number of W+ rows (18 for a 1024 px generator; ``2*log2(size) - 2`` in general).
        style_dim: W dimension (512).
        input_nc: input channels (3).
        unit_counts, widths, width_mult: tiny-model options, see ``IRSEBackbone``. The pyramid and the style
            blocks use ``widths[-1]`` channels (512 officially).
        input_size: the input resolution the style blocks are sized for (256 officially: 16/32/64 maps, 4/5/6 convs).
            Smaller inputs (divisible by 16) also work; larger ones raise.
        coarse_ind, middle_ind: first row read from ``p2`` resp. ``p1`` (official constants 3 and 7).
    """

    def __init__(
        self,
        num_layers: int = 50,
        mode: str = "ir_se",
        n_styles: int = 18,
        style_dim: int = 512,
        input_nc: int = 3,
        unit_counts: Sequence[int] | None = None,
        widths: Sequence[int] | None = None,
        width_mult: float = 1.0,
        input_size: int = 256,
        coarse_ind: int = 3,
        middle_ind: int = 7,
    ) -> None:
        super().__init__(num_layers, mode, input_nc, unit_counts, widths, width_mult)
        if len(self.widths) != 4:
            raise ValueError(f"the pSp/e4e pyramid needs exactly 4 stages, got widths {self.widths}")
        if input_size % 16:
            raise ValueError(f"input_size must be divisible by 16, got {input_size}")
        if not 0 < coarse_ind <= middle_ind:
            raise ValueError(f"need 0 < coarse_ind <= middle_ind, got {coarse_ind}, {middle_ind}")
        if n_styles < 1:
            raise ValueError(f"n_styles must be >= 1, got {n_styles}")
        self.n_styles = self.style_count = n_styles
        self.style_dim = style_dim
        self.input_size = input_size
        self.coarse_ind, self.middle_ind = coarse_ind, middle_ind
        feat_c = self.widths[3]
        self.feature_dim = feat_c

        blocks = []
        for i in range(n_styles):
            if i < coarse_ind:
                spatial = input_size // 16
            elif i < middle_ind:
                spatial = input_size // 8
            else:
                spatial = input_size // 4
            blocks.append(GradualStyleBlock(feat_c, style_dim, spatial))
        self.styles = nn.ModuleList(blocks)
        self.latlayer1 = nn.Conv2d(self.widths[2], feat_c, kernel_size=1, stride=1, padding=0)
        self.latlayer2 = nn.Conv2d(self.widths[1], feat_c, kernel_size=1, stride=1, padding=0)

    def level_of(self, i: int) -> str:
        """Pyramid level (``"c3"``, ``"p2"`` or ``"p1"``) that W+ row ``i`` is predicted from."""
        return "c3" if i < self.coarse_ind else "p2" if i < self.middle_ind else "p1"

    def backbone_features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(c1, c2, c3)``: outputs of backbone stages 2, 3 and 4."""
        _, c1, c2, c3 = self.forward_stages(x)
        return c1, c2, c3

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """The feature pyramid ``{"c1", "c2", "c3", "p2", "p1"}`` (see module docstring for shapes)."""
        c1, c2, c3 = self.backbone_features(x)
        p2 = upsample_add(c3, self.latlayer1(c2))
        p1 = upsample_add(p2, self.latlayer2(c1))
        return {"c1": c1, "c2": c2, "c3": c3, "p2": p2, "p1": p1}

    def _codes_from_features(self, feats: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def forward_with_stages(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(codes [B, n_styles, style_dim], [stem, stage 1, stage 2, stage 3, stage 4])``: the codes of
        :meth:`forward` and the backbone's maps from one pass (the ``return_feats`` of OOD-GAN-inversion's e4e)."""
        stages = self.forward_stages(x, with_stem=True)
        _, _, c1, c2, c3 = stages
        p2 = upsample_add(c3, self.latlayer1(c2))
        feats = {"c1": c1, "c2": c2, "c3": c3, "p2": p2, "p1": upsample_add(p2, self.latlayer2(c1))}
        return self._codes_from_features(feats), stages

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """``x`` [B,input_nc,H,W] -> codes [B,n_styles,style_dim] (before ``latent_avg``).

        With ``return_features=True`` returns ``(codes, pyramid)``; the pyramid dict is that of ``forward_features``.
        """
        feats = self.forward_features(x)
        codes = self._codes_from_features(feats)
        expected = (x.shape[0], self.n_styles, self.style_dim)
        if tuple(codes.shape) != expected:  # pragma: no cover - internal consistency
            raise RuntimeError(f"{type(self).__name__} produced {tuple(codes.shape)}, expected {expected}")
        return (codes, feats) if return_features else codes


class GradualStyleEncoder(FPNStyleEncoder):
    """pSp encoder: row ``i`` = ``styles[i]`` applied to its pyramid level, every row independent."""

    def _codes_from_features(self, feats: dict[str, Tensor]) -> Tensor:
        return torch.stack([self.styles[i](feats[self.level_of(i)]) for i in range(self.n_styles)], dim=1)


class Encoder4Editing(FPNStyleEncoder):
    """e4e encoder: one base code ``styles[0](c3)`` copied to every row plus per-row offsets.

    Row ``i`` (``1 <= i <= progressive_stage``) gets ``styles[i](level)`` added; rows ``> progressive_stage`` stay
    equal to the base code. ``progressive_stage`` is the official ``ProgressiveStage`` value as an int: 0 = W only
    ("WTraining"), k = offsets for rows 1..k ("Delta{k}Training"), ``n_styles`` = all rows ("Inference", default).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progressive_stage: int = self.n_styles

    def set_progressive_stage(self, stage: int) -> None:
        stage = int(getattr(stage, "value", stage))  # also accepts an enum with .value, like the official one
        if not 0 <= stage <= self.n_styles:
            raise ValueError(f"progressive_stage must be in [0, {self.n_styles}], got {stage}")
        self.progressive_stage = stage

    def _last_delta_row(self) -> int:
        stage = int(getattr(self.progressive_stage, "value", self.progressive_stage))
        return min(stage, self.n_styles - 1)

    def _codes_from_features(self, feats: dict[str, Tensor]) -> Tensor:
        base = self.styles[0](feats["c3"])
        rows = [base]
        last = self._last_delta_row()
        for i in range(1, self.n_styles):
            rows.append(base + self.styles[i](feats[self.level_of(i)]) if i <= last else base)
        return torch.stack(rows, dim=1)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        if return_features:
            return super().forward(x, return_features=True)
        # lazy pyramid (like the official code): skip latlayers that the current progressive stage does not need
        c1, c2, c3 = self.backbone_features(x)
        last = self._last_delta_row()
        feats: dict[str, Tensor] = {"c3": c3}
        if last >= self.coarse_ind:
            feats["p2"] = upsample_add(c3, self.latlayer1(c2))
        if last >= self.middle_ind:
            feats["p1"] = upsample_add(feats["p2"], self.latlayer2(c1))
        return self._codes_from_features(feats)


ENCODER_CONFIGS: dict[str, dict[str, Any]] = {
    # official pSp / e4e FFHQ encoders (keys of psp_ffhq_encode.pt / e4e_ffhq_encode.pt under "encoder.")
    "ir_se50": {"num_layers": 50, "mode": "ir_se", "n_styles": 18, "style_dim": 512, "input_nc": 3, "input_size": 256},
    # same key names, tiny shapes: for tests and smoke runs on CPU (n_styles 10 = a 64 px generator)
    "tiny": {
        "mode": "ir_se",
        "unit_counts": (1, 1, 1, 1),
        "widths": (16, 32, 48, 64),
        "n_styles": 10,
        "style_dim": 64,
        "input_nc": 3,
        "input_size": 128,
    },
    # the embedded demo e4e (world.e4e): a small IR-SE for the 64 px synthetic-world generator, read at 64 px
    # (pyramid 16/8/4 px, the generator's 16/8/4 px blocks)
    "world": {
        "mode": "ir_se",
        "unit_counts": (2, 2, 2, 2),
        "widths": (32, 64, 96, 128),
        "n_styles": 10,
        "style_dim": 128,
        "input_nc": 3,
        "input_size": 64,
    },
}

_ENCODER_CLASSES: dict[str, type[FPNStyleEncoder]] = {
    "psp": GradualStyleEncoder,
    "gradual_style_encoder": GradualStyleEncoder,
    "e4e": Encoder4Editing,
    "encoder4editing": Encoder4Editing,
}


def create_encoder(name: str, preset: str | None = None, **cfg: Any) -> FPNStyleEncoder:
    """Build ``"psp"`` or ``"e4e"`` from keyword config (e.g. a JSON object).

    ``preset`` names an ``ENCODER_CONFIGS`` entry whose values ``cfg`` overrides; lists are accepted where tuples are
    expected. Unknown keys raise ``TypeError``.
    """
    key = name.lower()
    if key not in _ENCODER_CLASSES:
        raise ValueError(f"unknown encoder {name!r}; choose from {sorted(_ENCODER_CLASSES)}")
    if preset is not None:
        if preset not in ENCODER_CONFIGS:
            raise ValueError(f"unknown encoder preset {preset!r}; choose from {sorted(ENCODER_CONFIGS)}")
        cfg = {**ENCODER_CONFIGS[preset], **cfg}
    return _ENCODER_CLASSES[key](**cfg)

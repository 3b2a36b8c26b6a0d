"""IR / IR-SE residual backbone (ArcFace-style "improved residual" units, Deng et al. 2019).

This is the backbone of the pSp, e4e, HFGI, Style Transformer, ReStyle and OOD encoders. Module and parameter names
follow the official layout so the ``encoder.*`` part of their checkpoints loads with ``strict=True``::

    input_layer.{0: Conv2d 3x3 no bias, 1: BatchNorm2d, 2: PReLU}
    body.N.shortcut_layer.{0: Conv2d 1x1 no bias, 1: BatchNorm2d}   (only when in_channels != depth)
    body.N.res_layer.{0: BN(in), 1: Conv3x3(in->depth), 2: PReLU(depth), 3: Conv3x3(depth->depth, stride), 4: BN(depth),
                      5: SEModule (IR-SE only) with fc1/fc2 1x1 convs without bias}

When ``in_channels == depth`` the shortcut is ``MaxPool2d(1, stride)`` (a parameter-free subsampling).

Unit counts per stage: 50 -> (3, 4, 14, 3), 100 -> (3, 13, 30, 3), 152 -> (3, 8, 36, 3); stage widths 64/128/256/512;
the first unit of every stage (including the very first one) has stride 2, so a 256x256 input gives stage outputs
at 128, 64, 32 and 16 pixels. Tiny test models pass explicit ``unit_counts`` / ``widths``: same key names, smaller
shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

__all__ = [
    "DEFAULT_WIDTHS",
    "UNIT_COUNTS",
    "BottleneckIR",
    "BottleneckIRSE",
    "IRSEBackbone",
    "SEModule",
    "unit_specs",
]

UNIT_COUNTS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    152: (3, 8, 36, 3),
}
DEFAULT_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)
MODES = ("ir", "ir_se")

NormFactory = Callable[[int], nn.Module]


class SEModule(nn.Module):
    """Squeeze-and-excitation: ``x * sigmoid(fc2(relu(fc1(mean_hw(x)))))`` with bias-free 1x1 convs."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * gate


class BottleneckIR(nn.Module):
    """Plain IR unit (official ``bottleneck_IR``): ``res_layer(x) + shortcut_layer(x)``.

    Args:
        in_channel: input channels.
        depth: output channels.
        stride: spatial stride, applied in the *second* 3x3 conv and in the shortcut.
        norm_layer: normalisation factory (default ``nn.BatchNorm2d``); OOD-GAN-inversion uses affine InstanceNorm.
    """

    def __init__(self, in_channel: int, depth: int, stride: int, norm_layer: NormFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        self.in_channel, self.depth, self.stride = in_channel, depth, stride
        if in_channel == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False),
                norm_layer(depth),
            )
        self.res_layer = nn.Sequential(*self._residual(in_channel, depth, stride, norm_layer))

    @staticmethod
    def _residual(in_channel: int, depth: int, stride: int, norm_layer: NormFactory) -> list[nn.Module]:
        return [
            norm_layer(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            norm_layer(depth),
        ]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channel:
            raise ValueError(f"{type(self).__name__} expects [B,{self.in_channel},H,W], got {list(x.shape)}")
        return self.res_layer(x) + self.shortcut_layer(x)


class BottleneckIRSE(BottleneckIR):
    """IR unit with squeeze-excitation at ``res_layer.5`` (official ``bottleneck_IR_SE``)."""

    def __init__(
        self,
        in_channel: int,
        depth: int,
        stride: int,
        norm_layer: NormFactory = nn.BatchNorm2d,
        se_reduction: int = 16,
    ) -> None:
        super().__init__(in_channel, depth, stride, norm_layer)
        self.res_layer.append(SEModule(depth, se_reduction))


def unit_specs(unit_counts: Sequence[int], widths: Sequence[int], in_width: int) -> list[tuple[int, int, int]]:
    """``(in_channel, depth, stride)`` of every body unit: each stage starts with a stride-2 unit."""
    if len(unit_counts) != len(widths):
        raise ValueError(f"unit_counts {tuple(unit_counts)} and widths {tuple(widths)} differ in length")
    specs: list[tuple[int, int, int]] = []
    prev = in_width
    for count, width in zip(unit_counts, widths, strict=True):
        if count < 1:
            raise ValueError(f"every stage needs at least one unit, got {tuple(unit_counts)}")
        specs.append((prev, width, 2))
        specs.extend((width, width, 1) for _ in range(count - 1))
        prev = width
    return specs


def _resolve_widths(widths: Sequence[int] | None, width_mult: float) -> tuple[int, ...]:
    if widths is not None:
        if width_mult != 1.0:
            raise ValueError("pass either explicit widths or width_mult, not both")
        return tuple(int(w) for w in widths)
    return tuple(max(int(round(w * width_mult)), 1) for w in DEFAULT_WIDTHS)


class IRSEBackbone(nn.Module):
    """``input_layer`` + ``body`` of the official IR / IR-SE encoders.

    Args:
        num_layers: 50, 100 or 152 (standard unit counts); ignored when ``unit_counts`` is given.
        mode: ``"ir"`` (plain units) or ``"ir_se"`` (squeeze-excitation units, the pSp/e4e default).
        input_nc: input image channels (3 for RGB; ReStyle uses 6).
        unit_counts: explicit units per stage, e.g. ``(1, 1, 1, 1)`` for tiny test models.
        widths: explicit stage widths (default 64/128/256/512); the stem has ``widths[0]`` channels.
        width_mult: alternative to ``widths``: scales the default widths.

    ``forward(x)`` returns the last stage output; ``forward_stages(x)`` returns every stage output
    (for IR-SE50 at 256 px: [B,64,128,128], [B,128,64,64], [B,256,32,32], [B,512,16,16]).
    """

    def __init__(
        self,
        num_layers: int = 50,
        mode: str = "ir_se",
        input_nc: int = 3,
        unit_counts: Sequence[int] | None = None,
        widths: Sequence[int] | None = None,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if unit_counts is None:
            if num_layers not in UNIT_COUNTS:
                raise ValueError(f"num_layers must be one of {sorted(UNIT_COUNTS)}, got {num_layers}")
            unit_counts = UNIT_COUNTS[num_layers]
        self.num_layers = num_layers
        self.mode = mode
        self.input_nc = input_nc
        self.unit_counts = tuple(int(c) for c in unit_counts)
        self.widths = _resolve_widths(widths, width_mult)

        unit_cls = BottleneckIRSE if mode == "ir_se" else BottleneckIR
        self.input_layer = nn.Sequential(
            nn.Conv2d(input_nc, self.widths[0], (3, 3), 1, 1, bias=False),
            nn.BatchNorm2d(self.widths[0]),
            nn.PReLU(self.widths[0]),
        )
        self.body = nn.Sequential(
            *[unit_cls(i, d, s) for i, d, s in unit_specs(self.unit_counts, self.widths, self.widths[0])]
        )
        # index of the last unit of each stage: (2, 6, 20, 23) for IR-SE50, the official c1/c2/c3 taps are 6/20/23.
        ends, total = [], 0
        for c in self.unit_counts:
            total += c
            ends.append(total - 1)
        self.stage_ends: tuple[int, ...] = tuple(ends)

    @property
    def downsample_factor(self) -> int:
        return 2 ** len(self.unit_counts)

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is [B, input_nc, H, W] with H, W divisible by the total stride."""
        f = self.downsample_factor
        if x.dim() != 4 or x.shape[1] != self.input_nc or x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(
                f"{type(self).__name__} expects [B,{self.input_nc},H,W] with H and W divisible by {f}, "
                f"got {list(x.shape)}"
            )

    def forward_stages(self, x: Tensor, with_stem: bool = False) -> list[Tensor]:
        """Outputs of every stage (after its last unit), shallowest first; with ``with_stem`` the ``input_layer``
        output first (OOD-GAN-inversion's e4e feature list: [B,64,256,256] and the four stages at 256 px)."""
        self.check_input(x)
        x = self.input_layer(x)
        outs: list[Tensor] = [x] if with_stem else []
        ends = set(self.stage_ends)
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in ends:
                outs.append(x)
        return outs

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_stages(x)[-1]

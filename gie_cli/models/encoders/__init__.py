"""Image encoders in the official state-dict layouts (pSp / e4e and their IR-SE backbone)."""

from gie_cli.models.encoders.ir_se import (
    DEFAULT_WIDTHS,
    UNIT_COUNTS,
    BottleneckIR,
    BottleneckIRSE,
    IRSEBackbone,
    SEModule,
    unit_specs,
)
from gie_cli.models.encoders.psp import (
    ENCODER_CONFIGS,
    Encoder4Editing,
    FPNStyleEncoder,
    GradualStyleBlock,
    GradualStyleEncoder,
    create_encoder,
    upsample_add,
)

__all__ = [
    "DEFAULT_WIDTHS",
    "ENCODER_CONFIGS",
    "UNIT_COUNTS",
    "BottleneckIR",
    "BottleneckIRSE",
    "Encoder4Editing",
    "FPNStyleEncoder",
    "GradualStyleBlock",
    "GradualStyleEncoder",
    "IRSEBackbone",
    "SEModule",
    "create_encoder",
    "unit_specs",
    "upsample_add",
]

"""StyleFeatureEditor (Bobkov et al., CVPR 2024): the Inverter and the Feature Editor in the official layout."""

from gie_cli.methods.sfe.modules import (
    ContentLayerDeepFast,
    FeatureEncoderBlock,
    FSLikeBackbone,
    IBasicBlock,
    Inverter,
)

__all__ = ["ContentLayerDeepFast", "FSLikeBackbone", "FeatureEncoderBlock", "IBasicBlock", "Inverter"]

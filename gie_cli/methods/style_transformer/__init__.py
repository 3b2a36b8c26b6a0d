"""Style Transformer (Hu et al., "Style Transformer for Image Inversion and Editing", CVPR 2022).

- ``modules``: the official inversion encoder (IR-SE pyramid + learned queries through three transformer decoder
  layers). The method, its loader, editing models and trainer are issue 18's remaining work.
"""

from gie_cli.methods.style_transformer.modules import LEVELS, StyleTransformerEncoder, TransformerDecoderLayer

__all__ = ["LEVELS", "StyleTransformerEncoder", "TransformerDecoderLayer"]

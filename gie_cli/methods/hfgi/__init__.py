"""HFGI (Wang et al., "High-Fidelity GAN Inversion for Image Attribute Editing", CVPR 2022).

- ``modules``: the official networks (ADA ``grid_align``, consultation encoder ``residue``) and the conditioned
  generator step as a hook of gie's one generator.
- ``method``: the ``hfgi`` inversion method (official ``ckpt.pt`` or gie checkpoints; invert, render, edit).
- ``train``: the ``hfgi`` trainer (``gie train``); never imported by inference code.
"""

from gie_cli.methods.hfgi.modules import (
    CONDITION_LAYER,
    CONDITION_SIZE,
    ResidualAligner,
    ResidualEncoder,
    condition_hook,
)

__all__ = ["CONDITION_LAYER", "CONDITION_SIZE", "ResidualAligner", "ResidualEncoder", "condition_hook"]

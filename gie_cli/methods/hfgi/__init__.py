"""HFGI (Wang et al., "High-Fidelity GAN Inversion for Image Attribute Editing", CVPR 2022): the official modules
(``modules``: ADA ``grid_align``, consultation encoder ``residue``, the conditioned generator step). The method, its
loader and trainer are issue 17's remaining work."""

from gie_cli.methods.hfgi.modules import (
    CONDITION_LAYER,
    CONDITION_SIZE,
    ResidualAligner,
    ResidualEncoder,
    condition_hook,
)

__all__ = ["CONDITION_LAYER", "CONDITION_SIZE", "ResidualAligner", "ResidualEncoder", "condition_hook"]

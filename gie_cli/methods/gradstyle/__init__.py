"""GradStyle (Li et al., "Gradual Residuals Alignment: A Dual-Stream Framework for GAN Inversion and Image Attribute
Editing", AAAI 2024, arXiv 2402.14398): gie's implementation from the paper (there is no official code or checkpoint).

- ``modules``: Gradual Residual Module, Gate&Fusion, Global Alignment Module (Aligner with Selective Attention), the
  perspective warp of the self-supervised training, and :class:`GradStyleNet` (all stages, as generator hooks).
- ``method``: the ``gradstyle`` inversion method (``gie invert`` / ``gie edit``) and its checkpoint loader.
- ``train``: the ``gradstyle`` trainer (``gie train``); never imported by inference code.

Choices where the paper gives no number or shape (each is a setting of ``gie train --method gradstyle``):

- Stages are gie layer indices (paper block ``b`` = layer ``b - 2``); default ``(1, 4, 6)`` = the paper's 3rd, 6th
  and 8th blocks (8/16/32 px maps) for every generator size; the demo 64 px generator gets the same layers (8, 16
  and 32 px, its 128/128/96-channel maps) fed by its e4e's 4/8/16 px pyramid enlarged to the stage size.
- Widths: the GRM common space has the generator's width at the stage (``hidden``); ``E_res`` has 2 ResBlocks,
  Gate&Fusion 1; the GRM's last conv starts at zero (an untrained GradStyle renders exactly its e4e).
- Selective Attention keeps ``mu = 50`` % of the keys per query (masked to -inf before the softmax), ``ceil(C / 64)``
  heads of ``d_k = 64``, applied twice; 2-D sinusoidal positional embedding; values are the raw residual tokens.
- The Aligner starts as the identity on the residual (``F' = W_keep F + W_out a``, ``W_keep = I``, ``W_out = 0``), has
  no bias on the value path (``Aligner(0, ., .) = 0``), and by default takes its keys from the generator feature the
  residual was computed on (``f^rec``, recomputed from the stored W+ at edit time) instead of the residual itself
  (``aligner_keys=residual`` is the paper's Eq. 7 as written); measured reasons in :class:`modules.Aligner`.
- Training: the random perspective (distortion 0.15) is one transform per image shared by all stages, continuous
  corner offsets, applied to half the images (``warp_p``); the shared gate is applied with detached parameters and
  without touching its BatchNorm statistics in the Editing Stream; L2 terms are means per element, ``L_aligner`` is a
  relative L1 error (weight 1); the Aligners learn at 1e-3, the GRMs and gates at the paper's 1e-4; Lookahead k = 5,
  alpha = 0.5; discriminator Adam betas (0, 0.99) with lazy R1 (gamma 10 every 16).
- Substitutes: ``1 - MS-SSIM`` when the LPIPS weights are not installed, no ID loss without ArcFace weights, a
  fresh discriminator when no StyleGAN2 one is given.
- Latent files store W+ and ``residual_<layer>`` (``F_m``, float16): 1.3 MiB per image for the 1024 px setting,
  272 KiB for the demo 64 px model; edits need no encoder pass.
"""

from gie_cli.methods.gradstyle.method import GradStyleMethod, load_gradstyle, residual_key
from gie_cli.methods.gradstyle.modules import (
    PAPER_LAYERS,
    Aligner,
    GateFusion,
    GradStyleNet,
    GradualResidualModule,
    SelectiveAttention,
    StageSpec,
    stage_specs,
)
from gie_cli.ops.warp import random_perspective, warp_perspective

__all__ = [
    "PAPER_LAYERS",
    "Aligner",
    "GateFusion",
    "GradStyleMethod",
    "GradStyleNet",
    "GradualResidualModule",
    "SelectiveAttention",
    "StageSpec",
    "load_gradstyle",
    "random_perspective",
    "residual_key",
    "stage_specs",
    "warp_perspective",
]

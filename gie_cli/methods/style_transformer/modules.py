"""Style Transformer's inversion encoder in the official layout (Hu et al., "Style Transformer for Image Inversion and
Editing", CVPR 2022): an IR-SE pyramid whose W+ rows are learned queries (the generator's mapping MLP applied to
``z``) attending to the pyramid through three DETR-style transformer decoder layers.

Keys match the ``encoder.module.*`` part of the official ``style-transformer-ffhq.pt`` (``z``, ``input_layer``,
``body``, ``latlayer1/2``, ``transformerlayer_{coarse,medium,fine}`` with ``nn.MultiheadAttention`` names).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gie_cli.models.encoders import IRSEBackbone, upsample_add

#: The three decoder layers and the pyramid level each attends to, in order.
LEVELS = (("coarse", "c3"), ("medium", "p2"), ("fine", "p1"))


class TransformerDecoderLayer(nn.Module):
    """DETR's post-norm decoder layer without positional encodings (dropout off in eval).

    ``t = norm1(t + SelfAttn(t)); t = norm2(t + CrossAttn(t, memory)); t = norm3(t + linear2(relu(linear1(t))))``,
    sequence-first tensors ``[L, B, d_model]``.

    Args:
        d_model: token width (512).
        nhead: attention heads (4).
        dim_feedforward: FFN width (1024).
        dropout: dropout probability in training (0.1).
    """

    def __init__(self, d_model: int = 512, nhead: int = 4, dim_feedforward: int = 1024, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: Tensor, memory: Tensor) -> Tensor:
        """``tgt [L, B, D]`` queries, ``memory [M, B, D]`` tokens -> ``[L, B, D]``."""
        assert tgt.ndim == 3 and memory.ndim == 3 and tgt.shape[1:] == memory.shape[1:], (
            f"decoder layer expects [L,B,D] and [M,B,D], got {tuple(tgt.shape)}, {tuple(memory.shape)}"
        )
        t = self.norm1(tgt + self.dropout1(self.self_attn(tgt, tgt, tgt, need_weights=False)[0]))
        t = self.norm2(t + self.dropout2(self.multihead_attn(t, memory, memory, need_weights=False)[0]))
        return self.norm3(t + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(t))))))


class StyleTransformerEncoder(IRSEBackbone):
    """The Style Transformer inversion encoder: ``(image, mapping) -> W+ codes`` (before ``latent_avg``).

    Args:
        n_styles: W+ rows (the generator's ``n_latent``: 18 for 1024 px; not hard-coded).
        style_dim: W width = the transformer's ``d_model`` (512).
        num_layers, mode, input_nc, unit_counts, widths, width_mult: the IR-SE backbone (see ``IRSEBackbone``);
            the pyramid has ``widths[-1]`` channels, which must equal ``style_dim``.
        nhead, dim_feedforward, dropout: the decoder layers (4, 1024, 0.1).
        input_size: the input resolution (256 officially).
    """

    def __init__(
        self,
        n_styles: int = 18,
        style_dim: int = 512,
        num_layers: int = 50,
        mode: str = "ir_se",
        input_nc: int = 3,
        unit_counts: Sequence[int] | None = None,
        widths: Sequence[int] | None = None,
        width_mult: float = 1.0,
        nhead: int = 4,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        input_size: int = 256,
    ) -> None:
        super().__init__(num_layers, mode, input_nc, unit_counts, widths, width_mult)
        if len(self.widths) != 4 or self.widths[3] != style_dim:
            raise ValueError(f"the pyramid width ({self.widths[-1]}) must equal style_dim ({style_dim}), 4 stages")
        self.n_styles, self.style_dim, self.input_size = n_styles, style_dim, input_size
        self.z = nn.Parameter(torch.randn(1, n_styles, style_dim))
        self.latlayer1 = nn.Conv2d(self.widths[2], style_dim, kernel_size=1)
        self.latlayer2 = nn.Conv2d(self.widths[1], style_dim, kernel_size=1)
        for name, _ in LEVELS:
            layer = TransformerDecoderLayer(style_dim, nhead, dim_feedforward, dropout)
            self.add_module(f"transformerlayer_{name}", layer)

    def queries(self, mapping: Callable[[Tensor], Tensor], batch: int) -> Tensor:
        """``mapping(z)`` for every item, ``[B, n_styles, D]`` (the mapping takes ``[N, D]`` rows)."""
        z = self.z.expand(batch, -1, -1).reshape(-1, self.style_dim)
        return mapping(z).reshape(batch, self.n_styles, self.style_dim)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """The pyramid ``{"c3", "p2", "p1"}`` (as pSp's: ``p2 = up(c3) + latlayer1(c2)``, ``p1 = up(p2) + ...``)."""
        _, c1, c2, c3 = self.forward_stages(x)
        p2 = upsample_add(c3, self.latlayer1(c2))
        return {"c3": c3, "p2": p2, "p1": upsample_add(p2, self.latlayer2(c1))}

    def forward(self, x: Tensor, mapping: Callable[[Tensor], Tensor]) -> Tensor:
        """``x [B, input_nc, H, W]`` and the generator's mapping MLP -> codes ``[B, n_styles, D]``."""
        feats = self.forward_features(x)
        t = self.queries(mapping, x.shape[0]).transpose(0, 1)  # [n_styles, B, D]
        for name, level in LEVELS:
            memory = feats[level].flatten(2).permute(2, 0, 1)  # [HW, B, D], row-major
            t = getattr(self, f"transformerlayer_{name}")(t, memory)
        return t.transpose(0, 1)


def config_from_state_dict(sd: dict[str, Tensor]) -> dict:
    """:class:`StyleTransformerEncoder` kwargs of an official-layout state dict (keys without ``encoder.``): rows and
    width from ``z``, backbone units and widths from ``body``, FFN width from ``linear1``.

    Raises:
        KeyError: not a Style Transformer encoder state dict (no ``z``).
    """
    import re

    units = sorted({int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.", k))})
    depths = [int(sd[f"body.{i}.res_layer.1.weight"].shape[0]) for i in units]
    counts: list[int] = []
    widths: list[int] = []
    for d in depths:
        if not widths or d != widths[-1]:
            widths.append(d)
            counts.append(0)
        counts[-1] += 1
    n_styles, style_dim = int(sd["z"].shape[1]), int(sd["z"].shape[2])
    return {
        "n_styles": n_styles,
        "style_dim": style_dim,
        "mode": "ir_se" if any(".res_layer.5.fc1." in k for k in sd) else "ir",
        "input_nc": int(sd["input_layer.0.weight"].shape[1]),
        "unit_counts": counts,
        "widths": widths,
        "dim_feedforward": int(sd["transformerlayer_coarse.linear1.weight"].shape[0]),
    }

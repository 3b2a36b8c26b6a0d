"""Style Transformer (Hu et al., CVPR 2022) reference-based editing: an editing transformer in W+ that moves one
attribute of a source code to a reference code's value.

The source's W+ rows (plus a learned row position and the attribute's embedding) are the queries of one post-norm
transformer decoder layer whose memory is the reference's rows (with the same position and embedding); a linear head,
zero at initialisation, maps its output to an offset of the source: ``w_e = w_s + head(layer(w_s, w_r, k))``. An edit
at power ``p`` renders ``w_s + p * (w_e - w_s)``. The official editing models were never released, so the layout is
gie's (``editor.*``) and gie trains it (``gie train --method edit_transformer``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from gie_cli.errors import UsageError
from gie_cli.io.checkpoint import get_prefixed, load_safetensors, load_state_dict_strict, save_safetensors
from gie_cli.methods.style_transformer.modules import TransformerDecoderLayer

#: Config key of gie's editing transformer files.
EDITOR_KEY = "edit_transformer"


class EditTransformer(nn.Module):
    """Reference-based attribute transfer between W+ codes.

    Args:
        n_latent: W+ rows.
        style_dim: W width (the layer's ``d_model``).
        attributes: the attributes it transfers (one learned embedding each).
        nhead, dim_feedforward: the decoder layer (4 heads; FFN width, default ``2 * style_dim``).
    """

    def __init__(
        self, n_latent: int, style_dim: int, attributes: Sequence[str], nhead: int = 4, dim_feedforward: int = 0
    ) -> None:
        super().__init__()
        if not attributes:
            raise ValueError("an editing transformer needs at least one attribute")
        self.n_latent, self.style_dim, self.attributes = int(n_latent), int(style_dim), list(attributes)
        self.nhead, self.dim_feedforward = int(nhead), int(dim_feedforward or 2 * style_dim)
        self.position = nn.Parameter(torch.zeros(1, n_latent, style_dim))
        self.attribute_embed = nn.Embedding(len(attributes), style_dim)
        self.layer = TransformerDecoderLayer(style_dim, nhead, self.dim_feedforward, dropout=0.0)
        self.head = nn.Linear(style_dim, style_dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.generator: dict = {}  # the generator record it was trained for (not part of the config)

    @property
    def config(self) -> dict:
        """Constructor kwargs (JSON-serialisable)."""
        return {
            "n_latent": self.n_latent,
            "style_dim": self.style_dim,
            "attributes": self.attributes,
            "nhead": self.nhead,
            "dim_feedforward": self.dim_feedforward,
        }

    def attribute_index(self, attribute: str | int) -> int:
        """The index of an attribute name (or index).

        Raises:
            UsageError: an attribute it was not trained for.
        """
        if isinstance(attribute, int) or str(attribute).isdigit():
            idx = int(attribute)
            if 0 <= idx < len(self.attributes):
                return idx
        elif str(attribute) in self.attributes:
            return self.attributes.index(str(attribute))
        raise UsageError(
            f"the editing transformer cannot transfer {attribute!r}; it knows: {', '.join(self.attributes)}",
            param="attribute",
            value=attribute,
        )

    def forward(self, source: Tensor, reference: Tensor, attribute: Tensor) -> Tensor:
        """Edited codes.

        Args:
            source: ``[B, n_latent, D]`` codes to edit.
            reference: ``[B, n_latent, D]`` codes whose attribute they take.
            attribute: ``[B]`` attribute indexes (long).

        Returns:
            ``[B, n_latent, D]`` edited codes ``w_e``.
        """
        assert source.shape == reference.shape and source.shape[1:] == (self.n_latent, self.style_dim), (
            f"codes must be [B, {self.n_latent}, {self.style_dim}], got {tuple(source.shape)}, {tuple(reference.shape)}"
        )
        tag = self.position + self.attribute_embed(attribute)[:, None]
        t = self.layer((source + tag).transpose(0, 1), (reference + tag).transpose(0, 1)).transpose(0, 1)
        return source + self.head(t)

    def offset(self, source: Tensor, reference: Tensor, attribute: int, power: float = 1.0) -> Tensor:
        """``power * (w_e - w_s)`` for one attribute; ``reference`` ``[1 or B, n_latent, D]`` is broadcast."""
        ref = reference.expand_as(source).to(source)
        k = torch.full((source.shape[0],), int(attribute), dtype=torch.long, device=source.device)
        return float(power) * (self(source, ref, k) - source)


def save_edit_transformer(editor: EditTransformer, path: str | Path, **extra: object) -> Path:
    """Write ``editor`` as gie safetensors (``editor.*``; its config and generator record in the JSON config)."""
    tensors = {f"editor.{k}": v.detach().float().cpu().contiguous() for k, v in editor.state_dict().items()}
    save_safetensors(path, tensors, {EDITOR_KEY: editor.config, "generator": editor.generator, **extra})
    return Path(path)


def load_edit_transformer(path: str | Path) -> EditTransformer:
    """An editing transformer from a gie file, strictly, frozen.

    Raises:
        UsageError: the file is not an editing transformer.
        CheckpointError: unreadable, or weights that do not load strictly.
    """
    tensors, config = load_safetensors(path)
    cfg = config.get(EDITOR_KEY)
    if not isinstance(cfg, dict):
        raise UsageError(
            f"{path} is not an editing transformer (no {EDITOR_KEY!r} config)",
            hint="train one with `gie train --method edit_transformer`",
        )
    editor = EditTransformer(**cfg)
    load_state_dict_strict(editor, get_prefixed(tensors, "editor"), str(path))
    editor.generator = dict(config.get("generator") or {})
    return editor.eval().requires_grad_(False)

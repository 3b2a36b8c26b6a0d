"""GradStyle's networks (Li et al., "Gradual Residuals Alignment", AAAI 2024): GRM, Gate&Fusion, GAM/Aligner, warps.

Everything here follows the paper's sections 3.2-3.4 and appendix A.2/A.3; where the paper gives no number or shape,
the choice is named in the docstring of the piece that makes it (and listed in the package docstring).

Stages: GradStyle refines the outputs of a few styled-conv layers of the one shared
:class:`~gie_cli.models.stylegan2.Generator` through its ``feature_hooks``. A stage is named by gie's *layer* index
``l`` (see ``gie_cli.models.stylegan2``); the paper's *block* ``b`` (1-based, two per resolution: 4, 4, 8, 8, 16, ...)
is gie layer ``l = b - 2`` -- the GRM sits between block ``b - 1`` and block ``b``, i.e. on the feature map that feeds
block ``b``, which is the output of gie layer ``b - 2``. The paper's main setting (3rd, 6th and 8th blocks on 8x8,
16x16 and 32x32 maps) is therefore layers ``(1, 4, 6)``. Each stage reads the encoder pyramid level that predicts
the W+ row of its block (row ``b - 1 = l + 1``: e4e's ``c3``/``p2``/``p1`` split), resized to the stage resolution.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gie_cli.models.stylegan2 import FeatureHook

#: The paper's main setting: refine the 3rd, 6th and 8th generator blocks (gie layers 1, 4, 6: 8, 16, 32 px maps).
PAPER_LAYERS = (1, 4, 6)
#: Scaling dimension of Selective Attention (the paper's d_k; also the width of one attention head).
D_K = 64


# --------------------------------------------------------------------------------------------------- building blocks
def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias)


def _act(kind: str, channels: int) -> nn.Module:
    return nn.PReLU(channels) if kind == "prelu" else nn.LeakyReLU(0.2)


class ResBlock(nn.Module):
    """Residual block of the GRM and Gate&Fusion networks (the paper's ``ResBlock_1`` / ``ResBlock_2``, Fig. 10-11).

    Body ``BN -> conv3x3 -> act -> conv3x3(stride) -> BN`` plus a shortcut (identity, or 1x1 conv + BN when the
    width or resolution changes), the IR layout of the e4e backbone; ``stride=2`` is ``ResBlock_2`` (half resolution).

    Args:
        in_ch: input channels.
        out_ch: output channels.
        stride: 1 (``ResBlock_1``) or 2 (``ResBlock_2``).
        act: ``"prelu"`` (GRM) or ``"lrelu"`` (Gate&Fusion, LeakyReLU 0.2).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, act: str = "prelu") -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            _conv3x3(in_ch, out_ch, bias=False),
            _act(act, out_ch),
            _conv3x3(out_ch, out_ch, stride=stride, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        if stride == 1 and in_ch == out_ch:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in, H, W]`` -> ``[B, out, H/stride, W/stride]``."""
        return self.body(x) + self.shortcut(x)


def resize_feature(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bring an encoder feature ``[B, C, h, w]`` to ``size``: area averaging when shrinking (the paper downsamples the
    16x16 map to 8x8 for the 3rd block), bilinear interpolation when enlarging."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class GradualResidualModule(nn.Module):
    """GRM residual network: ``F_m = E_res(W_T T_m, W_f f_m^rec)`` (Eq. 2, Fig. 10).

    ``W_T`` and ``W_f`` are conv3x3 + PReLU projections of the encoder feature and the generator feature to a common
    ``hidden``-channel space; ``E_res`` is ``conv3x3 -> PReLU -> BN -> ResBlock_2 (half resolution) ->
    ResBlock_1 x (blocks - 1) -> bilinear x2 -> conv3x3`` to the generator's width. The last conv starts at zero, so
    an untrained GRM adds nothing and GradStyle starts exactly at its e4e.

    With ``use_feature=False`` (the "w/o GRM" ablation of Table 4) the residual is only a projection of the encoder
    feature, ``F_m = conv(W_T T_m)``: no residual network and no look at what the generator already drew.

    Args:
        t_channels: encoder feature channels.
        f_channels: generator channels at the stage.
        hidden: width of the common space.
        blocks: ResBlocks in ``E_res`` (the first halves the resolution).
        use_feature: False for the "w/o GRM" ablation.
    """

    def __init__(self, t_channels: int, f_channels: int, hidden: int, blocks: int = 2, use_feature: bool = True):
        super().__init__()
        if blocks < 1:
            raise ValueError(f"the GRM needs at least one ResBlock, got {blocks}")
        self.t_channels, self.f_channels, self.use_feature = t_channels, f_channels, use_feature
        self.proj_t = nn.Sequential(_conv3x3(t_channels, hidden), nn.PReLU(hidden))
        if use_feature:
            self.proj_f = nn.Sequential(_conv3x3(f_channels, hidden), nn.PReLU(hidden))
            self.body = nn.Sequential(
                _conv3x3(2 * hidden, hidden),
                nn.PReLU(hidden),
                nn.BatchNorm2d(hidden),
                ResBlock(hidden, hidden, stride=2),
                *[ResBlock(hidden, hidden) for _ in range(blocks - 1)],
            )
        self.head = _conv3x3(hidden, f_channels)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, t: Tensor, f: Tensor) -> Tensor:
        """Residual feature of one stage.

        Args:
            t: encoder feature ``T_m`` ``[B, Ct, h, w]`` (any size; resized to the stage's).
            f: generator feature ``f_m^rec`` ``[B, C, R, R]``.

        Returns:
            ``F_m`` ``[B, C, R, R]``.
        """
        assert f.ndim == 4 and f.shape[1] == self.f_channels, f"GRM: f must be [B,{self.f_channels},R,R], got {f.shape}"
        assert t.ndim == 4 and t.shape[1] == self.t_channels, f"GRM: T must be [B,{self.t_channels},h,w], got {t.shape}"
        z = self.proj_t(resize_feature(t, f.shape[-2:]))
        if self.use_feature:
            z = self.body(torch.cat([z, self.proj_f(f)], dim=1))
            z = F.interpolate(z, size=f.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(z)


class GateFusion(nn.Module):
    """Gate&Fusion (Eq. 3-4, Fig. 11): ``g = sigmoid(W_g [f, F])``, output ``f + g * F``; shared by GRM and GAM.

    ``W_g`` is ``conv3x3(2C -> C) -> LeakyReLU -> ResBlock_1 x blocks -> conv3x3``; the gate has the residual's shape.

    Args:
        channels: generator channels at the stage.
        blocks: ResBlocks between the convs.
    """

    def __init__(self, channels: int, blocks: int = 1) -> None:
        super().__init__()
        self.channels = channels
        self.body = nn.Sequential(
            _conv3x3(2 * channels, channels),
            nn.LeakyReLU(0.2),
            *[ResBlock(channels, channels, act="lrelu") for _ in range(blocks)],
            _conv3x3(channels, channels),
        )

    def gate(self, f: Tensor, r: Tensor) -> Tensor:
        """``g_m`` ``[B, C, R, R]`` in (0, 1) for generator feature ``f`` and residual ``r`` (both ``[B, C, R, R]``)."""
        assert f.shape == r.shape and f.shape[1] == self.channels, f"gate: shapes {f.shape} and {r.shape}"
        return torch.sigmoid(self.body(torch.cat([f, r], dim=1)))

    def forward(self, f: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(f + g * r, g)``, both ``[B, C, R, R]``."""
        g = self.gate(f, r)
        return f + g * r, g


# --------------------------------------------------------------------------------------------------- attention
def sinusoidal_embedding_2d(height: int, width: int, channels: int, device=None, dtype=None) -> Tensor:
    """Sinusoidal positional embedding (Vaswani et al. 2017) of a flattened ``height x width`` map, ``[H*W, C]``.

    The paper flattens the maps and adds "a Sinusoidal Positional Embedding layer"; gie uses its 2-D form (the first
    ``C // 2`` channels encode the row, the others the column, interleaved sin/cos at frequencies
    ``10000^(-2i/n)``) so that neighbours in the image stay neighbours in the code after flattening.
    """

    def axis(n: int, dims: int) -> Tensor:
        pos = torch.arange(n, dtype=torch.float32)[:, None]
        freq = 10000.0 ** (-2.0 * torch.arange((dims + 1) // 2, dtype=torch.float32) / max(dims, 1))
        ang = pos * freq
        return torch.stack([ang.sin(), ang.cos()], dim=-1).flatten(1)[:, :dims]

    cy = channels // 2
    cx = channels - cy
    ey = axis(height, cy)[:, None, :].expand(height, width, cy)
    ex = axis(width, cx)[None, :, :].expand(height, width, cx)
    return torch.cat([ey, ex], dim=-1).reshape(height * width, channels).to(device=device, dtype=dtype)


def keep_count(n_keys: int, mu: float) -> int:
    """How many keys per query survive Selective Attention: ``ceil(mu% of n_keys)``, at least 1."""
    return max(1, min(n_keys, math.ceil(n_keys * mu / 100.0 - 1e-9)))


def selective_softmax(scores: Tensor, keep: int) -> Tensor:
    """Softmax over the ``keep`` largest scores of each row; the other entries get weight exactly 0.

    Args:
        scores: ``[..., Lq, Lk]`` scaled attention logits.
        keep: entries kept per row (``1 <= keep <= Lk``).

    Returns:
        ``[..., Lq, Lk]`` weights; each row has exactly ``keep`` non-zero entries summing to 1.
    """
    if keep >= scores.shape[-1]:
        return scores.softmax(dim=-1)
    idx = scores.topk(keep, dim=-1, sorted=False).indices
    mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, True)
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)


class SelectiveAttention(nn.Module):
    """Multi-head Selective Attention (Eq. 8-9): ``Softmax_top-mu%(q k^T / sqrt(d_k)) v``.

    Only the top ``mu`` percent of ``q k^T`` per query and head enter the softmax; the rest are suppressed (weight 0,
    i.e. masked to -inf: Eq. 9's element-wise product with the Top mask would leave them at ``exp(0)``, which is not
    the suppression the text describes).

    Args:
        q_dim: query token width.
        k_dim: key token width.
        v_dim: value token width.
        heads: attention heads (each ``d_k`` wide).
        mu: percentage of keys kept per query, in (0, 100].
        d_k: head width and scaling dimension (64 in the paper).
    """

    def __init__(self, q_dim: int, k_dim: int, v_dim: int, heads: int, mu: float, d_k: int = D_K) -> None:
        super().__init__()
        if not 0 < mu <= 100:
            raise ValueError(f"mu must be a percentage in (0, 100], got {mu}")
        self.heads, self.d_k, self.mu = heads, d_k, float(mu)
        self.to_q = nn.Linear(q_dim, heads * d_k, bias=False)
        self.to_k = nn.Linear(k_dim, heads * d_k, bias=False)
        self.to_v = nn.Linear(v_dim, heads * d_k, bias=False)

    def _split(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.d_k).transpose(1, 2)  # [B, h, n, d_k]

    def scores(self, q_tokens: Tensor, k_tokens: Tensor) -> Tensor:
        """Scaled logits ``q k^T / sqrt(d_k)`` ``[B, heads, Lq, Lk]`` before selection."""
        q, k = self._split(self.to_q(q_tokens)), self._split(self.to_k(k_tokens))
        return q @ k.transpose(-1, -2) / math.sqrt(self.d_k)

    def forward(
        self, q_tokens: Tensor, k_tokens: Tensor, v_tokens: Tensor, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend.

        Args:
            q_tokens: ``[B, Lq, q_dim]``.
            k_tokens: ``[B, Lk, k_dim]``.
            v_tokens: ``[B, Lk, v_dim]``.
            return_weights: also return the attention weights ``[B, heads, Lq, Lk]``.

        Returns:
            ``[B, Lq, heads * d_k]`` (and the weights).
        """
        assert q_tokens.ndim == 3 and k_tokens.ndim == 3 and k_tokens.shape[:2] == v_tokens.shape[:2], (
            f"attention tokens: q {tuple(q_tokens.shape)}, k {tuple(k_tokens.shape)}, v {tuple(v_tokens.shape)}"
        )
        s = self.scores(q_tokens, k_tokens)
        w = selective_softmax(s, keep_count(s.shape[-1], self.mu))
        v = self._split(self.to_v(v_tokens))
        out = (w @ v).transpose(1, 2).reshape(q_tokens.shape[0], q_tokens.shape[1], self.heads * self.d_k)
        return (out, w) if return_weights else out


#: Where the Aligner's keys come from: the generator feature the residual was computed on (gie's default) or the
#: residual itself (the paper's Eq. 7 as written).
ALIGNER_KEYS = ("source", "residual")


class Aligner(nn.Module):
    """The GAM's Aligner ``E_ab`` (Eq. 7, Fig. 3): aligns a residual ``F_m`` to an edited feature ``f_m^edi``.

    Maps are flattened to tokens and get the positional embedding; Selective Attention is applied ``layers`` times
    with queries from the edited feature ``f_m^edi`` and values from the residual ``F_m`` (raw tokens: no norm, no
    embedding, so every attended token is a combination of residual tokens, "a region of F'_m is combined by
    similar regions of unaligned F_m").

    Keys (``keys``): the paper matches the edited feature against the residual's own tokens. gie's default matches
    it against ``f_m^src``, the generator feature the residual was computed on (the Reconstruction Stream's
    ``f_m^rec``, recomputed from the stored W+ at edit time; warped together with ``F_m`` in training): queries and
    keys then live in one feature space, and with ``W_k`` starting equal to ``W_q`` (scaled by ``key_scale``) each
    query first attends to the tokens most like it, i.e. the place its content came from. The two are compared by
    ``benchmarks/gradstyle_aligner_keys.py`` (results in ``benchmarks/results/gradstyle/aligner_keys.md``).

    Other choices where the paper is silent: tokens are LayerNorm-ed before the embedding is added; after each
    attention but the last the query stream is updated (``h <- LN(h + W_o a)``). The output is
    ``F'_m = W_keep F_m + W_out a`` with ``W_keep`` starting as the identity and ``W_out`` at zero, and no bias
    anywhere on the value path: an untrained Aligner returns its input unchanged (it starts at "no alignment" and
    learns the correction instead of starting from noise), ``W_keep`` can learn to drop what attention replaces, and
    a zero residual gives exactly zero (``Aligner(0, ., .) = 0``). Heads: ``ceil(C / 64)`` of width ``d_k = 64``.

    Args:
        channels: generator channels at the stage.
        mu: Selective Attention's kept percentage.
        layers: how many times Selective Attention is applied.
        keys: ``"source"`` (default) or ``"residual"`` (the paper's Eq. 7).
        key_scale: initial scale of the tied ``W_q = W_k`` (``keys="source"``): a sharper first attention.
    """

    def __init__(self, channels: int, mu: float, layers: int = 2, keys: str = "source", key_scale: float = 3.0):
        super().__init__()
        if layers < 1:
            raise ValueError(f"the Aligner needs at least one attention layer, got {layers}")
        if keys not in ALIGNER_KEYS:
            raise ValueError(f"aligner keys must be one of {', '.join(ALIGNER_KEYS)}, got {keys!r}")
        self.channels, self.keys = channels, keys
        heads = max(1, math.ceil(channels / D_K))
        width = heads * D_K
        self.norm_q = nn.LayerNorm(channels)
        self.norm_k = nn.LayerNorm(channels)
        self.attn = nn.ModuleList(SelectiveAttention(channels, channels, channels, heads, mu) for _ in range(layers))
        self.mix = nn.ModuleList(nn.Linear(width, channels) for _ in range(layers - 1))
        self.mix_norm = nn.ModuleList(nn.LayerNorm(channels) for _ in range(layers - 1))
        self.keep = nn.Linear(channels, channels, bias=False)
        self.out = nn.Linear(width, channels, bias=False)
        with torch.no_grad():
            self.keep.weight.copy_(torch.eye(channels))
            self.out.weight.zero_()
            if keys == "source":
                for attn in self.attn:
                    attn.to_q.weight.mul_(key_scale)
                    attn.to_k.weight.copy_(attn.to_q.weight)

    def forward(self, residual: Tensor, source: Tensor, edited: Tensor) -> Tensor:
        """Align ``residual`` to ``edited``.

        Args:
            residual: ``F_m`` (or its warped copy) ``[B, C, H, W]``.
            source: the generator feature ``F_m`` was computed on, in ``F_m``'s geometry ``[B, C, H, W]`` (unused
                with ``keys="residual"``).
            edited: ``f_m^edi`` ``[B, C, H, W]``.

        Returns:
            ``F'_m`` ``[B, C, H, W]``.
        """
        assert residual.shape == edited.shape == source.shape and residual.shape[1] == self.channels, (
            f"Aligner: residual {tuple(residual.shape)}, source {tuple(source.shape)} and edited feature "
            f"{tuple(edited.shape)} must be [B,{self.channels},H,W]"
        )
        b, c, h, w = residual.shape
        pe = sinusoidal_embedding_2d(h, w, c, residual.device, residual.dtype)
        v = residual.flatten(2).transpose(1, 2)  # [B, L, C]
        k = v if self.keys == "residual" else source.flatten(2).transpose(1, 2)
        keys = self.norm_k(k) + pe
        q = self.norm_q(edited.flatten(2).transpose(1, 2)) + pe
        a = q
        for i, attn in enumerate(self.attn):
            a = attn(q, keys, v)
            if i < len(self.mix):
                q = self.mix_norm[i](q + self.mix[i](a))
        return (self.keep(v) + self.out(a)).transpose(1, 2).reshape(b, c, h, w)


# --------------------------------------------------------------------------------------------------- alignment error
# --------------------------------------------------------------------------------------------------- all stages
@dataclass(frozen=True)
class StageSpec:
    """One refined stage.

    Attributes:
        layer: gie styled-conv layer whose output is refined (paper block ``layer + 2``).
        channels: generator channels there.
        resolution: feature-map size there.
        level: encoder pyramid level feeding it (``c3``, ``p2`` or ``p1``).
    """

    layer: int
    channels: int
    resolution: int
    level: str


class GradStyleNet(nn.Module):
    """GradStyle's trainable part: per stage a GRM, a Gate&Fusion (shared by both streams) and a GAM Aligner.

    Parameter keys: ``grm.<layer>.*``, ``gate.<layer>.*``, ``gam.<layer>.*`` (no ``gam`` with ``use_gam=False``).

    Args:
        stages: the refined stages (dicts or :class:`StageSpec`), coarse to fine.
        feature_channels: encoder pyramid width.
        hidden: GRM common-space width (0 = the stage's generator width).
        mu: Selective Attention's kept percentage.
        attn_layers: Selective Attention passes per Aligner.
        grm_blocks: ResBlocks per GRM.
        gate_blocks: ResBlocks per Gate&Fusion.
        use_grm: False = "w/o GRM" ablation (residuals are projected encoder features only).
        use_gam: False = "w/o GAM" ablation (edits inject the residuals unaligned).
        aligner_keys: ``"source"`` or ``"residual"`` (see :class:`Aligner`).
    """

    def __init__(
        self,
        stages: Iterable[StageSpec | Mapping],
        feature_channels: int,
        hidden: int = 0,
        mu: float = 50.0,
        attn_layers: int = 2,
        grm_blocks: int = 2,
        gate_blocks: int = 1,
        use_grm: bool = True,
        use_gam: bool = True,
        aligner_keys: str = "source",
    ) -> None:
        super().__init__()
        self.stages = tuple(s if isinstance(s, StageSpec) else StageSpec(**s) for s in stages)
        layers = [s.layer for s in self.stages]
        if not layers or layers != sorted(set(layers)):
            raise ValueError(f"stages must be distinct layers, coarse to fine; got {layers}")
        self.use_grm, self.use_gam = bool(use_grm), bool(use_gam)
        self.grm = nn.ModuleDict()
        self.gate = nn.ModuleDict()
        self.gam = nn.ModuleDict()
        for s in self.stages:
            width = hidden or s.channels
            self.grm[str(s.layer)] = GradualResidualModule(feature_channels, s.channels, width, grm_blocks, use_grm)
            self.gate[str(s.layer)] = GateFusion(s.channels, gate_blocks)
            if self.use_gam:
                self.gam[str(s.layer)] = Aligner(s.channels, mu, attn_layers, aligner_keys)
        self.config = {
            "stages": [asdict(s) for s in self.stages],
            "feature_channels": feature_channels,
            "hidden": hidden,
            "mu": float(mu),
            "attn_layers": attn_layers,
            "grm_blocks": grm_blocks,
            "gate_blocks": gate_blocks,
            "use_grm": self.use_grm,
            "use_gam": self.use_gam,
            "aligner_keys": aligner_keys,
        }

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(s.layer for s in self.stages)

    def _check(self, f: Tensor, s: StageSpec) -> None:
        assert f.ndim == 4 and f.shape[1:] == (s.channels, s.resolution, s.resolution), (
            f"stage {s.layer}: generator feature must be [B,{s.channels},{s.resolution},{s.resolution}], "
            f"got {tuple(f.shape)}"
        )

    def _selected(self, active: Iterable[int] | None) -> list[StageSpec]:
        return [s for s in self.stages if active is None or s.layer in set(active)]

    def reconstruction_hooks(
        self,
        pyramid: Mapping[str, Tensor],
        record: dict[str, dict[int, Tensor]] | None = None,
        active: Iterable[int] | None = None,
        quantize: torch.dtype | None = None,
    ) -> dict[int, FeatureHook]:
        """Hooks of the Reconstruction Stream: ``F_m = GRM(T_m, f)``, ``f + g(f, F_m) F_m`` (Eq. 1-4).

        Args:
            pyramid: encoder features ``{"c3", "p2", "p1"}`` (``[B, Ct, h, w]``).
            record: filled with ``residual``, ``gate``, ``fused`` (``g * F``) and ``feature`` (the generator feature
                ``f`` the residual was computed on) per layer when given.
            active: layers to refine (default all; progressive training passes the stages trained so far).
            quantize: round ``F_m`` to this dtype before use (what a latent file stores, so the saved
                reconstruction is exactly what rendering the file gives).

        Returns:
            ``{layer: hook}`` for ``Generator.synthesis(feature_hooks=...)``.
        """
        hooks: dict[int, FeatureHook] = {}
        for s in self._selected(active):

            def hook(f: Tensor, layer: int, s: StageSpec = s) -> Tensor:
                self._check(f, s)
                r = self.grm[str(layer)](pyramid[s.level], f)
                if quantize is not None:
                    r = r.to(quantize).to(f.dtype)
                out, g = self.gate[str(layer)](f, r)
                if record is not None:
                    record.setdefault("residual", {})[layer] = r
                    record.setdefault("gate", {})[layer] = g
                    record.setdefault("fused", {})[layer] = g * r
                    record.setdefault("feature", {})[layer] = f
                return out

            hooks[s.layer] = hook
        return hooks

    def fusion_hooks(
        self, residuals: Mapping[int, Tensor], record: dict[str, dict[int, Tensor]] | None = None
    ) -> dict[int, FeatureHook]:
        """Hooks that inject stored residuals unaligned: ``f + g(f, F_m) F_m`` (reconstruction from a latent file,
        and edits without GAM); ``record`` gets each stage's generator feature ``f`` under ``feature``."""
        hooks: dict[int, FeatureHook] = {}
        for s in self.stages:
            if s.layer not in residuals:
                continue

            def hook(f: Tensor, layer: int, s: StageSpec = s) -> Tensor:
                self._check(f, s)
                if record is not None:
                    record.setdefault("feature", {})[layer] = f
                return self.gate[str(layer)](f, residuals[layer].to(f))[0]

            hooks[s.layer] = hook
        return hooks

    def editing_hooks(
        self,
        residuals: Mapping[int, Tensor],
        sources: Mapping[int, Tensor],
        record: dict[str, dict[int, Tensor]] | None = None,
        detach_gate: bool = False,
    ) -> dict[int, FeatureHook]:
        """Hooks of the Editing Stream (GAM, Eq. 6-7): ``F'_m = Aligner(F_m, f^src, f^edi)``,
        ``f^edi + g(f^edi, F'_m) F'_m``.

        Args:
            residuals: ``{layer: F_m}`` (warped copies in training).
            sources: ``{layer: f^src}``: the generator features the residuals were computed on, in their geometry
                (the Reconstruction Stream's ``f^rec``; warped with the residuals in training).
            record: filled with ``aligned`` (``F'_m``) and ``gate`` per layer when given.
            detach_gate: use the shared Gate&Fusion without letting this stream's gradients reach it (training: the
                GRM side, gates included, learns from the Reconstruction Stream only).

        The shared gate never updates its BatchNorm running statistics here (in training mode it normalises with
        the batch's statistics, as in the Reconstruction Stream, and discards them): they describe the
        reconstruction features the gate was fitted on.

        Returns:
            ``{layer: hook}``.
        """
        if not self.use_gam:
            raise RuntimeError("this GradStyle net has no GAM (trained with use_gam=false)")
        hooks: dict[int, FeatureHook] = {}
        for s in self.stages:
            if s.layer not in residuals:
                continue

            def hook(f: Tensor, layer: int, s: StageSpec = s) -> Tensor:
                self._check(f, s)
                aligned = self.gam[str(layer)](residuals[layer].to(f), sources[layer].to(f), f)
                gate = self.gate[str(layer)]
                # the gate's BatchNorm statistics belong to the Reconstruction Stream: this stream uses copies
                tensors = {k: p.detach() if detach_gate else p for k, p in gate.named_parameters()}
                tensors.update({k: b.clone() for k, b in gate.named_buffers()})
                out, g = torch.func.functional_call(gate, tensors, (f, aligned))
                if record is not None:
                    record.setdefault("aligned", {})[layer] = aligned
                    record.setdefault("gate", {})[layer] = g
                return out

            hooks[s.layer] = hook
        return hooks


#: The encoder pyramid's levels, coarse to fine: the paper's hierarchical features I, II and III (Table 4).
LEVELS = ("c3", "p2", "p1")


def stage_specs(generator, encoder, layers: Sequence[int] | None = None, level: str | None = None) -> list[StageSpec]:
    """Stages for ``generator`` (a :class:`~gie_cli.models.stylegan2.Generator`) fed by an e4e ``encoder``.

    Args:
        generator: the generator.
        encoder: an ``FPNStyleEncoder`` (its ``level_of`` gives the pyramid level of each W+ row).
        layers: gie layer indices to refine; None = the paper's ``(1, 4, 6)`` (3rd, 6th, 8th blocks), limited to the
            layers the generator has.
        level: None = each stage reads the level that predicts its W+ row (the paper's design); ``"c3"``, ``"p2"``
            or ``"p1"`` = every stage reads that one level (Table 4's "only hierarchical I / II / III").

    Raises:
        ValueError: a layer out of range or an unknown level.
    """
    if level is not None and level not in LEVELS:
        raise ValueError(f"unknown encoder level {level!r}; known: {', '.join(LEVELS)} (hierarchical I, II, III)")
    if layers is None:
        layers = [layer for layer in PAPER_LAYERS if layer < generator.num_layers]
    out = []
    for layer in sorted(set(int(v) for v in layers)):
        if not 0 <= layer < generator.num_layers:
            raise ValueError(f"stage layer {layer} is out of range 0..{generator.num_layers - 1}")
        row_level = encoder.level_of(min(layer + 1, encoder.n_styles - 1))
        level_here = level or row_level
        out.append(StageSpec(layer, generator.layer_channels(layer), generator.layer_resolution(layer), level_here))
    return out


def parse_layers(text: str) -> list[int] | None:
    """``"auto"`` / ``""`` -> None (the paper's stages); ``"1,4,6"`` -> ``[1, 4, 6]``."""
    text = text.strip().lower()
    if text in ("", "auto", "paper"):
        return None
    try:
        return [int(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"stages must be 'auto' or comma-separated layer indices, got {text!r}") from None

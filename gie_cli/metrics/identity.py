"""Identity similarity with ArcFace IR-SE50 (Deng et al., CVPR 2019), as the ID loss/metric of pSp, e4e and HFGI.

The network is the ``Backbone(input_size=112, num_layers=50, mode="ir_se", drop_ratio=0.6)`` of pSp's
``models/encoders/model_irse.py`` (TreB1eN's InsightFace_Pytorch port), whose weights are the registry entry
``arcface.ir_se50`` (``model_ir_se50.pth``, a plain state dict with keys ``input_layer.*``, ``body.*``,
``output_layer.*``: /work/shared/docs/anchors.md section 1, row "IR-SE50"; the backbone layout is section 3.1):

    input_layer + body (IR-SE50, :class:`~gie_cli.models.encoders.ir_se.IRSEBackbone`) -> [B, 512, 7, 7]
    output_layer = {0: BatchNorm2d(512), 1: Dropout(0.6), 2: Flatten, 3: Linear(512*7*7, 512), 4: BatchNorm1d(512)}
    -> l2-normalised 512-d embedding

Preprocessing follows ``criteria/id_loss.py`` of pSp/e4e/HFGI (read in eladrich/pixel2style2pixel@2fba1b0 and the
e4e/HFGI copies; anchors.md records only the checkpoint's key prefixes): the image in [-1, 1] is brought to 256 px
(e4e/HFGI's ``AdaptiveAvgPool2d((256, 256))`` when it is not 256 px), the face region ``[35:223, 32:220]`` (rows,
columns) is cut out and ``AdaptiveAvgPool2d((112, 112))`` resizes it to the network's input. The similarity of two
images is the dot product of their embeddings (cosine similarity, in [-1, 1]; 1 = same identity as seen by ArcFace).

Nothing is ever downloaded: a missing file raises :class:`~gie_cli.errors.WeightsUnavailableError` and
:func:`identity_available` reports it; no other face network is ever used instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gie_cli.errors import WeightsUnavailableError
from gie_cli.io.checkpoint import load_state_dict_strict, read_checkpoint
from gie_cli.models.encoders.ir_se import IRSEBackbone

__all__ = [
    "ARCFACE_ENTRY",
    "FACE_CROP",
    "IdentityNet",
    "face_crop",
    "fill_num_batches_tracked",
    "find_identity_weights",
    "identity_available",
    "identity_similarity",
    "load_identity_net",
]

logger = logging.getLogger(__name__)

ARCFACE_ENTRY = "arcface.ir_se50"
"""Weights-registry entry of the ArcFace IR-SE50 checkpoint."""

FACE_CROP = (35, 223, 32, 220)
"""``(row0, row1, col0, col1)`` of the face region in a 256 px FFHQ-aligned image (pSp/e4e/HFGI ``id_loss.py``)."""

_CROP_BASE = 256
_NET_INPUT = 112


class IdentityNet(IRSEBackbone):
    """ArcFace IR-SE50 face embedding in the official key layout (``input_layer``, ``body``, ``output_layer``).

    Args:
        unit_counts: Units per stage (default the IR-SE50 counts 3, 4, 14, 3); tiny test models pass smaller ones.
        widths: Stage widths (default 64/128/256/512); the embedding has ``widths[-1]`` channels.
        drop_ratio: Dropout of ``output_layer.1`` (0.6 in pSp's ID loss; inactive at inference).
    """

    def __init__(
        self, unit_counts: Sequence[int] | None = None, widths: Sequence[int] | None = None, drop_ratio: float = 0.6
    ) -> None:
        super().__init__(50, "ir_se", 3, unit_counts, widths)
        c = self.widths[-1]
        side = _NET_INPUT // self.downsample_factor
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(c),
            nn.Dropout(drop_ratio),
            nn.Flatten(),
            nn.Linear(c * side * side, c),
            nn.BatchNorm1d(c),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Embeds face crops.

        Args:
            x: ``[B, 3, 112, 112]`` face crops in [-1, 1] (see :func:`face_crop`).

        Returns:
            ``[B, C]`` unit-norm embeddings (``C = 512`` for IR-SE50).
        """
        if x.dim() != 4 or tuple(x.shape[-2:]) != (_NET_INPUT, _NET_INPUT):
            raise ValueError(f"IdentityNet expects [B,3,112,112] face crops, got {list(x.shape)}")
        feat = self.output_layer(super().forward(x))
        return F.normalize(feat, p=2, dim=1)

    def embed(self, images: Tensor) -> Tensor:
        """Embeds FFHQ-aligned face images of any size: :func:`face_crop` then :meth:`forward`.

        Args:
            images: ``[B, 3, H, W]`` aligned faces in [-1, 1].

        Returns:
            ``[B, C]`` unit-norm embeddings.
        """
        return self(face_crop(images))


def face_crop(images: Tensor) -> Tensor:
    """The ArcFace input of pSp/e4e/HFGI's ID loss: 256 px, crop ``[35:223, 32:220]``, resize to 112 px.

    Args:
        images: ``[B, 3, H, W]`` FFHQ-aligned faces in [-1, 1]. Images that are not 256 px are area-averaged to
            256 px (``adaptive_avg_pool2d``, e4e/HFGI's ``self.pool``) when larger and bilinearly enlarged when
            smaller (``adaptive_avg_pool2d`` would only repeat pixels there).

    Returns:
        ``[B, 3, 112, 112]`` crops.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"face_crop expects [B,3,H,W] images, got {list(images.shape)}")
    h, w = images.shape[-2:]
    if (h, w) != (_CROP_BASE, _CROP_BASE):
        if min(h, w) >= _CROP_BASE:
            images = F.adaptive_avg_pool2d(images, (_CROP_BASE, _CROP_BASE))
        else:
            images = F.interpolate(images, size=(_CROP_BASE, _CROP_BASE), mode="bilinear", align_corners=False)
    r0, r1, c0, c1 = FACE_CROP
    return F.adaptive_avg_pool2d(images[:, :, r0:r1, c0:c1], (_NET_INPUT, _NET_INPUT))


def identity_similarity(net: IdentityNet, x: Tensor, y: Tensor) -> Tensor:
    """Cosine similarity of the ArcFace embeddings of two image batches.

    Args:
        net: The identity network (eval mode).
        x: ``[B, 3, H, W]`` aligned faces in [-1, 1].
        y: ``[B, 3, H, W]`` aligned faces in [-1, 1] (same shape as ``x``).

    Returns:
        ``[B]`` similarities in [-1, 1].
    """
    if x.shape != y.shape:
        raise ValueError(f"identity_similarity: shapes differ, {tuple(x.shape)} and {tuple(y.shape)}")
    return (net.embed(x) * net.embed(y)).sum(dim=1)


def fill_num_batches_tracked(module: nn.Module, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Adds the BatchNorm ``num_batches_tracked`` counters a checkpoint saved by an old torch lacks.

    ``nn.Module.load_state_dict`` fills these in itself for such files (they only matter for training); this does
    the same before gie's strict key check, and touches no other key.

    Args:
        module: The module the state dict is for.
        state_dict: The checkpoint's state dict.

    Returns:
        A copy of ``state_dict`` with every missing ``*.num_batches_tracked`` of ``module`` set to 0.
    """
    out = dict(state_dict)
    for k in module.state_dict():
        if k.endswith(".num_batches_tracked") and k not in out:
            out[k] = torch.tensor(0, dtype=torch.long)
    return out


def _candidates(path: str | Path | None) -> tuple[list[Path], str, list[str]]:
    """Paths checked for the ArcFace file, its file name and download URLs."""
    from gie_cli.weights import entry_path, load_registry

    entry = load_registry().get(ARCFACE_ENTRY)
    if path is not None:
        p = Path(path).expanduser()
        return [p / entry.filename if p.is_dir() else p], entry.filename, list(entry.urls)
    return [entry_path(entry)], entry.filename, list(entry.urls)


def find_identity_weights(path: str | Path | None = None) -> Path:
    """Locates ``model_ir_se50.pth``; never downloads.

    Args:
        path: Explicit file (or folder holding it); when given no other place is tried. None: the weights cache
            (where ``gie weights download arcface.ir_se50`` puts it).

    Returns:
        The existing file.

    Raises:
        WeightsUnavailableError: Not there; names the file, the path(s) checked and the URLs.
    """
    candidates, name, urls = _candidates(path)
    for p in candidates:
        if p.is_file():
            return p
    hint = f"or run `gie weights download {ARCFACE_ENTRY}`" if path is None else None
    raise WeightsUnavailableError(name, candidates[0], urls, candidates, hint=hint)


def identity_available(path: str | Path | None = None) -> tuple[bool, str]:
    """Whether the identity metric can run here (only the file's existence is checked).

    Args:
        path: Explicit checkpoint, as in :func:`find_identity_weights`.

    Returns:
        ``(True, "")`` or ``(False, reason)`` naming the missing file and where to get it.
    """
    try:
        find_identity_weights(path)
    except WeightsUnavailableError as e:
        return False, str(e)
    return True, ""


def load_identity_net(
    path: str | Path | None = None, device: torch.device | str = "cpu", **arch: Sequence[int]
) -> IdentityNet:
    """Builds :class:`IdentityNet` and loads the ArcFace checkpoint strictly (frozen, eval mode).

    Args:
        path: Explicit checkpoint, or None for the weights cache (see :func:`find_identity_weights`).
        device: Where to put the network.
        **arch: ``unit_counts`` / ``widths`` of a non-standard (test) network.

    Returns:
        The network.

    Raises:
        WeightsUnavailableError: The file is missing.
        CheckpointError: It is unreadable.
        StateDictMismatchError: Its keys or shapes are not the official ones.
    """
    file = find_identity_weights(path)
    sd = read_checkpoint(file)
    with torch.device("meta"):  # no random init of weights that are replaced at once
        net = IdentityNet(**arch)
    load_state_dict_strict(net, fill_num_batches_tracked(net, sd), str(file), assign=True)
    logger.debug("identity: ArcFace IR-SE50 from %s", file)
    return net.requires_grad_(False).eval().to(device)

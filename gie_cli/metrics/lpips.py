"""LPIPS v0.1 perceptual distance (Zhang et al., "The Unreasonable Effectiveness of Deep Features...", CVPR 2018).

Re-implemented without torchvision: the VGG16 and AlexNet ``features`` stacks use torchvision's module indices, so
torchvision's ImageNet checkpoints (``vgg16-397923af.pth``, ``alexnet-owt-7be5be79.pth``) load strictly after keeping
their ``features.*`` keys. The 1x1 linear heads are read from the installed ``lpips`` wheel
(``lpips/weights/v0.1/{vgg,alex}.pth``) without importing the ``lpips`` package, whose ``__init__`` imports
torchvision. Nothing is ever downloaded: a missing file raises :class:`~gie_cli.errors.WeightsUnavailableError`.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from gie_cli.errors import WeightsUnavailableError
from gie_cli.io.checkpoint import get_prefixed, load_state_dict_strict, read_checkpoint

__all__ = [
    "LPIPS",
    "LPIPS_NETS",
    "BACKBONE_FILES",
    "BACKBONE_URLS",
    "backbone_weight_candidates",
    "find_backbone_weights",
    "head_weights_path",
    "lpips_available",
]

logger = logging.getLogger(__name__)

LPIPS_NETS = ("vgg", "alex")
"""Backbones supported by :class:`LPIPS`."""

BACKBONE_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}
"""torchvision checkpoint file name of each backbone."""

BACKBONE_URLS = {net: f"https://download.pytorch.org/models/{name}" for net, name in BACKBONE_FILES.items()}
"""Official download address of each backbone checkpoint."""

_HEADS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/{net}.pth"

# torchvision ``features`` layouts: an int is a 3x3 conv (padding 1) + ReLU, "M" a 2x2 max-pool (VGG16, config "D").
_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"
)  # fmt: skip
_TAPS = {"vgg": (3, 8, 15, 22, 29), "alex": (1, 4, 7, 9, 11)}  # relu1_2..relu5_3 / relu1..relu5 in ``features``
_CHANNELS = {"vgg": (64, 128, 256, 512, 512), "alex": (64, 192, 384, 256, 256)}

# ScalingLayer of lpips v0.1: maps [-1, 1] inputs to ImageNet-normalised ones.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10


def _vgg16_features() -> nn.Sequential:
    """torchvision ``vgg16().features``: 31 modules, convs at 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, int(v), kernel_size=3, padding=1), nn.ReLU()]
            c_in = int(v)
    return nn.Sequential(*layers)


def _alexnet_features() -> nn.Sequential:
    """torchvision ``alexnet().features``: 13 modules, convs at 0, 3, 6, 8, 10."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


class _Backbone(nn.Module):
    """A torchvision ``features`` stack that returns the activations LPIPS compares.

    Args:
        net: ``"vgg"`` or ``"alex"``.
    """

    def __init__(self, net: str) -> None:
        super().__init__()
        self.features = _vgg16_features() if net == "vgg" else _alexnet_features()
        self.taps = _TAPS[net]

    def forward(self, x: Tensor) -> list[Tensor]:
        """Runs the stack up to the last tap.

        Args:
            x: ``[B, 3, H, W]`` ImageNet-normalised images.

        Returns:
            Five feature maps ``[B, C_k, H_k, W_k]`` (the ReLU outputs at ``taps``).
        """
        outs: list[Tensor] = []
        for i, layer in enumerate(self.features):
            if i > self.taps[-1]:
                break
            x = layer(x)
            if i in self.taps:
                outs.append(x)
        return outs


class _LinearHead(nn.Module):
    """lpips ``NetLinLayer`` at inference: a bias-free 1x1 conv to one channel (``model.1`` as in the wheel's keys;
    the training-time dropout at ``model.0`` is an identity here).

    Args:
        channels: Input channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        """Maps ``[B, C, H, W]`` to ``[B, 1, H, W]``."""
        return self.model(x)


def _check_net(net: str) -> str:
    if net not in LPIPS_NETS:
        raise ValueError(f"LPIPS net must be one of {LPIPS_NETS}, got {net!r}")
    return net


def backbone_weight_candidates(net: str, path: str | Path | None = None) -> list[Path]:
    """The paths checked for the backbone checkpoint of ``net``, in lookup order.

    An explicit ``path`` is the only candidate (a directory means ``<path>/<file>``); otherwise
    ``<gie weights cache>/torch/<file>`` (where ``gie weights download lpips.vgg|lpips.alex`` puts it; the cache is
    ``GIE_CACHE_DIR``, else ``$XDG_CACHE_HOME/gie``, else the platform cache folder), then
    ``torch.hub.get_dir()/checkpoints/<file>``.

    Args:
        net: ``"vgg"`` or ``"alex"``.
        path: Explicit checkpoint file or folder, or None.

    Returns:
        Candidate file paths (not necessarily existing).
    """
    name = BACKBONE_FILES[_check_net(net)]
    if path is not None:
        p = Path(path).expanduser()
        return [p / name if p.is_dir() else p]
    from gie_cli.weights.cache import cache_dir

    out = [cache_dir() / "torch" / name]
    out.append(Path(torch.hub.get_dir()) / "checkpoints" / name)
    return out


def find_backbone_weights(net: str, path: str | Path | None = None) -> Path:
    """Locates the torchvision checkpoint of the LPIPS backbone; never downloads.

    Args:
        net: ``"vgg"`` or ``"alex"``.
        path: Explicit checkpoint file or folder; when given, no other location is tried.

    Returns:
        The first existing candidate of :func:`backbone_weight_candidates`.

    Raises:
        WeightsUnavailableError: No candidate exists; names the file, every path checked and the official URL.
    """
    candidates = backbone_weight_candidates(net, path)
    for p in candidates:
        if p.is_file():
            return p
    raise WeightsUnavailableError(
        BACKBONE_FILES[net],
        candidates[0],
        [BACKBONE_URLS[net]],
        candidates,
        hint=f"or run `gie weights download lpips.{net}`" if path is None else None,
    )


def head_weights_path(net: str) -> Path:
    """Path of the v0.1 linear-head weights inside the installed ``lpips`` wheel (the package is not imported).

    Args:
        net: ``"vgg"`` or ``"alex"``.

    Returns:
        ``<site-packages>/lpips/weights/v0.1/<net>.pth``.

    Raises:
        WeightsUnavailableError: ``lpips`` is not installed or the file is missing.
    """
    name = f"{_check_net(net)}.pth"
    url = _HEADS_URL.format(net=net)
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise WeightsUnavailableError(
            f"lpips/weights/v0.1/{name}",
            f"<site-packages>/lpips/weights/v0.1/{name}",
            [url],
            hint="install the lpips package (pip install lpips, pinned with the installed torch version)",
        )
    candidates = [Path(f) / "weights" / "v0.1" / name for f in folders]
    for p in candidates:
        if p.is_file():
            return p
    raise WeightsUnavailableError(f"lpips/weights/v0.1/{name}", candidates[0], [url], candidates)


def lpips_available(net: str, backbone_weights: str | Path | None = None) -> tuple[bool, str]:
    """Whether :class:`LPIPS` with pretrained ``net`` can be built here, checking only that the files exist.

    Args:
        net: ``"vgg"`` or ``"alex"``.
        backbone_weights: Explicit backbone checkpoint (as in :class:`LPIPS`).

    Returns:
        ``(True, "")``, or ``(False, reason)`` where ``reason`` names the missing file and where to get it. A file
        that exists but is corrupt is only detected when the model is built.
    """
    if net not in LPIPS_NETS:
        return False, f"unknown LPIPS net {net!r} (known: {', '.join(LPIPS_NETS)})"
    try:
        head_weights_path(net)
        find_backbone_weights(net, backbone_weights)
    except WeightsUnavailableError as e:
        return False, str(e)
    return True, ""


class LPIPS(nn.Module):
    """LPIPS v0.1 distance, equal to ``lpips.LPIPS(net=net, version="0.1")`` with ``spatial=False``.

    The model is frozen (no parameter requires grad, always in eval mode, ``train()`` is a no-op) but differentiable
    with respect to its inputs, so it can serve as an optimisation loss.

    Args:
        net: Backbone, ``"vgg"`` (VGG16: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) or ``"alex"`` (relu1..relu5).
        backbone_weights: Explicit torchvision checkpoint (file or folder holding it). None looks in
            ``<gie weights cache>/torch/`` then ``torch.hub.get_dir()/checkpoints/``.
        pretrained_backbone: False leaves the backbone randomly initialised (tests only); the heads are always
            the pretrained v0.1 ones.

    Raises:
        ValueError: Unknown ``net``.
        WeightsUnavailableError: The backbone checkpoint or the lpips head weights are missing.
        CheckpointError: A checkpoint file is unreadable.
        StateDictMismatchError: A checkpoint does not have the expected keys/shapes.
    """

    def __init__(
        self, net: str = "vgg", backbone_weights: str | Path | None = None, pretrained_backbone: bool = True
    ) -> None:
        super().__init__()
        self.net_name = _check_net(net)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.net = _Backbone(net)
        self.lins = nn.ModuleList(_LinearHead(c) for c in _CHANNELS[net])

        heads = head_weights_path(net)
        head_sd = read_checkpoint(heads)
        load_state_dict_strict(self.lins, _heads_to_modulelist(head_sd), f"{heads}")
        if pretrained_backbone:
            path = find_backbone_weights(net, backbone_weights)
            sd = get_prefixed(read_checkpoint(path), "features.")
            load_state_dict_strict(self.net.features, sd, f"{path} (features.*)")
            logger.debug("LPIPS-%s: backbone %s, heads %s", net, path, heads)
        else:
            logger.debug("LPIPS-%s: random backbone, heads %s", net, heads)

        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> LPIPS:
        """Keeps the frozen metric in eval mode whatever ``mode`` is."""
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """LPIPS distance between two image batches.

        Args:
            x: ``[B, 3, H, W]`` images in ``[-1, 1]``; ``H, W >= 16`` for ``"vgg"``, ``>= 31`` for ``"alex"``.
            y: ``[B, 3, H, W]`` images in ``[-1, 1]``, same shape as ``x``.

        Returns:
            ``[B]`` distances (0 for identical images), differentiable w.r.t. ``x`` and ``y``; the lpips package
            returns the same values shaped ``[B, 1, 1, 1]``.

        Raises:
            ValueError: Shapes differ or are not ``[B, 3, H, W]``.
        """
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS expects two [B,3,H,W] tensors of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        b = x.shape[0]
        z = (torch.cat([x, y]) - self.shift) / self.scale
        total = x.new_zeros(b)
        for feat, lin in zip(self.net(z), self.lins, strict=True):
            f = feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + _EPS)
            diff = (f[:b] - f[b:]).pow(2)
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total


def _heads_to_modulelist(sd: dict) -> dict:
    """Maps the wheel's ``lin{k}.model.1.weight`` keys to ``{k}.model.1.weight`` (keys of ``LPIPS.lins``)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("lin") and "." in k and k[3 : k.index(".")].isdigit():
            out[k[3:]] = v
        else:
            out[k] = v  # left as is: reported as unexpected by the strict load
    return out

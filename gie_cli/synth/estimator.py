"""Attribute estimator for the synthetic face world: image -> attribute vector (a small CNN regressor).

Used to label generator samples for direction fitting and to measure what an edit changed (benchmarks). Trained with
``gie train --method attributes --data synthface`` (:mod:`gie_cli.synth.train`) on renders whose attributes are known
exactly.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gie_cli.io.checkpoint import load_safetensors, load_state_dict_strict, save_safetensors
from gie_cli.synth.params import ATTRIBUTES

log = logging.getLogger(__name__)

ESTIMATOR_FORMAT = "gie-attribute-estimator/1"


class AttributeEstimator(nn.Module):
    """Conv stack (stride-2 stages) + global pooling + linear head.

    Args:
        n_attributes: outputs (the world's ``ATTRIBUTES``).
        width: channels of the first stage (doubled per stage, capped at 8x).
        input_size: images are resized to this before the network.
    """

    def __init__(self, n_attributes: int = len(ATTRIBUTES), width: int = 32, input_size: int = 64) -> None:
        super().__init__()
        self.config = {"n_attributes": n_attributes, "width": width, "input_size": input_size}
        self.input_size = input_size
        layers: list[nn.Module] = []
        c_in, c = 3, width
        for _ in range(4):
            layers += [
                nn.Conv2d(c_in, c, 3, stride=2, padding=1),
                nn.BatchNorm2d(c),
                nn.SiLU(),
                nn.Conv2d(c, c, 3, padding=1),
                nn.BatchNorm2d(c),
                nn.SiLU(),
            ]
            c_in, c = c, min(c * 2, width * 8)
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, n_attributes)

    def forward(self, img: Tensor) -> Tensor:
        """Args: img [B,3,H,W] in [-1, 1]. Returns attributes [B, A] (the world's [-1, 1] scale)."""
        assert img.ndim == 4 and img.shape[1] == 3, f"images must be [B,3,H,W], got {tuple(img.shape)}"
        if img.shape[-1] != self.input_size or img.shape[-2] != self.input_size:
            img = F.interpolate(img, size=(self.input_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        return self.head(self.body(img).mean(dim=(2, 3)))

    def save(self, path: str | Path) -> None:
        save_safetensors(
            path,
            dict(self.state_dict()),
            {"format": ESTIMATOR_FORMAT, **self.config, "attributes": [a.name for a in ATTRIBUTES]},
        )

    @classmethod
    def load(cls, path: str | Path) -> AttributeEstimator:
        tensors, cfg = load_safetensors(path)
        m = cls(cfg["n_attributes"], cfg["width"], cfg["input_size"])
        load_state_dict_strict(m, tensors, str(path))
        return m.eval()


_ESTIMATORS: dict[str, AttributeEstimator] = {}


@torch.no_grad()
def world_attributes(images: Tensor) -> Tensor:
    """The embedded attribute estimator (``world.attributes``) as a labelling function.

    For ``gie directions fit interfacegan --classifier gie_cli.synth.estimator:world_attributes --on image
    --attribute smile``; ``$GIE_WORLD_ESTIMATOR`` names another estimator file.

    Args:
        images: ``[B, 3, H, W]`` in [-1, 1].

    Returns:
        ``[B, A]`` attribute estimates (columns: :data:`world_attributes.columns`).
    """
    import os

    from gie_cli.weights import resolve_weights

    spec = os.environ.get("GIE_WORLD_ESTIMATOR") or None
    path = str(resolve_weights(spec, method="attributes", what="an attribute estimator"))
    if path not in _ESTIMATORS:
        _ESTIMATORS[path] = AttributeEstimator.load(path)
    net = _ESTIMATORS[path].to(images.device)
    return net(images.float())


world_attributes.columns = [a.name for a in ATTRIBUTES]  # type: ignore[attr-defined]

"""Ground truth of the synthetic world for the benchmark: attribute errors and the renderer's true edited photos."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from gie_cli.errors import GieError

__all__ = ["WorldJudge", "load_judge", "target_attribute"]

log = logging.getLogger(__name__)


def target_attribute(direction) -> str | None:
    """The world attribute a direction edits: its name when that is an attribute (the world's directions are named
    after the attribute they were fitted on, ``scripts/build_zoo.sh``), else the label direction's
    ``attribute_name``; None when neither is a world attribute."""
    from gie_cli.synth.params import ATTRIBUTE_NAMES

    if direction.name in ATTRIBUTE_NAMES:
        return direction.name
    name = (direction.params or {}).get("attribute_name")
    return name if name in ATTRIBUTE_NAMES else None


class WorldJudge:
    """Measures reconstructions and edits of world faces against their known parameters.

    Args:
        estimator: The world's attribute estimator (``AttributeEstimator``), images in [-1, 1] -> ``[B, A]`` on the
            attributes' [-1, 1] scale.
        device: Where the estimator runs.
    """

    def __init__(self, estimator: torch.nn.Module, device: torch.device) -> None:
        self.estimator = estimator.to(device).eval().requires_grad_(False)
        self.device = device

    @torch.no_grad()
    def attributes(self, images: Tensor) -> Tensor:
        """``[B, A]`` estimated attributes (CPU, float32) of ``[B, 3, H, W]`` images in [-1, 1]."""
        return self.estimator(images.to(self.device, torch.float32).clamp(-1, 1)).float().cpu()

    @staticmethod
    def truth(params: Sequence) -> Tensor:
        """``[B, A]`` true attribute vectors (``attribute_vector``: each attribute mapped from its range to [-1, 1])."""
        from gie_cli.synth.params import attribute_vector

        return torch.from_numpy(np.stack([attribute_vector(p) for p in params]))

    def attribute_error(self, images: Tensor, params: Sequence) -> Tensor:
        """``[B]`` mean absolute error of the estimated attributes of ``images`` against ``params``' true ones."""
        return (self.attributes(images) - self.truth(params)).abs().mean(dim=1)

    @staticmethod
    def edited_params(params: Sequence, attribute: str, change: Tensor) -> list:
        """The source faces with ``attribute`` moved by ``change`` (on its [-1, 1] scale), everything else equal.

        Args:
            params: ``B`` source ``FaceParams``.
            attribute: World attribute name.
            change: ``[B]`` changes on the [-1, 1] scale; in the attribute's own units that is
                ``change * (high - low) / 2`` (the inverse of ``attribute_vector``'s linear map). The renderer clips
                the new value to the attribute's range.

        Returns:
            ``B`` new ``FaceParams`` (``dataclasses.replace`` of the sources).
        """
        from gie_cli.synth.params import ATTRIBUTES, attribute_index

        spec = ATTRIBUTES[attribute_index(attribute)]
        half = (spec.high - spec.low) / 2.0
        out = []
        for p, c in zip(params, change.tolist(), strict=True):
            out.append(dataclasses.replace(p, **{attribute: float(getattr(p, attribute)) + float(c) * half}))
        return out

    @staticmethod
    def render(params: Sequence, size: int) -> Tensor:
        """``[B, 3, size, size]`` renders in [-1, 1] of ``params``."""
        from gie_cli.synth.render import render

        return torch.stack([render(p, size).to_tensor() for p in params])

    def edit_ground_truth(
        self, params: Sequence, attribute: str, recon: Tensor, edited: Tensor, size: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The renderer's true edited photos for an edit, with the change the edit achieved.

        The change is measured by the estimator on the method's own images (edited minus unedited
        reconstruction), so a method is compared with the photo it should have produced for the amount it edited.

        Args:
            params: ``B`` source ``FaceParams``.
            attribute: The edited world attribute.
            recon: ``[B, 3, H, W]`` unedited reconstructions in [-1, 1].
            edited: ``[B, 3, H, W]`` edited images in [-1, 1].
            size: Resolution of the ground-truth renders.

        Returns:
            ``(ground_truth [B, 3, size, size], target_change [B], others_change [B])``: the renders, the
            estimated change of ``attribute`` and the mean absolute change of the other attributes.
        """
        from gie_cli.synth.params import attribute_index

        delta = self.attributes(edited) - self.attributes(recon)
        i = attribute_index(attribute)
        target = delta[:, i]
        others = torch.cat([delta[:, :i], delta[:, i + 1 :]], dim=1).abs().mean(dim=1)
        gt = self.render(self.edited_params(params, attribute, target), size)
        return gt, target, others


def load_judge(spec: str | None, device: torch.device) -> tuple[WorldJudge | None, str | None, str]:
    """The world judge with the attribute estimator ``spec`` (a file or registry name; None = the embedded one).

    Returns:
        ``(judge, None, weights_path)`` or ``(None, reason, "")`` when the estimator cannot be loaded.
    """
    from gie_cli.synth.estimator import AttributeEstimator
    from gie_cli.weights import resolve_weights

    try:
        path = resolve_weights(spec, method="attributes", what="an attribute estimator")
        est = AttributeEstimator.load(path)
    except GieError as e:
        return None, f"attribute estimator unavailable: {e}", ""
    return WorldJudge(est, device), None, str(path)

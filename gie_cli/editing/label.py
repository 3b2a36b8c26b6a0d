"""Style Transformer (Hu et al., CVPR 2022) label-based editing: gradients of a latent attribute classifier.

The supplement's two algorithms edit a W+ code ``w`` toward a target label ``y_t`` of attribute ``k`` with a latent
classifier ``C``; both give a per-latent offset ``w_edit = w + alpha * d(w)`` whose rows (one per W+ layer) are unit
vectors, ``L(w) = BCE(sigmoid(C(w)_k), y_t)``:

- first order: ``d = -normalize(grad L(w))``;
- second order: ``d = -normalize(grad L(w) - xi * grad L(w + xi * r))`` with ``r ~ N(0, I)`` and a small ``xi``. This
  is the supplement's Algorithm 2 (``r_d.grad`` is ``xi * grad L(w + xi r)`` by the chain rule, ``r_0.grad`` is
  ``grad L(w)``) with the sign of the official training code (``sapphire497/style-transformer``, which adds the
  normalised difference), so that a positive ``alpha`` moves ``C`` toward ``y_t``. The official code also subtracts
  ``alpha * r`` itself; that random term is left out here, as in the supplement.

``normalize`` is per W+ layer (over the style dimension), as the official code does. A code the classifier already
places at the target with saturated confidence has a zero loss gradient, hence a zero offset.
:class:`LatentClassifier` has the official ``LCNet_40`` layout (``fcs.*``, ``indep_fcs.*``, ``output_fcs.*``), so its
trained weights load strictly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gie_cli.errors import UsageError
from gie_cli.io.checkpoint import get_prefixed, load_state_dict_strict, read_checkpoint

log = logging.getLogger(__name__)

#: CelebA's 40 attribute names in dataset order (the official LCNet_40 output order).
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
    "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young"
).split()

ACTIVATIONS = ("relu", "leakyrelu")


class LatentClassifier(nn.Module):
    """Multi-attribute classifier on flattened W+ codes (layout of Style Transformer's ``LCNet_40``).

    ``x -> [Linear + activation] * (len(fmaps) - 1)`` then, per attribute, ``Linear(fmaps[-1], embed_dim)`` and
    ``Linear(embed_dim, 1)`` (no activation between them).

    Args:
        fmaps: layer widths, ``fmaps[0] = n_latent * style_dim`` (official: ``[9216, 2048, 512]``).
        n_classes: number of attributes (official: 40, CelebA order).
        embed_dim: width of the per-attribute embedding (official: 32).
        activation: ``relu`` or ``leakyrelu`` (slope 0.2; the official label-editing code uses it).
        attributes: optional attribute names (``len == n_classes``).
    """

    def __init__(
        self,
        fmaps: Sequence[int],
        n_classes: int,
        embed_dim: int = 32,
        activation: str = "leakyrelu",
        attributes: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if len(fmaps) < 2:
            raise ValueError(f"fmaps needs at least 2 widths, got {list(fmaps)}")
        if attributes is not None and len(attributes) != n_classes:
            raise ValueError(f"{len(attributes)} attribute names for {n_classes} classes")
        self.fmaps = [int(f) for f in fmaps]
        self.n_classes, self.embed_dim, self.activation = int(n_classes), int(embed_dim), activation
        self.attributes = list(attributes) if attributes is not None else None
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(self.fmaps[:-1], self.fmaps[1:], strict=True))
        self.indep_fcs = nn.ModuleList(nn.Linear(self.fmaps[-1], embed_dim) for _ in range(n_classes))
        self.output_fcs = nn.ModuleList(nn.Linear(embed_dim, 1) for _ in range(n_classes))
        self.act = nn.ReLU() if activation == "relu" else nn.LeakyReLU(0.2)
        self.generator: dict = {}  # the generator record it was trained for (gie files; not part of the config)

    @property
    def config(self) -> dict:
        """Constructor kwargs (JSON-serialisable)."""
        return {
            "fmaps": self.fmaps,
            "n_classes": self.n_classes,
            "embed_dim": self.embed_dim,
            "activation": self.activation,
            "attributes": self.attributes,
        }

    def forward(self, wplus: Tensor) -> Tensor:
        """``wplus [B, n_latent, D]`` (or flattened ``[B, n_latent * D]``) -> attribute logits ``[B, n_classes]``."""
        x = wplus.reshape(wplus.shape[0], -1)
        assert x.shape[1] == self.fmaps[0], f"classifier takes {self.fmaps[0]} inputs, got {x.shape[1]}"
        for fc in self.fcs:
            x = self.act(fc(x))
        return torch.cat([out(emb(x)) for emb, out in zip(self.indep_fcs, self.output_fcs, strict=True)], dim=1)

    def attribute_index(self, attribute: str | int) -> int:
        """Resolve an attribute given by index or name (names: the classifier's own, else CelebA's for 40 classes).

        Raises:
            ValueError: unknown name or index out of range.
        """
        if isinstance(attribute, int) or str(attribute).lstrip("-").isdigit():
            idx = int(attribute)
            if not 0 <= idx < self.n_classes:
                raise ValueError(f"attribute index {idx} out of range 0..{self.n_classes - 1}")
            return idx
        names = self.attributes or (list(CELEBA_ATTRIBUTES) if self.n_classes == len(CELEBA_ATTRIBUTES) else [])
        lower = [n.lower() for n in names]
        if str(attribute).lower() not in lower:
            known = ", ".join(names) if names else "none (the classifier has no attribute names; use an index)"
            raise ValueError(f"unknown attribute {attribute!r}; known: {known}")
        return lower.index(str(attribute).lower())


def classifier_config_from_state_dict(state_dict: dict[str, Tensor]) -> dict:
    """Infer ``fmaps``, ``n_classes`` and ``embed_dim`` of an ``LCNet_40``-layout state dict (not the activation).

    Raises:
        ValueError: the keys do not have that layout.
    """
    n_fc = len({k.split(".")[1] for k in state_dict if k.startswith("fcs.") and k.endswith(".weight")})
    n_cls = len({k.split(".")[1] for k in state_dict if k.startswith("output_fcs.") and k.endswith(".weight")})
    if not n_fc or not n_cls or "indep_fcs.0.weight" not in state_dict:
        raise ValueError("not a latent classifier state dict (expected fcs.*, indep_fcs.*, output_fcs.* keys)")
    fmaps = [int(state_dict["fcs.0.weight"].shape[1])]
    fmaps += [int(state_dict[f"fcs.{i}.weight"].shape[0]) for i in range(n_fc)]
    return {"fmaps": fmaps, "n_classes": n_cls, "embed_dim": int(state_dict["indep_fcs.0.weight"].shape[0])}


#: Config key of gie's latent classifier files (``{"latent_classifier": config, "generator": binding}``).
CLASSIFIER_KEY = "latent_classifier"


def save_latent_classifier(
    classifier: LatentClassifier, path: str | Path, generator: dict | None = None, **extra: object
) -> Path:
    """Write a classifier as gie safetensors (``classifier.*`` tensors; its config, the generator record it was
    trained for, and ``extra`` facts in the JSON config), atomically."""
    from gie_cli.io.checkpoint import save_safetensors

    tensors = {f"classifier.{k}": v.detach().float().cpu().contiguous() for k, v in classifier.state_dict().items()}
    save_safetensors(path, tensors, {CLASSIFIER_KEY: classifier.config, "generator": generator or {}, **extra})
    return Path(path)


def load_latent_classifier(path: str | Path, activation: str | None = None) -> LatentClassifier:
    """A trained latent classifier from an official ``LCNet_40`` checkpoint (``{'state_dict': ...}``, keys optionally
    under ``classifier.``) or a gie safetensors file, frozen.

    A gie file names its attributes, activation and generator (``classifier.generator``, a direction binding
    record; empty for official files).

    Args:
        path: the checkpoint.
        activation: ``leakyrelu`` (official label editing) or ``relu``; None = the file's (gie) or ``leakyrelu``
            (official checkpoints do not record it).

    Raises:
        UsageError: the keys do not have the ``LCNet_40`` layout.
        CheckpointError: unreadable file, or weights that do not load strictly.
    """
    from gie_cli.io.checkpoint import load_safetensors

    config: dict = {}
    if Path(path).suffix.lower() == ".safetensors":
        sd, config = load_safetensors(path)
    else:
        ck = read_checkpoint(path)
        sd = ck["state_dict"] if isinstance(ck.get("state_dict"), dict) else ck
    if any(k.startswith("classifier.") for k in sd):
        sd = get_prefixed(sd, "classifier")
    try:
        cfg = classifier_config_from_state_dict(sd)
    except ValueError as e:
        raise UsageError(f"latent classifier {path}: {e}", param="classifier", value=path) from None
    saved = config.get(CLASSIFIER_KEY) or {}
    clf = LatentClassifier(
        **cfg, activation=activation or saved.get("activation") or "leakyrelu", attributes=saved.get("attributes")
    )
    load_state_dict_strict(clf, sd, str(path))
    clf.generator = dict(config.get("generator") or {})
    return clf.eval().requires_grad_(False)


def loss_gradient(classifier: nn.Module, wplus: Tensor, attribute: int, target: float) -> Tensor:
    """``grad_w BCE(sigmoid(C(w)_k), target)`` summed over the batch (each item's gradient is its own)."""
    w = wplus.detach().requires_grad_(True)
    logits = classifier(w)[:, attribute]
    loss = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(target)), reduction="sum")
    (grad,) = torch.autograd.grad(loss, w)
    return grad


def _normalize_rows(d: Tensor, eps: float = 1e-12) -> Tensor:
    """Unit-normalise each W+ row ``[B, L, D]`` (rows with zero norm stay zero)."""
    return d / d.norm(dim=-1, keepdim=True).clamp_min(eps)


def label_edit_direction(
    classifier: nn.Module,
    wplus: Tensor,
    attribute: int,
    target: float = 1.0,
    order: int = 1,
    xi: float = 1e-3,
    seed: int = 0,
    layers: Sequence[int] | None = None,
) -> Tensor:
    """Per-latent editing direction ``d(w)`` (unit rows) of the first- or second-order label-based edit.

    Args:
        classifier: latent classifier ``[B, L, D] -> logits [B, K]`` (kept frozen; its gradients are not touched).
        wplus: W+ codes ``[B, L, D]``.
        attribute: attribute index ``k``.
        target: target label ``y_t`` in [0, 1].
        order: 1 or 2.
        xi: finite-difference step of the second-order edit (supplement: 1e-3).
        seed: seed of the random probe ``r`` (second order), so every call with the same codes gives the same path.
        layers: W+ layers allowed to change (default all); the others get a zero row.

    Returns:
        ``[B, L, D]``; add ``alpha * d`` to move ``C(w)_k`` toward ``target`` for ``alpha > 0``.
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    w = wplus.detach().float()
    with torch.enable_grad():
        g0 = loss_gradient(classifier, w, attribute, target)
        if order == 2:
            gen = torch.Generator(device="cpu").manual_seed(int(seed))
            r = torch.randn(w.shape, generator=gen).to(w)
            g0 = g0 - xi * loss_gradient(classifier, w + xi * r, attribute, target)
    if layers is not None:
        mask = torch.zeros(w.shape[1], dtype=torch.bool, device=w.device)
        mask[list(layers)] = True
        g0 = g0 * mask[None, :, None]
    return -_normalize_rows(g0)

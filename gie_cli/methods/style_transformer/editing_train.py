"""Training Style Transformer's editing models (Hu et al., CVPR 2022) on labelled faces: the latent attribute
classifier of label-based editing (``gie train --method latent_classifier``) and the editing transformer of
reference-based editing (``gie train --method edit_transformer``). Both work on W+ codes, so their training data is
the codes inversion methods give for faces whose attributes are known (gie's synthetic world)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gie_cli.errors import UsageError
from gie_cli.settings import parse_settings
from gie_cli.training import Trainer
from gie_cli.training.data import index_batches

log = logging.getLogger(__name__)

#: Faces inverted per batch when the training codes are made.
INVERT_BATCH = 64


@dataclass
class LabelledCodes:
    """W+ codes of labelled faces from one or more inversion methods.

    Attributes:
        codes: ``[N, L, D]`` (every method's codes of every face, method-major).
        labels: ``[N, A]`` attribute labels in [0, 1] (the world's [-1, 1] attributes mapped linearly).
        face: ``[N]`` index of the face each code came from (to hold whole faces out).
        attributes: the ``A`` attribute names.
        generator: the direction-binding record of the methods' generator.
        methods: ``name=weights`` of each method used.
    """

    codes: Tensor
    labels: Tensor
    face: Tensor
    attributes: list[str]
    generator: dict
    methods: list[str]

    def split(self, holdout: float) -> tuple[Tensor, Tensor]:
        """``(train, held_out)`` indexes of codes: the last ``holdout`` fraction of faces is held out."""
        n_faces = int(self.face.max()) + 1
        cut = n_faces - int(round(holdout * n_faces))
        keep = self.face < cut
        return keep.nonzero()[:, 0], (~keep).nonzero()[:, 0]


def read_labelled_faces(folder: str | Path, limit: int = 0) -> tuple[list[Path], Tensor, list[str]]:
    """The aligned faces of a ``gie synth --faces`` folder with their attributes.

    Returns:
        ``(image files, attributes [N, A] in [-1, 1], attribute names)``.

    Raises:
        UsageError: no ``params.jsonl`` with aligned faces in the folder.
    """
    root = Path(folder)
    meta = root / "params.jsonl"
    if not meta.is_file():
        raise UsageError(
            f"{root} has no params.jsonl: the editing models train on faces with known attributes",
            hint="make them with `gie synth -o FOLDER --faces -n 4096`",
            param="data",
            value=root,
        )
    world = json.loads((root / "world.json").read_text()) if (root / "world.json").is_file() else {}
    names = [a["name"] for a in world.get("attributes", [])]
    files, attrs = [], []
    for line in meta.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") != "aligned" or "attributes" not in rec:
            continue
        files.append(root / rec["file"])
        attrs.append(rec["attributes"])
        if limit and len(files) >= limit:
            break
    if not files:
        raise UsageError(f"{meta} lists no aligned faces with attributes", hint="use `gie synth --faces`")
    if not names:
        from gie_cli.synth.params import ATTRIBUTE_NAMES

        names = list(ATTRIBUTE_NAMES)
    return files, torch.tensor(attrs, dtype=torch.float32), names


def _method_specs(spec: str, weights: str | None) -> list[tuple[str, str]]:
    """``[(method, weights)]`` from ``-w`` and a comma-separated ``name=weights`` list (a bare weights entry is
    taken by the method its file records)."""
    from gie_cli.weights import load_components, resolve_weights

    items = ([weights] if weights else []) + [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise UsageError("no inversion method to make codes with", hint="pass -w an e4e/Style Transformer checkpoint")
    out = []
    for item in items:
        name, sep, w = item.partition("=")
        if not sep:
            w = item
            comp = load_components(resolve_weights(w, method="editing training", what="an inversion checkpoint"))
            name = str(comp.config.get("method") or "")
            if not name:
                raise UsageError(f"{w} records no method", hint=f"write it as METHOD={w}", param="weights", value=w)
        out.append((name, w))
    return out


@torch.no_grad()
def invert_labelled_faces(
    folder: str | Path, methods: list[tuple[str, str]], device: torch.device, limit: int = 0
) -> LabelledCodes:
    """Invert every labelled face of ``folder`` with each method (:func:`read_labelled_faces`)."""
    from gie_cli.editing.binding import generator_binding, generator_fingerprint
    from gie_cli.io.images import image_to_tensor, load_image
    from gie_cli.methods import create_method

    files, attrs, names = read_labelled_faces(folder, limit)
    codes, faces, binding, fp = [], [], {}, None
    for name, w in methods:
        m = create_method(name, w, device)
        f = generator_fingerprint(m.generator)
        if fp is not None and f != fp:
            raise UsageError(f"{name}={w} renders with another generator than the first method", param="weights")
        fp, binding = f, binding or generator_binding(m.generator, m.weights_id)
        for i in range(0, len(files), INVERT_BATCH):
            x = torch.stack([image_to_tensor(load_image(p)) for p in files[i : i + INVERT_BATCH]]).to(device)
            codes.append(m.invert(x).wplus.float().cpu())
        faces.append(torch.arange(len(files)))
        log.info("inverted %d faces with %s (%s)", len(files), name, m.weights_id)
    n = len(methods)
    return LabelledCodes(
        torch.cat(codes), ((attrs + 1) / 2).clamp(0, 1).repeat(n, 1), torch.cat(faces), names, binding,
        [f"{a}={b}" for a, b in methods],
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------- classifier
@dataclass
class LatentClassifierTrainConfig:
    """Settings of ``gie train --method latent_classifier`` (``--set key=value``).

    Attributes:
        encoders: more inversion checkpoints whose codes join ``-w``'s (comma-separated ``[method=]weights``), so the
            classifier reads every method's W+ codes.
        hidden: widths after the input layer (official ``LCNet_40``: ``2048,512``).
        embed_dim: per-attribute embedding width (32).
        activation: ``leakyrelu`` (official label editing) or ``relu``.
        lr, weight_decay: AdamW settings.
        holdout: fraction of the faces held out (validation metrics ``val_bce``, ``val_acc``).
        limit: use at most this many faces (0 = all).
    """

    encoders: str = ""
    hidden: str = "256,128"
    embed_dim: int = 32
    activation: str = "leakyrelu"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    holdout: float = 0.1
    limit: int = 0


class LatentClassifierTrainer(Trainer):
    """Fits a multi-attribute :class:`~gie_cli.editing.label.LatentClassifier` to the W+ codes of labelled faces
    (BCE with the soft [0, 1] labels); exports a classifier file for ``gie edit --classifier``."""

    name = "latent_classifier"

    def __init__(self, data: str, weights: str | None, device, batch_size: int, seed: int, **settings: str) -> None:
        from gie_cli.editing.label import ACTIVATIONS, LatentClassifier

        self.cfg = c = parse_settings(LatentClassifierTrainConfig, settings, "latent_classifier training")
        if c.activation not in ACTIVATIONS:
            raise UsageError(f"activation={c.activation!r}", hint=" or ".join(ACTIVATIONS))
        try:
            hidden = [int(h) for h in c.hidden.split(",") if h.strip()]
        except ValueError:
            raise UsageError(f"hidden={c.hidden!r} must be comma-separated widths, e.g. 256,128") from None
        self.device = torch.device(device)
        self.data = invert_labelled_faces(data, _method_specs(c.encoders, weights), self.device, c.limit)
        self.train_idx, self.val_idx = self.data.split(c.holdout)
        torch.manual_seed(seed)
        d = self.data
        fmaps = [d.codes.shape[1] * d.codes.shape[2], *hidden]
        self.classifier = LatentClassifier(fmaps, len(d.attributes), c.embed_dim, c.activation, d.attributes)
        self.classifier.to(self.device).train()
        self.opt = torch.optim.AdamW(self.classifier.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        self.batch_size, self.seed = batch_size, seed

    def batches(self):
        for idx in index_batches(len(self.train_idx), min(self.batch_size, len(self.train_idx)), self.seed):
            yield self.train_idx[idx]

    def modules(self) -> dict[str, nn.Module]:
        return {"classifier": self.classifier}

    def optimizers(self) -> dict[str, Any]:
        return {"classifier": self.opt}

    def options(self) -> dict:
        d = self.data
        return {"trainer": asdict(self.cfg), "methods": d.methods, "codes": len(d.codes), "attributes": d.attributes}

    def train_step(self, batch: Tensor, step: int) -> dict[str, float]:
        x, y = self.data.codes[batch].to(self.device), self.data.labels[batch].to(self.device)
        loss = F.binary_cross_entropy_with_logits(self.classifier(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        metrics = {"bce": float(loss.detach())}
        if len(self.val_idx):
            metrics.update(self.evaluate(self.val_idx))
        return metrics

    @torch.no_grad()
    def evaluate(self, idx: Tensor) -> dict[str, float]:
        """BCE and accuracy (logit sign vs label above/below 0.5, labels within 0.1 of 0.5 left out) on ``idx``."""
        self.classifier.eval()
        logits = self.classifier(self.data.codes[idx].to(self.device)).cpu()
        self.classifier.train()
        y = self.data.labels[idx]
        sure = (y - 0.5).abs() > 0.1
        acc = ((logits > 0) == (y > 0.5))[sure].float().mean()
        return {"val_bce": float(F.binary_cross_entropy_with_logits(logits, y)), "val_acc": float(acc)}

    def export(self, path) -> None:
        from gie_cli.editing.label import save_latent_classifier

        self.classifier.eval()
        save_latent_classifier(self.classifier, path, self.data.generator, trained_on=self.data.methods)
        self.classifier.train()


def train_latent_classifier(**kwargs) -> LatentClassifierTrainer:
    """The ``latent_classifier`` trainer (catalog entry)."""
    return LatentClassifierTrainer(**kwargs)

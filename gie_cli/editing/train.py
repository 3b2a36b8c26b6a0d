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
#: The held-out metrics (``val_*``) are computed on the first step and every this many steps (the training loop logs
#: every 10th); the steps between report the last values.
VALIDATE_EVERY = 10


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


@dataclass
class CodesSettings:
    """The settings both editing trainers share (``--set key=value``).

    Attributes:
        encoders: more inversion checkpoints whose codes join ``-w``'s (comma-separated ``[method=]weights``), so the
            model reads every method's W+ codes.
        holdout: fraction of the faces held out (the ``val_*`` metrics).
        limit: use at most this many faces (0 = all).
    """

    encoders: str = ""
    holdout: float = 0.1
    limit: int = 0


class CodesTrainer(Trainer):
    """Base of the editing trainers: the labelled faces' codes, split into training and held-out faces, and when to
    compute the held-out metrics."""

    def load_codes(self, data: str, weights: str | None, device, cfg: CodesSettings) -> None:
        """Invert the faces of ``data`` (:func:`invert_labelled_faces`) and hold out ``cfg.holdout`` of them."""
        self.device = torch.device(device)
        self.data = invert_labelled_faces(data, _method_specs(cfg.encoders, weights), self.device, cfg.limit)
        self.train_idx, self.val_idx = self.data.split(cfg.holdout)
        self._val_metrics: dict[str, float] = {}

    def validation_due(self, step: int) -> bool:
        """Whether ``step`` computes the held-out metrics (the first step and every :data:`VALIDATE_EVERY`-th)."""
        return bool(len(self.val_idx)) and (step == 0 or step % VALIDATE_EVERY == VALIDATE_EVERY - 1)


# --------------------------------------------------------------------------------------------------- classifier
@dataclass
class LatentClassifierTrainConfig(CodesSettings):
    """Settings of ``gie train --method latent_classifier`` (``--set key=value``; with :class:`CodesSettings`' ).

    Attributes:
        hidden: widths after the input layer (official ``LCNet_40``: ``2048,512``).
        embed_dim: per-attribute embedding width (32).
        activation: ``leakyrelu`` (official label editing) or ``relu``.
        lr, weight_decay: AdamW settings.
    """

    hidden: str = "256,128"
    embed_dim: int = 32
    activation: str = "leakyrelu"
    lr: float = 1e-3
    weight_decay: float = 1e-4


class LatentClassifierTrainer(CodesTrainer):
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
        self.load_codes(data, weights, device, c)
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
        if self.validation_due(step):
            self._val_metrics = self.evaluate(self.val_idx)
        return metrics | self._val_metrics

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


# --------------------------------------------------------------------------------------------------- editor
@dataclass
class EditTransformerTrainConfig(CodesSettings):
    """Settings of ``gie train --method edit_transformer`` (``--set key=value``; with :class:`CodesSettings`').

    Attributes:
        classifier: the latent classifier (file or registry name) the losses read attributes with (required).
        attributes: comma-separated attributes it learns to transfer (default: all of the classifier's).
        lr: Adam learning rate (the supplement's 1e-3).
        attr_lambda: weight of the transfer loss ``BCE(C_k(w_e), sigmoid(C_k(w_r)))``.
        keep_lambda: weight of the keep loss ``BCE(C_j(w_e), sigmoid(C_j(w_s)))`` over the other attributes ``j``.
        latent_lambda: weight of ``|w_e - w_s|^2`` (mean over rows and width).
        nhead, dim_feedforward: the decoder layer (0 = twice ``style_dim``).
    """

    classifier: str = ""
    attributes: str = ""
    lr: float = 1e-3
    attr_lambda: float = 1.0
    keep_lambda: float = 1.0
    latent_lambda: float = 0.1
    nhead: int = 4
    dim_feedforward: int = 0


class EditTransformerTrainer(CodesTrainer):
    """Trains :class:`~gie_cli.editing.reference.EditTransformer` on random (source, reference, attribute) triples of
    labelled faces' codes, judged by a frozen latent classifier: the edited code takes the reference's value of the
    attribute and keeps the source's others, close to the source."""

    name = "edit_transformer"

    def __init__(self, data: str, weights: str | None, device, batch_size: int, seed: int, **settings: str) -> None:
        from gie_cli.editing.label import load_latent_classifier
        from gie_cli.editing.reference import EditTransformer
        from gie_cli.weights import resolve_weights

        self.cfg = c = parse_settings(EditTransformerTrainConfig, settings, "edit_transformer training")
        if not c.classifier:
            raise UsageError(
                "edit_transformer training needs --set classifier=FILE (a latent classifier for its losses)",
                hint="train one with `gie train --method latent_classifier`, or use world.latent_classifier",
            )
        clf_path = resolve_weights(c.classifier, method="edit_transformer training", what="a latent classifier")
        self.classifier = load_latent_classifier(clf_path).to(device)
        names = [a.strip() for a in c.attributes.split(",") if a.strip()] or list(self.classifier.attributes or [])
        if not names:
            raise UsageError("the classifier names no attributes: pass --set attributes=0,1,...")
        try:
            self.attr_idx = torch.tensor([self.classifier.attribute_index(a) for a in names])
        except ValueError as e:
            raise UsageError(f"edit_transformer setting attributes: {e}") from None
        self.load_codes(data, weights, device, c)
        d = self.data
        if d.codes.shape[1] * d.codes.shape[2] != self.classifier.fmaps[0]:
            raise UsageError(f"{clf_path}: the classifier does not read these codes ({list(d.codes.shape[1:])})")
        torch.manual_seed(seed)
        self.editor = EditTransformer(d.codes.shape[1], d.codes.shape[2], names, c.nhead, c.dim_feedforward)
        self.editor.generator = d.generator
        self.editor.to(self.device).train()
        self.opt = torch.optim.Adam(self.editor.parameters(), lr=c.lr)
        self.batch_size, self.seed = batch_size, seed
        self._val = self._triples(self.val_idx, torch.Generator().manual_seed(seed + 1), 512)

    def _triples(self, pool: Tensor, gen: torch.Generator, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """``n`` random (source, reference, attribute slot) triples from ``pool``."""
        if len(pool) == 0:
            return pool, pool, pool
        src = pool[torch.randint(len(pool), (n,), generator=gen)]
        ref = pool[torch.randint(len(pool), (n,), generator=gen)]
        return src, ref, torch.randint(len(self.attr_idx), (n,), generator=gen)

    def batches(self):
        gen = torch.Generator().manual_seed(self.seed)
        while True:
            yield torch.stack(self._triples(self.train_idx, gen, self.batch_size))

    def modules(self) -> dict[str, nn.Module]:
        return {"editor": self.editor}

    def optimizers(self) -> dict[str, Any]:
        return {"editor": self.opt}

    def options(self) -> dict:
        d = self.data
        return {"trainer": asdict(self.cfg), "methods": d.methods, "attributes": self.editor.attributes}

    def losses(self, src: Tensor, ref: Tensor, slot: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The weighted loss of a batch of triples (code indexes) and its terms; ``gap`` is the mean
        ``|sigmoid C_k(w_e) - sigmoid C_k(w_r)|`` (``gap0``: the same for the unedited source)."""
        c, d = self.cfg, self.data
        ws, wr = d.codes[src].to(self.device), d.codes[ref].to(self.device)
        k = self.attr_idx.to(self.device)[slot.to(self.device)]
        we = self.editor(ws, wr, slot.to(self.device))
        le, ls, lr = self.classifier(we), self.classifier(ws).detach(), self.classifier(wr).detach()
        rows = torch.arange(len(k), device=self.device)
        attr = F.binary_cross_entropy_with_logits(le[rows, k], torch.sigmoid(lr[rows, k]))
        others = torch.ones_like(le, dtype=torch.bool)
        others[rows, k] = False
        keep = F.binary_cross_entropy_with_logits(le[others], torch.sigmoid(ls[others]))
        lat = (we - ws).square().mean()
        loss = c.attr_lambda * attr + c.keep_lambda * keep + c.latent_lambda * lat
        pe, pr, ps = (torch.sigmoid(t[rows, k].detach()) for t in (le, lr, ls))
        terms = {
            "attr": float(attr.detach()),
            "keep": float(keep.detach()),
            "latent": float(lat.detach()),
            "gap": float((pe - pr).abs().mean()),
            "gap0": float((ps - pr).abs().mean()),
            "drift": float((torch.sigmoid(le[others].detach()) - torch.sigmoid(ls[others])).abs().mean()),
        }
        return loss, terms

    def train_step(self, batch: Tensor, step: int) -> dict[str, float]:
        loss, metrics = self.losses(*batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        metrics["loss"] = float(loss.detach())
        if self.validation_due(step):
            self.editor.eval()
            with torch.no_grad():
                _, val = self.losses(*self._val)
            self.editor.train()
            self._val_metrics = {f"val_{k}": v for k, v in val.items() if k in ("gap", "gap0", "drift")}
        return metrics | self._val_metrics

    def export(self, path) -> None:
        from gie_cli.editing.reference import save_edit_transformer

        self.editor.eval()
        save_edit_transformer(self.editor, path, trained_on=self.data.methods, classifier=self.cfg.classifier)
        self.editor.train()


def train_edit_transformer(**kwargs) -> EditTransformerTrainer:
    """The ``edit_transformer`` trainer (catalog entry)."""
    return EditTransformerTrainer(**kwargs)

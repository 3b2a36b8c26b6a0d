"""Fitting new directions: InterFaceGAN (Shen et al. 2020) boundaries, GANSpace (Härkönen et al. 2020) PCA,
StyleSpace (Wu et al. 2021) channels and Style Transformer (Hu et al. 2022) label-based editing paths."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gie_cli.editing.direction import Direction, check_name
from gie_cli.editing.errors import DirectionError
from gie_cli.editing.label import LatentClassifier
from gie_cli.editing.stylespace import style_vectors
from gie_cli.errors import UsageError
from gie_cli.models.stylegan2 import Generator

log = logging.getLogger(__name__)

SOLVERS = ("svm", "logistic")


# --------------------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample_w(generator: Generator, n: int, seed: int = 0, truncation: float = 1.0, batch: int = 4096) -> Tensor:
    """Sample ``n`` W codes ``[n, D]`` through the mapping network (z from a seeded CPU generator)."""
    gen = torch.Generator().manual_seed(int(seed))
    dev = generator.w_avg.device
    out = []
    for i in range(0, n, batch):
        z = torch.randn(min(batch, n - i), generator.style_dim, generator=gen).to(dev)
        out.append(generator.mapping(z, truncation).float().cpu())
    return torch.cat(out)


def load_function(spec: str) -> Callable:
    """Import ``module:function`` or ``path/to/file.py:function`` (a user's labelling function).

    Raises:
        UsageError: malformed spec, or the module/function cannot be found.
    """
    mod_name, sep, fn_name = spec.rpartition(":")
    if not sep or not mod_name or not fn_name:
        raise UsageError(
            f"labelling function {spec!r} is not MODULE:FUNCTION or FILE.py:FUNCTION", param="classifier", value=spec
        )
    try:
        if mod_name.endswith(".py"):
            s = importlib.util.spec_from_file_location(Path(mod_name).stem, mod_name)
            if s is None or s.loader is None:
                raise ImportError(f"cannot load {mod_name}")
            module = importlib.util.module_from_spec(s)
            s.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
        fn = getattr(module, fn_name)
    except (ImportError, AttributeError, OSError) as e:
        raise UsageError(f"labelling function {spec}: {e}", param="classifier", value=spec) from e
    if not callable(fn):
        raise UsageError(f"labelling function {spec}: {fn_name} is not callable", param="classifier", value=spec)
    return fn


@torch.no_grad()
def label_samples(
    generator: Generator,
    w: Tensor,
    fn: Callable[[Tensor], Any],
    on: str = "latent",
    batch: int = 16,
    attribute: int | None = None,
) -> Tensor:
    """Score sampled codes with a labelling function.

    Args:
        generator: renders the samples when ``on == "image"``.
        w: ``[N, D]`` W codes.
        fn: ``fn(batch) -> scores [B]`` (or ``[B, K]`` with ``attribute``); ``batch`` is ``w [B, D]`` (``on="latent"``)
            or images ``[B, 3, S, S]`` in [-1, 1] (``on="image"``, stored noise).
        on: ``latent`` or ``image``.
        batch: items per call.
        attribute: column of a multi-attribute output.

    Returns:
        ``[N]`` float scores.
    """
    dev = generator.w_avg.device
    out = []
    for i in range(0, len(w), batch):
        wb = w[i : i + batch].to(dev)
        x = wb if on == "latent" else generator(wb, noise_mode="const")
        s = torch.as_tensor(fn(x)).detach().float().cpu()
        if s.ndim == 2:
            if attribute is None:
                raise UsageError(
                    "the labelling function returns several scores per item",
                    hint="choose one column",
                    param="attribute",
                )
            s = s[:, attribute]
        out.append(s.reshape(-1))
    return torch.cat(out)


# --------------------------------------------------------------------------------------------------- InterFaceGAN
@dataclass
class BoundaryFit:
    """A fitted linear boundary.

    Attributes:
        normal: unit normal ``[F]`` pointing to the positive class.
        bias: offset of the hyperplane ``normal . x + bias = 0`` (after unit-normalising).
        stats: ``n_pos``, ``n_neg``, ``train_accuracy``, ``val_accuracy``.
    """

    normal: Tensor
    bias: float
    stats: dict[str, Any]


def _fit_linear(x: Tensor, y: Tensor, solver: str, c: float, max_iter: int) -> tuple[Tensor, Tensor]:
    """Primal linear SVM (squared hinge, as LinearSVC) or logistic regression, ``C * sum(loss) + |w|^2 / 2``,
    solved by L-BFGS in float64 on centred inputs. ``y`` in {-1, +1}."""
    x = x.double()
    y = y.double()
    mu = x.mean(0)
    xc = x - mu
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-10, tolerance_change=1e-14
    )

    def closure() -> Tensor:
        opt.zero_grad()
        m = y * (xc @ w + b)
        loss = F.relu(1 - m).square().sum() if solver == "svm" else F.softplus(-m).sum()
        obj = c * loss + 0.5 * w.square().sum()
        obj.backward()
        return obj

    with torch.enable_grad():
        opt.step(closure)
    w = w.detach()
    return w, (b.detach() - mu @ w)


def linear_boundary(
    latents: Tensor,
    labels: Tensor,
    solver: str = "svm",
    c: float = 1.0,
    chosen_ratio: float | None = None,
    split: float = 0.7,
    seed: int = 0,
    max_iter: int = 500,
) -> BoundaryFit:
    """InterFaceGAN's boundary: a linear classifier separating labelled latents; its unit normal is the direction.

    Args:
        latents: ``[N, F]`` (W codes, or flattened W+).
        labels: ``[N]`` binary labels (``{0, 1}`` or ``{-1, 1}``) or continuous scores. With scores, as InterFaceGAN,
            the ``chosen_ratio`` (default 0.02) highest and lowest scored samples are the positives and negatives.
        solver: ``svm`` (linear SVM, the paper's choice) or ``logistic``.
        c: inverse regularisation strength.
        chosen_ratio: fraction of extremes taken from each end (binary labels: all samples unless given).
        split: fraction of each class used for training; the rest measures ``val_accuracy``.
        seed: shuffle seed.
        max_iter: L-BFGS iterations.

    Raises:
        UsageError: an unknown solver, or fewer than 2 samples of a class.
    """
    if solver not in SOLVERS:
        raise UsageError(f"unknown solver {solver!r} (known: {', '.join(SOLVERS)})", param="solver", value=solver)
    x = latents.reshape(len(latents), -1).float()
    s = labels.reshape(-1).float()
    values = set(torch.unique(s).tolist())
    binary = values <= {0.0, 1.0} or values <= {-1.0, 1.0}
    order = torch.argsort(s, descending=True)
    if binary and chosen_ratio is None:
        pos_idx, neg_idx = torch.nonzero(s > 0).flatten(), torch.nonzero(s <= 0).flatten()
    else:
        k = max(1, int(len(s) * (chosen_ratio if chosen_ratio is not None else 0.02)))
        pos_idx, neg_idx = order[:k], order[-k:]
    if len(pos_idx) < 2 or len(neg_idx) < 2:
        raise UsageError(f"need at least 2 positive and 2 negative samples, got {len(pos_idx)} and {len(neg_idx)}")
    gen = torch.Generator().manual_seed(int(seed))
    parts = []
    for idx, sign in ((pos_idx, 1.0), (neg_idx, -1.0)):
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_train = max(1, min(len(idx) - 1, round(len(idx) * split))) if split < 1 else len(idx)
        parts.append((idx[:n_train], idx[n_train:], sign))
    train = torch.cat([p[0] for p in parts])
    y_train = torch.cat([torch.full((len(p[0]),), p[2]) for p in parts])
    w, b = _fit_linear(x[train], y_train, solver, c, max_iter)
    norm = w.norm()
    if not norm > 0:
        raise DirectionError("the fitted boundary is degenerate (zero normal); check the labels")

    def accuracy(idx: Tensor, y: Tensor) -> float | None:
        if not len(idx):
            return None
        pred = torch.sign(x[idx].double() @ w + b)
        return float((pred == y.double()).double().mean())

    val = torch.cat([p[1] for p in parts])
    y_val = torch.cat([torch.full((len(p[1]),), p[2]) for p in parts])
    stats = {
        "solver": solver,
        "c": c,
        "n_pos": len(pos_idx),
        "n_neg": len(neg_idx),
        "train_accuracy": accuracy(train, y_train),
        "val_accuracy": accuracy(val, y_val),
    }
    log.info(
        "boundary (%s): %d+/%d- samples, val accuracy %s", solver, len(pos_idx), len(neg_idx), stats["val_accuracy"]
    )
    return BoundaryFit((w / norm).float(), float(b / norm), stats)


def interfacegan_direction(
    name: str,
    fit: BoundaryFit,
    n_latent: int,
    style_dim: int,
    generator: dict[str, Any],
    prov: dict[str, Any],
    layers: Sequence[int] | None = None,
    power_range: tuple[float, float] = (-3.0, 3.0),
) -> Direction:
    """A ``w`` direction (normal ``[D]``) or a ``wplus`` one (normal ``[L * D]``, unit overall, as SFE's boundaries)."""
    normal = fit.normal
    if normal.numel() == style_dim:
        space, vec, rows = "w", normal.reshape(style_dim), n_latent
    elif normal.numel() == n_latent * style_dim:
        space, vec, rows = "wplus", normal.reshape(n_latent, style_dim), n_latent
    else:
        raise DirectionError(f"boundary of {normal.numel()} values fits neither W ({style_dim}) nor W+")
    return Direction(
        name=check_name(name),
        space=space,
        tensors={"vector": vec.clone()},
        layers=list(layers) if layers is not None else list(range(rows)),
        power_range=power_range,
        generator=generator,
        provenance={**prov, **fit.stats},
        description=f"InterFaceGAN boundary normal ({fit.stats['solver']}) in {'W' if space == 'w' else 'W+'}",
    )


# ------------------------------------------------------------------------------------------------- regression
@dataclass
class RegressionFit:
    """Least-squares fit ``x ~ intercept + labels @ coef`` of latents on several labels at once.

    Attributes:
        coef: ``[K, F]``: the latent change per unit of each label with the other labels held fixed.
        intercept: ``[F]``.
        r2: ``[K]`` fraction of each label's variance explained by a linear read-out of the latent (least squares of
            the labels on the codes), a measure of how linearly it is encoded.
    """

    coef: Tensor
    intercept: Tensor
    r2: Tensor


def multi_label_regression(x: Tensor, labels: Tensor, ridge: float = 1e-3) -> RegressionFit:
    """Ridge least squares of ``x [N, F]`` on ``labels [N, K]`` (plus an intercept), in float64.

    Unlike one InterFaceGAN boundary per attribute, the coefficients of a joint regression hold the other labels
    fixed, so correlated or jointly encoded attributes do not leak into each other's direction (as far as the
    latent encodes them linearly).
    """
    if x.ndim != 2 or labels.ndim != 2 or len(x) != len(labels):
        shapes = f"{list(x.shape)} and {list(labels.shape)}"
        raise DirectionError(f"regression needs x [N, F] and labels [N, K], got {shapes}")
    k = labels.shape[1]
    if len(x) <= k + 1:
        raise DirectionError(f"regression on {k} labels needs more than {k + 1} samples")
    xd, yd = x.double(), labels.double()
    ym, xm = yd.mean(0), xd.mean(0)
    yc, xc = yd - ym, xd - xm
    gram = yc.T @ yc + ridge * len(yd) * torch.eye(yd.shape[1], dtype=torch.float64)
    coef = torch.linalg.solve(gram, yc.T @ xc)  # [K, F]
    intercept = xm - ym @ coef
    readout = torch.linalg.lstsq(xc, yc).solution  # [F, K]: labels read back linearly from the codes
    r2 = 1 - (xc @ readout - yc).square().mean(0) / yc.square().mean(0).clamp_min(1e-12)
    return RegressionFit(coef.float(), intercept.float(), r2.float())


def regression_direction(
    name: str,
    vector: Tensor,
    layers: Sequence[int],
    generator: dict[str, Any],
    prov: dict[str, Any],
    power_range: tuple[float, float] = (-1.0, 1.0),
) -> Direction:
    """A direction from one row of a :class:`RegressionFit`: the latent change per unit of its label.

    Args:
        name: the direction's name (its label column's).
        vector: ``[D]`` (a ``w`` direction) or ``[L, D]`` (``wplus``).
        layers: W+ layers it changes.
        generator: the generator record (:func:`~gie_cli.editing.binding.generator_binding`).
        prov: provenance (labels file, column, R^2, ridge).
        power_range: recommended powers (label units).
    """
    return Direction(
        name=check_name(name),
        space="w" if vector.ndim == 1 else "wplus",
        tensors={"vector": vector.clone()},
        layers=list(layers),
        power_range=power_range,
        generator=generator,
        provenance=prov,
        description=f"joint least-squares latent change per unit of {name} (others held fixed)",
    )


def stylespace_channel_from_labels(
    generator: Generator, latents: Tensor, labels: Tensor
) -> tuple[int, int, float, dict[str, Any]]:
    """The most attribute-specific style channel of labelled latents (:func:`detect_stylespace_channels` on the
    first label column).

    Args:
        generator: the generator.
        latents: ``[N, D]`` or ``[N, L, D]``.
        labels: ``[N]`` or ``[N, K]`` (column 0 is used).

    Returns:
        ``(conv layer, channel, sign, provenance facts: theta and the candidates)``.
    """
    best = detect_stylespace_channels(generator, latents, labels.reshape(len(labels), -1)[:, 0])
    layer, channel, theta, sign = best[0]
    log.info("StyleSpace: most specific channel %d of layer %d (theta %.3f)", channel, layer, theta)
    return layer, channel, sign, {"theta": theta, "candidates": [list(b) for b in best]}


@torch.no_grad()
def stylespace_channel_scale(generator: Generator, layer: int, channel: int, samples: int, seed: int = 0) -> float:
    """The std of style channel ``channel`` of conv ``layer`` over ``samples`` sampled W codes (1.0 when the channel
    is out of range, which :func:`stylespace_direction` then refuses)."""
    _, std = style_statistics(generator, sample_w(generator, samples, seed))[layer]
    return float(std[channel]) if 0 <= channel < len(std) else 1.0


# --------------------------------------------------------------------------------------------------- GANSpace
@dataclass
class PCAResult:
    """PCA of W samples: ``mean [D]``, orthonormal ``components [K, D]`` ordered by decreasing variance, the
    ``std [K]`` of the samples' coordinates along them and ``explained [K]`` (fractions of the total variance)."""

    mean: Tensor
    components: Tensor
    std: Tensor
    explained: Tensor


def pca(w: Tensor, k: int) -> PCAResult:
    """GANSpace's PCA of sampled W codes ``[N, D]`` (full SVD in float64; each component's sign is chosen so that
    its largest-magnitude entry is positive, for reproducible files)."""
    x = w.reshape(len(w), -1).double()
    n, d = x.shape
    k = min(k, d, n - 1)
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    comp = vh[:k]
    flip = torch.sign(comp.gather(1, comp.abs().argmax(1, keepdim=True)))
    comp = comp * flip
    var = s.square() / (n - 1)
    return PCAResult(mean.float(), comp.float(), var[:k].sqrt().float(), (var[:k] / var.sum()).float())


# --------------------------------------------------------------------------------------------------- StyleSpace
@torch.no_grad()
def style_statistics(generator: Generator, w: Tensor, batch: int = 1024) -> dict[int, tuple[Tensor, Tensor]]:
    """Mean and std ``[C_l]`` of every conv layer's style channels over W codes ``w [N, D]``."""
    sums: dict[int, list[Tensor]] = {}
    dev = generator.w_avg.device
    for i in range(0, len(w), batch):
        for layer, sv in style_vectors(generator, w[i : i + batch].to(dev)).items():
            sums.setdefault(layer, []).append(sv.double().cpu())
    out = {}
    for layer, chunks in sums.items():
        s = torch.cat(chunks)
        out[layer] = (s.mean(0).float(), s.std(0).float())
    return out


@torch.no_grad()
def detect_stylespace_channels(
    generator: Generator, w: Tensor, labels: Tensor, top: int = 5
) -> list[tuple[int, int, float, float]]:
    """Channels most specific to the positive samples (StyleSpace's ``theta = |mu_pos - mu| / sigma_pos``).

    Args:
        generator: the generator.
        w: ``[N, D]`` W codes (or ``[N, L, D]`` W+).
        labels: ``[N]``; ``> 0.5`` marks positives.
        top: how many channels to return.

    Returns:
        ``(layer, channel, theta, sign)`` best first; ``sign`` is +1 when positives have larger style values.
    """
    pos = labels.reshape(-1) > 0.5
    if pos.sum() < 2 or (~pos).sum() < 1:
        raise UsageError("StyleSpace detection needs at least 2 positive and 1 negative samples")
    dev = generator.w_avg.device
    styles = style_vectors(generator, w.to(dev))
    cands = []
    for layer, s in styles.items():
        s = s.double().cpu()
        mu, mu_p, sd_p = s.mean(0), s[pos].mean(0), s[pos].std(0).clamp_min(1e-8)
        theta = (mu_p - mu).abs() / sd_p
        for ch in torch.topk(theta, min(top, len(theta))).indices.tolist():
            cands.append((layer, ch, float(theta[ch]), 1.0 if mu_p[ch] >= mu[ch] else -1.0))
    cands.sort(key=lambda c: -c[2])
    return cands[:top]


def stylespace_direction(
    name: str,
    generator: Generator,
    layer: int,
    channel: int,
    scale: float,
    binding: dict[str, Any],
    prov: dict[str, Any],
    sign: float = 1.0,
    power_range: tuple[float, float] = (-10.0, 10.0),
) -> Direction:
    """A single-channel StyleSpace direction: ``s_layer[channel] += scale * power * sign``."""
    from gie_cli.editing.stylespace import layer_to_s_index, style_channels

    if not 0 <= layer < generator.num_layers:
        raise UsageError(f"conv layer {layer} out of range 0..{generator.num_layers - 1}", param="layer")
    width = style_channels(generator, layer)
    if not 0 <= channel < width:
        raise UsageError(f"channel {channel} out of range 0..{width - 1} for conv layer {layer}", param="channel")
    vec = torch.zeros(width)
    vec[channel] = 1.0 if sign >= 0 else -1.0
    return Direction(
        name=check_name(name),
        space="stylespace",
        tensors={f"style.{layer}": vec},
        layers=[layer],
        scale=scale,
        power_range=power_range,
        params={"channels": [[layer, channel]], "s_index": layer_to_s_index(layer)},
        generator=binding,
        provenance=prov,
        description=f"StyleSpace channel {channel} of conv layer {layer} (S index {layer_to_s_index(layer)})",
    )


# --------------------------------------------------------------------------------------------------- label-based
def train_latent_classifier(
    latents: Tensor,
    labels: Tensor,
    hidden: Sequence[int] = (256,),
    embed_dim: int = 32,
    steps: int = 300,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    activation: str = "leakyrelu",
    attributes: Sequence[str] | None = None,
) -> LatentClassifier:
    """Train a :class:`~gie_cli.editing.label.LatentClassifier` on W+ codes (full-batch Adam, BCE with logits).

    Args:
        latents: ``[N, L, D]`` W+ codes (``[N, D]`` W codes are used as they are: then the classifier takes ``D``).
        labels: ``[N]`` or ``[N, K]`` in [0, 1].
        hidden: widths after the input layer (official: ``[2048, 512]``).
        embed_dim, activation, attributes: as :class:`LatentClassifier`.
        steps, lr, weight_decay, seed: optimisation settings.
    """
    torch.manual_seed(int(seed))
    x = latents.reshape(len(latents), -1).float()
    y = labels.float().reshape(len(labels), -1)
    clf = LatentClassifier([x.shape[1], *hidden], y.shape[1], embed_dim, activation, attributes)
    opt = torch.optim.Adam(clf.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(clf(x), y)
            loss.backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        acc = float(((clf(x) > 0).float() == (y > 0.5).float()).float().mean())
    log.info("latent classifier: training loss %.4f, accuracy %.3f", loss.item(), acc)
    return clf.eval().requires_grad_(False)


def label_direction(
    name: str,
    classifier: nn.Module,
    attribute: int,
    binding: dict[str, Any],
    prov: dict[str, Any],
    target: float = 1.0,
    order: int = 1,
    xi: float = 1e-3,
    seed: int = 0,
    layers: Sequence[int] | None = None,
    power_range: tuple[float, float] = (0.0, 5.0),
) -> Direction:
    """A ``label`` direction: the editing path of :func:`gie_cli.editing.label.label_edit_direction`, with the
    classifier's weights stored in the file (``classifier.*``)."""
    if not isinstance(classifier, LatentClassifier):
        raise DirectionError("label directions store a LatentClassifier (LCNet_40 layout)")
    n_latent = int(binding.get("n_latent") or 0)
    if n_latent and classifier.fmaps[0] % n_latent:
        raise DirectionError(f"the classifier takes {classifier.fmaps[0]} inputs, not a multiple of {n_latent} layers")
    if math.isnan(target) or not 0.0 <= target <= 1.0:
        raise UsageError(f"target label must be in [0, 1], got {target}", param="target", value=target)
    attr_name = (classifier.attributes or [None] * classifier.n_classes)[attribute]
    tensors = {f"classifier.{k}": v.detach().float().cpu() for k, v in classifier.state_dict().items()}
    return Direction(
        name=check_name(name),
        space="label",
        tensors=tensors,
        layers=list(layers) if layers is not None else list(range(n_latent)),
        power_range=power_range,
        params={
            "attribute": int(attribute),
            "attribute_name": attr_name,
            "target": float(target),
            "order": int(order),
            "xi": float(xi),
            "seed": int(seed),
            "classifier": classifier.config,
        },
        generator=binding,
        provenance=prov,
        description=f"Style Transformer {'first' if order == 1 else 'second'}-order label edit of attribute "
        f"{attr_name or attribute} toward {target:g}",
    )

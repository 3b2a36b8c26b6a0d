"""Label files of latents (``LATENT_FILE,LABEL`` rows, or tensors with ``w``/``wplus`` and ``labels``) for fitting."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gie_cli.errors import UsageError
from gie_cli.models.stylegan2 import Generator


def load_labels(path: str | Path) -> tuple[Tensor, Tensor]:
    """Latent codes and labels from a labels file.

    Accepted: ``.csv``/``.tsv`` rows ``latent_file,label`` (gie latent files, paths relative to the labels file; a
    header row is skipped), or ``.safetensors``/``.npz``/``.pt`` with a ``w`` ``[N, D]`` or ``wplus`` ``[N, L, D]``
    tensor and a ``labels`` ``[N]`` (or ``[N, K]``) tensor.

    Returns:
        ``(latents [N, D] or [N, L, D], labels [N] or [N, K])`` as float32.

    Raises:
        UsageError: unreadable, missing keys, or mismatched lengths.
    """
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"labels file not found: {p}")
    suffix = p.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        from gie_cli.io.latents import load_latent

        latents, labels = [], []
        with open(p, newline="", encoding="utf-8") as f:
            delim = "\t" if suffix == ".tsv" else ","
            for row in csv.reader(f, delimiter=delim):
                if not row or row[0].startswith("#"):
                    continue
                if len(row) < 2:
                    raise UsageError(f"{p}: rows must be LATENT_FILE,LABEL, got {row}")
                try:
                    label = float(row[1])
                except ValueError:
                    if not labels:  # a header
                        continue
                    raise UsageError(f"{p}: label {row[1]!r} is not a number") from None
                lat = Path(row[0]).expanduser()
                lat = lat if lat.is_absolute() else p.parent / lat
                latents.append(load_latent(lat)[0][0])
                labels.append(label)
        if not latents:
            raise UsageError(f"{p}: no labelled latents")
        return torch.stack(latents).float(), torch.tensor(labels, dtype=torch.float32)
    if suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            data = {k: torch.from_numpy(np.asarray(z[k])) for k in z.files}
    elif suffix == ".safetensors":
        from gie_cli.io.checkpoint import load_safetensors

        data = load_safetensors(p)[0]
    else:
        from gie_cli.io.checkpoint import read_checkpoint

        data = read_checkpoint(p)
    key = next((k for k in ("wplus", "w", "latents") if k in data), None)
    lab = next((k for k in ("labels", "scores") if k in data), None)
    if key is None or lab is None:
        raise UsageError(f"{p}: needs a 'w' (or 'wplus') and a 'labels' tensor, found {', '.join(sorted(data))}")
    x, y = torch.as_tensor(data[key]).float(), torch.as_tensor(data[lab]).float()
    if len(x) != len(y):
        raise UsageError(f"{p}: {len(x)} latents but {len(y)} labels")
    return x, y


def load_labels_checked(path: Path, generator: Generator) -> tuple[Tensor, Tensor]:
    """:func:`load_labels` plus a shape check against the generator.

    Returns:
        ``(latents [N, D] or [N, n_latent, D], labels [N] or [N, K])``.

    Raises:
        UsageError: unreadable labels, or latents that do not fit the generator.
    """
    x, y = load_labels(path)
    g = generator
    ok = (x.ndim == 2 and x.shape[1] == g.style_dim) or (
        x.ndim == 3 and tuple(x.shape[1:]) == (g.n_latent, g.style_dim)
    )
    if not ok:
        raise UsageError(
            f"{path}: latents of shape {list(x.shape[1:])} do not fit the generator "
            f"([{g.style_dim}] or [{g.n_latent}, {g.style_dim}])"
        )
    return x, y


def label_columns(path: Path) -> list[str] | None:
    """Column names stored in a ``.safetensors`` labels file's config (``columns``), if any."""
    if path.suffix != ".safetensors":
        return None
    from gie_cli.io.checkpoint import load_safetensors

    cols = load_safetensors(path)[1].get("columns")
    return [str(c) for c in cols] if isinstance(cols, list) else None


def column_index(attribute: str | None, columns: list[str] | None, source: str | None) -> int | None:
    """``--attribute`` as a column index: an int, or a name looked up in ``columns`` (None stays None).

    Raises:
        UsageError: a name that is not one of ``columns``.
    """
    if attribute is None:
        return None
    if attribute.lstrip("-").isdigit():
        return int(attribute)
    if not columns or attribute not in columns:
        known = f"known: {', '.join(columns)}" if columns else "this labelling function has no named columns"
        raise UsageError(
            f"{attribute!r} is not a column of {source}",
            hint=f"pass an index; {known}",
            param="attribute",
            value=attribute,
        )
    return list(columns).index(attribute)


def labelled_latents(
    generator: Generator,
    labels: Path | None = None,
    classifier: str | None = None,
    attribute: str | None = None,
    on: str = "latent",
    space: str = "wplus",
    samples: int = 10000,
    seed: int = 0,
    truncation: float = 1.0,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Latents with one label each, for a boundary fit: from a labels file, or sampled and scored by a function.

    Args:
        generator: the generator (checks the file's shapes; maps and renders the samples).
        labels: a labels file (:func:`load_labels`); exclusive with ``classifier``.
        classifier: a labelling function ``MODULE:FUNCTION`` or ``FILE.py:FUNCTION`` scoring sampled latents.
        attribute: the label column (index or name) when there are several.
        on: what ``classifier`` receives: ``latent`` (``w [B, D]``) or ``image`` (``[B, 3, S, S]`` in [-1, 1]).
        space: for W+ latents of a file: ``wplus`` (kept) or ``w`` (their mean over layers).
        samples: how many latents to sample for ``classifier``.
        seed: sampling seed.
        truncation: truncation of the sampled W.

    Returns:
        ``(latents [N, D] or [N, L, D], labels [N], provenance facts)``.

    Raises:
        UsageError: unreadable labels, shapes that do not fit, or several label columns and no ``attribute``.
    """
    from gie_cli.editing.fit import label_samples, load_function, sample_w

    if labels is not None:
        x, y = load_labels_checked(labels, generator)
        if x.ndim == 3 and space == "w":
            x = x.mean(1)
        source: dict[str, Any] = {"labels": str(labels.resolve())}
    else:
        fn = load_function(str(classifier))
        col = column_index(attribute, getattr(fn, "columns", None), classifier)
        x = sample_w(generator, samples, seed, truncation)
        y = label_samples(generator, x, fn, on, attribute=col)
        source = {"classifier": classifier, "on": on, "samples": samples, "seed": seed, "truncation": truncation}
    if y.ndim == 2:
        if attribute is None:
            raise UsageError("the labels have several columns", hint="choose one column", param="attribute")
        y = y[:, column_index(attribute, label_columns(labels) if labels is not None else None, str(labels))]
    return x, y, source

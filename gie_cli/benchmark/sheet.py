"""The benchmark's contact sheet: one row per face, one column per input, reconstruction, edit and ground truth."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = ["Column", "contact_sheet", "sheet_columns", "write_contact_sheet"]

#: A column: (first header line, second header line, ``[K, 3, S, S]`` images in [-1, 1]).
Column = tuple[str, str, Tensor]

_PAD = 2
_LINE = 12  # header line height (PIL's default bitmap font is 11 px high)


def sheet_columns(inputs: Tensor, results: Sequence[Mapping], k: int) -> list[Column]:
    """The columns of the sheet: input, each method's reconstruction and edits, then per edit the renderer's
    ground-truth edit.

    Args:
        inputs: ``[N, 3, S, S]`` benchmark images in [-1, 1].
        results: method result records carrying ``"_sheet"`` (:class:`~gie_cli.benchmark.runner.SheetImages`
            stacked); others are skipped.
        k: rows (faces).

    Returns:
        Columns in order. The ground truth of an edit is drawn for the amount the first listed method with one
        edited (each method's own ground truth is what its ``gt_*`` metrics use).
    """
    cols: list[Column] = [("input", "", inputs[:k])]
    truth: dict[str, Column] = {}
    for r in results:
        sh = r.get("_sheet")
        if not sh:
            continue
        name = str(r["method"])
        cols.append((name, "recon", sh["recon"]))
        for label, img in sh["edits"].items():
            cols.append((name, label, img))
        for label, img in sh["truth"].items():
            truth.setdefault(label, ("truth", label, img))
    cols.extend(truth.values())
    return cols


def _to_uint8(images: Tensor, scale: int) -> np.ndarray:
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    if scale > 1:
        x = x.repeat_interleave(scale, dim=-1).repeat_interleave(scale, dim=-2)
    return x.permute(0, 2, 3, 1).numpy()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` shortened with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def contact_sheet(columns: Sequence[Column], min_cell: int = 64) -> Image.Image:
    """Draws the columns side by side under a two-line header.

    Args:
        columns: (header 1, header 2, ``[K, 3, S, S]``) per column; every column has the same ``K`` and ``S``.
        min_cell: images smaller than this are enlarged by an integer factor (nearest neighbour) to reach it.

    Returns:
        An RGB image ``(K * cell + header) x (columns * cell)`` (plus padding).
    """
    if not columns:
        raise ValueError("a contact sheet needs at least one column")
    k, _, s, _ = columns[0][2].shape
    for title, sub, img in columns:
        if img.ndim != 4 or img.shape[0] != k or img.shape[-1] != s or img.shape[-2] != s:
            raise ValueError(f"column {title} {sub}: images {tuple(img.shape)}, expected [{k}, 3, {s}, {s}]")
    scale = max(1, -(-min_cell // s))
    cell = s * scale
    head = 2 * _LINE + _PAD
    sheet = Image.new("RGB", (len(columns) * (cell + _PAD) + _PAD, head + k * (cell + _PAD) + _PAD), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for j, (title, sub, img) in enumerate(columns):
        x0 = _PAD + j * (cell + _PAD)
        draw.text((x0, 0), _fit(draw, title, font, cell), fill="black", font=font)
        draw.text((x0, _LINE), _fit(draw, sub, font, cell), fill="black", font=font)
        for i, arr in enumerate(_to_uint8(img, scale)):
            sheet.paste(Image.fromarray(arr), (x0, head + _PAD + i * (cell + _PAD)))
    return sheet


def write_contact_sheet(path: str | Path, columns: Sequence[Column]) -> Path:
    """Writes :func:`contact_sheet` of ``columns`` to ``path`` (PNG, atomically) and returns the path."""
    from gie_cli.io.atomic import atomic_save_image

    path = Path(path)
    atomic_save_image(contact_sheet(columns), path)
    return path

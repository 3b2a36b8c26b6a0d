"""Benchmark reports: the run's environment, the JSON document, markdown tables and rich tables."""

from __future__ import annotations

import json
import math
import platform
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from gie_cli.benchmark.metrics import DEFINITIONS

__all__ = [
    "BENCHMARK_FORMAT",
    "edit_columns",
    "environment",
    "git_commit",
    "json_safe",
    "markdown",
    "quality_columns",
    "rich_tables",
    "write_reports",
]

BENCHMARK_FORMAT = "gie-benchmark/1"

# reconstruction metric columns in display order, with a header and a number format
_QUALITY = [
    ("mse", "MSE", ".5f"),
    ("psnr", "PSNR dB", ".2f"),
    ("ssim", "SSIM", ".4f"),
    ("ms-ssim", "MS-SSIM", ".4f"),
    ("lpips-alex", "LPIPS-alex", ".4f"),
    ("lpips-vgg", "LPIPS-vgg", ".4f"),
    ("identity", "ID sim", ".4f"),
    ("fid", "FID", ".2f"),
    ("attr_mae", "attr MAE", ".4f"),
    ("ood_mse_in", "OOD MSE in", ".5f"),
    ("ood_mse_out", "OOD MSE out", ".5f"),
    ("psnr_ood", "PSNR OOD dB", ".2f"),
    ("ssim_ood", "SSIM OOD", ".4f"),
    ("psnr_face", "PSNR face dB", ".2f"),
    ("ssim_face", "SSIM face", ".4f"),
    ("mask_iou", "mask IoU", ".4f"),
    ("aoa", "AOA %", ".2f"),
]
_EDIT = [
    ("edit_attr", "attr change", "+.3f"),
    ("edit_others", "others |change|", ".3f"),
    ("ref_gap", "|attr - ref| after", ".3f"),
    ("ref_gap0", "|attr - ref| before", ".3f"),
    ("id_to_input", "ID to input", ".4f"),
    ("edit_change_face", "change in face", ".5f"),
    ("edit_change_bg", "change outside", ".5f"),
    ("edit_ood_mse", "OOD MSE to input", ".5f"),
    ("gt_mse", "GT MSE", ".5f"),
    ("gt_mse_face", "GT MSE face", ".5f"),
    ("gt_mse_bg", "GT MSE outside", ".5f"),
    ("gt_psnr", "GT PSNR dB", ".2f"),
    ("gt_ssim", "GT SSIM", ".4f"),
    ("gt_ms-ssim", "GT MS-SSIM", ".4f"),
    ("gt_lpips-alex", "GT LPIPS-alex", ".4f"),
    ("gt_lpips-vgg", "GT LPIPS-vgg", ".4f"),
    ("gt_identity", "GT ID sim", ".4f"),
    ("gt_fid", "GT FID", ".2f"),
]


def _row_name(r: dict) -> str:
    """A result row's name: the method, or ``label (method)`` for ``--methods LABEL=METHOD``."""
    kind = r.get("kind") or r["method"]
    return r["method"] if kind == r["method"] else f"{r['method']} ({kind})"


def git_commit() -> str:
    """Short commit of the gie source checkout (``git rev-parse``, read-only; local changes are not detected), or
    ``unknown`` outside a checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def environment(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Where and when the benchmark ran: date, commit, versions, device and precision."""
    from gie_cli import __version__

    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(idx)
    else:
        name = platform.processor() or platform.machine() or device.type
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": git_commit(),
        "gie": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "device": str(device),
        "device_name": name,
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
    }


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats written as the strings ``"inf"``, ``"-inf"``, ``"nan"`` (strict JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return format(value, spec)


def _cell(metrics: Mapping[str, Any], key: str, spec: str) -> str:
    """A metric's table cell: blank where the row has no such metric (it does not apply, e.g. ``mask_iou`` for a
    method without a blending mask), ``n/a`` where it was measured without a value."""
    return _fmt(metrics[key], spec) if key in metrics else ""


def _present(rows: Sequence[Mapping[str, Any]], columns: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    return [c for c in columns if any(c[0] in (r or {}) for r in rows)]


def quality_columns(doc: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """The reconstruction metric columns that have a value for some method."""
    return _present([r.get("metrics") for r in doc["results"]], _QUALITY)


def edit_columns(doc: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """The edit metric columns that have a value for some edit of some method."""
    return _present([e.get("metrics") for r in doc["results"] for e in r.get("edits", [])], _EDIT)


def _quality_rows(doc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    cols = quality_columns(doc)
    header = ["method", "images/s", "encode ms/img", "render ms/img", "peak MiB", *[c[1] for c in cols]]
    rows = []
    for r in doc["results"]:
        if r["status"] != "ok":
            rows.append([_row_name(r), "failed", "(reason below)", "", "", *["" for _ in cols]])
            continue
        t, m = r["timing"], r["metrics"]
        rows.append(
            [
                _row_name(r),
                _fmt(t["images_per_s"], ".2f"),
                _fmt(t["encode_ms"], ".1f"),
                _fmt(t["render_ms"], ".1f"),
                _fmt(r["memory"]["peak_mb"], ".0f"),
                *[_cell(m, k, f) for k, _, f in cols],
            ]
        )
    return header, rows


def _edit_rows(doc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    cols = edit_columns(doc)
    header = ["method", "edit", "edit ms/img", *[c[1] for c in cols]]
    rows = []
    for r in doc["results"]:
        for e in r.get("edits", []):
            if e["status"] != "ok":
                rows.append([_row_name(r), e["edit"], "unavailable", *["" for _ in cols]])
                continue
            m = e["metrics"]
            rows.append([_row_name(r), e["edit"], _fmt(e["edit_ms"], ".1f"), *[_cell(m, k, f) for k, _, f in cols]])
    return header, rows


ALIGNMENT_TEXT = (
    "Methods that align features to an edit: each stage's feature of every image is perspective-warped (distortion "
    "{distortion:g}, the same warps for every method) and aligned back by the method. Relative L1 error against the "
    "unwarped feature, |X - F|_1 / |F|_1 per image, averaged: 0 = restored exactly, 1 = no better than zeros; "
    "`unaligned` is the warped feature itself. The editing path's zero-edit render (no edit, no warp) should match "
    "the reconstruction."
)


def _alignment_rows(doc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["method", "stage", "aligned rel. L1", "unaligned rel. L1", "aligned / unaligned"]
    rows = []
    for r in doc["results"]:
        for stage, e in (r.get("alignment") or {}).get("stages", {}).items():
            a, u = e.get("aligned"), e.get("unaligned")
            ratio = a / u if a is not None and u else None
            rows.append([_row_name(r), stage, _fmt(a, ".3f"), _fmt(u, ".3f"), _fmt(ratio, ".2f")])
    return header, rows


def _zero_edit_rows(doc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["method", "reconstruction PSNR dB", "editing path at zero edit PSNR dB", "difference dB"]
    rows = []
    for r in doc["results"]:
        al = r.get("alignment")
        if not al:
            continue
        rec, zero = (r.get("metrics") or {}).get("psnr"), al.get("zero_edit_psnr")
        diff = zero - rec if rec is not None and zero is not None else None
        rows.append([_row_name(r), _fmt(rec, ".2f"), _fmt(zero, ".2f"), _fmt(diff, "+.2f")])
    return header, rows


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return out


def used_definitions(doc: Mapping[str, Any]) -> dict[str, str]:
    """Definitions of the metrics that appear in ``doc`` (values or unavailable ones)."""
    keys = {c[0] for c in quality_columns(doc)} | {c[0] for c in edit_columns(doc)} | set(doc.get("unavailable", {}))
    return {k: v for k, v in DEFINITIONS.items() if k in keys}


def markdown(doc: Mapping[str, Any]) -> str:
    """The benchmark as a markdown document: setup line, quality/speed table, edit table, unavailable metrics with
    their reasons, and the metric definitions."""
    env, data, st = doc["environment"], doc["data"], doc["settings"]
    src = data["source"]
    if src == "synthface":
        what = (
            f"{data['n']} held-out synthetic-world faces ({data['size']} px, seed {data['seed']}, detail strength "
            f"{data['detail_strength']:g}, OOD probability {data['ood_prob']:g}: "
            f"{data['images_with_ood']} with objects)"
        )
    else:
        what = f"{data['n']} aligned images from {src} at {data['size']} px"
    lines = [
        "# gie benchmark",
        "",
        f"{what}; batch size {st['batch_size']}, {env['dtype']} on {env['device']} ({env['device_name']}, "
        f"{env['threads']} threads), torch {env['torch']}" + (f", CUDA {env['cuda']}" if env["cuda"] else "") + ".",
        f"Commit {env['git_commit']}, {env['date']}. Command: `{doc['command']}`",
        "",
        "Timings exclude the first (warm-up) batch; ms/img = stage time / images. Metrics at "
        f"{data['size']} px (outputs of other sizes are resized: area average down, bilinear up). A blank cell: the "
        "metric does not apply to that row; n/a: it has no value.",
    ]
    if data.get("estimator_mae_on_inputs") is not None:
        lines.append(f"Attribute estimator's own MAE on the inputs: {data['estimator_mae_on_inputs']:.4f}.")
    lines += ["", "## Reconstruction", ""]
    lines += _md_table(*_quality_rows(doc))
    if any(r.get("edits") for r in doc["results"]):
        lines += ["", "## Edits", ""]
        lines += _md_table(*_edit_rows(doc))
        notes = []
        for r in doc["results"]:
            for e in r.get("edits", []):
                if e["status"] != "ok":
                    notes.append(f"- {r['method']} {e['edit']}: unavailable: {e['reason']}")
                elif e.get("note"):
                    notes.append(f"- {r['method']} {e['edit']}: {e['note']}")
        if notes:
            lines += ["", *notes]
    if any(r.get("alignment") for r in doc["results"]):
        dist = next(r["alignment"]["distortion"] for r in doc["results"] if r.get("alignment"))
        lines += ["", "## Feature alignment", "", ALIGNMENT_TEXT.format(distortion=dist), ""]
        lines += _md_table(*_alignment_rows(doc))
        lines += ["", ""]
        lines += _md_table(*_zero_edit_rows(doc))
    if doc.get("contact_sheet"):
        first = next((r["method"] for r in doc["results"] if r["status"] == "ok"), "")
        lines += [
            "",
            f"Contact sheet: `{doc['contact_sheet']}` (one row per face: the input, each method's reconstruction and "
            f"edits, then each edit's ground truth, rendered for the amount {first} edited).",
        ]
    failed = [r for r in doc["results"] if r["status"] != "ok"]
    if failed:
        lines += ["", "## Failed methods", ""] + [f"- {r['method']}: {r['reason']}" for r in failed]
    if doc.get("unavailable"):
        lines += ["", "## Unavailable metrics", ""]
        lines += [f"- {k}: {v}" for k, v in doc["unavailable"].items()]
    lines += ["", "## Definitions", ""] + [f"- {k}: {v}" for k, v in used_definitions(doc).items()]
    return "\n".join(lines) + "\n"


def rich_tables(doc: Mapping[str, Any]) -> list:
    """``rich.table.Table`` objects of the reconstruction and edit results (for the terminal)."""
    from rich.table import Table

    tables = []
    header, rows = _quality_rows(doc)
    t = Table(title=f"gie benchmark: {doc['data']['source']}, {doc['data']['n']} images, {doc['data']['size']} px")
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*row)
    tables.append(t)
    if any(r.get("alignment") for r in doc["results"]):
        for title, (header, rows) in (("feature alignment", _alignment_rows(doc)), ("zero edit", _zero_edit_rows(doc))):
            t = Table(title=title)
            for i, h in enumerate(header):
                t.add_column(h, justify="left" if i < 2 else "right")
            for row in rows:
                t.add_row(*row)
            tables.append(t)
    if any(r.get("edits") for r in doc["results"]):
        header, rows = _edit_rows(doc)
        t = Table(title="edits")
        for i, h in enumerate(header):
            t.add_column(h, justify="left" if i < 2 else "right")
        for row in rows:
            t.add_row(*row)
        tables.append(t)
    return tables


def write_reports(doc: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Writes ``benchmark.json`` and ``benchmark.md`` into ``out_dir`` (atomically).

    Returns:
        ``{"json": path, "markdown": path}``.
    """
    from gie_cli.io.atomic import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "benchmark.json", "markdown": out_dir / "benchmark.md"}
    atomic_write_text(paths["json"], json.dumps(json_safe(doc), indent=1, allow_nan=False) + "\n")
    atomic_write_text(paths["markdown"], markdown(doc))
    return paths

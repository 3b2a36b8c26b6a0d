"""Runs inversion methods on the benchmark images: timings per stage, peak memory, quality and edit metrics."""

from __future__ import annotations

import gc
import logging
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gie_cli.benchmark.data import BenchData
from gie_cli.benchmark.metrics import Accumulator, MetricSuite, to_size
from gie_cli.benchmark.world import WorldJudge, target_attribute
from gie_cli.device import to_device
from gie_cli.errors import GieError, UsageError
from gie_cli.methods import EDIT_MASK_KEY, invert_and_render, synchronize
from gie_cli.metrics.regions import mask_iou, masked_mse, masked_psnr, masked_ssim

__all__ = [
    "METRIC_WEIGHT_KEYS",
    "EditSpec",
    "MethodSpec",
    "PeakMemory",
    "PreparedEdit",
    "SheetImages",
    "load_directions",
    "probe_warps",
    "run_method",
]

log = logging.getLogger(__name__)

#: A per-label benchmark setting (``--set LABEL.edit_mask=truth``) for methods with masked editing (SFE): the edits'
#: mask is the world's true face region (``truth``), the hull of its landmarks (``landmarks``) or none.
EDIT_MASK_SETTING = "edit_mask"
EDIT_MASK_KINDS = ("none", "truth", "landmarks")
METRIC_WEIGHT_KEYS = ("lpips-vgg", "lpips-alex", "identity", "fid", "attributes", "editor")
"""Keys of the metric networks' weights (the CLI's ``--weights KEY=FILE`` keys that are not methods; ``editor`` is the
editing transformer of reference edits)."""

PROBE_SEED = 20261206
"""Seed of the perspective warps of the alignment probe (batch starting at image ``i`` uses ``PROBE_SEED + i``), so
every method aligns the same warps."""

PROBE_DISTORTION = 0.15
"""Distortion scale of the probe's warps (the training warps of GradStyle and HFGI)."""


# --------------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class EditSpec:
    """One edit: a direction (by name or path) and a power; or, with ``reference``, a reference-based edit of the
    attribute ``direction`` (Style Transformer's editing transformer: each image takes it from the previous image of
    its batch)."""

    direction: str
    power: float
    reference: bool = False

    @property
    def label(self) -> str:
        """``name:+power`` (``attribute-ref:+power`` for reference edits; the key of the edit in the results)."""
        if self.reference:
            return f"{self.direction}-ref:{self.power:+g}"
        return f"{Path(self.direction).name.removesuffix('.direction.safetensors')}:{self.power:+g}"


@dataclass
class ReferenceTransfer:
    """A reference edit prepared for a batch: image ``i`` takes ``editor``'s attribute ``index`` from image ``i - 1``
    of its batch (``torch.roll`` by one), so no extra inversions are needed.

    Attributes:
        editor: the :class:`~gie_cli.editing.reference.EditTransformer`.
        index: the attribute's index in the editor.
        name: ``<attribute>-ref``.
        path: the editor's file.
    """

    editor: Any
    index: int
    name: str
    path: Path | None = None

    def offset(self, wplus: Tensor, power: float) -> Tensor:
        """``[B, n_latent, D]`` W+ offsets of the batch ``wplus``."""
        w = wplus.float()
        return self.editor.to(w.device).offset(w, w.roll(1, 0), self.index, power).to(wplus.dtype)


def reference_params(params: Sequence) -> list:
    """The reference of each item of a batch of world parameters (the previous item, as :class:`ReferenceTransfer`)."""
    return [params[-1], *params[:-1]]


@dataclass(frozen=True)
class MethodSpec:
    """One benchmarked method: a row of the tables.

    Attributes:
        label: The row's name (the method's name unless one method is benchmarked several times).
        method: The method (``create_method`` name).
        weights: Its weights (file or registry name), or None for its embedded default.
        settings: Method options passed to ``create_method``.
    """

    label: str
    method: str
    weights: str | None = None
    settings: Mapping[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory of one method's run.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU: the process's peak resident
    set size, ``VmHWM`` of ``/proc/self/status``, reset through ``/proc/self/clear_refs`` (Linux); where that reset
    is impossible, ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the peak since the process started. Both include
    what was resident before the method was loaded (the images, the metric networks): ``baseline_mb`` says how much.

    Args:
        device: The device the method runs on.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = ""
        self.baseline_mb = 0.0

    def reset(self) -> None:
        """Starts a new measurement."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda max allocated"
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / 2**20
            return
        self.baseline_mb = (_proc_status_kb("VmRSS") or 0) / 1024
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.kind = "cpu peak RSS (VmHWM, reset per method)"
        except OSError:
            self.kind = "cpu peak RSS since process start (ru_maxrss)"

    def peak_mb(self) -> float:
        """Peak in MiB since :meth:`reset`."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.kind.startswith("cpu peak RSS (VmHWM"):
            hwm = _proc_status_kb("VmHWM")
            if hwm is not None:
                return hwm / 1024
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def _proc_status_kb(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


# --------------------------------------------------------------------------------------------------- edits
@dataclass
class PreparedEdit:
    """An edit resolved for one method: the direction chosen for its generator, or why it cannot run."""

    spec: EditSpec
    direction: Any = None
    reason: str | None = None
    attribute: str | None = None


#: Key of the editing transformer in :func:`load_directions`' result.
EDITOR = "@editor"


def load_directions(edits: Sequence[EditSpec], editor: str | None = None) -> dict[str, Any]:
    """Loads every same-named candidate file of each edit's direction once (``load_direction_candidates``), and the
    editing transformer ``editor`` (file or registry name; None = the embedded default) when there are reference
    edits.

    Returns:
        Direction name -> candidate directions, or the reason it cannot be loaded; :data:`EDITOR` -> ``(editor,
        path)`` or the reason.
    """
    from gie_cli.editing import load_direction_candidates

    out: dict[str, Any] = {}
    if any(e.reference for e in edits):
        from gie_cli.editing.reference import load_edit_transformer
        from gie_cli.weights import resolve_weights

        try:
            path = resolve_weights(editor, method="edit_transformer", what="an editing transformer")
            out[EDITOR] = (load_edit_transformer(path), path)
        except GieError as err:
            out[EDITOR] = str(err)
    for e in edits:
        if e.reference or e.direction in out:
            continue
        try:
            out[e.direction] = load_direction_candidates(e.direction)
        except GieError as err:
            out[e.direction] = str(err)
    return out


def _prepare_edits(
    edits: Sequence[EditSpec], directions: Mapping[str, list | str], method, fingerprint: str
) -> list[PreparedEdit]:
    from gie_cli.editing import check_generator, pick_for_generator

    out = []
    for e in edits:
        if e.reference:
            out.append(_prepare_reference(e, directions.get(EDITOR), fingerprint))
            continue
        cands = directions[e.direction]
        if isinstance(cands, str):
            out.append(PreparedEdit(e, reason=cands))
            continue
        d = pick_for_generator(cands, fingerprint)
        try:
            check_generator(d, method.generator, False, fingerprint)
        except GieError as err:
            out.append(PreparedEdit(e, reason=str(err)))
            continue
        out.append(PreparedEdit(e, d, None, target_attribute(d)))
    return out


def _prepare_reference(e: EditSpec, loaded: Any, fingerprint: str) -> PreparedEdit:
    """A reference edit for one method: the editor must know the attribute and have been trained for its generator."""
    from gie_cli.synth.params import ATTRIBUTE_NAMES

    if not isinstance(loaded, tuple):
        return PreparedEdit(e, reason=loaded or "no editing transformer")
    editor, path = loaded
    bound = (editor.generator or {}).get("fingerprint")
    if bound and bound != fingerprint:
        return PreparedEdit(e, reason=f"the editing transformer {path} was trained for another generator")
    try:
        idx = editor.attribute_index(e.direction)
    except GieError as err:
        return PreparedEdit(e, reason=str(err))
    attr = e.direction if e.direction in ATTRIBUTE_NAMES else None
    return PreparedEdit(e, ReferenceTransfer(editor, idx, f"{e.direction}-ref", Path(path)), None, attr)


# --------------------------------------------------------------------------------------------------- running
@dataclass
class _Times:
    encode: float = 0.0
    render: float = 0.0
    edits: dict[str, float] = field(default_factory=dict)
    images: int = 0
    batches: int = 0


def _forward(method, x: Tensor, edits: Sequence[PreparedEdit], device: torch.device, mask: Tensor | None = None):
    """Invert, render and edit one batch (the edits masked by ``mask [B, 1, S, S]`` where given); returns
    ``(recon, {label: edited}, seconds per stage, blend)``: ``blend`` is the ``[B, 1, S, S]`` mask in [0, 1] where
    the method keeps the input photo (OOD inversion's ``mask_of``; untimed), None for methods without one."""
    from gie_cli.editing import Edit, apply, render_edit

    secs: dict[str, float] = {}
    inv, recon, secs["encode"], secs["render"] = invert_and_render(method, x)
    blend = None
    if callable(getattr(method, "mask_of", None)):
        with torch.no_grad():
            blend = method.mask_of(inv).detach()
    if mask is not None:
        inv.extras[EDIT_MASK_KEY] = mask.to(x.device, x.dtype)
    edited: dict[str, Tensor] = {}
    for pe in edits:
        if pe.direction is None:
            continue
        t = time.perf_counter()
        with torch.no_grad():
            if isinstance(pe.direction, ReferenceTransfer):
                e = Edit(pe.direction.offset(inv.wplus, pe.spec.power))
            else:
                e = apply(pe.direction, pe.spec.power, inv.wplus)
            edited[pe.spec.label] = render_edit(method, inv, e)
        synchronize(device)
        secs[pe.spec.label] = time.perf_counter() - t
    return recon, edited, secs, blend


def edit_masks(kind: str, method, data: BenchData) -> Tensor | None:
    """The per-image edit masks ``[N, 1, S, S]`` (float, 1 = face) of the ``edit_mask`` setting: ``none``, ``truth``
    (the world's face masks) or ``landmarks`` (:func:`~gie_cli.alignment.face_mask.face_mask_from_landmarks` of the
    world's landmarks, what ``gie edit --mask landmarks`` derives from an alignment record).

    Raises:
        UsageError: an unknown kind, a method without masked editing, or data without ground truth.
    """
    if kind == "none":
        return None
    if kind not in EDIT_MASK_KINDS:
        raise UsageError(f"{EDIT_MASK_SETTING}={kind!r}", hint=" or ".join(EDIT_MASK_KINDS))
    if not method.accepts_edit_mask:
        raise UsageError(f"{EDIT_MASK_SETTING}={kind}: {method.name} has no masked editing", hint="sfe has")
    if data.face_masks is None or data.landmarks is None:
        raise UsageError(f"{EDIT_MASK_SETTING}={kind} needs the world's faces", hint="--data synthface")
    if kind == "truth":
        return data.face_masks[:, None].float()
    from gie_cli.alignment.face_mask import face_mask_from_landmarks

    lm = [face_mask_from_landmarks(p.numpy(), data.size) for p in data.landmarks]
    return torch.stack([torch.as_tensor(m, dtype=torch.float32) for m in lm])[:, None]


def probe_warps(batch: int, i0: int) -> tuple[Tensor, Tensor]:
    """The probe's perspective warps ``(src, dst)`` ``[batch, 4, 2]`` for the batch starting at image ``i0``."""
    from gie_cli.ops.warp import random_perspective

    return random_perspective(batch, PROBE_DISTORTION, torch.Generator().manual_seed(PROBE_SEED + i0))


def _probe(method, x: Tensor, i0: int, acc: Accumulator, size: int) -> bool:
    """Runs ``method.probe_alignment`` on one batch and adds its values to ``acc``; False for methods without one."""
    from gie_cli.metrics.ssim import psnr

    src, dst = probe_warps(x.shape[0], i0)
    with torch.no_grad():
        probe = method.probe_alignment(x, src.to(x.device), dst.to(x.device))
    if probe is None:
        return False
    for stage, errors in probe.stages.items():
        acc.add({f"{stage}|{kind}": v for kind, v in errors.items()})
    if probe.zero_edit is not None:
        ref = to_size(x.detach().float(), size).clamp(-1, 1).cpu()
        img = to_size(probe.zero_edit.detach().float(), size).clamp(-1, 1).cpu()
        acc.add({"zero_edit_psnr": psnr(img, ref, data_range=2.0)})
    return True


@dataclass
class SheetImages:
    """The first few images of one method for the contact sheet (``[K, 3, S, S]`` in [-1, 1], CPU, float32).

    Attributes:
        recon: reconstructions.
        edits: edit label -> edited images.
        truth: edit label -> the renderer's ground-truth edited photos for the amount this method edited.
    """

    recon: list[Tensor] = field(default_factory=list)
    edits: dict[str, list[Tensor]] = field(default_factory=dict)
    truth: dict[str, list[Tensor]] = field(default_factory=dict)

    def count(self) -> int:
        return sum(t.shape[0] for t in self.recon)

    def stacked(self, k: int) -> dict[str, Any]:
        """``{"recon": [k,...], "edits": {label: [k,...]}, "truth": {label: [k,...]}}``."""

        def cat(ts: list[Tensor]) -> Tensor:
            return torch.cat(ts)[:k]

        return {
            "recon": cat(self.recon),
            "edits": {k_: cat(v) for k_, v in self.edits.items()},
            "truth": {k_: cat(v) for k_, v in self.truth.items()},
        }


def _measure(
    data: BenchData,
    i0: int,
    i1: int,
    recon: Tensor,
    edited: Mapping[str, Tensor],
    edits: Sequence[PreparedEdit],
    suite: MetricSuite,
    judge: WorldJudge | None,
    acc: Accumulator,
    edit_accs: Mapping[str, Accumulator],
    sheet: SheetImages | None = None,
    blend: Tensor | None = None,
) -> None:
    """Adds one batch's metric values to the accumulators (everything at the benchmark resolution) and, while
    ``sheet`` wants more, its first images. ``blend`` is the method's ``[B, 1, S', S']`` photo-blending mask in
    [0, 1] (:func:`_forward`), or None."""
    from gie_cli.synth.params import ATTRIBUTE_NAMES

    s = data.size
    x = data.images[i0:i1]
    rec = to_size(recon.detach().float(), s).clamp(-1, 1).cpu()
    keep = sheet is not None
    if keep:
        sheet.recon.append(rec)
    acc.add(suite.pairwise(rec, x))
    acc.add_features("input", suite.fid_features(x))
    acc.add_features("output", suite.fid_features(rec))
    ood = data.ood_masks[i0:i1] if data.ood_masks is not None else None  # [B, S, S]
    has = ood.flatten(1).any(dim=1) if ood is not None else None  # [B]: the images with an object
    some_ood = has is not None and bool(has.any())
    params = data.params[i0:i1] if data.params is not None else None
    if params is not None:
        if judge is not None:
            acc.add({"attr_mae": judge.attribute_error(rec, params)})
        if some_ood:
            inside, outside = masked_mse((rec[has] + 1) / 2, (x[has] + 1) / 2, ood[has])
            acc.add({"ood_mse_in": inside, "ood_mse_out": outside})
    if some_ood:
        acc.add(_region_quality(rec[has], x[has], ood[has], "ood", suite))
    if data.face_masks is not None:
        acc.add(_region_quality(rec, x, data.face_masks[i0:i1], "face", suite))
    if blend is not None:
        bm = to_size(blend.detach().float(), s).clamp(0, 1).cpu()[:, 0]  # [B, S, S], area average when shrinking
        acc.add({"aoa": 100 * bm.flatten(1).mean(dim=1)})
        if some_ood:
            acc.add({"mask_iou": mask_iou(bm[has], ood[has])})
    for pe in edits:
        if pe.spec.label not in edited:
            continue
        ea = edit_accs[pe.spec.label]
        img = to_size(edited[pe.spec.label].detach().float(), s).clamp(-1, 1).cpu()
        if keep:
            sheet.edits.setdefault(pe.spec.label, []).append(img)
        ident = suite.identity(img, x)
        if ident is not None:
            ea.add({"id_to_input": ident})
        if some_ood:  # is the object kept in place: the edited image against the input photo inside it
            ea.add({"edit_ood_mse": masked_mse((img[has] + 1) / 2, (x[has] + 1) / 2, ood[has])[0]})
        if params is not None and judge is not None and pe.attribute is not None:
            gt, change, others = judge.edit_ground_truth(params, pe.attribute, rec, img, s)
            if keep:
                sheet.truth.setdefault(pe.spec.label, []).append(gt)
            ea.add({"edit_attr": change, "edit_others": others})
            if data.face_masks is not None:  # where the edit changed the image, and how far from the truth it is there
                face = data.face_masks[i0:i1]
                c_in, c_out = masked_mse((img + 1) / 2, (rec + 1) / 2, face)
                g_in, g_out = masked_mse((img + 1) / 2, (gt + 1) / 2, face)
                ea.add({"edit_change_face": c_in, "edit_change_bg": c_out, "gt_mse_face": g_in, "gt_mse_bg": g_out})
            if pe.spec.reference:  # how far the edited attribute is from the reference's true value, after and before
                k = list(ATTRIBUTE_NAMES).index(pe.attribute)
                want = judge.truth(reference_params(params))[:, k]
                ea.add({"ref_gap": (judge.attributes(img)[:, k] - want).abs(),
                        "ref_gap0": (judge.attributes(rec)[:, k] - want).abs()})  # fmt: skip
            ea.add(suite.pairwise(img, gt, prefix="gt_"))
            ea.add_features("edited", suite.fid_features(img))
            ea.add_features("gt", suite.fid_features(gt))


def _region_quality(rec: Tensor, x: Tensor, mask: Tensor, region: str, suite: MetricSuite) -> dict[str, Tensor]:
    """PSNR and SSIM inside a region (those of the two the suite runs).

    Args:
        rec: ``[B, 3, S, S]`` reconstructions in [-1, 1].
        x: ``[B, 3, S, S]`` inputs in [-1, 1].
        mask: ``[B, S, S]`` bool regions.
        region: Name suffix (``ood``, ``face``).
        suite: The metric set (``psnr`` and ``ssim`` as requested).

    Returns:
        ``{"psnr_<region>": [B], "ssim_<region>": [B]}`` on images in [0, 1]; NaN for an empty region.
    """
    a, b = (rec + 1) / 2, (x + 1) / 2
    out: dict[str, Tensor] = {}
    if suite.available("psnr"):
        out[f"psnr_{region}"] = masked_psnr(a, b, mask)
    if suite.available("ssim"):
        out[f"ssim_{region}"] = masked_ssim(a, b, mask)
    return out


def run_method(
    spec: MethodSpec,
    data: BenchData,
    suite: MetricSuite,
    judge: WorldJudge | None,
    edits: Sequence[EditSpec],
    directions: Mapping[str, list | str],
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    sheet_images: int = 0,
) -> dict[str, Any]:
    """Benchmarks one method on all images.

    The first batch is a warm-up: its outputs are measured but its time is not. The timed pass is every later
    batch, or the first batch run again when there is only one. Stage times are synchronised on CUDA.

    Args:
        spec: The method, its row label, weights and options.
        data: The images.
        suite: The metric networks.
        judge: The world's ground truth (synthface with an attribute estimator), or None.
        edits: The edits to apply.
        directions: :func:`load_directions` of ``edits``.
        batch_size: Images per batch.
        device: Where the method runs.
        dtype: The method's precision (metrics always run in float32).
        sheet_images: Keep this many first images (reconstructions, edits, ground truths) for the contact sheet:
            the record's ``"_sheet"`` entry (not JSON; the caller pops it).

    Returns:
        The method's result record (``status`` ``ok`` or ``failed`` with ``reason``); never raises for a failure of
        the method itself. Methods with feature alignment (:meth:`InversionMethod.probe_alignment`) get an
        ``"alignment"`` entry: per stage the mean relative L1 error of the aligned and of the unaligned warped
        features, and the PSNR of the editing path's zero-edit render.
    """
    from gie_cli.editing import generator_fingerprint
    from gie_cli.methods import create_method

    name, kind, weights, options = spec.label, spec.method, spec.weights, dict(spec.settings)
    edit_mask = str(options.pop(EDIT_MASK_SETTING, "none"))
    mem = PeakMemory(device)
    mem.reset()
    row: dict[str, Any] = {
        "method": name,
        "kind": kind,
        "status": "ok",
        "reason": None,
        "weights": weights or "(embedded default)",
        "options": dict(options),
        "edit_mask": edit_mask,
        "batch_size": batch_size,
        "n_images": len(data),
    }
    t0 = time.perf_counter()
    try:
        method = create_method(kind, weights, device, **options)
        fingerprint = generator_fingerprint(method.generator)  # in float32, before any cast (as `gie edit`)
        if dtype != torch.float32:
            method = method.to(dtype)
    except GieError as e:
        row.update(status="failed", reason=str(e))
        log.error("%s: %s", name, e)
        return row
    masks = None
    try:
        masks = edit_masks(edit_mask, method, data)
    except GieError as e:
        row.update(status="failed", reason=str(e))
        log.error("%s: %s", name, e)
        return row
    synchronize(device)
    row.update(
        weights_id=method.weights_id,
        weights_path=method.weights_path,
        parameters_m=round(sum(p.numel() for p in method.parameters()) / 1e6, 3),
        input_size=method.input_size,
        output_size=method.output_size,
        load_s=round(time.perf_counter() - t0, 3),
    )
    prepared = _prepare_edits(edits, directions, method, fingerprint)
    acc = Accumulator()
    align_acc = Accumulator()
    has_probe = True
    sheet = SheetImages()
    edit_accs = {pe.spec.label: Accumulator() for pe in prepared}
    times = _Times(edits={pe.spec.label: 0.0 for pe in prepared if pe.direction is not None})
    bounds = [(i, min(i + batch_size, len(data))) for i in range(0, len(data), batch_size)]
    # (bounds, measure the outputs, time it): batch 0 warms up; a single batch is run again for the timing
    schedule = [(bounds[0], True, False)]
    schedule += [(bounds[0], False, True)] if len(bounds) == 1 else [(b, True, True) for b in bounds[1:]]
    try:
        for k, ((i0, i1), measure, timed) in enumerate(schedule):
            x = to_device(data.images[i0:i1], device, dtype)
            recon, edited, secs, blend = _forward(method, x, prepared, device, None if masks is None else masks[i0:i1])
            if timed:
                times.encode += secs["encode"]
                times.render += secs["render"]
                for label in times.edits:
                    times.edits[label] += secs[label]
                times.images += i1 - i0
                times.batches += 1
            if measure:
                want = sheet if sheet.count() < sheet_images else None
                _measure(data, i0, i1, recon, edited, prepared, suite, judge, acc, edit_accs, want, blend)
                if has_probe:
                    has_probe = _probe(method, x, i0, align_acc, data.size)
            log.debug("%s: batch %d/%d done", name, k + 1, len(schedule))
    except torch.cuda.OutOfMemoryError:
        row.update(status="failed", reason=f"CUDA out of memory at batch size {batch_size} (try a smaller one)")
        log.error("%s: %s", name, row["reason"])
    except (GieError, RuntimeError, ValueError) as e:
        log.debug("%s failed", name, exc_info=True)
        row.update(status="failed", reason=f"{type(e).__name__}: {e}" if not isinstance(e, GieError) else str(e))
        log.error("%s: %s", name, row["reason"])
    row["memory"] = {"kind": mem.kind, "peak_mb": round(mem.peak_mb(), 1), "baseline_mb": round(mem.baseline_mb, 1)}
    del method
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if row["status"] != "ok":
        return row
    run_s = times.encode + times.render
    row["timing"] = {
        "images_per_s": round(times.images / run_s, 3) if run_s > 0 else None,
        "encode_ms": round(1000 * times.encode / times.images, 3),
        "render_ms": round(1000 * times.render / times.images, 3),
        "timed_images": times.images,
        "timed_batches": times.batches,
        "warmup_batches": 1,
    }
    metrics = acc.means()
    if suite.available("fid"):
        metrics["fid"] = acc.fid("input", "output")
    row["metrics"] = metrics
    if has_probe and align_acc.values:
        means = align_acc.means()
        stages: dict[str, dict[str, float | None]] = {}
        for key, v in means.items():
            if "|" in key:
                stage, kind = key.split("|", 1)
                stages.setdefault(stage, {})[kind] = v
        row["alignment"] = {
            "distortion": PROBE_DISTORTION,
            "seed": PROBE_SEED,
            "stages": stages,
            "zero_edit_psnr": means.get("zero_edit_psnr"),
        }
    if sheet_images > 0 and sheet.recon:
        row["_sheet"] = sheet.stacked(sheet_images)
    row["edits"] = []
    for pe in prepared:
        rec: dict[str, Any] = {
            "edit": pe.spec.label,
            "direction": pe.spec.direction,
            "power": pe.spec.power,
            "status": "ok" if pe.direction is not None else "unavailable",
            "reason": pe.reason,
        }
        if pe.direction is not None:
            ea = edit_accs[pe.spec.label]
            m = ea.means()
            if suite.available("fid") and "edited" in ea.features:
                m["gt_fid"] = ea.fid("edited", "gt")
            rec.update(
                direction_file=str(pe.direction.path) if pe.direction.path else None,
                attribute=pe.attribute,
                edit_ms=round(1000 * times.edits[pe.spec.label] / times.images, 3),
                metrics=m,
            )
            if data.has_ground_truth and pe.attribute is None:
                rec["note"] = f"direction {pe.direction.name!r} is not named after a world attribute: no ground truth"
            elif data.has_ground_truth and judge is None:
                rec["note"] = "no attribute estimator: no ground truth"
        row["edits"].append(rec)
    return row

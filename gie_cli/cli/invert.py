"""`gie invert`: aligned face images in, reconstructions + latent files + a manifest out."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gie_cli.cli import command
from gie_cli.cli.batch import BatchJob, Item, PerBatch, Record, option_identity, plan_items, source_sha256
from gie_cli.cli.options import (
    DEFAULT_WORKERS,
    AlignBackend,
    Alpha,
    AlphaOpt,
    BatchSizeOpt,
    CompileOpt,
    CudaGraphsOpt,
    DeviceOpt,
    DryRunOpt,
    Dtype,
    DtypeOpt,
    FailFastOpt,
    ImageExt,
    JsonOpt,
    NprocOpt,
    OnExisting,
    OnExistingOpt,
    OutputOpt,
    Precision,
    PrecisionOpt,
    QualityOpt,
    RecursiveOpt,
    SettingsOpt,
    ShardOpt,
    WeightsOpt,
    WorkersOpt,
    choice,
    examples,
    ext_option,
    image_quality,
    parse_settings,
)
from gie_cli.cli.ranks import setup_ranks
from gie_cli.errors import GieError, UsageError

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import Tensor

    from gie_cli.methods import Inversion, InversionMethod

log = logging.getLogger(__name__)

__all__ = ["invert", "parse_settings"]

MIN_FACE_SIZE = 32
"""Default ``--min-size``: aligned crops (or faces in photos) narrower than this many pixels fail."""
MASK_SUFFIX = "_mask.png"
"""``--save-mask``: the blending mask of ``NAME.recon.<ext>`` is ``NAME.recon_mask.png`` (8-bit grayscale PNG)."""
MASK_METHODS = ("ood",)
"""Built-in methods that predict a blending mask (``mask_of``), named in the error of ``--save-mask`` without one."""
SAVE_ROLES = ("recon", "latent", "align")
"""``--save`` roles: NAME.recon.<ext>, NAME.latent.safetensors, NAME.align.json (items with an alignment record)."""
DEFAULT_SAVE = ",".join(SAVE_ROLES)

_EPILOG = examples(
    "gie invert aligned/ -m e4e -w e4e.ffhq -o inv",
    "gie invert ./photos -w e4e.ffhq -o inv --json > inv.jsonl      # raw photos are aligned first",
    "gie invert aligned/ -m optim -w stylegan2.ffhq --set steps=500 --set space=wplus -o inv",
    "find shots -name '*.jpg' | gie invert - -o inv --dry-run",
    "gie invert /data/ffhq -r -o inv --save latent --pack-latents     # dataset scale: latents only, one pack file",
    "gie invert aligned/ -o previews --size 256 --image-format jpg --quality 85",
)


@command(epilog=_EPILOG)
def invert(
    output: OutputOpt,
    inputs: Annotated[
        list[str] | None,
        typer.Argument(help="Face photos or aligned face crops, folders, or - to read paths from stdin."),
    ] = None,
    method: Annotated[str, typer.Option("--method", "-m", help="Inversion method (`gie info` lists them).")] = "e4e",
    weights: WeightsOpt = None,
    settings: SettingsOpt = None,
    batch_size: BatchSizeOpt = 4,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = Dtype.auto,
    precision: PrecisionOpt = Precision.fp32,
    compile_synthesis: CompileOpt = False,
    cuda_graphs: CudaGraphsOpt = False,
    recursive: RecursiveOpt = False,
    on_existing: OnExistingOpt = OnExisting.skip,
    alpha: AlphaOpt = Alpha.white,
    ext: Annotated[ImageExt, ext_option("the reconstructions")] = ImageExt.png,
    quality: QualityOpt = 95,
    align: Annotated[
        bool | None,
        typer.Option(
            "--align/--no-align",
            help="FFHQ-align inputs first (largest face). Default (auto), by evidence, not shape: inputs with a "
            "NAME.align.json beside them (from `gie align`), `gie synth --faces` crops and square images whose "
            "NAME.landmarks.json points sit at the FFHQ template are taken as aligned crops; every other image, "
            "square or not, is aligned (and fails with the reason when no landmark backend is available). "
            "--align aligns every input, --no-align none (use it for crops you know are aligned).",
            show_default=False,
        ),
    ] = None,
    align_backend: Annotated[
        AlignBackend,
        choice(
            AlignBackend,
            "--align-backend",
            help="Landmarks for alignment: auto (a NAME.landmarks.json beside the photo, else face-alignment), "
            "face-alignment, mediapipe or file.",
        ),
    ] = AlignBackend.auto,
    landmarks: Annotated[
        Path | None,
        typer.Option("--landmarks", help="--align-backend file: landmarks JSON file or folder (see `gie align -h`)."),
    ] = None,
    min_size: Annotated[
        int,
        typer.Option(
            "--min-size",
            min=1,
            help="Smallest usable face in pixels: an aligned crop (or, for photos aligned here, the face's FFHQ "
            "crop in the photo) smaller than this fails instead of being upscaled into a made-up face.",
        ),
    ] = MIN_FACE_SIZE,
    save_mask: Annotated[
        bool,
        typer.Option(
            "--save-mask",
            help=f"Also write each blending mask as NAME.recon{MASK_SUFFIX} (white = photo kept; --method ood).",
        ),
    ] = False,
    save: Annotated[
        str,
        typer.Option(
            "--save",
            metavar="ROLES",
            help="Outputs to write, comma-separated: recon (NAME.recon.<ext>), latent (NAME.latent.safetensors), "
            "align (NAME.align.json, items with an alignment record). --save latent encodes no image at all.",
        ),
    ] = DEFAULT_SAVE,
    size: Annotated[
        int | None,
        typer.Option(
            "--size",
            min=1,
            max=8192,
            metavar="N",
            help="Write reconstructions (and --save-mask masks) at N x N pixels (area average down, bilinear up) "
            "instead of the model's output size, e.g. 256 px previews of a 1024 px model.",
            show_default=False,
        ),
    ] = None,
    pack_latents: Annotated[
        bool,
        typer.Option(
            "--pack-latents",
            help="After the run, pack the latents of its ok and skipped items into one latents.safetensors in the "
            "output folder (--shard I/N: latents.shard-I-of-N.safetensors): W+ [N, n_latent, D] in input order "
            "plus an index (names, sources, records). `gie edit` takes it as an input.",
        ),
    ] = False,
    shard: ShardOpt = None,
    workers: WorkersOpt = DEFAULT_WORKERS,
    nproc: NprocOpt = 1,
    dry_run: DryRunOpt = False,
    fail_fast: FailFastOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Invert face photos or aligned face crops into W+ latents and render their reconstructions.

    Per input NAME it writes NAME.recon.<ext> and NAME.latent.safetensors under the output folder (mirroring input
    sub-folders) and appends one line per item to manifest.jsonl. Re-running skips finished items. Inputs that are
    aligned here (see --align), or that come with a NAME.align.json record, also get NAME.align.json next to the
    latent so `gie paste` / `gie edit --paste-back` can put edits back into the photo. With --save-mask, methods
    that blend the photo back (ood) also write NAME.recon_mask.png, the blending mask at the reconstruction's size.
    A photo without a face gets status no_face (not a failure; exit code 0 unless some item failed).

    Output control for large runs: --save picks the outputs (--save latent: latents only, no image is encoded; an
    item counts as finished when its chosen outputs exist); --image-format jpg|webp with --quality Q writes smaller
    reconstructions; --size N writes them at N x N pixels; --pack-latents also packs the latents of the run's ok and
    skipped items into one latents.safetensors (latents.shard-I-of-N.safetensors with --shard I/N).

    Speed: --precision bf16 (CPU or GPU) or fp16 (GPU) mixed precision, --compile, --cuda-graphs (GPU).
    """
    import torch

    from gie_cli.alignment.auto import needs_alignment, own_sidecar
    from gie_cli.device import check_cuda_graphs, resolve_device, resolve_dtype, resolve_precision
    from gie_cli.io.images import IMAGE_SUFFIXES
    from gie_cli.io.latents import pack_name
    from gie_cli.methods import check_method_options, create_method, list_methods
    from gie_cli.models.stylegan2 import use_fast_path

    if method not in list_methods():
        raise UsageError(f"unknown method {method!r}", hint=f"choose one of: {', '.join(list_methods())}")
    options = parse_settings(settings or [])
    check_method_options(method, options)  # --set parsed and range-checked before any item runs
    if landmarks is not None and align_backend != "file":
        raise UsageError("--landmarks only applies to --align-backend file", hint="add --align-backend file")
    saved = parse_save(save)
    if pack_latents and "latent" not in saved:
        raise UsageError("--pack-latents packs the latent files, which --save leaves out", hint="add latent to --save")
    plan = _AlignPlan(ext=str(ext))

    def outputs(src: Path, name: str) -> dict[str, Path]:
        outs = {}
        if "recon" in saved:
            outs["image"] = output / f"{name}.recon.{ext}"
        if "latent" in saved:
            outs["latent"] = output / f"{name}.latent.safetensors"
        if save_mask:
            outs["mask"] = output / f"{name}.recon{MASK_SUFFIX}"
        if needs_alignment(src, align):
            plan.names.add(name)
            if "align" in saved:
                outs["align"] = output / f"{name}.align.json"
        elif align is None and "align" in saved and own_sidecar(src) is not None:
            outs["align"] = output / f"{name}.align.json"  # carry the record of `gie align` along
        return outs

    parsed_shard, device, rank = setup_ranks(nproc, shard, device)
    items = plan_items(
        inputs, output, recursive, IMAGE_SUFFIXES, outputs, stdin_keys=("image", "input"), command="invert",
        shard=parsed_shard,
    )  # fmt: skip
    request = {  # what the outputs depend on besides the input: a finished item is skipped only for the same
        "method": method,
        "weights": option_identity(weights) if weights else _default_weights_identity(method),
        "settings": options,
        "dtype": str(dtype),
        "alpha": str(alpha),
        "ext": str(ext),
        "align": align,
        "align_backend": str(align_backend),
        "landmarks": option_identity(landmarks),
        "min_size": min_size,
    }
    if precision != Precision.fp32:  # likewise: fp32 folders keep their done records
        request["precision"] = str(precision)
    if save_mask:  # only when asked: folders made without the flag keep their done records
        request["save_mask"] = True
    if saved != set(SAVE_ROLES):  # likewise for the output options below
        request["save"] = sorted(saved)
    if size is not None:
        request["size"] = size
    q = image_quality(ext, quality) if "recon" in saved else None
    if q is not None:
        request["quality"] = q
    job = BatchJob(
        "invert", output, items, on_existing, fail_fast, json_out, request=request, workers=workers, rank=rank
    )
    pack = output / pack_name((parsed_shard.index, parsed_shard.count) if parsed_shard else None)
    if dry_run:
        job.dry_run(
            f", method {method}, weights {weights or '-'}" + (f", latents packed into {pack}" if pack_latents else "")
        )
        return

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    prec = resolve_precision(precision, dev, dt)
    check_cuda_graphs(cuda_graphs, dev)

    def load_model() -> InversionMethod:
        model = create_method(method, weights, dev, **options)
        plan.demo = _demo_model_name(model)
        if dt != torch.float32:
            model = model.to(dt)
        return model

    # --save-mask needs a method with ``mask_of``: checked on the built model before the run writes anything
    loaded = _check_mask_method(load_model(), method) if save_mask else None

    def make_backend():
        from gie_cli.alignment import create_backend

        backend = create_backend(align_backend, landmarks, str(dev))
        log.info("aligning %d input(s) with %s", len(plan.names), align_backend)
        return backend

    plan.make_backend, plan.explicit = make_backend, bool(align)

    def work(todo: list[Item]) -> PerBatch:
        if any(it.name in plan.names for it in todo):
            plan.get_backend()  # now: with --align, a backend that cannot load is a run-level error
        model = loaded if loaded is not None else load_model()
        log.info(
            "method %s, weights %s, input %dpx -> output %dpx",
            method,
            model.weights_id,
            model.input_size,
            model.output_size,
        )
        return _batch_work(model, batch_size, dev, dt, alpha, plan, min_size, save_mask, "recon" in saved, size, q)

    with use_fast_path(precision=prec, compile=compile_synthesis, cuda_graphs=cuda_graphs):
        code = job.run(work)
    if pack_latents:
        _pack_run_latents(job, pack)
    raise typer.Exit(code)


def parse_save(spec: str) -> set[str]:
    """``--save`` ``"recon,latent"`` -> ``{"recon", "latent"}`` (roles of :data:`SAVE_ROLES`).

    Raises:
        UsageError: no role, or an unknown one (one line naming --save and the roles).
    """
    roles = {r.strip() for r in spec.split(",") if r.strip()}
    bad = sorted(roles - set(SAVE_ROLES))
    if not roles or bad:
        what = f"unknown role(s) {', '.join(bad)}" if bad else "no output role given"
        raise UsageError(
            f"--save {spec!r}: {what}",
            hint=f"choose one or more of {', '.join(SAVE_ROLES)}, comma-separated, e.g. --save latent",
        )
    return roles


def _pack_run_latents(job: BatchJob, pack: Path) -> Path | None:
    """``--pack-latents``: pack the latent files of the items this run ended ok or skipped (its manifest lines; a
    skip means the done record matches, so every packed latent answers this run's options), in input order.

    Returns:
        ``pack``, or None when no item has a latent (nothing is written, with a warning).

    Raises:
        GieError: the manifest or a latent file cannot be read, or the pack cannot be written.
    """
    from gie_cli.cli.batch import MANIFEST
    from gie_cli.io.latents import save_packed_latents

    run = getattr(job.reporter, "run_id", None)
    status: dict[str, str] = {}
    try:
        with open(job.output / MANIFEST, encoding="utf-8") as f:
            for line in f:
                if run is None or run not in line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and rec.get("run") == run and rec.get("command") == "invert":
                    status[str(rec.get("input"))] = str(rec.get("status"))
    except OSError as e:
        raise GieError(f"--pack-latents: cannot read the manifest {job.output / MANIFEST} ({e})") from e
    entries = [
        (it.name, it.outputs["latent"])
        for it in job.items
        if status.get(str(it.source)) in ("ok", "skipped") and "latent" in it.outputs and it.outputs["latent"].is_file()
    ]
    if not entries:
        log.warning("--pack-latents: no item of this run has a latent file; %s is not written", pack)
        return None
    save_packed_latents(pack, entries)
    log.info("packed the latents of %d item(s) into %s", len(entries), pack)
    return pack


def _check_mask_method(model: InversionMethod, method: str) -> InversionMethod:
    """``model`` when it predicts a blending mask (has ``mask_of``), for ``--save-mask``.

    Raises:
        UsageError: it has none (one line naming the method and the methods that have one).
    """
    if callable(getattr(model, "mask_of", None)):
        return model
    raise UsageError(
        f"--save-mask: method {method} predicts no blending mask",
        hint=f"use a method that predicts one ({', '.join(MASK_METHODS)}), e.g. --method {MASK_METHODS[0]}, or drop "
        "--save-mask",
    )


def _default_weights_identity(method: str) -> dict | None:
    """What identifies the weights a method uses without ``--weights`` (its registry default: name and sha256), so
    a re-run skips only items made with the same default."""
    from gie_cli.weights import load_registry

    reg = load_registry()
    name = reg.defaults.get(method)
    return {"default": name, "sha256": reg.get(name).sha256} if name else None


@dataclass
class _AlignPlan:
    """Items (by output name) that get FFHQ-aligned before inversion, and the landmark backend doing it."""

    names: set[str] = field(default_factory=set)
    ext: str = "png"
    """``--ext`` of the reconstructions (their file name goes into the alignment records)."""
    backend: object | None = None
    error: str | None = None
    demo: str | None = None
    """Registry name of the embedded demo model the items are inverted with (None: real weights)."""
    warned: int = 0
    make_backend: Callable[[], object] | None = None
    explicit: bool = False
    """--align: a backend that cannot be created ends the run (auto: only the items to align fail)."""
    _tried: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get_backend(self) -> object | None:
        """The landmark backend, created on first use (by the first item to align; loader threads share it)."""
        with self._lock:
            if not self._tried and self.make_backend is not None:
                self._tried = True
                try:
                    self.backend = self.make_backend()
                except GieError as e:
                    if self.explicit:
                        raise
                    self.error = str(e)  # auto: only the inputs to align fail, with this reason
                    log.warning("automatic alignment unavailable: %s", e)
        return self.backend


def _demo_model_name(model) -> str | None:
    """The registry name of the embedded demo model ``model`` runs on, or None for any other weights."""
    from gie_cli.weights import embedded_entry_for

    entry = embedded_entry_for(getattr(model, "weights_path", None))
    return entry.name if entry is not None else None


def _mark_demo_model(it: Item, info: dict, plan: _AlignPlan) -> None:
    """Record in ``info`` (manifest line and latent record) that a demo model inverts the item; warn for real photos.

    Default policy: the embedded demo models (64 px synthetic face world) are the defaults when ``--weights`` is
    omitted, so the README's offline pipeline works. Inputs that are renders of the synthetic world (by their
    ``gie synth`` records, see :func:`~gie_cli.alignment.auto.synthetic_world_input`) use them quietly; any other
    input is a real photo and gets a WARNING (shown with ``-q`` too) saying the result is not meaningful and naming
    the official weights. Every item inverted by a demo model has ``"demo_model": true`` in its manifest info and
    latent record, whatever the input.
    """
    if plan.demo is None:
        return
    from gie_cli.alignment.auto import synthetic_world_input

    synthetic = synthetic_world_input(it.source)
    info.update(demo_model=True, demo_model_name=plan.demo, input_kind="synthetic-world" if synthetic else "photo")
    if synthetic:
        return
    if not plan.warned:
        from gie_cli.weights import load_registry

        real = getattr(load_registry().get(plan.demo), "real", "") or "NAME (see `gie weights list`)"
        log.warning(
            "%s is a real photo (no `gie synth` record), inverted with the DEMO model %s (64 px synthetic faces): the "
            "result is not a faithful reconstruction. For real photos pass --weights %s (`gie weights download "
            "%s`); the manifest and latent record say demo_model: true",
            it.source,
            plan.demo,
            real,
            real,
        )
    else:
        log.warning("%s: real photo inverted with the DEMO model %s", it.source, plan.demo)
    plan.warned += 1


def _strs(outputs: dict[str, Path]) -> dict[str, str]:
    return {k: str(v) for k, v in outputs.items()}


def _batch_work(
    model,
    batch_size: int,
    dev,
    dt,
    alpha: str,
    plan: _AlignPlan | None = None,
    min_size: int = MIN_FACE_SIZE,
    save_mask: bool = False,
    save_recon: bool = True,
    size: int | None = None,
    quality: int | None = None,
) -> PerBatch:
    """Load (and align) each item, invert and render batches, check and save each item (see :class:`PerBatch`).

    An item whose face is smaller than ``min_size`` pixels fails when loaded; one whose codes, reconstruction or
    (``save_mask``: the method's ``mask_of``) blending mask hold NaN/Inf fails with the cause
    (:func:`~gie_cli.methods.check_inversion`) and writes nothing. Reconstructions leave the device only when saved
    (``save_recon``), resized there to ``size`` (``--size``; masks too) and encoded with ``quality``.
    """
    from gie_cli.alignment.auto import NoFaceError
    from gie_cli.methods import NonFiniteError, check_inversion, nonfinite, nonfinite_reason

    plan = plan or _AlignPlan()

    def prepare(it: Item):
        t0 = time.perf_counter()
        try:
            x, info = _load_input(it, model.input_size, alpha, plan, min_size)
            _mark_demo_model(it, info, plan)
        except NoFaceError as e:
            return Record(str(it.source), "no_face", reason=_reason(e))
        return x, info, (time.perf_counter() - t0) * 1000

    def compute(loaded: list) -> list:
        inv, renders, t_inv, t_render = _invert_batch(model, [x for x, _, _ in loaded], dev, dt)
        n = len(loaded)
        checks = _render_checks(renders)
        side = size or renders.shape[-1]  # of the written reconstruction (and mask)
        # clamped first (as written), so a resized reconstruction is the written one's area average
        images = _resized(renders.float().clamp(-1, 1), size).cpu() if save_recon else [None] * n
        masks = _masks_of(model, inv, n) if save_mask else [None] * n
        return [(inv.item(i), images[i], masks[i], checks[i], side, t_inv / n, t_render / n) for i in range(n)]

    def finish(it: Item, loaded, result) -> Record:
        _, info, t_load = loaded
        inv, image, mask, check, side, t_inv, t_render = result
        check_inversion(model, inv, check)  # NaN/Inf: the item fails with the cause, nothing is written
        if mask is not None and nonfinite(mask):
            raise NonFiniteError(nonfinite_reason(model, "the blending mask"))
        if mask is not None:
            mask = _resized(mask[None], size)[0]
        t0 = time.perf_counter()
        try:
            _save_item(model, it, inv, image, info, mask, quality, (side, side))
        except OSError as e:
            raise GieError(_reason(e)) from e
        timings = {"load": t_load, "invert": t_inv, "render": t_render, "save": (time.perf_counter() - t0) * 1000}
        return Record(str(it.source), "ok", _strs(it.outputs), None, {k: round(v, 2) for k, v in timings.items()}, info)

    return PerBatch(compute, finish, batch_size, prepare)


def _reason(e: Exception) -> str:
    return str(e)


def _too_small(path: Path, what: str, side: float, min_size: int) -> Exception:
    """The error of a face below ``--min-size``: upscaling it would make a face up, not reconstruct one."""
    from gie_cli.errors import ImageLoadError

    return ImageLoadError(
        path,
        f"{what} is too small to invert ({side:.0f} px < --min-size {min_size} px)",
        hint="use a larger photo of the face, or lower --min-size",
    )


def _load_aligned(it: Item, size: int, alpha: str, min_size: int = MIN_FACE_SIZE):
    """Load an aligned square crop as ``[3, size, size]`` in [-1, 1] (PIL bilinear resize, as the official
    encoders were trained) plus facts about the source.

    Raises:
        ImageLoadError: not square, or smaller than ``min_size`` pixels.
    """
    from PIL import Image

    from gie_cli.io.images import image_to_tensor, load_image

    path = it.source
    img = load_image(path, alpha=alpha)
    w, h = img.size
    if w != h:
        from gie_cli.errors import ImageLoadError

        raise ImageLoadError(
            path,
            f"not a square aligned face crop ({w}x{h})",
            hint="pass FFHQ-aligned square crops, or let gie align the photo (--align, or `gie align` first)",
        )
    if w < min_size:
        raise _too_small(path, f"the {w}x{h} image", w, min_size)
    x = image_to_tensor(img, size=size, resample=Image.Resampling.BILINEAR)
    return x, {"source_size": [w, h], "source_sha256": source_sha256(it)}


def _load_input(it: Item, size: int, alpha: str, plan: _AlignPlan, min_size: int = MIN_FACE_SIZE):
    """Load an item as ``[3, size, size]`` in [-1, 1]: FFHQ-align it first when planned, or carry its record.

    Raises:
        ImageLoadError: unreadable, not alignable, or a face smaller than ``min_size`` pixels.
    """
    from PIL import Image

    from gie_cli.alignment import read_align_meta
    from gie_cli.alignment.auto import NoFaceError, align_for_inversion, own_sidecar
    from gie_cli.io.images import image_to_tensor, load_image

    if it.name in plan.names:
        photo = load_image(it.source, alpha=alpha)
        if plan.get_backend() is None:
            from gie_cli.errors import ImageLoadError

            w, h = photo.size
            raise ImageLoadError(
                it.source,
                (
                    f"not a square aligned face crop ({w}x{h})"
                    if w != h
                    else f"square image ({w}x{h}) with no evidence it is an FFHQ-aligned crop (no NAME.align.json, "
                    "no landmarks at the FFHQ template)"
                )
                + f" and automatic alignment is unavailable: {plan.error}",
            )
        sha = source_sha256(it)
        try:
            crop, meta = align_for_inversion(
                photo, plan.backend, size, Path(it.source), sha, it.name, _recon_name(it, plan)
            )
        except NoFaceError:
            raise
        except GieError as e:  # e.g. the detector's weights are missing: this item fails with the reason
            from gie_cli.errors import ImageLoadError

            w, h = photo.size
            shape = f"not a square aligned face crop ({w}x{h}) and " if w != h else ""
            raise ImageLoadError(it.source, f"{shape}aligning it failed: {e}") from None
        face = _quad_side(meta.get("quad"))
        if face is not None and face < min_size:
            raise _too_small(Path(it.source), "the face's FFHQ crop in the photo", face, min_size)
        x = image_to_tensor(crop, size=size, resample=Image.Resampling.BILINEAR)
        return x, {"source_size": list(photo.size), "source_sha256": sha, "aligned": "invert", "align_meta": meta}
    x, info = _load_aligned(it, size, alpha, min_size)
    if "align" in it.outputs:
        record = own_sidecar(it.source)
        if record is not None:
            info["align_meta"] = read_align_meta(record)
            info["aligned"] = "record"
    return x, info


def _recon_name(it: Item, plan: _AlignPlan) -> str:
    """File name of ``it``'s reconstruction (recorded in its alignment record, also when --save leaves it out)."""
    image = it.outputs.get("image")
    return image.name if image is not None else f"{Path(it.name).name}.recon.{plan.ext}"


def _quad_side(quad: object) -> float | None:
    """Side length in photo pixels of an FFHQ quad ``[[x, y] x 4]`` (upper-left, lower-left, lower-right,
    upper-right), or None when ``quad`` is not one."""
    import math

    try:
        (x0, y0), _, _, (x3, y3) = quad  # type: ignore[misc]
        return math.hypot(float(x3) - float(x0), float(y3) - float(y0))
    except (TypeError, ValueError):
        return None


def _invert_batch(model, xs, dev, dt):
    """Invert and render a batch: ``(inversion, renders [B, 3, S, S] on the device, ms encoding, ms rendering)``."""
    from gie_cli.device import stack_to_device
    from gie_cli.methods import invert_and_render

    inv, images, t_enc, t_render = invert_and_render(model, stack_to_device(xs, dev, dt))
    return inv, images, t_enc * 1000, t_render * 1000


def _render_checks(renders: Tensor) -> Tensor:
    """Per render of ``renders [B, 3, S, S]``, a CPU stand-in ``[B, 1]`` holding NaN exactly when the render holds
    NaN/Inf: what :func:`~gie_cli.methods.check_inversion` needs of it, without copying renders off the device."""
    import torch

    bad = ~torch.isfinite(renders).flatten(1).all(1)
    return torch.zeros(len(renders), 1).masked_fill_(bad[:, None].cpu(), float("nan"))


def _resized(x: Tensor, size: int | None) -> Tensor:
    """``x [B, C, H, W]`` at ``size`` x ``size`` (``--size``: area average down, bilinear up), or as it is (None)."""
    if size is None:
        return x
    from gie_cli.benchmark.metrics import to_size

    return to_size(x, size)


def _masks_of(model: InversionMethod, inv: Inversion, n: int) -> Tensor:
    """The blending masks ``[n, 1, S, S]`` (float32, CPU) of a batch's inversion ``inv`` (``model.mask_of``).

    Raises:
        GieError: the method returned something else than one single-channel mask per item.
    """
    import torch

    with torch.no_grad():
        masks = model.mask_of(inv)
    if not isinstance(masks, torch.Tensor) or masks.dim() != 4 or masks.shape[:2] != (n, 1):
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise GieError(f"{model.name}.mask_of returned {shape}, not a [{n}, 1, S, S] blending mask")
    return masks.detach().float().cpu()


def _save_item(
    model: InversionMethod,
    it: Item,
    inv: Inversion,
    image: Tensor | None,
    info: dict,
    mask: Tensor | None = None,
    quality: int | None = None,
    mask_size: tuple[int, int] | None = None,
) -> None:
    """Write the outputs ``it`` has (``--save``), each atomically: its latent (with its record), reconstruction
    (``image``, encoded with ``quality``), blending mask (when ``mask`` is given and asked for: 8-bit grayscale at
    ``mask_size`` (W, H), the reconstruction's) and alignment record. Nothing is encoded for a role not saved."""
    from gie_cli import __version__
    from gie_cli.io.atomic import atomic_save_image, write_text_output
    from gie_cli.io.images import mask_to_image, tensor_to_image
    from gie_cli.io.latents import save_latent

    align_meta = info.pop("align_meta", None)
    meta = {
        **model.describe(),
        "generator": model.generator.config,
        "source": str(Path(it.source).resolve()),
        "source_sha256": info["source_sha256"],
        "source_size": info["source_size"],
        "input_size": model.input_size,
        "gie_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if info.get("demo_model"):
        meta["demo_model"] = True  # the record says the latent comes from a demo model (see _mark_demo_model)
        meta["demo_model_name"] = info.get("demo_model_name")
        meta["input_kind"] = info.get("input_kind")
    if align_meta is not None and "align" in it.outputs:
        meta["alignment"] = it.outputs["align"].name
    if "latent" in it.outputs:
        it.outputs["latent"].parent.mkdir(parents=True, exist_ok=True)
        save_latent(it.outputs["latent"], inv.wplus, meta, inv.extras)
    if image is not None and "image" in it.outputs:
        atomic_save_image(tensor_to_image(image), it.outputs["image"], quality=quality)
    if mask is not None and "mask" in it.outputs:
        atomic_save_image(mask_to_image(mask, mask_size), it.outputs["mask"])
    if align_meta is not None and "align" in it.outputs:
        write_text_output(it.outputs["align"], json.dumps(align_meta, indent=1) + "\n")

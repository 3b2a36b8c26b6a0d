"""`gie invert`: aligned face images in, reconstructions + latent files + a manifest out."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gie_cli.cli import command
from gie_cli.cli.batch import BatchJob, Item, PerBatch, Record, option_identity, parse_shard, plan_items, source_sha256
from gie_cli.cli.options import (
    AlignBackend,
    Alpha,
    AlphaOpt,
    BatchSizeOpt,
    DeviceOpt,
    DryRunOpt,
    Dtype,
    DtypeOpt,
    FailFastOpt,
    ImageExt,
    JsonOpt,
    OnExisting,
    OnExistingOpt,
    OutputOpt,
    RecursiveOpt,
    SettingsOpt,
    ShardOpt,
    WeightsOpt,
    choice,
    examples,
    ext_option,
    parse_settings,
)
from gie_cli.errors import GieError, UsageError

if TYPE_CHECKING:
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

_EPILOG = examples(
    "gie invert aligned/ -m e4e -w e4e.ffhq -o inv",
    "gie invert ./photos -w e4e.ffhq -o inv --json > inv.jsonl      # raw photos are aligned first",
    "gie invert aligned/ -m optim -w stylegan2.ffhq --set steps=500 --set space=wplus -o inv",
    "find shots -name '*.jpg' | gie invert - -o inv --dry-run",
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
    recursive: RecursiveOpt = False,
    on_existing: OnExistingOpt = OnExisting.skip,
    alpha: AlphaOpt = Alpha.white,
    ext: Annotated[ImageExt, ext_option("the reconstructions")] = ImageExt.png,
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
    shard: ShardOpt = None,
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
    """
    import torch

    from gie_cli.alignment.auto import needs_alignment, own_sidecar
    from gie_cli.device import resolve_device, resolve_dtype
    from gie_cli.io.images import IMAGE_SUFFIXES
    from gie_cli.methods import check_method_options, create_method, list_methods

    if method not in list_methods():
        raise UsageError(f"unknown method {method!r}", hint=f"choose one of: {', '.join(list_methods())}")
    options = parse_settings(settings or [])
    check_method_options(method, options)  # --set parsed and range-checked before any item runs
    if landmarks is not None and align_backend != "file":
        raise UsageError("--landmarks only applies to --align-backend file", hint="add --align-backend file")
    plan = _AlignPlan()

    def outputs(src: Path, name: str) -> dict[str, Path]:
        outs = {"image": output / f"{name}.recon.{ext}", "latent": output / f"{name}.latent.safetensors"}
        if save_mask:
            outs["mask"] = output / f"{name}.recon{MASK_SUFFIX}"
        if needs_alignment(src, align):
            plan.names.add(name)
            outs["align"] = output / f"{name}.align.json"
        elif align is None and own_sidecar(src) is not None:
            outs["align"] = output / f"{name}.align.json"  # carry the record of `gie align` along
        return outs

    items = plan_items(
        inputs, output, recursive, IMAGE_SUFFIXES, outputs, stdin_keys=("image", "input"), command="invert",
        shard=parse_shard(shard) if shard else None,
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
    if save_mask:  # only when asked: folders made without the flag keep their done records
        request["save_mask"] = True
    job = BatchJob("invert", output, items, on_existing, fail_fast, json_out, request=request)
    if dry_run:
        job.dry_run(f", method {method}, weights {weights or '-'}")
        return

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)

    def load_model() -> InversionMethod:
        model = create_method(method, weights, dev, **options)
        plan.demo = _demo_model_name(model)
        if dt != torch.float32:
            model = model.to(dt)
        return model

    # --save-mask needs a method with ``mask_of``: checked on the built model before the run writes anything
    loaded = _check_mask_method(load_model(), method) if save_mask else None

    def work(todo: list[Item]) -> PerBatch:
        if any(it.name in plan.names for it in todo):
            from gie_cli.alignment import create_backend

            try:
                plan.backend = create_backend(align_backend, landmarks, str(dev))
            except GieError as e:
                if align:  # alignment was asked for explicitly: a run-level error
                    raise
                plan.error = str(e)  # auto: only the non-square inputs fail, with this reason
                log.warning("automatic alignment unavailable: %s", e)
            else:
                log.info("aligning %d input(s) with %s", sum(it.name in plan.names for it in todo), align_backend)
        model = loaded if loaded is not None else load_model()
        log.info(
            "method %s, weights %s, input %dpx -> output %dpx",
            method,
            model.weights_id,
            model.input_size,
            model.output_size,
        )
        return _batch_work(model, batch_size, dev, dt, alpha, plan, min_size, save_mask)

    raise typer.Exit(job.run(work))


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
    backend: object | None = None
    error: str | None = None
    demo: str | None = None
    """Registry name of the embedded demo model the items are inverted with (None: real weights)."""
    warned: int = 0


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
) -> PerBatch:
    """Load (and align) each item, invert and render batches, check and save each item (see :class:`PerBatch`).

    An item whose face is smaller than ``min_size`` pixels fails when loaded; one whose codes, reconstruction or
    (``save_mask``: the method's ``mask_of``) blending mask hold NaN/Inf fails with the cause
    (:func:`~gie_cli.methods.check_inversion`) and writes nothing.
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
        inv, images, t_inv, t_render = _invert_batch(model, [x for x, _, _ in loaded], dev, dt)
        n = len(loaded)
        masks = _masks_of(model, inv, n) if save_mask else [None] * n
        return [(inv.item(i), images[i], masks[i], t_inv / n, t_render / n) for i in range(n)]

    def finish(it: Item, loaded, result) -> Record:
        _, info, t_load = loaded
        inv, image, mask, t_inv, t_render = result
        check_inversion(model, inv, image)  # NaN/Inf: the item fails with the cause, nothing is written
        if mask is not None and nonfinite(mask):
            raise NonFiniteError(nonfinite_reason(model, "the blending mask"))
        t0 = time.perf_counter()
        try:
            _save_item(model, it, inv, image, info, mask)
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
        if plan.backend is None:
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
                photo, plan.backend, size, Path(it.source), sha, it.name, it.outputs["image"].name
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
    import torch

    from gie_cli.methods import invert_and_render

    inv, images, t_enc, t_render = invert_and_render(model, torch.stack(xs).to(dev, dt))
    return inv, images.float().cpu(), t_enc * 1000, t_render * 1000


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
    model: InversionMethod, it: Item, inv: Inversion, image: Tensor, info: dict, mask: Tensor | None = None
) -> None:
    """Write ``it``'s latent (with its record), reconstruction, blending mask (when ``mask`` is given and asked
    for: 8-bit grayscale at the reconstruction's size) and alignment record, each atomically."""
    from gie_cli import __version__
    from gie_cli.io.atomic import atomic_save_image, atomic_write_text
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
    it.outputs["latent"].parent.mkdir(parents=True, exist_ok=True)
    save_latent(it.outputs["latent"], inv.wplus, meta, inv.extras)
    atomic_save_image(tensor_to_image(image), it.outputs["image"])
    if mask is not None and "mask" in it.outputs:
        atomic_save_image(mask_to_image(mask, (image.shape[-1], image.shape[-2])), it.outputs["mask"])
    if align_meta is not None and "align" in it.outputs:
        atomic_write_text(it.outputs["align"], json.dumps(align_meta, indent=1) + "\n")

"""`gie invert`: aligned face images in, reconstructions + latent files + a manifest out."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from gie_cli.cli import command
from gie_cli.cli.batch import BatchJob, Item, PerBatch, Record, plan_items
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
    WeightsOpt,
    choice,
    examples,
    ext_option,
    parse_settings,
)
from gie_cli.errors import GieError, UsageError

log = logging.getLogger(__name__)

__all__ = ["invert", "parse_settings"]

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
            help="FFHQ-align inputs first (largest face). Default (auto): inputs with a NAME.align.json beside them "
            "(from `gie align`) and square images are taken as aligned crops, other (non-square) images are aligned. "
            "--align aligns every input, --no-align none (non-square inputs then fail).",
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
    dry_run: DryRunOpt = False,
    fail_fast: FailFastOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Invert face photos or aligned face crops into W+ latents and render their reconstructions.

    Per input NAME it writes NAME.recon.<ext> and NAME.latent.safetensors under the output folder (mirroring input
    sub-folders) and appends one line per item to manifest.jsonl. Re-running skips finished items. Inputs that are
    aligned here (see --align), or that come with a NAME.align.json record, also get NAME.align.json next to the
    latent so `gie paste` / `gie edit --paste-back` can put edits back into the photo. A photo without a face gets
    status no_face (not a failure; exit code 0 unless some item failed).
    """
    import torch

    from gie_cli.alignment.auto import needs_alignment, own_sidecar
    from gie_cli.device import resolve_device, resolve_dtype
    from gie_cli.io.images import IMAGE_SUFFIXES
    from gie_cli.methods import create_method, list_methods

    if method not in list_methods():
        raise UsageError(f"unknown method {method!r}", hint=f"choose one of: {', '.join(list_methods())}")
    if landmarks is not None and align_backend != "file":
        raise UsageError("--landmarks only applies to --align-backend file", hint="add --align-backend file")
    plan = _AlignPlan()

    def outputs(src: Path, name: str) -> dict[str, Path]:
        outs = {"image": output / f"{name}.recon.{ext}", "latent": output / f"{name}.latent.safetensors"}
        if needs_alignment(src, align):
            plan.names.add(name)
            outs["align"] = output / f"{name}.align.json"
        elif align is None and own_sidecar(src) is not None:
            outs["align"] = output / f"{name}.align.json"  # carry the record of `gie align` along
        return outs

    items = plan_items(inputs, output, recursive, IMAGE_SUFFIXES, outputs, stdin_keys=("image", "input"))
    job = BatchJob("invert", output, items, on_existing, fail_fast, json_out)
    if dry_run:
        job.dry_run(f", method {method}, weights {weights or '-'}")
        return

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)

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
        model = create_method(method, weights, dev, **parse_settings(settings or []))
        if dt != torch.float32:
            model = model.to(dt)
        log.info(
            "method %s, weights %s, input %dpx -> output %dpx",
            method,
            model.weights_id,
            model.input_size,
            model.output_size,
        )
        return _batch_work(model, batch_size, dev, dt, alpha, plan)

    raise typer.Exit(job.run(work))


@dataclass
class _AlignPlan:
    """Items (by output name) that get FFHQ-aligned before inversion, and the landmark backend doing it."""

    names: set[str] = field(default_factory=set)
    backend: object | None = None
    error: str | None = None


def _strs(outputs: dict[str, Path]) -> dict[str, str]:
    return {k: str(v) for k, v in outputs.items()}


def _batch_work(model, batch_size: int, dev, dt, alpha: str, plan: _AlignPlan | None = None) -> PerBatch:
    """Load (and align) each item, invert and render batches, save each item (see :class:`PerBatch`)."""
    from gie_cli.alignment.auto import NoFaceError

    plan = plan or _AlignPlan()

    def prepare(it: Item):
        t0 = time.perf_counter()
        try:
            x, info = _load_input(it, model.input_size, alpha, plan)
        except NoFaceError as e:
            return Record(str(it.source), "no_face", reason=_reason(e))
        return x, info, (time.perf_counter() - t0) * 1000

    def compute(loaded: list) -> list:
        inv, images, t_inv, t_render = _invert_batch(model, [x for x, _, _ in loaded], dev, dt)
        n = len(loaded)
        return [(inv.item(i), images[i], t_inv / n, t_render / n) for i in range(n)]

    def finish(it: Item, loaded, result) -> Record:
        _, info, t_load = loaded
        inv, image, t_inv, t_render = result
        t0 = time.perf_counter()
        try:
            _save_item(model, it, inv, image, info)
        except OSError as e:
            raise GieError(_reason(e)) from e
        timings = {"load": t_load, "invert": t_inv, "render": t_render, "save": (time.perf_counter() - t0) * 1000}
        return Record(str(it.source), "ok", _strs(it.outputs), None, {k: round(v, 2) for k, v in timings.items()}, info)

    return PerBatch(compute, finish, batch_size, prepare)


def _reason(e: Exception) -> str:
    return str(e)


def _load_aligned(path: Path, size: int, alpha: str):
    """Load an aligned square crop as ``[3, size, size]`` in [-1, 1] (PIL bilinear resize, as the official
    encoders were trained) plus facts about the source."""
    from PIL import Image

    from gie_cli.io.images import image_to_tensor, load_image, sha256_file

    img = load_image(path, alpha=alpha)
    w, h = img.size
    if w != h:
        from gie_cli.errors import ImageLoadError

        raise ImageLoadError(
            path,
            f"not a square aligned face crop ({w}x{h})",
            hint="pass FFHQ-aligned square crops, or let gie align the photo (--align, or `gie align` first)",
        )
    x = image_to_tensor(img, size=size, resample=Image.Resampling.BILINEAR)
    return x, {"source_size": [w, h], "source_sha256": sha256_file(path)}


def _load_input(it: Item, size: int, alpha: str, plan: _AlignPlan):
    """Load an item as ``[3, size, size]`` in [-1, 1]: FFHQ-align it first when planned, or carry its record."""
    from PIL import Image

    from gie_cli.alignment import read_align_meta
    from gie_cli.alignment.auto import NoFaceError, align_for_inversion, own_sidecar
    from gie_cli.io.images import image_to_tensor, load_image, sha256_file

    if it.name in plan.names:
        photo = load_image(it.source, alpha=alpha)
        if plan.backend is None:
            from gie_cli.errors import ImageLoadError

            w, h = photo.size
            raise ImageLoadError(
                it.source,
                f"not a square aligned face crop ({w}x{h}) and automatic alignment is unavailable: {plan.error}",
            )
        sha = sha256_file(it.source)
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
        x = image_to_tensor(crop, size=size, resample=Image.Resampling.BILINEAR)
        return x, {"source_size": list(photo.size), "source_sha256": sha, "aligned": "invert", "align_meta": meta}
    x, info = _load_aligned(it.source, size, alpha)
    if "align" in it.outputs:
        record = own_sidecar(it.source)
        if record is not None:
            info["align_meta"] = read_align_meta(record)
            info["aligned"] = "record"
    return x, info


def _invert_batch(model, xs, dev, dt):
    import torch

    from gie_cli.methods import invert_and_render

    inv, images, t_enc, t_render = invert_and_render(model, torch.stack(xs).to(dev, dt))
    return inv, images.float().cpu(), t_enc * 1000, t_render * 1000


def _save_item(model, it: Item, inv, image, info: dict) -> None:
    from gie_cli import __version__
    from gie_cli.io.atomic import atomic_save_image, atomic_write_text
    from gie_cli.io.images import tensor_to_image
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
    if align_meta is not None and "align" in it.outputs:
        meta["alignment"] = it.outputs["align"].name
    it.outputs["latent"].parent.mkdir(parents=True, exist_ok=True)
    save_latent(it.outputs["latent"], inv.wplus, meta, inv.extras)
    atomic_save_image(tensor_to_image(image), it.outputs["image"])
    if align_meta is not None and "align" in it.outputs:
        atomic_write_text(it.outputs["align"], json.dumps(align_meta, indent=1) + "\n")

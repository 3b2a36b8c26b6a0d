"""`gie paste`: put edited aligned faces back into their photos with the recorded inverse FFHQ transform."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import typer

from gie_cli.cli import command
from gie_cli.cli.batch import BatchJob, Item, PerItem, Record, option_identity, plan_items
from gie_cli.cli.options import (
    DEFAULT_WORKERS,
    DryRunOpt,
    FailFastOpt,
    ImageExt,
    JsonOpt,
    NprocOpt,
    OnExisting,
    OnExistingOpt,
    OutputOpt,
    QualityOpt,
    RecursiveOpt,
    ShardOpt,
    WorkersOpt,
    examples,
    ext_option,
    image_quality,
)
from gie_cli.cli.ranks import setup_ranks
from gie_cli.errors import GieError, UsageError

log = logging.getLogger(__name__)

_EPILOG = examples(
    "gie align photo.jpg -o aligned && (edit aligned/photo.png) && gie paste aligned/photo.png -o final",
    "gie paste inv/photo.recon.png -o final          # finds inv/photo.align.json written by `gie invert`",
    "gie paste a_face2.png --photo final/a_face1.png -o final2   # several faces: paste onto the last composite",
)


@command(epilog=_EPILOG)
def paste(
    output: OutputOpt,
    inputs: Annotated[
        list[str] | None, typer.Argument(help="Edited aligned face images, folders, or - to read paths from stdin.")
    ] = None,
    meta: Annotated[
        Path | None,
        typer.Option("--meta", help="Alignment record to use for every input (default: NAME.align.json beside it)."),
    ] = None,
    photo: Annotated[
        Path | None,
        typer.Option("--photo", help="Photo to paste into (default: the record's source photo)."),
    ] = None,
    feather: Annotated[
        float, typer.Option("--feather", min=0.0, max=0.95, help="Soft edge of the face mask, fraction of its radius.")
    ] = 0.15,
    recursive: RecursiveOpt = False,
    on_existing: OnExistingOpt = OnExisting.skip,
    ext: Annotated[ImageExt, ext_option("the composites")] = ImageExt.png,
    quality: QualityOpt = 95,
    shard: ShardOpt = None,
    workers: WorkersOpt = DEFAULT_WORKERS,
    nproc: NprocOpt = 1,
    dry_run: DryRunOpt = False,
    fail_fast: FailFastOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Warp edited aligned faces back into the original photos; everything outside the face stays untouched.

    For an input NAME.png (or NAME.<anything>.png) the alignment record NAME.align.json next to it gives the
    transform and the source photo. Writes one composite NAME.png per input into the output folder and one manifest
    line per input. Exit code 0 when all inputs are ok or skipped, 1 when any failed, 2 for usage errors.
    """
    from gie_cli.io.images import IMAGE_SUFFIXES

    for opt, p in (("--meta", meta), ("--photo", photo)):
        if p is not None and not p.is_file():
            raise UsageError(f"{opt} {p}: file not found")
    parsed_shard, _, rank = setup_ranks(nproc, shard, "cpu")
    items = plan_items(
        inputs, output, recursive, IMAGE_SUFFIXES, lambda _, name: {"image": output / f"{name}.{ext}"},
        stdin_keys=("image", "input"), command="paste", shard=parsed_shard,
    )  # fmt: skip

    def precheck(it: Item) -> None:  # the record must be usable even when the composite exists
        it.data["record"], it.data["meta"], it.data["photo"] = _sources(it, meta, photo)
        it.data["deps"] = [it.data["record"], it.data["photo"]]  # a changed record or photo makes the composite stale

    request = {"meta": option_identity(meta), "photo": option_identity(photo), "feather": feather, "ext": str(ext)}
    q = image_quality(ext, quality)
    if q is not None:  # lossy formats only: png folders keep their done records
        request["quality"] = q
    job = BatchJob(
        "paste",
        output,
        items,
        on_existing,
        fail_fast,
        json_out,
        precheck=None if dry_run else precheck,
        request=request,
        workers=workers,
        rank=rank,
    )
    if dry_run:
        job.dry_run()
        return
    work = PerItem(lambda it, _: _paste_one(it, it.data["record"], it.data["meta"], it.data["photo"], feather, q))
    raise typer.Exit(job.run(lambda todo: work))


def _sources(it: Item, meta_path: Path | None, photo_path: Path | None) -> tuple[Path, dict, Path]:
    """The alignment record (path and content) and the photo of one input.

    Raises:
        GieError: no or bad record, or a composite that would replace the photo.
    """
    from gie_cli.alignment import find_align_sidecar, read_align_meta

    record = meta_path or find_align_sidecar(it.source)
    if record is None:
        raise UsageError(
            f"no alignment record for {it.source} (looked for NAME.align.json beside it)", hint="pass --meta"
        )
    meta = read_align_meta(record)
    photo_file = Path(photo_path or meta["source"])
    out = it.outputs["image"]
    if out.resolve() == photo_file.resolve():
        raise UsageError(f"composite {out} would overwrite the photo {photo_file}", hint="choose another -o")
    return record, meta, photo_file


def _paste_one(
    it: Item, record: Path, meta: dict, photo_file: Path, feather: float, quality: int | None = None
) -> Record:
    """Paste one edited face into its photo and write the composite (``quality``: JPEG/WebP quality)."""
    from gie_cli.alignment import paste_back
    from gie_cli.io.atomic import atomic_save_image
    from gie_cli.io.images import load_image

    t0 = time.perf_counter()
    src = str(it.source)
    out = it.outputs["image"]
    try:
        edited = load_image(it.source)
        photo = load_image(photo_file)
        composite = paste_back(edited, meta, photo, feather=feather)
        atomic_save_image(composite, out, quality=quality)
    except GieError as e:
        return Record(src, "failed", reason=str(e))
    info = {"record": str(record), "photo": str(photo_file), "face_index": meta.get("face_index")}
    ms = {"total": round((time.perf_counter() - t0) * 1000, 2)}
    return Record(src, "ok", {"image": str(out)}, None, ms, info)

"""`gie paste`: put edited aligned faces back into their photos with the recorded inverse FFHQ transform."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import typer

from gie_cli.cli import command
from gie_cli.cli.batch import (
    DryRunOpt,
    FailFastOpt,
    Item,
    OnExistingOpt,
    Record,
    RecursiveOpt,
    Reporter,
    check_on_existing,
    check_output_dir,
    collect_inputs,
    existing_record,
    is_done,
)
from gie_cli.cli.options import JsonOpt
from gie_cli.errors import GieError, UsageError

log = logging.getLogger(__name__)

_EPILOG = (
    "Examples:\n\n"
    "  gie align photo.jpg -o aligned && (edit aligned/photo.png) && gie paste aligned/photo.png -o final\n\n"
    "  gie paste inv/photo.recon.png -o final          # finds inv/photo.align.json written by `gie invert`\n\n"
    "  gie paste a_face2.png --photo final/a_face1.png -o final2   # several faces: paste onto the last composite"
)


@command(epilog=_EPILOG)
def paste(
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")],
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
    on_existing: OnExistingOpt = "skip",
    ext: Annotated[str, typer.Option("--ext", help="Image format of the composites: png | jpg | webp.")] = "png",
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

    check_on_existing(on_existing)
    if ext not in ("png", "jpg", "webp"):
        raise UsageError(f"--ext must be png, jpg or webp, got {ext!r}")
    for opt, p in (("--meta", meta), ("--photo", photo)):
        if p is not None and not p.is_file():
            raise UsageError(f"{opt} {p}: file not found")
    raw_inputs = inputs or []
    check_output_dir(output, [Path(p) for p in raw_inputs if p != "-"])
    found = collect_inputs(raw_inputs, recursive, IMAGE_SUFFIXES, exclude=output, stdin_keys=("image", "input"))
    items = [Item(src, name, {"image": output / f"{name}.{ext}"}) for src, name in found]
    if dry_run:
        for it in items:
            typer.echo(f"{'exists' if is_done(it) else 'todo'}\t{it.source}\t{it.outputs['image']}")
        typer.echo(f"dry run: {len(items)} input(s)", err=True)
        return
    reporter = Reporter(output, len(items), json_out, "paste")
    for it in items:
        try:
            record, meta_dict, photo_file = _sources(it, meta, photo)
        except GieError as e:
            rec = Record(str(it.source), "failed", reason=str(e))
        else:
            rec = existing_record(it, on_existing) or _paste_one(it, record, meta_dict, photo_file, feather)
        reporter.add(rec)
        if fail_fast and rec.status == "failed":
            break
    raise typer.Exit(reporter.finish())


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


def _paste_one(it: Item, record: Path, meta: dict, photo_file: Path, feather: float) -> Record:
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
        atomic_save_image(composite, out)
    except GieError as e:
        return Record(src, "failed", reason=str(e))
    except Exception as e:  # noqa: BLE001 - one bad item does not stop the run
        log.debug("paste failed", exc_info=True)
        return Record(src, "failed", reason=f"{type(e).__name__}: {e}")
    info = {"record": str(record), "photo": str(photo_file), "face_index": meta.get("face_index")}
    ms = {"total": round((time.perf_counter() - t0) * 1000, 2)}
    return Record(src, "ok", {"image": str(out)}, None, ms, info)

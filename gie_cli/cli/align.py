"""`gie align`: photos in, FFHQ-aligned face crops + alignment records + a manifest out (FFHQ: Karras et al. 2019)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated

import typer

from gie_cli.cli import command
from gie_cli.cli.batch import BatchJob, Item, PerItem, Record, option_identity, plan_items, source_sha256
from gie_cli.cli.options import (
    DEFAULT_WORKERS,
    AlignBackend,
    Alpha,
    AlphaOpt,
    DeviceOpt,
    DryRunOpt,
    Faces,
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
    choice,
    ext_option,
    image_quality,
)
from gie_cli.cli.ranks import setup_ranks
from gie_cli.errors import GieError, UsageError

log = logging.getLogger(__name__)

UPSCALE_WARN = 4.0
"""`gie align` warns (naming the file) when a face is magnified more than this from the photo to the crop."""


BackendOpt = Annotated[
    AlignBackend,
    choice(
        AlignBackend,
        "--backend",
        help="Landmark detector: auto (a <stem>.landmarks.json beside the image, else face-alignment), "
        "face-alignment (FAN 68 points; needs its two weight files on disk), mediapipe "
        '(offline; pip install "gie\\[mediapipe]") or file (JSON landmarks, see below).',
    ),
]
LandmarksOpt = Annotated[
    Path | None,
    typer.Option(
        "--landmarks",
        help="--backend file: a folder of <stem>.landmarks.json files, or one JSON file for all inputs. "
        "Default: <stem>.landmarks.json next to each image.",
    ),
]

_EPILOG = (
    "Examples:\n\n"
    "  gie align ./photos -o ./aligned                      # largest face per photo, 1024 px\n\n"
    "  gie align group.jpg -o out --faces all --size 256    # every face: group_face1.png, group_face2.png, ...\n\n"
    "  gie align ./photos -o out --backend file --landmarks ./lms\n\n"
    'Landmarks JSON (--backend file): {"faces": [{"points": [[x, y], ...], "score": 0.9, "bbox": [x0, y0, x1, '
    "y1]}]} with 5 points (left eye centre, right eye centre, nose tip, left mouth corner, right mouth corner; left "
    "= image left) or 68 points (iBUG 300-W order), in pixels of the upright image (EXIF orientation applied), "
    'pixel centres at integer coordinates. "faces": [] means no face. A bare list of faces also works.'
).replace("[", "\\[")  # rich markup: literal brackets


@command(epilog=_EPILOG)
def align(
    output: OutputOpt,
    inputs: Annotated[list[str] | None, typer.Argument(help="Photos, folders, or - to read paths from stdin.")] = None,
    size: Annotated[
        int, typer.Option("--size", "-s", min=16, max=4096, help="Side of the aligned crops (256 for the encoders).")
    ] = 1024,
    faces: Annotated[
        Faces,
        choice(
            Faces,
            "--faces",
            help="Several faces in a photo: largest (the largest one), all (NAME_face1, NAME_face2, ..., largest "
            "first) or error (the item fails).",
        ),
    ] = Faces.largest,
    backend: BackendOpt = AlignBackend.auto,
    landmarks: LandmarksOpt = None,
    device: DeviceOpt = "auto",
    recursive: RecursiveOpt = False,
    on_existing: OnExistingOpt = OnExisting.skip,
    alpha: AlphaOpt = Alpha.white,
    ext: Annotated[ImageExt, ext_option("the crops")] = ImageExt.png,
    quality: QualityOpt = 95,
    shard: ShardOpt = None,
    workers: WorkersOpt = DEFAULT_WORKERS,
    nproc: NprocOpt = 1,
    dry_run: DryRunOpt = False,
    fail_fast: FailFastOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Detect faces and crop them FFHQ-style (eyes and mouth at fixed places), ready for `gie invert`.

    Per input NAME it writes NAME.png (or NAME_face1.png, NAME_face2.png, ... with --faces all) and NAME.align.json
    (landmarks, the photo -> crop transform and its inverse, source path and sizes; `gie paste` uses it), and
    appends one line per input to manifest.jsonl. Re-running skips finished inputs. Inputs are never modified.

    A photo without a face gets status no_face (manifest, --json, summary). It is not a failure: the exit code is 0
    when every input is ok, skipped or no_face; 1 when any input failed (unreadable image, missing landmarks file,
    several faces with --faces error); 2 for usage errors.
    """
    from gie_cli.io.images import IMAGE_SUFFIXES

    if landmarks is not None and backend != "file":
        raise UsageError("--landmarks only applies to --backend file", hint="add --backend file")
    parsed_shard, device, rank = setup_ranks(nproc, shard, device)
    items = plan_items(
        inputs,
        output,
        recursive,
        IMAGE_SUFFIXES,
        lambda _, name: _planned_outputs(output, name, faces, ext),
        command="align",
        shard=parsed_shard,
    )
    request = {  # what the crops depend on besides the photo: a finished item is skipped only for the same
        "size": size,
        "faces": str(faces),
        "backend": str(backend),
        "landmarks": option_identity(landmarks),
        "alpha": str(alpha),
        "ext": str(ext),
    }
    q = image_quality(ext, quality)
    if q is not None:  # lossy formats only: png folders keep their done records
        request["quality"] = q
    job = BatchJob(
        "align", output, items, on_existing, fail_fast, json_out, done=lambda it: _is_done(it, faces), request=request,
        workers=workers, rank=rank,
    )  # fmt: skip
    if dry_run:
        job.dry_run(f", backend {backend}, size {size}, faces {faces}")
        return

    def work(todo: list[Item]) -> PerItem:
        from gie_cli.alignment import create_backend

        dev = "cpu"
        if backend in ("auto", "face-alignment"):
            from gie_cli.device import resolve_device

            dev = str(resolve_device(device))
        detector = create_backend(backend, landmarks, dev)
        log.info("align: backend %s, size %d, faces %s", backend, size, faces)
        return PerItem(lambda it, _: _align_one(it, detector, backend, size, faces, ext, alpha, output, q))

    raise typer.Exit(job.run(work))


def _face_name(name: str, faces: str, index: int) -> str:
    return f"{name}_face{index}" if faces == "all" else name


def _planned_outputs(out: Path, name: str, faces: str, ext: str) -> dict[str, Path]:
    """Outputs known before detection (with --faces all: those of the first face)."""
    base = _face_name(name, faces, 1)
    return {"image": out / f"{base}.{ext}", "meta": out / f"{base}.align.json"}


def _is_done(it: Item, faces: str) -> bool:
    """All outputs of the item exist; with --faces all, every face listed in the first record."""
    if not all(p.exists() for p in it.outputs.values()):
        return False
    if faces != "all":
        return True
    try:
        n = int(json.loads(it.outputs["meta"].read_text(encoding="utf-8")).get("faces_aligned", 1))
    except (OSError, ValueError, AttributeError):
        return False
    img, meta = it.outputs["image"], it.outputs["meta"]
    for k in range(2, n + 1):
        stem = img.name[: -len(img.suffix)].rsplit("_face", 1)[0]
        if not (
            img.with_name(f"{stem}_face{k}{img.suffix}").exists()
            and meta.with_name(f"{stem}_face{k}.align.json").exists()
        ):
            return False
    return True


def _align_one(
    it: Item,
    detector,
    backend: str,
    size: int,
    faces: str,
    ext: str,
    alpha: str,
    out_dir: Path,
    quality: int | None = None,
) -> Record:
    """Align one photo and write its crops (``quality``: JPEG/WebP quality) and records; every problem becomes the
    item's status."""
    from gie_cli.alignment import align_photo, build_align_meta
    from gie_cli.io.atomic import atomic_save_image, write_text_output
    from gie_cli.io.images import load_image

    t0 = time.perf_counter()
    src = str(it.source)
    try:
        photo = load_image(it.source, alpha=alpha)
        t_load = time.perf_counter()
        found, aligned = align_photo(photo, detector, size, faces, Path(it.source))
    except GieError as e:
        return Record(src, "failed", reason=str(e))
    t_align = time.perf_counter()
    info: dict = {"faces_found": len(found), "source_size": list(photo.size)}
    if not aligned:
        return Record(src, "no_face", reason="no face found", info=info, timings_ms=_ms(t0, t_load, t_align, t_align))
    outputs: dict[str, str] = {}
    sha = source_sha256(it)
    try:
        for af in aligned:
            base = _face_name(it.name, faces, af.index)
            img_path = out_dir / f"{base}.{ext}"
            meta_path = out_dir / f"{base}.align.json"
            meta = build_align_meta(
                af.result,
                af.face,
                source=it.source,
                source_size=photo.size,
                backend=backend,
                name=it.name,
                image=img_path.name,
                face_index=af.index,
                faces_aligned=len(aligned),
                faces_found=len(found),
                source_sha256=sha,
            )
            meta["upscale"] = round(af.result.upscale, 3)  # crop px per photo px of the face
            if af.result.upscale > UPSCALE_WARN:
                log.warning(
                    "%s: face %d is upscaled %.1fx (its FFHQ crop is %.0f px wide in the photo, the output %d px): "
                    "the aligned face is interpolated, not photographed; use a larger photo or a smaller --size",
                    it.source,
                    af.index,
                    af.result.upscale,
                    af.result.face_size,
                    af.result.size,
                )
            atomic_save_image(af.result.image, img_path, quality=quality)
            write_text_output(meta_path, json.dumps(meta, indent=1) + "\n")  # written last: marks the face done
            prefix = "" if af.index == 1 else f"face{af.index}."
            outputs[f"{prefix}image"] = str(img_path)
            outputs[f"{prefix}meta"] = str(meta_path)
        if faces == "all":
            _remove_stale_faces(out_dir, it.name, ext, len(aligned))
    except (GieError, OSError) as e:
        return Record(src, "failed", outputs, str(e), info=info)
    info["faces_aligned"] = len(aligned)
    info["faces"] = [
        {
            "index": af.index,
            "score": af.face.score,
            "bbox": [round(v, 1) for v in af.face.bbox],
            "upscale": round(af.result.upscale, 3),
        }
        for af in aligned
    ]
    return Record(src, "ok", outputs, None, _ms(t0, t_load, t_align, time.perf_counter()), info)


def _remove_stale_faces(out_dir: Path, name: str, ext: str, n: int) -> None:
    """After an overwrite with fewer faces, drop NAME_face{n+1}... left over from an earlier run."""
    k = n + 1
    while True:
        stale = [out_dir / f"{name}_face{k}.{ext}", out_dir / f"{name}_face{k}.align.json"]
        if not any(p.exists() for p in stale):
            return
        for p in stale:
            p.unlink(missing_ok=True)
        k += 1


def _ms(t0: float, t_load: float, t_align: float, t_end: float) -> dict[str, float]:
    return {
        "load": round((t_load - t0) * 1000, 2),
        "align": round((t_align - t_load) * 1000, 2),
        "save": round((t_end - t_align) * 1000, 2),
    }

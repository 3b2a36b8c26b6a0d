"""`gie edit`: latent files of `gie invert` in, edited images (one per direction and power) + a manifest out."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated

import typer

from gie_cli.cli import command
from gie_cli.cli.batch import (
    BatchJob,
    Item,
    PerItem,
    Record,
    Shard,
    check_output_dir,
    option_identity,
    plan_items,
)
from gie_cli.cli.options import (
    DEFAULT_WORKERS,
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
    ShardOpt,
    WorkersOpt,
    batch_size_option,
    examples,
    ext_option,
    image_quality,
    weights_option,
)
from gie_cli.cli.ranks import setup_ranks
from gie_cli.errors import UsageError

if TYPE_CHECKING:
    from gie_cli.editing.session import EditPlan, EditSession

log = logging.getLogger(__name__)

_EPILOG = examples(
    "gie invert aligned/ -o inv && gie edit inv -d smile -p -2 -p 2 -o edits --grid",
    "gie invert aligned/ -o inv --json | gie edit - -d age -d pose --power=-3,0,3 -o edits",
    "gie edit inv/face.latent.safetensors -d my_dirs/beard.direction.safetensors -p 5 -o edits",
    "gie edit inv -d smile -o edits --paste-back      # also paste each edit into the original photo",
    "gie edit inv --classifier world.latent_classifier -a smile -a glasses -p 2 -o edits   # label-based, 2nd order",
    "gie edit inv --reference ref.png -a hair_lightness -o edits     # take the reference face's hair lightness",
)


def parse_powers(values: list[str]) -> list[float]:
    """``["-3", "0,3"]`` -> ``[-3.0, 0.0, 3.0]`` (repeatable and comma-separated; duplicates dropped, order kept; a
    leading ``=`` is ignored so ``-p=-3`` works like ``--power=-3``).

    Raises:
        UsageError: a value that is not a number.
    """
    out: list[float] = []
    for v in values:
        for part in v.removeprefix("=").split(","):
            part = part.strip()
            if not part:
                continue
            try:
                p = float(part)
            except ValueError:
                raise UsageError(f"--power {part!r} is not a number") from None
            if p != p or p in (float("inf"), float("-inf")):
                raise UsageError(f"--power {part!r} is not a finite number")
            if p not in out:
                out.append(p)
    return out


@command(epilog=_EPILOG)
def edit(
    output: OutputOpt,
    inputs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Latent files or folders of `gie invert`, packed latent files (`gie invert --pack-latents`), or - to "
            "read paths / JSON lines from stdin."
        ),
    ] = None,
    direction: Annotated[
        list[str] | None,
        typer.Option("--direction", "-d", help="Direction name or file (repeatable; see `gie directions list`)."),
    ] = None,
    power: Annotated[
        list[str] | None,
        typer.Option(
            "--power",
            "-p",
            help="Edit power (repeatable or comma-separated: -p -3 -p 3, --power=-3,0,3). Default: the ends of "
            "the direction's recommended range.",
        ),
    ] = None,
    classifier: Annotated[
        str | None,
        typer.Option(
            "--classifier",
            help="Label-based editing (Style Transformer): a latent attribute classifier (file or registry name, "
            "e.g. world.latent_classifier) whose --attribute edits are added to the directions.",
        ),
    ] = None,
    attribute: Annotated[
        list[str] | None,
        typer.Option("--attribute", "-a", help="Attribute of --classifier to edit (repeatable; name or index)."),
    ] = None,
    target: Annotated[
        float, typer.Option("--target", min=0.0, max=1.0, help="Label edits: target label (1 = more, 0 = less).")
    ] = 1.0,
    order: Annotated[
        int, typer.Option("--order", min=1, max=2, help="Label edits: 1 first-order, 2 second-order (default).")
    ] = 2,
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            help="Reference-based editing (Style Transformer): an aligned face whose --attribute each input takes "
            "(inverted by each latent's own method); outputs NAME.<attribute>-ref<power>.",
        ),
    ] = None,
    editor: Annotated[
        str | None,
        typer.Option("--editor", help="Editing transformer of --reference (file or registry name; default: embedded)"),
    ] = None,
    mask: Annotated[
        str | None,
        typer.Option(
            "--mask",
            help="Masked editing (SFE, supplement §9): edits change only the face region's features. 'landmarks' = "
            "the face's hull from each latent's alignment record (NAME.align.json of gie align); or a mask image "
            "(white = face) for every input; or a folder of NAME.mask.png.",
        ),
    ] = None,
    weights: Annotated[
        str | None, weights_option("Method checkpoint, overriding the one recorded in the latent files.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Apply directions made for another generator (same shapes) anyway.")
    ] = False,
    grid: Annotated[
        bool, typer.Option("--grid", help="Also write NAME.grid.<ext>: per direction a row, reconstruction first.")
    ] = False,
    grid_size: Annotated[int, typer.Option("--grid-size", min=16, help="Tile size of the grid in pixels.")] = 256,
    paste_back: Annotated[
        bool,
        typer.Option(
            "--paste-back",
            help="Also paste each edit into the original photo (NAME.<edit>.paste.<ext>), using the alignment "
            "record of `gie align` (NAME.align.json beside the latent or beside the aligned image it came from).",
        ),
    ] = False,
    batch_size: Annotated[
        int, batch_size_option("Edits rendered per model batch; halved and retried on CUDA out-of-memory.")
    ] = 4,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = Dtype.auto,
    precision: PrecisionOpt = Precision.fp32,
    compile_synthesis: CompileOpt = False,
    cuda_graphs: CudaGraphsOpt = False,
    recursive: RecursiveOpt = False,
    on_existing: OnExistingOpt = OnExisting.skip,
    ext: Annotated[ImageExt, ext_option("the edited images")] = ImageExt.png,
    quality: QualityOpt = 95,
    shard: ShardOpt = None,
    workers: WorkersOpt = DEFAULT_WORKERS,
    nproc: NprocOpt = 1,
    dry_run: DryRunOpt = False,
    fail_fast: FailFastOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Edit inverted faces along directions at several powers, with each inversion method's own editing path.

    Per input NAME, direction DIR and power P it writes NAME.DIR+P.<ext> (e.g. face.smile+3.png, face.age-2.5.png)
    under the output folder (mirroring input sub-folders) and appends one manifest line per input. The method that
    made each latent is rebuilt from the latent's record (method, weights, settings). A direction bound to another
    generator is refused unless --force. Re-running skips finished inputs. A packed latent file (`gie invert
    --pack-latents`, named as an argument) gives one input per item, named as in the pack; its items are unpacked
    into the output folder's .gie/unpacked/ first. Exit code 0 when all inputs are ok or skipped, 1 when any failed,
    2 for usage errors.
    """
    from gie_cli.editing.session import EditPlan, label_directions
    from gie_cli.io.latents import LATENT_SUFFIX

    if attribute and classifier is None and reference is None:
        raise UsageError("--attribute edits need --classifier (label-based) or --reference", param="attribute")
    if (classifier is not None or reference is not None) and not attribute:
        raise UsageError("--classifier and --reference edit the attributes named by --attribute", param="attribute")
    if mask and mask != "landmarks" and not Path(mask).exists():
        raise UsageError(
            f"--mask {mask}: no such file or folder", hint="landmarks, a mask image, or a folder of NAME.mask.png",
            param="mask", value=mask,
        )  # fmt: skip
    powers = parse_powers(power or [])
    labels = label_directions(classifier, attribute or [], target, order) if classifier else []
    references, edit_model = [], None
    if reference is not None:
        edit_model, references = _reference_edits(reference, editor, attribute or [], powers)
    plan = EditPlan.load(direction or [], powers, labels, references)
    if paste_back:
        _paste_module()
    plain, packs = _split_packs(inputs or [])
    parsed_shard, device, rank = setup_ranks(nproc, shard, device)

    def outputs(_: Path, name: str) -> dict[str, Path]:
        return _outputs(output, name, plan, ext, grid, paste_back)

    items = []
    if plain or not packs:
        items = plan_items(
            plain, output, recursive, (LATENT_SUFFIX,), outputs, stdin_keys=("latent",), command="edit",
            shard=parsed_shard,
        )  # fmt: skip
    if packs:
        check_output_dir(output, packs)
        items += _pack_items(packs, output, outputs, {it.name for it in items}, parsed_shard, unpack=not dry_run)
    request = {  # what the outputs depend on besides the latent: a finished item is skipped only for the same
        "directions": [option_identity(d) for d in direction or []],
        "label": [option_identity(classifier), attribute or [], target, order] if classifier else None,
        "reference": [option_identity(str(reference)), option_identity(editor), attribute] if reference else None,
        "edits": list(plan.keys()),
        "weights": option_identity(weights),
        "mask": option_identity(mask),
        "force": force,
        "grid": grid,
        "grid_size": grid_size,
        "paste_back": paste_back,
        "ext": str(ext),
        "dtype": str(dtype),
    }
    q = image_quality(ext, quality)
    if q is not None:  # lossy formats only: png folders keep their done records
        request["quality"] = q
    if precision != Precision.fp32:  # likewise: fp32 folders keep their done records
        request["precision"] = str(precision)
    job = BatchJob("edit", output, items, on_existing, fail_fast, json_out, request=request, workers=workers, rank=rank)
    if dry_run:
        job.dry_run(f", {len(plan)} edit(s) each")
        return

    def work(todo: list[Item]) -> PerItem:
        from gie_cli.device import check_cuda_graphs, resolve_device, resolve_dtype, resolve_precision
        from gie_cli.editing.session import EditSession
        from gie_cli.models.stylegan2 import set_default_fast_path

        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        prec = resolve_precision(precision, dev, dt)
        check_cuda_graphs(cuda_graphs, dev)
        # the session builds the methods per latent: the switches are the process defaults while the job runs
        set_default_fast_path(precision=prec, compile=compile_synthesis, cuda_graphs=cuda_graphs)
        session = EditSession(plan, dev, dt, weights, force, batch_size, edit_model, mask)
        return PerItem(lambda it, bs: _edit_one(session, it, grid, grid_size, paste_back, bs, q), batch_size)

    from gie_cli.models.stylegan2 import use_fast_path

    with use_fast_path():  # work() sets the defaults; restored on exit
        code = job.run(work)
    raise typer.Exit(code)


def _split_packs(inputs: list[str]) -> tuple[list[str], list[Path]]:
    """``(other inputs, packed latent files)``: packs are files named as arguments (not read from stdin)."""
    from gie_cli.io.latents import LATENT_SUFFIX, is_latent_pack

    plain, packs = [], []
    for raw in inputs:
        p = Path(raw).expanduser()
        pack = raw != "-" and raw.endswith(".safetensors") and not raw.endswith(LATENT_SUFFIX) and p.is_file()
        if pack and is_latent_pack(p):
            packs.append(p)
        else:
            plain.append(raw)
    return plain, packs


def _pack_items(
    packs: list[Path],
    output: Path,
    outputs: Callable[[Path, str], dict[str, Path]],
    taken: set[str],
    shard: Shard | None,
    unpack: bool = True,
) -> list[Item]:
    """One item per entry of each packed latent file, named by the pack's index (a name another input has, or that
    another input's outputs hold in ``output``, gets the suffix of :func:`~gie_cli.cli.batch.path_tag`).

    The entries are unpacked (:func:`~gie_cli.io.latents.unpack_latents`) into ``output/.gie/unpacked/<sha256 of
    the pack>/`` (kept: a re-run with the same pack finds the same files and skips finished items); ``unpack`` False
    (dry run) only plans. Shards are taken by the unpacked file's path.

    Raises:
        CheckpointError: an unreadable or inconsistent pack.
    """
    from gie_cli.cli.batch import STATE_DIR, DoneRecords, path_tag, shard_number
    from gie_cli.io.atomic import atomic_write_text
    from gie_cli.io.images import sha256_file
    from gie_cli.io.latents import LATENT_SUFFIX, load_packed_latents, unpack_latents

    records = DoneRecords(output, "edit")
    items: list[Item] = []
    for pack in packs:
        folder = output / STATE_DIR / "unpacked" / sha256_file(pack)[:24]
        done = folder / "unpacked.json"
        names = _unpacked_names(done)
        if names is None or not all((folder / f"{n}{LATENT_SUFFIX}").is_file() for n in names):
            names = load_packed_latents(pack).names
            if unpack:
                unpack_latents(pack, folder)
                atomic_write_text(done, json.dumps({"pack": str(pack.resolve()), "names": names}) + "\n")
        for name in names:
            src = folder / f"{name}{LATENT_SUFFIX}"
            if shard is not None and shard_number(src, shard.count) != shard.index:
                continue
            held = records.owner(name)
            clash = name in taken or (held is not None and held != str(src.resolve()))
            item_name = f"{name}-{path_tag(src)}" if clash else name
            taken.add(item_name)
            items.append(
                Item(src, item_name, outputs(src, item_name), data={"pack": {"file": str(pack), "name": name}})
            )
    return items


def _unpacked_names(done: Path) -> list[str] | None:
    """The names a finished unpacking recorded in ``done``, or None (none yet, or unreadable: unpack again)."""
    try:
        names = json.loads(done.read_text(encoding="utf-8"))["names"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return names if isinstance(names, list) and all(isinstance(n, str) for n in names) else None


def _reference_edits(reference: Path, editor: str | None, attributes: list[str], powers: list[float]):
    """The editing transformer and one :class:`ReferenceEdit` per attribute (default power 1).

    Raises:
        UsageError: a reference image that does not exist, or an attribute the transformer was not trained for.
    """
    from gie_cli.editing.reference import load_edit_transformer
    from gie_cli.editing.session import ReferenceEdit
    from gie_cli.weights import resolve_weights

    if not reference.is_file():
        raise UsageError(f"reference image not found: {reference}", param="reference", value=reference)
    model = load_edit_transformer(resolve_weights(editor, method="edit_transformer", what="an editing transformer"))
    for a in attributes:
        model.attribute_index(a)
    return model, [ReferenceEdit(a, reference, powers or [1.0]) for a in attributes]


def _outputs(out: Path, name: str, plan: EditPlan, ext: str, grid: bool, paste: bool) -> dict[str, Path]:
    """Output paths per role: each edit key (``NAME.smile+3.png``), its paste-back, the grid."""
    o: dict[str, Path] = {}
    for key in plan.keys():
        o[key] = out / f"{name}.{key}.{ext}"
        if paste:
            o[f"{key}.paste"] = out / f"{name}.{key}.paste.{ext}"
    if grid:
        o["grid"] = out / f"{name}.grid.{ext}"
    return o


def _strs(outputs: dict[str, Path]) -> dict[str, str]:
    return {k: str(v) for k, v in outputs.items()}


def _paste_module() -> ModuleType:
    """The paste-back module, checked before any work when --paste-back is given."""
    try:
        from gie_cli.alignment import paste
    except ImportError as e:  # pragma: no cover - the alignment package ships with gie
        raise UsageError(f"--paste-back is unavailable ({e})") from None
    return paste


def _edit_one(
    session: EditSession,
    it: Item,
    grid: bool,
    grid_size: int,
    paste_back: bool,
    batch_size: int | None = None,
    quality: int | None = None,
) -> Record:
    """Edit one latent (``batch_size`` edits per render batch) and write its outputs (``quality``: JPEG/WebP quality;
    see :class:`PerItem`)."""
    from gie_cli.editing.session import edit_grid
    from gie_cli.io.atomic import atomic_save_image

    result = session.edit(it.source, reconstruction=grid, batch_size=batch_size)
    t_save = time.perf_counter()
    it.outputs[next(iter(it.outputs))].parent.mkdir(parents=True, exist_ok=True)
    for k, img in result.images.items():
        atomic_save_image(img, it.outputs[k], quality=quality)
    if grid:
        atomic_save_image(edit_grid(result.reconstruction, result.rows, grid_size), it.outputs["grid"], quality=quality)
    info = dict(result.info)
    if "pack" in it.data:
        info["pack"] = it.data["pack"]  # the packed file and entry the latent came from
    if paste_back:
        pasted, info["align_record"] = session.paste_back(result)
        for k, img in pasted.items():
            atomic_save_image(img, it.outputs[f"{k}.paste"], quality=quality)
    timings = {**result.timings_ms, "save": (time.perf_counter() - t_save) * 1000}
    return Record(str(it.source), "ok", _strs(it.outputs), None, {k: round(v, 2) for k, v in timings.items()}, info)

"""`gie edit`: latent files of `gie invert` in, edited images (one per direction and power) + a manifest out."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated

import typer

from gie_cli.cli import command
from gie_cli.cli.batch import (
    BatchSizeOpt,
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
    is_done,
    split_existing,
)
from gie_cli.cli.options import DeviceOpt, DtypeOpt, JsonOpt
from gie_cli.errors import GieError, UsageError

if TYPE_CHECKING:
    from gie_cli.editing.session import EditPlan, EditSession

log = logging.getLogger(__name__)

_EPILOG = (
    "Examples:\n\n"
    "  gie invert aligned/ -o inv && gie edit inv -d smile -p -2 -p 2 -o edits --grid\n\n"
    "  gie invert aligned/ -o inv --json | gie edit - -d age -d pose --power=-3,0,3 -o edits\n\n"
    "  gie edit inv/face.latent.safetensors -d my_dirs/beard.direction.safetensors -p 5 -o edits"
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
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")],
    inputs: Annotated[
        list[str] | None,
        typer.Argument(help="Latent files or folders of `gie invert`, or - to read paths / JSON lines from stdin."),
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
    weights: Annotated[
        str | None,
        typer.Option("--weights", "-w", help="Method checkpoint, overriding the one recorded in the latent files."),
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
    batch_size: BatchSizeOpt = 4,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    recursive: RecursiveOpt = False,
    on_existing: OnExistingOpt = "skip",
    ext: Annotated[str, typer.Option("--ext", help="Image format: png | jpg | webp.")] = "png",
    dry_run: DryRunOpt = False,
    fail_fast: FailFastOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Edit inverted faces along directions at several powers, with each inversion method's own editing path.

    Per input NAME, direction DIR and power P it writes NAME.DIR+P.<ext> (e.g. face.smile+3.png, face.age-2.5.png)
    under the output folder (mirroring input sub-folders) and appends one manifest line per input. The method that
    made each latent is rebuilt from the latent's record (method, weights, settings). A direction bound to another
    generator is refused unless --force. Re-running skips finished inputs. Exit code 0 when all inputs are ok or
    skipped, 1 when any failed, 2 for usage errors.
    """
    from gie_cli.editing.session import EditPlan
    from gie_cli.io.latents import LATENT_SUFFIX

    check_on_existing(on_existing)
    if ext not in ("png", "jpg", "webp"):
        raise UsageError(f"--ext must be png, jpg or webp, got {ext!r}")
    plan = EditPlan.load(direction or [], parse_powers(power or []))
    if paste_back:
        _paste_module()
    raw_inputs = inputs or []
    check_output_dir(output, [Path(p) for p in raw_inputs if p != "-"])
    found = collect_inputs(raw_inputs, recursive, (LATENT_SUFFIX,), exclude=output, stdin_keys=("latent",))
    items = [Item(src, name, _outputs(output, name, plan, ext, grid, paste_back)) for src, name in found]
    if dry_run:
        for it in items:
            typer.echo(
                f"{'exists' if is_done(it) else 'todo'}\t{it.source}\t" + "\t".join(map(str, it.outputs.values()))
            )
        typer.echo(f"dry run: {len(items)} input(s), {len(plan)} edit(s) each", err=True)
        return

    reporter = Reporter(output, len(items), json_out, "edit")
    todo = split_existing(items, on_existing, reporter)
    if todo:
        from gie_cli.device import resolve_device, resolve_dtype
        from gie_cli.editing.session import EditSession

        dev = resolve_device(device)
        session = EditSession(plan, dev, resolve_dtype(dtype, dev), weights, force, batch_size)
        for it in todo:
            rec = _run(session, it, grid, grid_size, paste_back)
            reporter.add(rec)
            if fail_fast and rec.status == "failed":
                break
    raise typer.Exit(reporter.finish())


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


def _run(session: EditSession, it: Item, grid: bool, grid_size: int, paste_back: bool) -> Record:
    """Edit one latent and write its outputs; a failure fails this item only."""
    src = str(it.source)
    try:
        return _edit_one(session, it, grid, grid_size, paste_back)
    except GieError as e:
        return Record(src, "failed", reason=str(e))
    except Exception as e:  # noqa: BLE001 - a failure fails this item; the run goes on
        log.debug("edit failed", exc_info=True)
        return Record(src, "failed", reason=f"{type(e).__name__}: {e}")


def _edit_one(session: EditSession, it: Item, grid: bool, grid_size: int, paste_back: bool) -> Record:
    from gie_cli.editing.session import edit_grid
    from gie_cli.io.atomic import atomic_save_image

    result = session.edit(it.source, reconstruction=grid)
    t_save = time.perf_counter()
    it.outputs[next(iter(it.outputs))].parent.mkdir(parents=True, exist_ok=True)
    for k, img in result.images.items():
        atomic_save_image(img, it.outputs[k])
    if grid:
        atomic_save_image(edit_grid(result.reconstruction, result.rows, grid_size), it.outputs["grid"])
    info = dict(result.info)
    if paste_back:
        pasted, info["align_record"] = session.paste_back(result)
        for k, img in pasted.items():
            atomic_save_image(img, it.outputs[f"{k}.paste"])
    timings = {**result.timings_ms, "save": (time.perf_counter() - t_save) * 1000}
    return Record(str(it.source), "ok", _strs(it.outputs), None, {k: round(v, 2) for k, v in timings.items()}, info)

"""`gie edit`: latent files of `gie invert` in, edited images (one per direction and power) + a manifest out."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any

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

log = logging.getLogger(__name__)

_EPILOG = (
    "Examples:\n\n"
    "  gie invert aligned/ -o inv && gie edit inv -d smile -p -2 -p 2 -o edits --grid\n\n"
    "  gie invert aligned/ -o inv --json | gie edit - -d age -d pose --power=-3,0,3 -o edits\n\n"
    "  gie edit inv/face.latent.safetensors -d my_dirs/beard.direction.safetensors -p 5 -o edits"
)


def format_power(power: float) -> str:
    """Signed short form used in file names: ``3 -> "+3"``, ``-1.5 -> "-1.5"``, ``0 -> "+0"``."""
    return f"{power:+g}"


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
    from gie_cli.editing.directions import load_direction_candidates
    from gie_cli.io.latents import LATENT_SUFFIX

    check_on_existing(on_existing)
    if ext not in ("png", "jpg", "webp"):
        raise UsageError(f"--ext must be png, jpg or webp, got {ext!r}")
    if not direction:
        raise UsageError("no --direction given", hint="see `gie directions list`")
    candidates = [load_direction_candidates(d) for d in direction]  # same-named files for other generators
    dirs = [c[0] for c in candidates]
    names = [d.name for d in dirs]
    if len(set(names)) != len(names):
        raise UsageError(f"direction names repeat: {', '.join(names)}")
    powers = parse_powers(power or [])
    plan: list[tuple[Any, list[float]]] = []
    for d in dirs:
        ps = powers or (list(dict.fromkeys(d.power_range)) if d.power_range else [])
        if not ps:
            raise UsageError(f"direction {d.name} has no recommended power range", hint="give --power")
        plan.append((d, ps))
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
        typer.echo(f"dry run: {len(items)} input(s), {sum(len(p) for _, p in plan)} edit(s) each", err=True)
        return

    reporter = Reporter(output, len(items), json_out, "edit")
    todo = split_existing(items, on_existing, reporter)
    if todo:
        from gie_cli.device import resolve_device, resolve_dtype

        dev = resolve_device(device)
        editor = _Editor(plan, dev, resolve_dtype(dtype, dev), weights, force, batch_size, grid_size)
        editor.candidates = {c[0].name: c for c in candidates}
        for it in todo:
            rec = editor.run(it, grid, paste_back)
            reporter.add(rec)
            if fail_fast and rec.status == "failed":
                break
    raise typer.Exit(reporter.finish())


def _outputs(out: Path, name: str, plan, ext: str, grid: bool, paste: bool) -> dict[str, Path]:
    o: dict[str, Path] = {}
    for d, ps in plan:
        for p in ps:
            key = f"{d.name}{format_power(p)}"
            o[key] = out / f"{name}.{key}.{ext}"
            if paste:
                o[f"{key}.paste"] = out / f"{name}.{key}.paste.{ext}"
    if grid:
        o["grid"] = out / f"{name}.grid.{ext}"
    return o


def _strs(outputs: dict[str, Path]) -> dict[str, str]:
    return {k: str(v) for k, v in outputs.items()}


def _paste_module():
    try:
        from gie_cli.alignment import paste
    except ImportError as e:  # pragma: no cover - the alignment package ships with gie
        raise UsageError(f"--paste-back is unavailable ({e})") from None
    return paste


class _Editor:
    """Rebuilds methods from latent records (one per method/weights/settings), checks directions once per generator,
    and renders every (direction, power) of an item in batches."""

    def __init__(self, plan, dev, dt, weights: str | None, force: bool, batch_size: int, grid_size: int) -> None:
        self.plan, self.dev, self.dt = plan, dev, dt
        self.weights, self.force, self.batch_size, self.grid_size = weights, force, batch_size, grid_size
        self._methods: dict[tuple, Any] = {}  # key -> (method, fingerprint) or the GieError that building raised
        self._checked: dict[tuple, GieError | None] = {}
        self.candidates: dict[str, list] = {}  # direction name -> same-named directions (search-path order)

    # ------------------------------------------------------------------------------------------- methods
    def method_for(self, meta: dict, source: Path):
        """The method that made a latent (cached); returns ``(method, key, fingerprint)``."""
        from gie_cli.methods.base import create_method

        name = meta.get("method")
        if not name:
            raise UsageError(f"{source}: the latent file records no method", hint="re-run `gie invert`")
        recorded = meta.get("weights_path") or ""
        path = self.weights or recorded
        if not self.weights and recorded and not Path(recorded).exists():
            raise UsageError(
                f"{source}: the recorded weights {recorded} do not exist", hint="pass the checkpoint with --weights"
            )
        opts = {str(k): str(v) for k, v in (meta.get("method_options") or {}).items()}
        key = (name, path, tuple(sorted(opts.items())))
        hit = self._methods.get(key)
        if isinstance(hit, GieError):
            raise hit
        if hit is None:
            from gie_cli.editing.directions import generator_fingerprint

            try:
                method = create_method(name, path or None, self.dev, **opts)
            except GieError as e:
                self._methods[key] = e
                raise
            fp = generator_fingerprint(method.generator)  # in fp32, before any dtype cast
            if self.dt != method.generator.conv1.conv.weight.dtype:
                method = method.to(self.dt)
            if self.weights and meta.get("weights") and method.weights_id != meta["weights"]:
                log.warning("%s was inverted with %s; editing with %s", source, meta["weights"], method.weights_id)
            log.info("method %s, weights %s", name, method.weights_id)
            hit = self._methods[key] = (method, fp)
        return hit[0], key, hit[1]

    def plan_for(self, fp: str) -> list:
        """The plan with each direction name resolved for the generator ``fp`` (a same-named file bound to it wins)."""
        from gie_cli.editing.directions import pick_for_generator

        out = []
        for d, ps in self.plan:
            chosen = pick_for_generator(self.candidates.get(d.name, [d]), fp)
            if chosen is not d and ("pick", d.name, fp) not in self._checked:
                self._checked[("pick", d.name, fp)] = None
                log.info("direction %s: using %s (bound to this generator)", d.name, chosen.path or d.name)
            out.append((chosen, ps))
        return out

    def check(self, d, method, key: tuple, fp: str) -> None:
        from gie_cli.editing.directions import check_generator

        ck = (key, d.name)
        if ck not in self._checked:
            try:
                check_generator(d, method.generator, self.force, fp)
                self._checked[ck] = None
            except GieError as e:
                self._checked[ck] = e
        err = self._checked[ck]
        if err is not None:
            raise err

    # ------------------------------------------------------------------------------------------- one item
    def run(self, it: Item, grid: bool, paste_back: bool) -> Record:
        src = str(it.source)
        try:
            return self._run(it, grid, paste_back)
        except GieError as e:
            return Record(src, "failed", reason=str(e))
        except Exception as e:  # noqa: BLE001 - a failure fails this item; the run goes on
            log.debug("edit failed", exc_info=True)
            return Record(src, "failed", reason=f"{type(e).__name__}: {e}")

    def _run(self, it: Item, grid: bool, paste_back: bool) -> Record:
        import torch

        from gie_cli.editing.directions import Edit, apply, render_edit
        from gie_cli.io.atomic import atomic_save_image
        from gie_cli.io.images import tensor_to_image
        from gie_cli.io.latents import load_latent
        from gie_cli.methods.base import Inversion

        t0 = time.perf_counter()
        wplus, extras, meta = load_latent(it.source)
        method, key, fp = self.method_for(meta, it.source)
        g = method.generator
        if tuple(wplus.shape[1:]) != (g.n_latent, g.style_dim):
            raise UsageError(
                f"latent W+ is {list(wplus.shape[1:])}, the method's generator takes [{g.n_latent}, {g.style_dim}]"
            )
        plan = self.plan_for(fp)
        for d, _ in plan:
            self.check(d, method, key, fp)
        t_load = time.perf_counter()
        inv = Inversion(wplus, extras).to(self.dev, self.dt)
        images: dict[str, Any] = {}
        rows = []
        with torch.no_grad():
            recon = tensor_to_image(method.render(inv)[0].float().cpu()) if grid else None
            for d, ps in plan:
                edit = Edit.cat([apply(d, p, inv.wplus) for p in ps])
                row = []
                for i in range(0, len(ps), self.batch_size):
                    chunk = edit.select(i, i + self.batch_size)
                    out = render_edit(method, Inversion.stack([inv] * len(chunk)), chunk).float().cpu()
                    for j, img in enumerate(out):
                        k = f"{d.name}{format_power(ps[i + j])}"
                        images[k] = tensor_to_image(img)
                        row.append(images[k])
                rows.append(row)
        t_render = time.perf_counter()
        it.outputs[next(iter(it.outputs))].parent.mkdir(parents=True, exist_ok=True)
        for k, img in images.items():
            atomic_save_image(img, it.outputs[k])
        if grid:
            atomic_save_image(_grid(recon, rows, self.grid_size), it.outputs["grid"])
        info: dict[str, Any] = {
            "method": meta.get("method"),
            "weights": method.weights_id,
            "directions": {
                d.name: {"space": d.space, "powers": ps, "generator": (d.generator or {}).get("id")} for d, ps in plan
            },
        }
        if paste_back:
            info["align_record"] = self._paste(it, meta, images)
        timings = {
            "load": (t_load - t0) * 1000,
            "render": (t_render - t_load) * 1000,
            "save": (time.perf_counter() - t_render) * 1000,
        }
        return Record(str(it.source), "ok", _strs(it.outputs), None, {k: round(v, 2) for k, v in timings.items()}, info)

    def _paste(self, it: Item, meta: dict, images: dict) -> str:
        """Paste every edit into the photo of the latent's alignment record; returns the record used."""
        from gie_cli.alignment import find_align_sidecar, paste_back, read_align_meta
        from gie_cli.io.atomic import atomic_save_image
        from gie_cli.io.images import load_image

        record = _find_align_record(it.source, meta, find_align_sidecar)
        if record is None:
            raise UsageError(
                f"no alignment record for {it.source} (looked for NAME.align.json beside it and beside its source "
                "image)",
                hint="align the photos with `gie align` first, or drop --paste-back",
            )
        am = read_align_meta(record) if isinstance(record, Path) else record
        photo = load_image(am["source"])
        for k, img in images.items():
            atomic_save_image(paste_back(img, am, photo), it.outputs[f"{k}.paste"])
        return str(record) if isinstance(record, Path) else "latent meta"


def _find_align_record(latent: Path, meta: dict, find_sidecar) -> Path | dict | None:
    """``meta["align"]`` (a record or a path), else ``NAME.align.json`` beside the latent, else beside its source."""
    rec = meta.get("align")
    if isinstance(rec, dict):
        return rec
    if isinstance(rec, str) and Path(rec).is_file():
        return Path(rec)
    found = find_sidecar(latent)
    if found is None and meta.get("source"):
        found = find_sidecar(meta["source"])
    return found


def _grid(recon, rows: list[list], tile: int):
    """One row per direction: the reconstruction, then the powers in order (``tile`` pixels per cell)."""
    from PIL import Image

    cols = 1 + max(len(r) for r in rows)
    out = Image.new("RGB", (cols * tile, len(rows) * tile), "white")
    small = recon.resize((tile, tile), Image.Resampling.LANCZOS)
    for y, row in enumerate(rows):
        out.paste(small, (0, y * tile))
        for x, img in enumerate(row, start=1):
            out.paste(img.resize((tile, tile), Image.Resampling.LANCZOS), (x * tile, y * tile))
    return out

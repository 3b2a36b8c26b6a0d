"""`gie benchmark`: methods side by side on the same images, quality and speed in one run."""

from __future__ import annotations

import json
import logging
import re
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gie_cli.cli import command
from gie_cli.cli.options import (
    SYNTHFACE,
    BatchSizeOpt,
    CompileOpt,
    CudaGraphsOpt,
    DeviceOpt,
    Dtype,
    DtypeOpt,
    JsonOpt,
    Precision,
    PrecisionOpt,
    RecursiveOpt,
    examples,
    output_option,
    parse_pairs,
    settings_option,
    weights_option,
)
from gie_cli.errors import UsageError

if TYPE_CHECKING:
    from gie_cli.benchmark.runner import EditSpec

log = logging.getLogger(__name__)

_EPILOG = examples(
    "gie benchmark --methods e4e,optim --data synthface --n 32 --edits smile:2,age:2 -o benchmarks/results/world",
    "gie benchmark --methods e4e,psp --weights e4e=e4e.ffhq --weights psp=psp.ffhq --data aligned/ -o bench",
    "gie benchmark --methods optim --set optim.steps=100 --weights identity=model_ir_se50.pth -o bench",
)

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+-]*$")


# --------------------------------------------------------------------------------------------------- option parsers
def parse_edits(spec: str | None) -> list[EditSpec]:
    """``--edits "smile:3,age:-2,ref:hair_lightness:1"`` -> edit specs (a direction without ``:power`` is an error;
    ``ref:`` marks a reference edit of an attribute).

    Raises:
        UsageError: A malformed entry.
    """
    from gie_cli.benchmark.runner import EditSpec

    out: list[EditSpec] = []
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, power = part.rpartition(":")
        try:
            value = float(power)
        except ValueError:
            value = None
        if not sep or not name.strip() or value is None:
            raise UsageError(f"--edits entry {part!r} is not DIRECTION:POWER", hint="e.g. --edits smile:3,age:-2")
        name = name.strip()
        ref = name.startswith("ref:")
        name = name.removeprefix("ref:").strip()
        if not name:
            raise UsageError(f"--edits entry {part!r} names no attribute", hint="e.g. --edits ref:hair_lightness:1")
        out.append(EditSpec(name, value, ref))
    labels = [e.label for e in out]
    if len(set(labels)) != len(labels):
        raise UsageError("--edits lists the same edit twice")
    return out


def parse_method_entries(text: str, known: Sequence[str]) -> dict[str, str]:
    """``--methods`` entries, ``METHOD`` or ``LABEL=METHOD``, as ``{label: method}`` in the given order.

    A label names the row in the tables and is the key of ``--weights LABEL=...`` and ``--set LABEL.KEY=...``, so one
    method can be benchmarked with several checkpoints (an ablation).

    Raises:
        UsageError: No entry, an unknown method, a malformed or repeated label.
    """
    kinds: dict[str, str] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        label, eq, kind = (s.strip() for s in item.partition("="))
        kind = kind if eq else label
        if kind not in known:
            raise UsageError(f"--methods: unknown method {kind!r}", hint=f"choose from: {', '.join(known)}")
        if not _LABEL.match(label):
            raise UsageError(
                f"--methods: bad label {label!r}", hint="labels are letters, digits, '_', '+' and '-' (LABEL=METHOD)"
            )
        if label in kinds:
            raise UsageError(f"--methods lists {label!r} twice", hint="give repeated methods labels: LABEL=METHOD")
        kinds[label] = kind
    if not kinds:
        raise UsageError("--methods is empty", hint=f"choose from: {', '.join(known)}")
    return kinds


def split_weights(items: Sequence[str], methods: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """``--weights`` values ``KEY=FILE``: per method, or per metric network (``METRIC_WEIGHT_KEYS``).

    Returns:
        ``(method -> weights, metric key -> file)``.

    Raises:
        UsageError: A malformed value, a key that is neither a benchmarked method nor a metric, or a repeated key.
    """
    from gie_cli.benchmark.runner import METRIC_WEIGHT_KEYS

    by_method: dict[str, str] = {}
    by_metric: dict[str, str] = {}
    for key, value in parse_pairs(items, "--weights", "e4e=e4e.ffhq"):
        if key in methods:
            target = by_method
        elif key in METRIC_WEIGHT_KEYS:
            target = by_metric
        else:
            raise UsageError(
                f"--weights {key}=...: {key!r} is neither a benchmarked method nor a metric",
                hint=f"methods: {', '.join(methods)}; metrics: {', '.join(METRIC_WEIGHT_KEYS)}",
            )
        if key in target:
            raise UsageError(f"--weights {key}=... given twice")
        target[key] = value
    return by_method, by_metric


def split_settings(items: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, str]]:
    """``--set METHOD.KEY=VALUE`` values -> per-method option dicts (passed to ``create_method``).

    Raises:
        UsageError: A malformed value or a method that is not benchmarked.
    """
    out: dict[str, dict[str, str]] = {m: {} for m in methods}
    for key, value in parse_pairs(items, "--set", "optim.steps=300"):
        method, dot, opt = key.partition(".")
        if not dot or not opt:
            raise UsageError(f"--set {key}=...: the key must be METHOD.KEY", hint="e.g. --set optim.steps=300")
        if method not in out:
            raise UsageError(f"--set {key}=...: {method!r} is not benchmarked", hint=f"methods: {', '.join(methods)}")
        out[method][opt] = value
    return out


@command(epilog=_EPILOG)
def benchmark(
    output: Annotated[Path, output_option("Folder for benchmark.json and benchmark.md.")],
    methods: Annotated[
        str,
        typer.Option(
            "--methods",
            "-m",
            help="Comma-separated methods (`gie info` lists them); LABEL=METHOD benchmarks one method several times "
            "(e.g. with other --weights LABEL=FILE).",
        ),
    ] = "e4e",
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="synthface (held-out synthetic-world faces with ground truth) or a folder of aligned face crops.",
        ),
    ] = SYNTHFACE,
    n: Annotated[
        int | None, typer.Option("--n", "-n", min=2, help="Images (synthface default 32; a folder: all).")
    ] = None,
    edits: Annotated[
        str | None,
        typer.Option(
            "--edits",
            help="Edits DIRECTION:POWER, comma-separated (directions by name or path); ref:ATTRIBUTE:POWER is a "
            "reference edit (Style Transformer's editing transformer, --weights editor=FILE; each image takes the "
            "attribute from the previous image of its batch).",
        ),
    ] = None,
    weights: Annotated[
        list[str] | None,
        weights_option(
            "KEY=FILE (repeatable): weights of a method (file or registry name; default: the method's embedded "
            "one) or of a metric network: lpips-vgg, lpips-alex, identity, fid, attributes."
        ),
    ] = None,
    settings: Annotated[
        list[str] | None,
        settings_option("Method setting METHOD.KEY=VALUE (repeatable), e.g. --set optim.steps=200."),
    ] = None,
    metrics: Annotated[
        str,
        typer.Option(
            "--metrics", help="all, or a comma list of mse,psnr,ssim,ms-ssim,lpips-vgg,lpips-alex,identity,fid."
        ),
    ] = "all",
    batch_size: BatchSizeOpt = 8,
    size: Annotated[
        int | None,
        typer.Option("--size", help="Resolution of the images and metrics (synthface default 64, a folder 256)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="synthface: seed of the held-out faces.")] = 20261121,
    ood_prob: Annotated[
        float, typer.Option("--ood-prob", help="synthface: probability of out-of-domain objects on a face.")
    ] = 0.3,
    recursive: RecursiveOpt = False,
    sheet: Annotated[
        int,
        typer.Option(
            "--sheet",
            min=0,
            help="Faces in OUTPUT/contact_sheet.png (one row per face: input, each method's reconstruction and "
            "edits, the ground-truth edits); 0 = no sheet.",
        ),
    ] = 8,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = Dtype.auto,
    precision: PrecisionOpt = Precision.fp32,
    compile_synthesis: CompileOpt = False,
    cuda_graphs: CudaGraphsOpt = False,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            min=1,
            help="Run as N processes on this machine (one per GPU, as torchrun --nproc-per-node N): rank r runs "
            "methods r, r + N, ... on its own device; rank 0 writes the reports.",
        ),
    ] = 1,
    json_out: JsonOpt = False,
) -> None:
    """Run several inversion methods on the same images and compare quality and speed.

    Every method inverts, renders and edits the same images in this process. Reported per method: images/s at the
    batch size and ms per image for encode, render and each edit (the first batch is a warm-up and is not timed;
    CUDA is synchronised), peak memory, and the mean of each metric (MSE, PSNR, SSIM, MS-SSIM, LPIPS, ArcFace
    identity, FID). On synthface also the attribute error of reconstructions, the error inside and outside
    out-of-domain objects, and each edit against the renderer's ground-truth edited photo. Methods that align
    features to an edit (GradStyle) also get, per stage, the error of their alignment of warped copies of their own
    features, and the PSNR of their editing path with a zero edit. Metrics whose weights are missing are listed as
    unavailable with the file to fetch (exit code 0); a method that fails gets a row with the reason and exit code 1.
    Writes OUTPUT/benchmark.json, OUTPUT/benchmark.md and OUTPUT/contact_sheet.png (--sheet faces); the table goes
    to stdout, or to stderr with --json (then stdout has one JSON line per method and a final summary line).

    Under torchrun (or with --nproc N) the methods are dealt to the ranks in turn, each rank on its own device
    (cuda:LOCAL_RANK with --device auto); every rank measures the same images, and rank 0 gathers the rows, in the
    --methods order, and writes the reports (each row names its rank and device).
    """
    from rich.console import Console

    from gie_cli.benchmark.data import SYNTH_SIZE, folder_data, synthface_data
    from gie_cli.benchmark.metrics import DEFINITIONS, MetricSuite, parse_metric_names
    from gie_cli.benchmark.report import BENCHMARK_FORMAT, environment, rich_tables, write_reports
    from gie_cli.benchmark.runner import MethodSpec, load_directions, run_method
    from gie_cli.benchmark.sheet import sheet_columns, write_contact_sheet
    from gie_cli.benchmark.world import load_judge
    from gie_cli.cli.ranks import gather_to_first, launch_local, rank_device, ranks_from_env, require_rendezvous
    from gie_cli.device import check_cuda_graphs, resolve_device, resolve_dtype, resolve_precision
    from gie_cli.methods import list_methods
    from gie_cli.models.stylegan2 import use_fast_path

    kinds = parse_method_entries(methods, list_methods())
    names = list(kinds)
    edit_specs = parse_edits(edits)
    method_weights, metric_weights = split_weights(weights or [], names)
    options = split_settings(settings or [], names)
    metric_names = parse_metric_names(metrics)
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file", hint="pass a folder")
    ranks = ranks_from_env()
    if nproc > 1:
        if ranks is not None:
            raise UsageError("--nproc inside a torchrun rank", hint="drop --nproc (torchrun starts the processes)")
        raise typer.Exit(launch_local(nproc, process_group=True))
    if ranks is not None:
        require_rendezvous(ranks)  # before any work: rank 0 gathers the rows at the end
    dev = resolve_device(rank_device(device, ranks))
    dt = resolve_dtype(dtype, dev)
    fast = {
        "precision": resolve_precision(precision, dev, dt),
        "compile": compile_synthesis,
        "cuda_graphs": cuda_graphs,
    }
    check_cuda_graphs(cuda_graphs, dev)
    fast = {k: v for k, v in fast.items() if v not in ("fp32", False)}  # recorded only when not the default

    t0 = time.perf_counter()
    if data == SYNTHFACE:
        bench = synthface_data(n or 32, size or SYNTH_SIZE, seed, ood_prob)
    else:
        bench = folder_data(data, n, size or 256, recursive)
    log.info("benchmark data: %s, %d images at %d px (%.1fs)", bench.source, len(bench), bench.size,
             time.perf_counter() - t0)  # fmt: skip

    suite = MetricSuite(metric_names, dev, metric_weights)
    unavailable = suite.unavailable()
    judge = None
    if bench.has_ground_truth:
        judge, reason, est_path = load_judge(metric_weights.get("attributes"), dev)
        if judge is None:
            log.warning("%s", reason)
            unavailable["attr_mae"] = reason or "unavailable"
            if edit_specs:
                unavailable["edit_attr"] = f"{reason} (so no ground-truth edit metrics edit_others, gt_*)"
        else:
            bench.info["estimator"] = est_path
            bench.info["estimator_mae_on_inputs"] = round(
                float(judge.attribute_error(bench.images, bench.params).mean()), 5
            )
    directions = load_directions(edit_specs, metric_weights.get("editor"))

    specs = [MethodSpec(name, kinds[name], method_weights.get(name), options[name]) for name in names]
    if ranks is not None:  # rank r runs methods r, r + W, ...
        specs = specs[ranks.rank :: ranks.world]
        log.info("rank %d of %d on %s: %s", ranks.rank, ranks.world, dev, ", ".join(s.label for s in specs) or "idle")
    results = []
    with use_fast_path(**fast):  # the generators the runner builds take these switches
        for spec in specs:
            name = spec.label
            log.info("benchmark: %s", name)
            row = run_method(spec, bench, suite, judge, edit_specs, directions, batch_size, dev, dt, sheet)
            if ranks is not None:
                row.update(rank=ranks.rank, device=str(dev))
            results.append(row)
            if row["status"] == "ok":
                log.info("%s: %.2f images/s", name, row["timing"]["images_per_s"] or 0.0)
            if json_out and ranks is None:
                _json_line(row)
    if ranks is not None:
        gathered = gather_to_first(results, ranks)
        if gathered is None:  # rank > 0: rank 0 reports, failures included (a failing rank would stop it)
            raise typer.Exit(0)
        order = {name: i for i, name in enumerate(names)}
        results = sorted((r for part in gathered for r in part), key=lambda r: order[r["method"]])
        if json_out:
            for row in results:
                _json_line(row)

    doc = {
        "format": BENCHMARK_FORMAT,
        "command": _command_line(_entries(kinds), data, len(bench), edit_specs, weights, settings, metrics, batch_size,
                                 bench.size, seed, ood_prob, recursive, sheet, device, dtype, fast),
        "environment": environment(dev, dt),
        "data": bench.info,
        "settings": {
            "methods": names,
            "method_kinds": kinds,
            "batch_size": batch_size,
            "edits": [e.label for e in edit_specs],
            "metrics": metric_names,
            "method_weights": method_weights,
            "metric_weights": metric_weights,
            "method_options": options,
            **({"fast_path": fast} if fast else {}),
            **({"ranks": ranks.world} if ranks is not None else {}),
        },
        "unavailable": unavailable,
        "definitions": {k: v for k, v in DEFINITIONS.items()},
        "results": results,
    }  # fmt: skip
    sheet_cols = sheet_columns(bench.images, results, sheet) if sheet > 0 else []
    for r in results:
        r.pop("_sheet", None)
    sheet_path = None
    if len(sheet_cols) > 1:
        output.mkdir(parents=True, exist_ok=True)
        sheet_path = write_contact_sheet(output / "contact_sheet.png", sheet_cols)
        doc["contact_sheet"] = sheet_path.name
    paths = write_reports(doc, output)
    if sheet_path is not None:
        paths["sheet"] = sheet_path
    console = Console(stderr=json_out)
    if not console.is_terminal:  # a file or pipe: wide enough that no column is cut
        console = Console(stderr=json_out, width=240)
    for table in rich_tables(doc):
        console.print(table)
    failed = [r["method"] for r in results if r["status"] != "ok"]
    if json_out:
        summary = {"summary": {"methods": names, "failed": failed, "unavailable": sorted(unavailable)}}
        summary["outputs"] = {k: str(v) for k, v in paths.items()}
        sys.stdout.write(json.dumps(summary) + "\n")
    if unavailable:
        typer.echo(f"unavailable metrics: {', '.join(unavailable)} (reasons in {paths['markdown']})", err=True)
    wrote = ", ".join(str(paths[k]) for k in ("json", "markdown", "sheet") if k in paths)
    typer.echo(f"benchmark: {len(results) - len(failed)} ok, {len(failed)} failed; wrote {wrote}", err=True)
    raise typer.Exit(1 if failed else 0)


def _json_line(row: dict) -> None:
    """One result row as a JSON line on stdout (without the contact sheet's tensors)."""
    from gie_cli.benchmark.report import json_safe

    sys.stdout.write(json.dumps(json_safe({k: v for k, v in row.items() if k != "_sheet"})) + "\n")
    sys.stdout.flush()


def _entries(kinds: dict[str, str]) -> str:
    """``--methods`` as given, canonical: ``label=method`` only where they differ."""
    return ",".join(name if kind == name else f"{name}={kind}" for name, kind in kinds.items())


def _command_line(
    methods: str,
    data: str,
    n: int,
    edits: list,
    weights: list[str] | None,
    settings: list[str] | None,
    metrics: str,
    batch_size: int,
    size: int,
    seed: int,
    ood_prob: float,
    recursive: bool,
    sheet: int,
    device: str,
    dtype: str,
    fast: dict[str, object] | None = None,
) -> str:
    """The canonical command line that reproduces the run (every default spelled out; the fast-path switches
    ``fast`` only when set)."""
    parts = ["gie", "benchmark", "--methods", methods, "--data", data, "--n", str(n)]
    if edits:
        parts += ["--edits", ",".join(f"{'ref:' * e.reference}{e.direction}:{e.power:g}" for e in edits)]
    for w in weights or []:
        parts += ["--weights", w]
    for s in settings or []:
        parts += ["--set", s]
    parts += ["--metrics", metrics, "--batch-size", str(batch_size), "--size", str(size)]
    if data == SYNTHFACE:
        parts += ["--seed", str(seed), "--ood-prob", f"{ood_prob:g}"]
    elif recursive:
        parts.append("--recursive")
    parts += ["--sheet", str(sheet), "--device", device, "--dtype", dtype]
    fast = fast or {}
    if "precision" in fast:
        parts += ["--precision", str(fast["precision"])]
    parts += [flag for key, flag in (("compile", "--compile"), ("cuda_graphs", "--cuda-graphs")) if fast.get(key)]
    return " ".join(shlex.quote(p) for p in parts)

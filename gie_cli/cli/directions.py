"""`gie directions list|show|import|fit`: the edit directions gie knows, official importers and fitting."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gie_cli.cli import app, command
from gie_cli.cli.options import (
    Activation,
    ClassifierInput,
    Convention,
    DeviceOpt,
    DirectionFormat,
    GanspaceMode,
    JsonOpt,
    LatentSpace,
    Solver,
    choice,
    examples,
    make_typer,
    output_option,
    weights_option,
)
from gie_cli.errors import UsageError

if TYPE_CHECKING:
    from gie_cli.editing import Direction

log = logging.getLogger(__name__)

dirs_app = make_typer(
    "directions",
    "List, inspect, import (official files) and fit edit directions.",
    epilog=examples(
        "gie directions list",
        "gie directions show smile",
        "gie directions import age.pt smile.pt --convention e4e",
        "gie directions fit interfacegan -n beard -w e4e.ffhq --labels beard.csv",
        note="Directions are found by name on $GIE_DIRECTIONS_PATH, the user folder, then the shipped ones.",
    ),
)
fit_app = make_typer(
    help="Fit new directions the way the papers do (InterFaceGAN, GANSpace, StyleSpace, Style Transformer).",
    epilog=examples(
        "gie directions fit interfacegan -n smile2 -w stylegan2.ffhq --classifier my_scores.py:smile",
        "gie directions fit regression -w stylegan2.ffhq --labels attrs.safetensors -a age -a smile",
        "gie directions fit ganspace -w stylegan2.ffhq -k 10 --layers 0:8",
        "gie directions fit stylespace -n lips -w stylegan2.ffhq --layer 15 --channel 45 --s-index",
        "gie directions fit label -n smiling -w e4e.ffhq --classifier LCNet_40.pth --attribute Smiling",
    ),
)
dirs_app.add_typer(fit_app, name="fit")
app.add_typer(dirs_app, name="directions")

OutDirOpt = Annotated[
    Path | None, output_option("Folder to write to (default: the user folder, see `gie directions list`).")
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing direction files.")]
WeightsOpt = Annotated[
    str, weights_option("Checkpoint holding the generator (a method checkpoint or a StyleGAN2 g_ema file).")
]
NameOpt = Annotated[str, typer.Option("--name", "-n", help="Direction name (letters, digits, _ and -).")]
SamplesOpt = Annotated[int, typer.Option("--samples", min=2, help="Latents sampled from the mapping network.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Sampling seed.")]
TruncationOpt = Annotated[float, typer.Option("--truncation", help="Truncation of the sampled W (1 = none).")]
LayersOpt = Annotated[
    str | None, typer.Option("--layers", help="W+ layers to change: START:END, a comma list, or all (default).")
]
RangeOpt = Annotated[str | None, typer.Option("--power-range", help="Recommended powers LOW,HIGH.")]


# --------------------------------------------------------------------------------------------------- helpers
def parse_layers(spec: str | None, n: int) -> list[int] | None:
    """``"2:5"`` -> ``[2, 3, 4]``; ``"0,3"`` -> ``[0, 3]``; ``None``/``"all"`` -> None (all ``n`` layers).

    Raises:
        UsageError: malformed, empty or out of ``0..n-1``.
    """
    if spec is None or spec.strip().lower() == "all":
        return None
    try:
        if ":" in spec:
            a, b = spec.split(":", 1)
            layers = list(range(int(a) if a.strip() else 0, int(b) if b.strip() else n))
        else:
            layers = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--layers {spec!r}: expected START:END or a comma list of integers") from None
    if not layers or min(layers) < 0 or max(layers) >= n:
        raise UsageError(f"--layers {spec!r}: need layers within 0..{n - 1}")
    return layers


def parse_range(spec: str | None) -> tuple[float, float] | None:
    """``"-3,3"`` -> ``(-3.0, 3.0)``."""
    if spec is None:
        return None
    try:
        lo, hi = (float(x) for x in spec.split(","))
    except ValueError:
        raise UsageError(f"--power-range {spec!r}: expected LOW,HIGH") from None
    return (min(lo, hi), max(lo, hi))


def _write(directions: list[Direction], output: Path | None, overwrite: bool, json_out: bool) -> None:
    """Save directions (refusing to replace files unless ``overwrite``) and print their paths (or JSON lines)."""
    from gie_cli.editing import output_dir, save_directions

    for d, path in zip(directions, save_directions(directions, output_dir(output), overwrite), strict=True):
        typer.echo(json.dumps(d.summary()) if json_out else str(path))


# --------------------------------------------------------------------------------------------------- list / show
@command(
    name="list",
    target=dirs_app,
    epilog=examples(
        "gie directions list", "gie directions list --all --json", "GIE_DIRECTIONS_PATH=./dirs gie directions list"
    ),
)
def list_(
    show_all: Annotated[bool, typer.Option("--all", help="Also list files shadowed by a same-named one.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """List the directions found by name: $GIE_DIRECTIONS_PATH, the user folder (<gie cache>/directions, where
    import and fit write), then the directions shipped with gie. The first file of a name wins."""
    from gie_cli.editing import list_directions, search_path

    found = [d for d in list_directions() if show_all or not d["shadowed"]]
    if json_out:
        for d in found:
            gen = d.get("generator") or {}
            typer.echo(
                json.dumps(
                    {
                        "name": d["name"],
                        "space": d["space"],
                        "layers": d["layers"],
                        "scale": d["scale"],
                        "power_range": d["power_range"],
                        "generator": gen.get("id"),
                        "fingerprint": gen.get("fingerprint"),
                        "description": d.get("description", ""),
                        "path": d["path"],
                        "shadowed": d["shadowed"],
                    }
                )
            )
        return
    if not found:
        typer.echo("no directions found in: " + ", ".join(map(str, search_path())), err=True)
        return
    width = max(len(d["name"]) for d in found)
    for d in found:
        gen = d.get("generator") or {}
        rng = d.get("power_range")
        rng_s = f"[{rng[0]:g}, {rng[1]:g}]" if rng else "-"
        fp = (gen.get("fingerprint") or "")[:12] or "unbound"
        mark = " (shadowed)" if d["shadowed"] else ""
        typer.echo(f"{d['name']:<{width}}  {d['space']:<10} {rng_s:<14} {gen.get('id') or '-'} [{fp}]{mark}")
    typer.echo("searched: " + ", ".join(map(str, search_path())), err=True)


@command(
    name="show",
    target=dirs_app,
    epilog=examples("gie directions show smile", "gie directions show ./dirs/beard.direction.safetensors --json"),
)
def show(
    direction: Annotated[str, typer.Argument(help="Direction name or file.")],
    json_out: JsonOpt = False,
) -> None:
    """Show one direction: space, layers, scale convention, power range, generator binding, provenance, tensors."""
    from gie_cli.editing import load_direction

    cfg = load_direction(direction).details()
    if json_out:
        typer.echo(json.dumps(cfg))
        return
    for k, v in cfg.items():
        if isinstance(v, dict) and v:
            typer.echo(f"{k}:")
            for kk, vv in v.items():
                typer.echo(f"  {kk}: {json.dumps(vv) if isinstance(vv, dict | list) else vv}")
        else:
            typer.echo(f"{k}: {json.dumps(v) if isinstance(v, list) else v}")


# --------------------------------------------------------------------------------------------------- import
@command(
    name="import",
    target=dirs_app,
    epilog=examples(
        "gie directions import age.pt smile.pt pose.pt                  # e4e's InterFaceGAN files",
        "gie directions import age.pt --convention sfe --name age_sfe",
        "gie directions import ffhq_pca.pt --edits eye_openness,lipstick -w stylegan2.ffhq",
        "gie directions import Smiling_boundary.npy -o ./dirs",
    ),
)
def import_(
    files: Annotated[list[Path], typer.Argument(help="Official direction files (.pt tensors / PCA dicts, .npy).")],
    fmt: Annotated[
        DirectionFormat,
        choice(DirectionFormat, "--format", help="File format: auto, interfacegan, ganspace or boundary (SFE's .npy)."),
    ] = DirectionFormat.auto,
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="Name of the direction (one file; default: its stem).")
    ] = None,
    convention: Annotated[
        Convention,
        choice(
            Convention,
            "--convention",
            help="InterFaceGAN .pt application: e4e / hfgi (w + p*d) or sfe (w + p/2*d, SFE's).",
        ),
    ] = Convention.e4e,
    weights: Annotated[
        str | None,
        weights_option(
            "Checkpoint of the generator the files were made for: binds them to its fingerprint. Without it the "
            "directions are unbound (FFHQ config-f shapes) and applied with a warning."
        ),
    ] = None,
    generator_id: Annotated[
        str | None, typer.Option("--generator-id", help="Readable id of that generator (default: the weights id).")
    ] = None,
    layers: LayersOpt = None,
    ganspace_mode: Annotated[
        GanspaceMode,
        choice(GanspaceMode, "--ganspace-mode", help="set (official: power = target coordinate) or add."),
    ] = GanspaceMode.set,
    edits: Annotated[
        str | None, typer.Option("--edits", help="GANSpace: comma list of the named edits to import (default all).")
    ] = None,
    origin: Annotated[
        str | None, typer.Option("--origin", help="Where the files came from (recorded instead of the local path).")
    ] = None,
    output: OutDirOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Import official direction files with their repository's convention made explicit.

    InterFaceGAN tensors [1,512] (W, all layers) and [1,18,512] (W+) from e4e/HFGI/SFE; GANSpace ffhq_pca.pt
    (mean/comp/std) as its named (component, start, end, strength) edits; SFE [1,9216] W+ boundaries (.npy).
    """
    from gie_cli.editing import weights_binding
    from gie_cli.editing.importers import import_file, select_ganspace_edits

    if name is not None and len(files) > 1:
        raise UsageError("--name needs a single file")
    for f in files:
        if not f.is_file():
            raise UsageError(f"file not found: {f}")
    selected = select_ganspace_edits(edits)
    binding = weights_binding(weights, generator_id)
    n_latent = int((binding or {}).get("n_latent") or 18)
    layer_list = parse_layers(layers, n_latent)
    out = []
    for f in files:
        out += import_file(
            f, fmt.value, name, convention.value, binding, layer_list, ganspace_mode.value, selected, origin
        )
    _write(out, output, overwrite, json_out)


# --------------------------------------------------------------------------------------------------- fit
@command(
    name="interfacegan",
    target=fit_app,
    epilog=examples(
        "gie directions fit interfacegan -n beard -w e4e.ffhq --labels beard.csv      # rows LATENT_FILE,LABEL",
        "gie directions fit interfacegan -n smile2 -w stylegan2.ffhq --classifier scores.py:smile --samples 20000",
        "gie directions fit interfacegan -n smile3 -w world.generator "
        "--classifier gie_cli.synth.estimator:world_attributes --attribute smile",
    ),
)
def fit_interfacegan(
    name: NameOpt,
    weights: WeightsOpt,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="Labelled latents: .csv rows LATENT_FILE,LABEL (gie latents) or .safetensors/.npz/.pt with 'w' "
            "[N,D] (or 'wplus' [N,L,D]) and 'labels' [N].",
        ),
    ] = None,
    classifier: Annotated[
        str | None,
        typer.Option(
            "--classifier",
            help="Labelling function MODULE:FUNCTION or FILE.py:FUNCTION scoring sampled latents (see --on).",
        ),
    ] = None,
    on: Annotated[
        ClassifierInput,
        choice(
            ClassifierInput, "--on", help="What --classifier receives: latent (w [B,D]) or image ([B,3,S,S] in [-1,1])."
        ),
    ] = ClassifierInput.latent,
    attribute: Annotated[
        str | None,
        typer.Option(
            "--attribute",
            help="Column of a classifier that returns [B,K] scores: an index, or a name when the function lists its "
            "columns in a `columns` attribute (e.g. smile with gie_cli.synth.estimator:world_attributes).",
        ),
    ] = None,
    solver: Annotated[
        Solver, choice(Solver, "--solver", help="svm (linear SVM, the paper's) or logistic.")
    ] = Solver.svm,
    c: Annotated[float, typer.Option("--c", min=1e-9, help="Inverse regularisation strength C.")] = 1.0,
    ratio: Annotated[
        float | None,
        typer.Option("--ratio", min=0.0, max=0.5, help="Fraction of extremes per side for scores (default 0.02)."),
    ] = None,
    split: Annotated[float, typer.Option("--split", min=0.1, max=1.0, help="Training fraction per class.")] = 0.7,
    space: Annotated[
        LatentSpace, choice(LatentSpace, "--space", help="For W+ latents: wplus (flattened) or w (mean over layers).")
    ] = LatentSpace.wplus,
    samples: SamplesOpt = 10000,
    seed: SeedOpt = 0,
    truncation: TruncationOpt = 1.0,
    layers: LayersOpt = None,
    power_range: RangeOpt = None,
    output: OutDirOpt = None,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """InterFaceGAN (Shen et al. 2020): the unit normal of a linear boundary separating labelled latents.

    Latents come from --labels, or are sampled from the generator's mapping network and scored by --classifier.
    """
    from gie_cli.editing import check_name, generator_binding, load_generator, provenance
    from gie_cli.editing.fit import interfacegan_direction, linear_boundary
    from gie_cli.editing.labels import labelled_latents

    check_name(name)
    if (labels is None) == (classifier is None):
        raise UsageError("give exactly one of --labels and --classifier")
    g, wid = load_generator(weights, device)
    x, y, source = labelled_latents(g, labels, classifier, attribute, on.value, space.value, samples, seed, truncation)
    fit = linear_boundary(x, y, solver.value, c, ratio, split, seed)
    prov = provenance("fit:interfacegan", **source)
    d = interfacegan_direction(
        name,
        fit,
        g.n_latent,
        g.style_dim,
        generator_binding(g, wid),
        prov,
        parse_layers(layers, g.n_latent),
        parse_range(power_range) or (-3.0, 3.0),
    )
    log.info("InterFaceGAN %s: validation accuracy %s", name, fit.stats["val_accuracy"])
    _write([d], output, overwrite, json_out)


@command(
    name="regression",
    target=fit_app,
    epilog=examples(
        "gie directions fit regression -w stylegan2.ffhq --labels attrs.safetensors -a age -a smile",
        "gie directions fit regression -w e4e.ffhq --labels attrs.npz -a 0 -a 2 --space wplus -o ./dirs",
        note="The labels file names its columns in a 'columns' config entry (.safetensors); otherwise use indexes.",
    ),
)
def fit_regression(
    weights: WeightsOpt,
    labels: Annotated[
        Path,
        typer.Option(
            "--labels",
            help="Labelled latents with several label columns: .safetensors/.npz/.pt with 'w' [N,D] (or 'wplus' "
            "[N,L,D]) and 'labels' [N,K] (a .safetensors config may name the columns: 'columns').",
        ),
    ],
    attribute: Annotated[
        list[str],
        typer.Option("--attribute", "-a", help="Column to write a direction for (index or name; repeatable)."),
    ],
    space: Annotated[
        LatentSpace, choice(LatentSpace, "--space", help="For W+ latents: wplus (per layer) or w (mean over layers).")
    ] = LatentSpace.w,
    ridge: Annotated[float, typer.Option("--ridge", min=0.0, help="Ridge strength (times N).")] = 1e-3,
    layers: LayersOpt = None,
    power_range: RangeOpt = None,
    output: OutDirOpt = None,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Joint linear regression of the latents on every label column: each direction is the latent change per unit of
    its label with the other labels held fixed (so power = label change). Each direction is named after its column.

    For attributes that are correlated or encoded together, one InterFaceGAN boundary per attribute drags the others
    along; the joint fit does not, as far as the latent encodes them linearly (the per-column R^2 of a linear
    read-out is logged and stored)."""
    from gie_cli.editing import check_name, generator_binding, load_generator, provenance
    from gie_cli.editing.fit import multi_label_regression, regression_direction
    from gie_cli.editing.labels import column_index, label_columns, load_labels_checked

    g, wid = load_generator(weights, device)
    x, y = load_labels_checked(labels, g)
    if y.ndim != 2:
        raise UsageError(f"{labels}: regression needs several label columns ([N, K] labels)", hint="use interfacegan")
    if x.ndim == 3 and space == "w":
        x = x.mean(1)
    shape = x.shape[1:]
    fit = multi_label_regression(x.reshape(len(x), -1), y, ridge)
    columns = label_columns(labels)
    rows = parse_layers(layers, g.n_latent)
    out = []
    for a in attribute:
        i = column_index(a, columns, str(labels))
        if i is None or not -y.shape[1] <= i < y.shape[1]:
            raise UsageError(f"no such column (labels have {y.shape[1]})", param="attribute", value=a)
        name = check_name(columns[i] if columns else f"label{i}")
        vec = fit.coef[i].reshape(shape)
        log.info("regression %s: |dw| per unit %.4f, linear read-out R^2 %.3f", name, vec.norm(), fit.r2[i])
        prov = provenance("fit:regression", labels=str(labels.resolve()), column=i, r2=float(fit.r2[i]), ridge=ridge)
        layer_list = rows if rows is not None else list(range(g.n_latent))
        rng = parse_range(power_range) or (-1.0, 1.0)
        out.append(regression_direction(name, vec, layer_list, generator_binding(g, wid), prov, rng))
    _write(out, output, overwrite, json_out)


@command(
    name="ganspace",
    target=fit_app,
    epilog=examples(
        "gie directions fit ganspace -w stylegan2.ffhq -k 10 --layers 0:8           # pc_pc00 .. pc_pc09",
        "gie directions fit ganspace -w e4e.ffhq -n coarse -k 5 --layers 0:4 --mode set --samples 50000",
    ),
)
def fit_ganspace(
    weights: WeightsOpt,
    name: Annotated[str, typer.Option("--name", "-n", help="Name prefix: writes NAME_pc00, NAME_pc01, ...")] = "pc",
    components: Annotated[int, typer.Option("--components", "-k", min=1, help="How many components to write.")] = 10,
    mode: Annotated[
        GanspaceMode,
        choice(GanspaceMode, "--mode", help="add (power = std units moved, 0 = identity) or set (official formula)."),
    ] = GanspaceMode.add,
    samples: SamplesOpt = 20000,
    seed: SeedOpt = 0,
    truncation: TruncationOpt = 1.0,
    layers: LayersOpt = None,
    power_range: RangeOpt = None,
    output: OutDirOpt = None,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """GANSpace (Härkönen et al. 2020): principal components of sampled W codes, one direction per component
    (orthonormal, ordered by variance), applied to --layers."""
    from gie_cli.editing import check_name, generator_binding, load_generator, provenance
    from gie_cli.editing.fit import pca, sample_w
    from gie_cli.editing.importers import ganspace_direction

    check_name(name)
    g, wid = load_generator(weights, device)
    lay = parse_layers(layers, g.n_latent) or list(range(g.n_latent))
    if lay != list(range(lay[0], lay[-1] + 1)):
        raise UsageError("--layers must be a contiguous START:END range for GANSpace")
    res = pca(sample_w(g, samples, seed, truncation), components)
    binding = generator_binding(g, wid)
    rng = parse_range(power_range) or (-3.0, 3.0)
    out = []
    for i in range(len(res.std)):
        prov = provenance(
            "fit:ganspace", samples=samples, seed=seed, truncation=truncation, explained=float(res.explained[i])
        )
        out.append(
            ganspace_direction(
                f"{name}_pc{i:02d}", res.mean, res.components[i], float(res.std[i]), i, lay[0], lay[-1] + 1, mode.value,
                rng, binding, prov, f"GANSpace component {i} ({100 * float(res.explained[i]):.1f}% of W variance)",
            )
        )  # fmt: skip
    _write(out, output, overwrite, json_out)


@command(
    name="stylespace",
    target=fit_app,
    epilog=examples(
        "gie directions fit stylespace -n lips -w stylegan2.ffhq --layer 15 --channel 45 --s-index   # SFE's index",
        "gie directions fit stylespace -n grin -w e4e.ffhq --labels smile.csv      # the most specific channel",
    ),
)
def fit_stylespace(
    name: NameOpt,
    weights: WeightsOpt,
    layer: Annotated[int | None, typer.Option("--layer", help="Conv layer (gie's 0..num_layers-1).")] = None,
    channel: Annotated[int | None, typer.Option("--channel", help="Style channel of that layer.")] = None,
    s_index: Annotated[
        bool, typer.Option("--s-index", help="--layer is a StyleSpace paper index (ToRGB layers counted, as SFE).")
    ] = False,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels", help="Labelled latents (as for interfacegan): pick the most attribute-specific channel."
        ),
    ] = None,
    scale: Annotated[
        float | None, typer.Option("--scale", help="Style units per power (default: the channel's std; SFE uses 3).")
    ] = None,
    samples: SamplesOpt = 5000,
    seed: SeedOpt = 0,
    power_range: RangeOpt = None,
    output: OutDirOpt = None,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """StyleSpace (Wu et al. 2021): a single style channel of one conv layer, given by --layer/--channel or detected
    from --labels (largest |mean_pos - mean| / std_pos)."""
    from gie_cli.editing import check_name, generator_binding, load_generator, provenance
    from gie_cli.editing.fit import stylespace_channel_from_labels, stylespace_channel_scale, stylespace_direction
    from gie_cli.editing.labels import load_labels_checked
    from gie_cli.editing.stylespace import s_index_to_layer

    check_name(name)
    g, wid = load_generator(weights, device)
    sign, extra = 1.0, {}
    if labels is not None:
        if layer is not None or channel is not None:
            raise UsageError("give either --labels or --layer/--channel")
        layer, channel, sign, found = stylespace_channel_from_labels(g, *load_labels_checked(labels, g))
        extra = {"labels": str(labels.resolve()), **found}
    elif layer is None or channel is None:
        raise UsageError("give --layer and --channel, or --labels")
    elif s_index:
        try:
            layer = s_index_to_layer(layer)
        except ValueError as e:
            raise UsageError(str(e), param="layer", value=layer) from None
    if not 0 <= layer < g.num_layers:
        raise UsageError(f"conv layer {layer} out of range 0..{g.num_layers - 1}", param="layer")
    if scale is None:
        scale = stylespace_channel_scale(g, layer, channel, samples, seed)
    prov = provenance("fit:stylespace", samples=samples, seed=seed, **extra)
    d = stylespace_direction(
        name, g, layer, channel, scale, generator_binding(g, wid), prov, sign, parse_range(power_range) or (-10.0, 10.0)
    )
    _write([d], output, overwrite, json_out)


@command(
    name="label",
    target=fit_app,
    epilog=examples(
        "gie directions fit label -n smiling -w e4e.ffhq --classifier LCNet_40.pth --attribute Smiling",
        "gie directions fit label -n lab -w e4e.ffhq --labels wplus.safetensors --attribute 0 --order 2",
    ),
)
def fit_label(
    name: NameOpt,
    weights: WeightsOpt,
    attribute: Annotated[str, typer.Option("--attribute", help="Attribute index, or name (e.g. Smiling).")],
    classifier: Annotated[
        Path | None,
        typer.Option(
            "--classifier",
            help="Trained latent classifier: an official LCNet_40 checkpoint ({'state_dict': ...}) or a gie "
            "safetensors file. Without it one is trained on --labels.",
        ),
    ] = None,
    labels: Annotated[
        Path | None, typer.Option("--labels", help="Labelled W+ latents to train a classifier on (see interfacegan).")
    ] = None,
    activation: Annotated[
        Activation,
        choice(Activation, "--activation", help="Classifier activation: leakyrelu (official editing) or relu."),
    ] = Activation.leakyrelu,
    target: Annotated[float, typer.Option("--target", min=0.0, max=1.0, help="Target label y_t.")] = 1.0,
    order: Annotated[int, typer.Option("--order", min=1, max=2, help="1: first-order, 2: second-order edit.")] = 1,
    xi: Annotated[float, typer.Option("--xi", help="Second-order finite-difference step (supplement: 1e-3).")] = 1e-3,
    steps: Annotated[
        int, typer.Option("--steps", min=1, help="Training steps of a classifier fitted on --labels.")
    ] = 500,
    seed: SeedOpt = 0,
    layers: LayersOpt = None,
    power_range: RangeOpt = None,
    output: OutDirOpt = None,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Style Transformer (Hu et al. 2022) label-based editing: a per-latent path along the (first- or second-order)
    gradient of a latent attribute classifier toward --target; the classifier is stored in the direction file."""
    from gie_cli.editing import check_name, generator_binding, load_generator, provenance
    from gie_cli.editing.fit import label_direction, train_latent_classifier
    from gie_cli.editing.label import load_latent_classifier
    from gie_cli.editing.labels import load_labels_checked

    check_name(name)
    if (classifier is None) == (labels is None):
        raise UsageError("give exactly one of --classifier and --labels")
    g, wid = load_generator(weights, device)
    if classifier is not None:
        clf = load_latent_classifier(classifier, activation.value)
        source: dict[str, Any] = {"classifier": str(classifier.resolve())}
    else:
        x, y = load_labels_checked(labels, g)
        if x.ndim != 3:
            raise UsageError("--labels must hold W+ latents [N, L, D] to train a latent classifier")
        clf = train_latent_classifier(x, y, steps=steps, seed=seed, activation=activation.value)
        source = {"labels": str(labels.resolve()), "steps": steps}
    if clf.fmaps[0] != g.n_latent * g.style_dim:
        raise UsageError(
            f"the classifier takes {clf.fmaps[0]} inputs; this generator's W+ has {g.n_latent * g.style_dim}",
            param="classifier",
        )
    try:
        idx = clf.attribute_index(attribute)
    except ValueError as e:
        raise UsageError(str(e), param="attribute", value=attribute) from None
    prov = provenance(f"fit:label[order={order}]", **source)
    d = label_direction(
        name, clf, idx, generator_binding(g, wid), prov, target, order, xi, seed,
        parse_layers(layers, g.n_latent), parse_range(power_range) or (0.0, 5.0),
    )  # fmt: skip
    _write([d], output, overwrite, json_out)

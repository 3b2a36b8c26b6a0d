"""What every gie command shares: choice enums, option aliases (defined once, reused with ``Annotated``), the
Typer app factory, the ``-q/-v`` options, parsers of ``KEY=VALUE`` options and the library-parameter -> flag map.

Nothing here imports torch: ``gie --help`` stays fast.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from gie_cli.errors import UsageError

try:
    from enum import StrEnum
except ImportError:  # Python 3.10

    class StrEnum(str, Enum):  # type: ignore[no-redef]
        """A ``str`` enum whose ``str()`` is its value (``enum.StrEnum`` from Python 3.11)."""

        def __str__(self) -> str:
            return str(self.value)


E = TypeVar("E", bound=StrEnum)


# --------------------------------------------------------------------------------------------------- choices
class OnExisting(StrEnum):
    """``--on-existing``: what a batch command does with an item whose outputs exist."""

    skip = "skip"
    overwrite = "overwrite"
    error = "error"


class Alpha(StrEnum):
    """``--alpha``: how transparent inputs are flattened (``gie_cli.io.images.ALPHA_POLICIES``)."""

    white = "white"
    black = "black"
    drop = "drop"
    error = "error"


class ImageExt(StrEnum):
    """``--ext``: image format of written images."""

    png = "png"
    jpg = "jpg"
    webp = "webp"


class Dtype(StrEnum):
    """``--dtype``: precision of the models (``gie_cli.device.resolve_dtype``)."""

    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class Precision(StrEnum):
    """``--precision``: autocast of the fp32 model (``gie_cli.device.resolve_precision``)."""

    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Faces(StrEnum):
    """``gie align --faces``: several faces in a photo (``gie_cli.alignment.FACE_POLICIES``)."""

    largest = "largest"
    all = "all"
    error = "error"


class AlignBackend(StrEnum):
    """``--backend`` / ``--align-backend``: the landmark detector (``gie_cli.alignment.BACKENDS``)."""

    auto = "auto"
    face_alignment = "face-alignment"
    mediapipe = "mediapipe"
    file = "file"


class DirectionFormat(StrEnum):
    """``gie directions import --format``."""

    auto = "auto"
    interfacegan = "interfacegan"
    ganspace = "ganspace"
    boundary = "boundary"


class Convention(StrEnum):
    """``gie directions import --convention``: how an InterFaceGAN ``.pt`` is applied (``importers.CONVENTIONS``)."""

    e4e = "e4e"
    hfgi = "hfgi"
    sfe = "sfe"


class GanspaceMode(StrEnum):
    """GANSpace edit formula: ``set`` (official: power = target coordinate) or ``add`` (std units moved)."""

    set = "set"
    add = "add"


class ClassifierInput(StrEnum):
    """``gie directions fit interfacegan --on``: what the classifier receives."""

    latent = "latent"
    image = "image"


class Solver(StrEnum):
    """``gie directions fit interfacegan --solver``."""

    svm = "svm"
    logistic = "logistic"


class LatentSpace(StrEnum):
    """``--space`` of direction fitting: ``w`` (mean over layers) or ``wplus``."""

    w = "w"
    wplus = "wplus"


class Activation(StrEnum):
    """``gie directions fit label --activation``."""

    leakyrelu = "leakyrelu"
    relu = "relu"


SYNTHFACE = "synthface"
"""``--data synthface``: the held-out faces of the synthetic world (benchmark, training); any other value is a path."""


def choice(enum: type[E], *decls: str, help: str, **kwargs: Any) -> Any:
    """A ``typer.Option`` accepting exactly the values of ``enum`` (help shows them as ``a|b|c``).

    A wrong value is a usage error (exit code 2) that names the flag and the choices:
    ``unknown --backend 'dlib' (choose one of: auto, face-alignment, mediapipe, file)``.
    """
    values = [m.value for m in enum]
    flag = decls[0]

    def parse(value: Any) -> E:
        if isinstance(value, enum):
            return value
        try:
            return enum(value)
        except ValueError:
            raise typer.BadParameter(f"unknown {flag} {value!r} (choose one of: {', '.join(values)})") from None

    return typer.Option(*decls, help=help, parser=parse, metavar="|".join(values), **kwargs)


# --------------------------------------------------------------------------------------------------- shared options
def output_option(help: str = "Output folder.") -> Any:
    """``--output/-o``."""
    return typer.Option("--output", "-o", help=help)


def weights_option(
    help: str = "Weights of the method: a registry name (gie weights list) or a checkpoint file.",
) -> Any:
    """``--weights/-w``."""
    return typer.Option("--weights", "-w", help=help)


def settings_option(help: str = "Method setting KEY=VALUE (repeatable), e.g. --set steps=200.") -> Any:
    """``--set`` (repeatable)."""
    return typer.Option("--set", help=help)


def batch_size_option(help: str = "Images per model batch; halved and retried on CUDA out-of-memory.") -> Any:
    """``--batch-size/-b``."""
    return typer.Option("--batch-size", "-b", min=1, help=help)


OutputOpt = Annotated[Path, output_option()]
WeightsOpt = Annotated[str | None, weights_option()]
SettingsOpt = Annotated[list[str] | None, settings_option()]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto | cpu | cuda | cuda:N. auto picks CUDA when usable and says so.")
]
DtypeOpt = Annotated[Dtype, choice(Dtype, "--dtype", help="Precision: fp16 and bf16 on CUDA only; auto = fp32.")]
PrecisionOpt = Annotated[
    Precision,
    choice(
        Precision,
        "--precision",
        help="Mixed precision: bf16 or fp16 autocasts the fp32 model (convolutions in half precision; styles, "
        "demodulation and normalisation statistics in fp32), unlike --dtype, which casts the whole model. Not with "
        "--dtype fp16/bf16.",
    ),
]
CompileOpt = Annotated[
    bool,
    typer.Option(
        "--compile",
        help="torch.compile the generator's synthesis (the first batch compiles; falls back to eager with a "
        "warning if compiling fails). Speeds up methods that render without feature hooks (e4e, pSp, optim, ...).",
    ),
]
CudaGraphsOpt = Annotated[
    bool,
    typer.Option(
        "--cuda-graphs",
        help="Replay CUDA graphs of the generator's synthesis, captured once per batch shape (CUDA only; renders "
        "without feature hooks).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Write one JSON object per line on stdout.")]
BatchSizeOpt = Annotated[int, batch_size_option()]
RecursiveOpt = Annotated[bool, typer.Option("--recursive", "-r", help="Descend into sub-folders of input folders.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="List the planned work and exit without running.")]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
        metavar="I/N",
        help="Take only shard I of N (0 <= I < N; by each input's path, stable when inputs are added): job arrays.",
    ),
]
DEFAULT_WORKERS = max(1, min(4, (os.cpu_count() or 2) // 2))
"""``--workers`` default: half the CPUs (the other half computes), 1 to 4."""
WorkersOpt = Annotated[
    int,
    typer.Option(
        "--workers",
        min=0,
        help="Threads loading the next inputs while the model computes; outputs are encoded and written on a "
        "background thread. 0 = one stage after another. Results are the same.",
    ),
]
NprocOpt = Annotated[
    int,
    typer.Option(
        "--nproc",
        min=1,
        help="Run as N processes on this machine (one per GPU, as torchrun --nproc-per-node N), each on its own "
        "shard of the inputs, into one output folder with one manifest.",
    ),
]
FailFastOpt = Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failed item.")]
OnExistingOpt = Annotated[
    OnExisting,
    choice(OnExisting, "--on-existing", help="What to do when an item's outputs exist: skip (resume), overwrite or "
           "error."),
]  # fmt: skip
AlphaOpt = Annotated[Alpha, choice(Alpha, "--alpha", help="Transparent inputs: flatten on white or black, drop the "
                                   "alpha channel, or fail the item.")]  # fmt: skip
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging (repeatable).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")]


QualityOpt = Annotated[
    int,
    typer.Option(
        "--quality",
        min=1,
        max=100,
        metavar="Q",
        help="JPEG/WebP quality 1..100 of written images (jpg and webp; png is lossless and ignores it).",
    ),
]
LOSSY_EXTS: tuple[str, ...] = ("jpg", "webp")
"""Image formats ``--quality`` applies to."""


def ext_option(what: str = "written images") -> Any:
    """``--ext`` / ``--image-format``: image format of ``what``."""
    return choice(ImageExt, "--ext", "--image-format", help=f"Image format of {what} (see --quality).")


def image_quality(ext: str, quality: int) -> int | None:
    """``--quality`` as it applies to ``--ext``: ``quality`` for a lossy format (jpg, webp), None for png.

    Commands put it in their ``request`` only when not None, so png runs keep their done records.
    """
    return quality if str(ext) in LOSSY_EXTS else None


# --------------------------------------------------------------------------------------------------- the app
def make_typer(name: str | None = None, help: str | None = None, *, epilog: str | None = None, **kwargs: Any):
    """A ``typer.Typer`` with gie's settings: help on no arguments, ``-h``, no locals in tracebacks.

    Shell completion is off here; the root app turns it on (``add_completion=True``).
    """
    settings: dict[str, Any] = {
        "no_args_is_help": True,
        "add_completion": False,
        "pretty_exceptions_enable": False,
        "context_settings": {"help_option_names": ["-h", "--help"]},
    }
    settings.update(kwargs)
    return typer.Typer(name=name, help=help, epilog=epilog, **settings)


def examples(*lines: str, note: str | None = None) -> str:
    """An epilog listing example command lines (one per paragraph, so help keeps the line breaks)."""
    text = "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)
    return text + (f"\n\n{note}" if note else "")


# --------------------------------------------------------------------------------------------------- parsers
def parse_pairs(items: Sequence[str], flag: str, example: str | None = None) -> list[tuple[str, str]]:
    """``["a=1", "b=2"]`` -> ``[("a", "1"), ("b", "2")]`` (keys and values stripped; the value must not be empty).

    Raises:
        UsageError: An item that is not KEY=VALUE.
    """
    out = []
    for s in items:
        key, sep, value = s.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"{flag} {s!r} is not KEY=VALUE", hint=f"e.g. {flag} {example}" if example else None)
        out.append((key.strip(), value.strip()))
    return out


def parse_settings(settings: Sequence[str]) -> dict[str, str]:
    """``--set`` values ``["steps=100", "space=w"]`` -> ``{"steps": "100", "space": "w"}`` (empty values allowed).

    Raises:
        UsageError: An item that is not KEY=VALUE.
    """
    out = {}
    for s in settings:
        key, sep, value = s.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {s!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


# --------------------------------------------------------------------------------------------------- error -> flag
PARAM_FLAGS: dict[str, str] = {
    "device": "--device",
    "dtype": "--dtype",
    "precision": "--precision",
    "cuda_graphs": "--cuda-graphs",
    "weights": "--weights",
    "data": "--data",
    "resume": "--resume",
    "landmarks": "--landmarks",
    "faces": "--faces",
    "backend": "--backend",
    "edits": "--edits",
    "methods": "--methods",
    "method": "--method",
    "set": "--set",
    "settings": "--set",
    "alpha": "--alpha",
    "classifier": "--classifier",
    "attribute": "--attribute",
    "n": "--n",
    "size": "--size",
    "ood_prob": "--ood-prob",
    "seed": "--seed",
    "metrics": "--metrics",
    "labels": "--labels",
    "direction": "--direction",
    "power": "--power",
    "layers": "--layers",
    "output": "--output",
    "batch_size": "--batch-size",
    "steps": "--steps",
    "cache_dir": "--cache-dir",
    "registry": "--registry",
    "name": "--name",
}
"""Library parameter name (``UsageError.param``) -> the flag users type. Commands override single entries (e.g.
``gie invert`` passes the landmark backend as ``--align-backend``)."""

COMMAND_FLAGS: dict[str, dict[str, str]] = {
    "invert": {"backend": "--align-backend"},
}
"""Per command (the name of the running command function's command), overrides of :data:`PARAM_FLAGS`."""


def flag_for(param: str, command: str | None = None) -> str:
    """The command-line flag of a library parameter (``"ood_prob"`` -> ``"--ood-prob"``)."""
    override = COMMAND_FLAGS.get(command or "", {})
    return override.get(param) or PARAM_FLAGS.get(param) or "--" + param.replace("_", "-")


def render_error(err: Exception, command: str | None = None) -> str:
    """The one-line text of an error for the CLI: a :class:`UsageError` with a ``param`` gets its flag in front
    (``--device xyz: device 'xyz' is not valid ...``) unless the message already names it."""
    param = getattr(err, "param", None)
    text = str(err)
    if not param:
        return text
    flag = flag_for(param, command)
    if re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text):
        return text
    value = getattr(err, "value", None)
    shown = value is None or str(value) == "" or str(value) in text
    return f"{flag}: {text}" if shown else f"{flag} {value}: {text}"

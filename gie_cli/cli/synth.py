"""`gie synth`: render faces or photos of gie's synthetic face world (offline demo and test data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gie_cli.cli import command
from gie_cli.cli.options import examples, output_option
from gie_cli.errors import UsageError

_EPILOG = examples(
    "gie synth -o world/ -n 100                  # photos with landmark sidecars",
    "gie synth -o crops/ -n 32 --faces --size 64   # aligned face crops",
    "gie synth -o w/ -n 8 && gie align w -o aligned --backend file",
)


@command(epilog=_EPILOG)
def synth(
    output: Annotated[Path, output_option("Output folder (images + params.jsonl).")],
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Number of images.")] = 8,
    size: Annotated[int, typer.Option("--size", "-s", min=16, max=2048, help="Crop side; photo height.")] = 256,
    photos: Annotated[
        bool,
        typer.Option(
            "--photos/--faces", help="Photos (faces placed in a scene, with landmark sidecars) or aligned face crops."
        ),
    ] = True,
    ood_prob: Annotated[float, typer.Option("--ood-prob", min=0.0, max=1.0, help="Share of faces with objects.")] = 0.0,
    detail: Annotated[float, typer.Option("--detail", min=0.0, help="Image-specific fine detail (0 = clean).")] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Render the synthetic face world: NNNNNN.png (+ NNNNNN.landmarks.json for photos) and params.jsonl with the
    ground truth (attributes, landmarks). Photos align offline with `gie align --backend file`."""
    from gie_cli.synth import write_dataset

    if output.exists() and any(output.iterdir()):
        raise UsageError(f"output folder {output} is not empty", hint="choose a new folder")
    write_dataset(output, n, seed, size=size, photos=photos, ood_prob=ood_prob, detail_strength=detail)
    typer.echo(str(output))

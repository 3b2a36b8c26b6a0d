"""Option aliases shared by every gie command (defined once, reused with ``Annotated``)."""

from __future__ import annotations

from typing import Annotated

import typer

DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto | cpu | cuda | cuda:N. auto picks CUDA when usable and says so.")
]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto | fp32 | fp16 | bf16 (half precision on CUDA only).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Write one JSON object per line on stdout.")]

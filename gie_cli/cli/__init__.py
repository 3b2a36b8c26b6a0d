"""gie command-line interface: a Typer app; stdout carries data, stderr carries logs and progress."""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
from typing import Annotated

import typer

from gie_cli import __version__

app = typer.Typer(
    name="gie",
    help="Batch GAN inversion and attribute editing of face photos with StyleGAN2.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"gie {__version__}")
        raise typer.Exit()


def setup_logging(verbosity: int) -> None:
    """Install one stderr handler on the ``gie_cli`` logger: -q -> WARNING, default INFO, -v -> DEBUG."""
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    logger = logging.getLogger("gie_cli")
    logger.handlers.clear()
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(
        console=Console(stderr=True), show_time=False, show_path=verbosity > 0, markup=False, rich_tracebacks=False
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging (repeatable).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Batch GAN inversion and attribute editing of face photos with StyleGAN2."""
    setup_logging(-1 if quiet else verbose)


def command(*args, **kwargs):
    """``app.command`` plus gie's error policy: a known error is one line on stderr and exit 1 (usage: 2).

    Set ``GIE_DEBUG=1`` for the traceback.
    """

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            from gie_cli.errors import GieError

            try:
                return fn(*a, **k)
            except GieError as e:
                if os.environ.get("GIE_DEBUG"):
                    traceback.print_exc()
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(e.exit_code) from None

        return app.command(*args, **kwargs)(wrapper)

    return decorate


def _register() -> None:
    # Each command module adds itself to ``app``; modules import torch only inside command bodies.
    from gie_cli.cli import info, invert  # noqa: F401


_register()


def main() -> None:
    """Console entry point: known errors become one line on stderr and exit 1 (usage errors: 2)."""
    from gie_cli.errors import GieError

    try:
        app(standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the top level turns every error into one line
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if os.environ.get("GIE_DEBUG"):
            traceback.print_exc()
        if isinstance(e, GieError):
            typer.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        typer.echo(f"error: {type(e).__name__}: {e} (set GIE_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)

"""gie command-line interface: a Typer app; stdout carries data, stderr carries logs and progress."""

from __future__ import annotations

import functools
import logging
import os
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


def command(*args, target: typer.Typer | None = None, **kwargs):
    """``app.command`` plus gie's error policy: an error is one line on stderr and exit 1 (usage errors: 2).

    ``target`` registers the command on a sub-app (e.g. ``gie weights``) instead of the root app.
    Set ``GIE_DEBUG=1`` for the traceback.
    """

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            from gie_cli.errors import GieError

            try:
                return fn(*a, **k)
            except (typer.Exit, typer.Abort, typer.TyperException):
                raise
            except GieError as e:
                if os.environ.get("GIE_DEBUG"):
                    traceback.print_exc()
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(e.exit_code) from None
            except KeyboardInterrupt:
                typer.echo("interrupted", err=True)
                raise typer.Exit(130) from None
            except Exception as e:  # an unexpected failure: one line, traceback on request
                if os.environ.get("GIE_DEBUG"):
                    traceback.print_exc()
                typer.echo(f"error: {type(e).__name__}: {e} (set GIE_DEBUG=1 for the traceback)", err=True)
                raise typer.Exit(1) from None

        return (app if target is None else target).command(*args, **kwargs)(wrapper)

    return decorate


_NOT_COMMANDS = {"batch", "options"}


def _register() -> None:
    # Every module of this package except the helpers above defines commands with ``@command()``; importing it
    # registers them. Command modules import torch only inside command bodies, so --help and --version stay fast.
    import importlib
    import pkgutil

    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name not in _NOT_COMMANDS and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


_register()


def main() -> None:
    """Console entry point (``gie``)."""
    app()

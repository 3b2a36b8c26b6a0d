"""gie command-line interface: a Typer app; stdout carries data, stderr carries logs and progress."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import signal
import threading
import traceback
from collections.abc import Iterator
from typing import Annotated

import typer

from gie_cli import __version__
from gie_cli.cli.options import QuietOpt, VerboseOpt, examples, make_typer

app = make_typer(
    "gie",
    "Batch GAN inversion and attribute editing of face photos with StyleGAN2.",
    add_completion=True,
    epilog=examples(
        "gie align ./photos -o aligned",
        "gie invert aligned -w e4e.ffhq -o inv",
        "gie edit inv -d smile --power=-3,3 -o edits --grid",
        note="-q/-v also work after the command name (gie invert -q ...).",
    ),
)

_VERBOSITY = "gie.verbosity"  # key in click's context meta: what the root's -q/-v asked for


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"gie {__version__}")
        raise typer.Exit()


def setup_logging(verbosity: int) -> None:
    """Install one stderr handler on the ``gie_cli`` logger: -q -> WARNING, default INFO, -v -> DEBUG.

    This changes the logger for the rest of the process; commands use :func:`logging_scope`, which undoes it.
    """
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


@contextlib.contextmanager
def logging_scope(verbosity: int) -> Iterator[None]:
    """:func:`setup_logging` for the duration of a command; the ``gie_cli`` logger's handlers, level and
    propagation are restored afterwards (in-process runs, e.g. tests, leave no global state behind)."""
    logger = logging.getLogger("gie_cli")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    setup_logging(verbosity)
    try:
        yield
    finally:
        for h in logger.handlers:
            if h not in saved[0]:
                h.close()
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Batch GAN inversion and attribute editing of face photos with StyleGAN2."""
    ctx.meta[_VERBOSITY] = (verbose, quiet)


def _verbosity(ctx: typer.Context | None, verbose: int, quiet: bool) -> int:
    """The root's -q/-v combined with the command's own: -q (anywhere) wins, -v counts add up."""
    root_verbose, root_quiet = ctx.meta.get(_VERBOSITY, (0, False)) if ctx is not None else (0, False)
    return -1 if (quiet or root_quiet) else verbose + root_verbose


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so a run stops cleanly: temp files removed, locks released,
    the manifest complete; the command exits with 143 (128 + SIGTERM)."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` (once; a second SIGTERM during the clean-up is
    ignored). Only in the main thread (signal handlers cannot be set elsewhere); the old handler is restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_EXTRA = (  # parameters every command gets; the wrapper takes them off before calling the command
    inspect.Parameter("gie_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
    inspect.Parameter("gie_verbose", inspect.Parameter.KEYWORD_ONLY, default=0, annotation=VerboseOpt),
    inspect.Parameter("gie_quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=QuietOpt),
)


def command(*args, target: typer.Typer | None = None, **kwargs):
    """``app.command`` plus gie's policies for every command.

    - ``-q/--quiet`` and ``-v/--verbose`` are accepted after the command name too (``gie invert -q ...``);
    - logging is set up for the command and the ``gie_cli`` logger restored when it ends (:func:`logging_scope`);
    - SIGTERM stops the command like Ctrl-C (:func:`sigterm_as_interrupt`): exit 143, Ctrl-C 130;
    - an error is one line on stderr and exit 1 (usage errors: 2); a :class:`~gie_cli.errors.UsageError` naming a
      library parameter is shown with the command's flag (:func:`gie_cli.cli.options.render_error`).
      Set ``GIE_DEBUG=1`` for the traceback.

    ``target`` registers the command on a sub-app (e.g. ``gie weights``) instead of the root app.
    """

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*a, gie_ctx: typer.Context | None = None, gie_verbose: int = 0, gie_quiet: bool = False, **k):
            from gie_cli.errors import GieError

            name = gie_ctx.info_name if gie_ctx is not None else fn.__name__
            with logging_scope(_verbosity(gie_ctx, gie_verbose, gie_quiet)), sigterm_as_interrupt():
                try:
                    return fn(*a, **k)
                except (typer.Exit, typer.Abort, typer.TyperException):
                    raise
                except GieError as e:
                    if os.environ.get("GIE_DEBUG"):
                        traceback.print_exc()
                    from gie_cli.cli.options import render_error

                    typer.echo(f"error: {render_error(e, name)}", err=True)
                    raise typer.Exit(e.exit_code) from None
                except Terminated:
                    typer.echo(
                        "terminated (SIGTERM): stopped cleanly; a re-run goes on where this one stopped", err=True
                    )
                    raise typer.Exit(143) from None
                except KeyboardInterrupt:
                    typer.echo("interrupted", err=True)
                    raise typer.Exit(130) from None
                except Exception as e:  # an unexpected failure: one line, traceback on request
                    if os.environ.get("GIE_DEBUG"):
                        traceback.print_exc()
                    typer.echo(f"error: {type(e).__name__}: {e} (set GIE_DEBUG=1 for the traceback)", err=True)
                    raise typer.Exit(1) from None

        sig = inspect.signature(fn, eval_str=True)
        wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), *_EXTRA])
        wrapper.__annotations__ = {**fn.__annotations__, **{p.name: p.annotation for p in _EXTRA}}
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

"""`gie weights list|download|verify|path|import|rm`: the weights registry and cache from the command line."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from gie_cli.cli import app, command
from gie_cli.cli.options import JsonOpt, examples, make_typer, output_option
from gie_cli.errors import GieError, UsageError

log = logging.getLogger(__name__)

weights_app = make_typer(
    "weights",
    "Official checkpoints: list the registry, download (verified, resumable), verify, locate, import, remove. "
    "Cache: --cache-dir > GIE_CACHE_DIR > $XDG_CACHE_HOME/gie > the platform cache folder; "
    "GIE_OFFLINE=1 forbids network access. Embedded entries (world.*) are small demo models shipped inside "
    "gie: the defaults when --weights is omitted; never downloaded or cached.",
    epilog=examples(
        "gie weights list",
        "gie weights download e4e.ffhq",
        "gie weights path lpips.vgg",
        "gie weights import ~/Downloads/e4e_ffhq_encode.pt",
        "gie weights import --convert ffhq.pkl --name stylegan2_ada.ffhq",
    ),
)
app.add_typer(weights_app, name="weights")

CacheDirOpt = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Weights cache folder (default: GIE_CACHE_DIR, XDG cache, platform cache)."),
]
RegistryOpt = Annotated[
    Path | None,
    typer.Option("--registry", envvar="GIE_WEIGHTS_TOML", help="Registry file to use instead of gie's weights.toml."),
]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Make no network calls (same as GIE_OFFLINE=1).")]
NamesArg = Annotated[list[str] | None, typer.Argument(help="Registry names (see `gie weights list`).")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every entry of the registry.")]


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def _size_text(entry) -> str:
    if entry.size:
        return _human(entry.size)
    if entry.embedded and entry.embedded_path.is_file():
        return _human(entry.embedded_path.stat().st_size)
    return f"~{_human(entry.size_approx)}" if entry.size_approx else "?"


def _state_text(st) -> str:
    e = st.entry
    if e.embedded:
        state = "embedded" if st.path.is_file() else "embedded (MISSING)"
        return f"{state}, default for {', '.join(e.default_for)}" if e.default_for else state
    return "cached" if st.cached else (f"partial {_human(st.partial)}" if st.partial else "-")


def _emit(obj: dict) -> None:
    typer.echo(json.dumps(obj, sort_keys=True))


def _registry(registry: Path | None):
    from gie_cli.weights import load_registry

    return load_registry(registry)


def _select(reg, names: list[str] | None, all_: bool, default_all: bool = False) -> list:
    if names and all_:
        raise UsageError("give entry names or --all, not both")
    if all_ or (not names and default_all):
        return list(reg)
    if not names:
        raise UsageError("name at least one registry entry (or pass --all)", hint="see `gie weights list`")
    return [reg.get(n) for n in names]


@command("list", target=weights_app, epilog=examples("gie weights list", "gie weights list --method e4e --json"))
def list_cmd(
    method: Annotated[str | None, typer.Option("--method", "-m", help="Only entries that feed this method.")] = None,
    cache_dir: CacheDirOpt = None,
    registry: RegistryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List the registry: name, size, state (cached / embedded, default for ...), licence (--json: every field)."""
    from gie_cli.weights import entry_status

    reg = _registry(registry)
    entries = reg.for_method(method) if method else list(reg)
    rows = []
    for e in entries:
        st = entry_status(e, cache_dir)
        if json_out:
            _emit(st.to_dict())
            continue
        state = _state_text(st)
        check = "sha256" if e.sha256 else "sha256 (partial)" if e.sha256_prefix or e.sha256_suffix else "no hash"
        rows.append((e.name, _size_text(e), state, check, e.license.split(" (")[0]))
    if not json_out and rows:
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            typer.echo("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    log.debug("registry %s, %d entries", reg.path, len(entries))


@command(
    "download",
    target=weights_app,
    epilog=examples("gie weights download e4e.ffhq", "GIE_CACHE_DIR=/data/gie gie weights download --all"),
)
def download_cmd(
    names: NamesArg = None,
    all_: AllOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Download again even if a verified copy exists.")] = False,
    cache_dir: CacheDirOpt = None,
    offline: OfflineOpt = False,
    registry: RegistryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Download entries into the cache (resumes partial files, verifies before use); prints each file's path.

    Embedded entries are not downloaded: their package file is checked and its path printed.
    """
    from gie_cli.weights import embedded_file, ensure, entry_path, verify_cached

    reg = _registry(registry)
    failed = 0
    for e in _select(reg, names, all_):
        if e.embedded:
            try:
                path = embedded_file(e)
            except GieError as err:
                failed += 1
                typer.echo(f"error: {err}", err=True)
                if json_out:
                    _emit(
                        {"name": e.name, "path": str(e.embedded_path), "ok": False, "embedded": True, "error": str(err)}
                    )
                continue
            log.info("%s is embedded in the gie package: nothing to download", e.name)
            if json_out:
                _emit({"name": e.name, "path": str(path), "ok": True, "embedded": True})
            else:
                typer.echo(str(path))
            continue
        try:
            path = ensure(e, reg, cache_dir, offline=offline or None, force=force)
        except GieError as err:
            failed += 1
            typer.echo(f"error: {err}", err=True)
            if json_out:
                _emit({"name": e.name, "path": str(entry_path(e, cache_dir)), "ok": False, "error": str(err)})
            continue
        v = verify_cached(path, e)
        if e.convert:
            log.info("%s needs a one-time conversion: gie weights import --convert %s --name %s", e.name, path, e.name)
        if json_out:
            _emit({"name": e.name, "path": str(path), "ok": True, "check": v.level, "sha256": v.sha256})
        else:
            typer.echo(str(path))
    if failed:
        raise typer.Exit(1)


@command("verify", target=weights_app, epilog=examples("gie weights verify", "gie weights verify e4e.ffhq --json"))
def verify_cmd(
    names: NamesArg = None,
    all_: AllOpt = False,
    cache_dir: CacheDirOpt = None,
    registry: RegistryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Re-hash cached (and embedded) files against the registry (default: every file present). Exit 1 if any is bad."""
    from gie_cli.weights import entry_status

    reg = _registry(registry)
    chosen = _select(reg, names, all_, default_all=True)
    explicit = bool(names) or all_
    bad = 0
    checked = 0
    for e in chosen:
        st = entry_status(e, cache_dir, verify=False)
        if not (st.cached or (e.embedded and st.path.is_file())) and not explicit:
            continue
        st = entry_status(e, cache_dir, verify=True)
        v = st.verified
        checked += 1
        if not v.ok:
            bad += 1
        if json_out:
            _emit(st.to_dict())
        else:
            state = "ok" if v.ok else ("MISSING" if v.reason == "missing" else "BAD")
            note = f"  ({v.reason})" if v.reason and v.reason != "missing" else ""
            typer.echo(f"{state}\t{e.name}\t{v.level}\t{st.path}{note}")
        if v.ok and v.weak:
            log.warning("%s: %s", e.name, v.reason)
    if not checked:
        log.info("no cached weights to verify")
    if bad:
        typer.echo(f"error: {bad} of {checked} file(s) missing or failing verification", err=True)
        raise typer.Exit(1)


@command(
    "path", target=weights_app, epilog=examples("gie weights path e4e.ffhq", "ls -l $(gie weights path lpips.vgg)")
)
def path_cmd(
    name: Annotated[str, typer.Argument(help="Registry name.")],
    cache_dir: CacheDirOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """Print where an entry's file lives in the cache (whether or not it is there yet); embedded: in the package."""
    from gie_cli.weights import converted_path, entry_path

    e = _registry(registry).get(name)
    if e.embedded:
        typer.echo(str(e.embedded_path))
        if not e.embedded_path.is_file():
            log.warning("%s is missing from the gie package: `pip install --force-reinstall gie`", name)
        return
    p = entry_path(e, cache_dir)
    typer.echo(str(p))
    if not p.is_file():
        log.info("%s is not in the cache yet: `gie weights download %s` or `gie weights import FILE`", name, name)
    elif e.convert and not converted_path(e, cache_dir).is_file():
        log.info("not converted yet: `gie weights import --convert %s --name %s`", p, name)


@command(
    "import",
    target=weights_app,
    epilog=examples(
        "gie weights import ~/Downloads/e4e_ffhq_encode.pt",
        "gie weights import --convert ffhq.pkl --name stylegan2_ada.ffhq",
    ),
)
def import_cmd(
    file: Annotated[Path, typer.Argument(help="A weights file you already have.")],
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="Registry entry it is (default: matched by file name/hash).")
    ] = None,
    link: Annotated[bool, typer.Option("--link", help="Hard-link into the cache instead of copying.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace a cached copy.")] = False,
    convert: Annotated[
        bool,
        typer.Option(
            "--convert",
            help="FILE is an NVIDIA stylegan2-ada-pytorch .pkl: convert its G_ema to gie's safetensors format.",
        ),
    ] = False,
    output: Annotated[Path | None, output_option("With --convert: where to write the converted file.")] = None,
    cache_dir: CacheDirOpt = None,
    registry: RegistryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Verify a file you already have and place it in the cache (or convert an NVIDIA pickle with --convert)."""
    from gie_cli.weights import import_file

    if not file.is_file():
        raise UsageError(f"{file}: file not found")
    if output is not None and not convert:
        raise UsageError("--output only applies with --convert")
    reg = _registry(registry)
    if convert:
        out = _convert(file, name, output, cache_dir, reg)
        if json_out:
            _emit({"name": name or "", "path": str(out), "converted_from": str(file)})
        else:
            typer.echo(str(out))
        return
    entry = reg.get(name) if name else _match_entry(reg, file)
    dest, v = import_file(file, entry, cache_dir, link=link, force=force)
    if json_out:
        _emit({"name": entry.name, "path": str(dest), "check": v.level, "sha256": v.sha256, "size": v.size})
    else:
        typer.echo(str(dest))


def _match_entry(reg, file: Path):
    """The registry entry ``file`` is, by file name, else by hash."""
    by_name = reg.find_file(file.name)
    if len(by_name) == 1:
        return by_name[0]
    from gie_cli.weights.cache import sha256_file

    digest = sha256_file(file)
    candidates = by_name or list(reg)
    for e in candidates:
        if e.sha256 == digest or (
            (e.sha256_prefix or e.sha256_suffix)
            and digest.startswith(e.sha256_prefix)
            and digest.endswith(e.sha256_suffix)
        ):
            return e
    listing = ", ".join(e.name for e in by_name) if by_name else "no entry with this file name or hash"
    raise UsageError(f"{file}: cannot tell which registry entry this is ({listing})", hint="pass --name NAME")


def _convert(file: Path, name: str | None, output: Path | None, cache_dir: Path | None, reg) -> Path:
    from gie_cli.weights import converted_path
    from gie_cli.weights.cache import cache_dir as resolve_cache
    from gie_cli.weights.cache import check_file
    from gie_cli.weights.nvidia import PICKLE_WARNING, convert_nvidia_pickle

    entry = reg.get(name) if name else None
    if entry is not None:
        if entry.convert != "nvidia-ada-generator":
            raise UsageError(f"--convert: {entry.name} is not an NVIDIA network pickle entry")
        v = check_file(file, entry)
        if not v.ok:
            raise UsageError(f"{file} is not {entry.name}: {v.reason}")
    log.warning("%s", PICKLE_WARNING)
    if output is not None:
        out = output.expanduser()
    elif entry is not None:
        out = converted_path(entry, cache_dir)
    else:
        out = resolve_cache(cache_dir) / "converted" / (file.stem + ".gie.safetensors")
    if out.suffix != ".safetensors":
        raise UsageError(f"--output {out}: gie's format is safetensors; use a .safetensors name")
    convert_nvidia_pickle(file, out, entry.name if entry is not None else file.name)
    return out


@command("rm", target=weights_app, epilog=examples("gie weights rm e4e.ffhq", "gie weights rm --all"))
def rm_cmd(
    names: NamesArg = None,
    all_: AllOpt = False,
    cache_dir: CacheDirOpt = None,
    registry: RegistryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Delete entries from the cache (file, verification record, partial download, conversion).

    Embedded entries live in the package, not the cache: naming one is an error, --all skips them.
    """
    from gie_cli.weights import remove

    reg = _registry(registry)
    chosen = _select(reg, names, all_)
    if all_:
        chosen = [e for e in chosen if not e.embedded]
    for e in chosen:
        if e.embedded:
            remove(e, cache_dir)  # raises the UsageError, before anything is deleted
    total = 0
    for e in chosen:
        removed = remove(e, cache_dir)
        total += len(removed)
        if json_out:
            _emit({"name": e.name, "removed": [str(p) for p in removed]})
        else:
            for p in removed:
                typer.echo(str(p))
    log.info("removed %d file(s)", total)

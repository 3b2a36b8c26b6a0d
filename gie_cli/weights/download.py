"""Verified, resumable downloads with retries, per-file locks and Google Drive's confirmation page (stdlib urllib)."""

from __future__ import annotations

import contextlib
import html
import http.client
import http.cookiejar
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gie_cli import __version__
from gie_cli.errors import GieError
from gie_cli.weights.cache import (
    Verification,
    check_file,
    file_lock,
    lock_path,
    partial_path,
    verify_cached,
    write_meta,
)
from gie_cli.weights.registry import WeightEntry

__all__ = [
    "DownloadError",
    "DownloadOptions",
    "ProgressCallback",
    "backoff_delays",
    "download_entry",
    "drive_confirm_url",
    "progress_enabled",
    "rich_progress",
]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, "int | None"], None]
"""``progress(done_bytes, total_bytes_or_None)``, called as data arrives."""

_CHUNK = 1 << 20
_MAX_HTML = 2 << 20  # bytes of an HTML answer read while looking for a confirmation form
_MAX_HOPS = 3  # confirmation pages followed per attempt
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(GieError):
    """A file could not be downloaded from any mirror, or what arrived failed verification."""


class _Retryable(Exception):
    """A transient failure: try the same mirror again after a pause."""


class _Fatal(Exception):
    """This mirror cannot serve the file: go to the next one."""


@dataclass
class DownloadOptions:
    """Knobs of :func:`download_entry`.

    Attributes:
        attempts: Tries per mirror (the first included).
        timeout: Socket timeout in seconds (connect and each read).
        max_backoff: Cap of the pause between tries; pauses are 1, 2, 4, ... seconds up to it.
        sleep: The pause function (tests pass a fake one).
        opener: urllib opener (tests may pass one); None builds one with a cookie jar.
        headers: Extra request headers.
    """

    attempts: int = 5
    timeout: float = 30.0
    max_backoff: float = 10.0
    sleep: Callable[[float], None] = time.sleep
    opener: urllib.request.OpenerDirector | None = None
    headers: dict[str, str] = field(default_factory=dict)


def backoff_delays(attempts: int, cap: float = 10.0) -> list[float]:
    """Pauses before tries 2..``attempts``: 1, 2, 4, 8, ... seconds, each at most ``cap``."""
    return [min(2.0**i, cap) for i in range(max(attempts - 1, 0))]


# ----------------------------------------------------------------------------------------------- progress


def progress_enabled() -> bool:
    """Progress bars are shown when stderr is a terminal, ``GIE_DISABLE_PROGRESS_BARS`` is not set and the CLI is not
    quiet (``gie -q`` sets gie's log level above INFO)."""
    if os.environ.get("GIE_DISABLE_PROGRESS_BARS", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    gie_logger = logging.getLogger("gie_cli")
    if gie_logger.handlers and gie_logger.level > logging.INFO:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def rich_progress(description: str) -> Iterator[ProgressCallback | None]:
    """A byte progress bar on stderr while the block runs, or None when bars are disabled.

    Args:
        description: Label shown left of the bar.

    Yields:
        A :data:`ProgressCallback` driving the bar, or None.
    """
    if not progress_enabled():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


# ----------------------------------------------------------------------------------------------- Google Drive


_FORM_RE = re.compile(r"<form\b[^>]*\bid=[\"']download-form[\"'][^>]*>(.*?)</form>", re.S | re.I)
_ACTION_RE = re.compile(r"\baction=[\"']([^\"']+)[\"']", re.I)
_INPUT_RE = re.compile(r"<input\b[^>]*>", re.I)
_ATTR_RE = re.compile(r"\b(name|value)=[\"']([^\"']*)[\"']", re.I)
_CONFIRM_HREF_RE = re.compile(r"href=[\"']([^\"']*[?&](?:amp;)?confirm=[^\"']+)[\"']", re.I)
_CONFIRM_TOKEN_RE = re.compile(r"confirm=([0-9A-Za-z_-]+)")


def drive_confirm_url(body: str, base_url: str, cookies: http.cookiejar.CookieJar | None = None) -> str | None:
    """The URL that actually delivers a file after Google Drive's "can't scan for viruses" page, if ``body`` is one.

    Handles the current page (a ``<form id="download-form" action=...>`` whose hidden inputs carry ``id``,
    ``export``, ``confirm`` and ``uuid``), the older page (a link with ``confirm=<token>``) and the oldest scheme
    (a ``download_warning`` cookie whose value is the token).

    Args:
        body: The HTML text.
        base_url: URL the page came from (relative actions/links are resolved against it).
        cookies: Cookie jar of the session, for the cookie scheme.

    Returns:
        The URL to request next, or None when the page is not a confirmation page (e.g. a quota or error page).
    """
    form = _FORM_RE.search(body)
    if form:
        tag = body[form.start() : form.start(1)]
        action = _ACTION_RE.search(tag)
        target = urllib.parse.urljoin(base_url, html.unescape(action.group(1))) if action else base_url
        params: list[tuple[str, str]] = []
        for inp in _INPUT_RE.findall(form.group(1)):
            attrs = {k.lower(): html.unescape(v) for k, v in _ATTR_RE.findall(inp)}
            if "name" in attrs:
                params.append((attrs["name"], attrs.get("value", "")))
        if params:
            sep = "&" if urllib.parse.urlsplit(target).query else "?"
            return target + sep + urllib.parse.urlencode(params)
        return target
    href = _CONFIRM_HREF_RE.search(body)
    if href:
        return urllib.parse.urljoin(base_url, html.unescape(href.group(1)))
    token = None
    if cookies is not None:
        token = next((c.value for c in cookies if c.name.startswith("download_warning")), None)
    if token is None and "drive" in body.lower():
        m = _CONFIRM_TOKEN_RE.search(body)
        token = m.group(1) if m else None
    if token:
        parts = urllib.parse.urlsplit(base_url)
        query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "confirm"] + [("confirm", token)]
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
    return None


def _page_summary(body: str) -> str:
    title = re.search(r"<title>(.*?)</title>", body, re.S | re.I)
    text = html.unescape(title.group(1)).strip() if title else ""
    lower = body.lower()
    if "quota" in lower or "too many users" in lower:
        return "Google Drive's download quota for this file is exceeded; try again later or use another mirror"
    if "accounts.google.com" in lower or "sign in" in lower:
        return "the server asks for a login"
    return f"the server returned a web page ({text[:80] or 'no title'}) instead of the file"


# ----------------------------------------------------------------------------------------------- one transfer


def _open(
    url: str, offset: int, opts: DownloadOptions, opener: urllib.request.OpenerDirector
) -> http.client.HTTPResponse:
    headers = {"User-Agent": f"gie/{__version__} (+weights)", "Accept-Encoding": "identity", **opts.headers}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        return opener.open(req, timeout=opts.timeout)
    except urllib.error.HTTPError as e:
        with contextlib.suppress(Exception):
            e.close()
        if e.code == 416 and offset:
            raise _RangeNotSatisfiable() from None
        if e.code in _RETRY_STATUS or e.code >= 500:
            raise _Retryable(f"HTTP {e.code} {e.reason}") from None
        raise _Fatal(f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", e)
        raise _Retryable(f"{type(e).__name__}: {reason}") from None


class _RangeNotSatisfiable(Exception):
    """HTTP 416 to a resume request: the partial file is as long as (or longer than) the file."""


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"bytes\s+(\d+)-\d+/(\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def _fetch(
    url: str,
    part: Path,
    opts: DownloadOptions,
    opener: urllib.request.OpenerDirector,
    cookies: http.cookiejar.CookieJar,
    progress: ProgressCallback | None,
) -> None:
    """One try at streaming ``url`` into ``part`` (appending from its current size with an HTTP Range request)."""
    target = url
    for _ in range(_MAX_HOPS + 1):
        offset = part.stat().st_size if part.exists() else 0
        try:
            resp = _open(target, offset, opts, opener)
        except _RangeNotSatisfiable:
            logger.debug("%s: range %d- not satisfiable; the partial file is taken as complete", url, offset)
            return
        with resp:
            if resp.headers.get_content_type() == "text/html":
                body = resp.read(_MAX_HTML).decode("utf-8", errors="replace")
                nxt = drive_confirm_url(body, resp.geturl(), cookies)
                if nxt is None or nxt == target:
                    raise _Fatal(_page_summary(body))
                logger.debug("following the download confirmation page to %s", nxt)
                target = nxt
                continue
            status = getattr(resp, "status", 200)
            if offset and status == 206:
                start = _content_range_start(resp.headers.get("Content-Range"))
                if start != offset:
                    part.unlink(missing_ok=True)
                    raise _Retryable(f"server resumed at byte {start}, not {offset}; restarting")
                logger.info("resuming %s at %d bytes", part.name.removesuffix(".part"), offset)
            elif offset:
                logger.info("the server ignored the resume request; restarting %s", part.name.removesuffix(".part"))
                offset = 0
            length = resp.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else None
            done = offset
            if progress is not None:
                progress(done, total)
            with open(part, "ab" if offset else "wb") as f:
                try:
                    while block := resp.read1(_CHUNK):
                        f.write(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, total)
                except (http.client.HTTPException, OSError) as e:
                    raise _Retryable(f"connection lost after {done} bytes ({type(e).__name__})") from None
            if total is not None and done < total:
                raise _Retryable(f"connection closed after {done} of {total} bytes")
            return
    raise _Fatal("too many confirmation pages")


def _fetch_with_retries(
    url: str,
    part: Path,
    opts: DownloadOptions,
    opener: urllib.request.OpenerDirector,
    cookies: http.cookiejar.CookieJar,
    progress: ProgressCallback | None,
) -> str:
    """Tries ``url`` up to ``opts.attempts`` times with backoff; returns ``""`` on success, else the last error."""
    delays = backoff_delays(opts.attempts, opts.max_backoff)
    last = ""
    for attempt in range(opts.attempts):
        try:
            _fetch(url, part, opts, opener, cookies, progress)
            return ""
        except _Fatal as e:
            return str(e)
        except _Retryable as e:
            last = str(e)
            if attempt < len(delays):
                logger.warning(
                    "download of %s failed (%s); retry %d/%d in %g s",
                    url,
                    last,
                    attempt + 1,
                    opts.attempts - 1,
                    delays[attempt],
                )
                opts.sleep(delays[attempt])
    return f"{last} (after {opts.attempts} tries)"


def _build_opener(opts: DownloadOptions) -> tuple[urllib.request.OpenerDirector, http.cookiejar.CookieJar]:
    jar = http.cookiejar.CookieJar()
    if opts.opener is not None:
        return opts.opener, jar
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar)), jar


# ----------------------------------------------------------------------------------------------- entry download


def download_entry(
    entry: WeightEntry,
    dest: Path,
    options: DownloadOptions | None = None,
    progress: ProgressCallback | None = None,
    force: bool = False,
) -> Verification:
    """Downloads ``entry`` to ``dest`` (verified), unless a verified copy is already there.

    Holds ``<dest>.lock`` throughout, so concurrent calls (threads or processes) for the same file wait for each
    other and the later ones find the finished file. Data streams into ``<dest>.part`` in the same folder; a part
    left by an interrupted run is resumed with an HTTP Range request. Each mirror is tried ``options.attempts``
    times with backoff on transient errors (connection failures, HTTP 5xx/429); a permanent error (HTTP 4xx, an
    HTML page that is not a download confirmation) moves on to the next mirror. The complete file is verified
    (:func:`~gie_cli.weights.cache.check_file`) before it is renamed into place; a file that fails is deleted.

    Args:
        entry: Registry entry (mirrors, hash, size).
        dest: Final path.
        options: Retry/timeout settings.
        progress: Byte progress callback.
        force: Download again even if a verified copy exists.

    Returns:
        The verification of the stored file.

    Raises:
        DownloadError: Every mirror failed, or what they delivered failed verification (nothing is left behind).
    """
    opts = options or DownloadOptions()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(lock_path(dest)):
        if dest.is_file() and not force:
            v = verify_cached(dest, entry)
            if v.ok:
                logger.debug("%s is already in the cache", dest)
                return v
            logger.warning("cached %s failed verification (%s); downloading it again", dest, v.reason)
        part = partial_path(dest)
        src_note = part.with_name(part.name + ".url")
        opener, jar = _build_opener(opts)
        failures: list[str] = []
        for url in entry.urls:
            if part.exists() and (not src_note.exists() or src_note.read_text().strip() != url):
                part.unlink()  # a partial file from another mirror may not be the same bytes
            if entry.size and part.exists() and part.stat().st_size > entry.size:
                part.unlink()
            src_note.write_text(url + "\n")
            logger.info("downloading %s from %s", entry.name, url)
            if entry.size and part.exists() and part.stat().st_size == entry.size:
                error = ""
            else:
                error = _fetch_with_retries(url, part, opts, opener, jar, progress)
            if error:
                failures.append(f"{url}: {error}")
                continue
            v = check_file(part, entry)
            if not v.ok:
                part.unlink(missing_ok=True)
                failures.append(f"{url}: downloaded file rejected: {v.reason}")
                logger.warning("download of %s from %s rejected: %s", entry.name, url, v.reason)
                continue
            os.replace(part, dest)
            src_note.unlink(missing_ok=True)
            write_meta(dest, entry, v.sha256, "download", url)
            if v.weak:
                logger.warning("%s: %s (sha256 of the stored file: %s)", entry.name, v.reason, v.sha256)
            logger.info("saved %s (%d bytes) to %s", entry.name, v.size, dest)
            return v
        if not part.exists():
            src_note.unlink(missing_ok=True)
        rejected = any("rejected" in f for f in failures)
        error = DownloadError(
            f"could not download {entry.name} ({entry.filename}): " + "; ".join(failures),
            hint=(
                "the mirrors deliver a different file than the registry expects; report it, or get the file "
                "elsewhere and check it with `gie weights import FILE --name " + entry.name + "`"
                if rejected
                else "check the network (or proxy settings), try again later, or download it by hand and run "
                f"`gie weights import FILE --name {entry.name}`"
            ),
        )
    _remove_empty_folder(dest.parent)
    raise error


def _remove_empty_folder(folder: Path) -> None:
    """Removes ``folder`` if a failed download left it empty (another process may just be using it: then it stays)."""
    with contextlib.suppress(OSError):
        folder.rmdir()

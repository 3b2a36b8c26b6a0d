"""Weights downloads against a real HTTP server on 127.0.0.1: resume, retries, hashes, locks, offline, Drive pages."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gie_cli.cli import app
from gie_cli.errors import UsageError, WeightsUnavailableError
from gie_cli.weights import (
    DownloadError,
    DownloadOptions,
    ensure,
    entry_path,
    load_registry,
    resolve_weights,
    verify_cached,
)
from gie_cli.weights.download import backoff_delays, download_entry, drive_confirm_url, progress_enabled

PAYLOAD = os.urandom(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _State:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.close_midway: set[str] = set()  # these paths drop the connection halfway through, once
        self.fail: dict[str, int] = {}  # path -> number of HTTP 500 answers still to give
        self.drive: set[str] = set()  # these paths answer with a Drive confirmation page first
        self.quota: set[str] = set()  # these paths answer with a Drive quota page
        self.no_range: set[str] = set()
        self.delay = 0.0
        self.lock = threading.Lock()

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if urllib.parse.urlsplit(p).path == path)


class _Handler(http.server.BaseHTTPRequestHandler):
    state: _State

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        st = self.state
        with st.lock:
            st.requests.append((self.path, dict(self.headers)))
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        path = url.path
        if path in st.fail and st.fail[path] > 0:
            st.fail[path] -= 1
            self.send_error(500, "boom")
            return
        if path in st.quota:
            self._html("<html><head><title>Google Drive - Quota exceeded</title></head><body>Too many users have "
                       "viewed or downloaded this file recently.</body></html>")  # fmt: skip
            return
        if path in st.drive and "confirm" not in query:
            action = f"http://{self.headers['Host']}/download"
            self._html(
                "<html><head><title>Google Drive - Virus scan warning</title></head><body>"
                f'<form id="download-form" action="{action}" method="get">'
                f'<input type="hidden" name="id" value="{query.get("id", "")}">'
                '<input type="hidden" name="export" value="download">'
                '<input type="hidden" name="confirm" value="t">'
                '<input type="hidden" name="uuid" value="1234-abcd">'
                "</form></body></html>"
            )
            return
        if path == "/download":
            if query.get("confirm") != "t" or query.get("uuid") != "1234-abcd":
                self.send_error(403, "no confirmation")
                return
            path = "/drive/" + query.get("id", "")
        if path not in st.files:
            self.send_error(404, "not found")
            return
        data = st.files[path]
        start = 0
        rng = self.headers.get("Range")
        if rng and path not in st.no_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if path in st.close_midway:
            st.close_midway.discard(path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        step = 50_000
        for i in range(0, len(body), step):
            self.wfile.write(body[i : i + step])
            if st.delay:
                time.sleep(st.delay)

    def _html(self, text: str) -> None:
        raw = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture
def server():
    state = _State()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


def _registry(tmp_path: Path, entries: list[dict]) -> Path:
    lines = []
    for e in entries:
        lines.append("[[weight]]")
        for k, v in e.items():
            lines.append(f"{k} = {json.dumps(v)}")
        lines.append("")
    p = tmp_path / "weights.toml"
    p.write_text("\n".join(lines))
    return p


def _entry(name: str, urls: list[str], sha: str = SHA, size: int | str = len(PAYLOAD), **extra) -> dict:
    return {
        "name": name,
        "filename": f"{name.split('.')[-1]}.pt",
        "urls": urls,
        "sha256": sha,
        "size": size,
        "format": "pt",
        **extra,
    }


@pytest.fixture
def env(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("GIE_CACHE_DIR", str(cache))
    monkeypatch.delenv("GIE_OFFLINE", raising=False)
    monkeypatch.setenv("GIE_DISABLE_PROGRESS_BARS", "1")
    return cache


def _opts(sleeps: list[float] | None = None, attempts: int = 4) -> DownloadOptions:
    return DownloadOptions(
        attempts=attempts, timeout=5, sleep=(sleeps.append if sleeps is not None else lambda s: None)
    )


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_download_verifies_and_reports_progress(server, env, tmp_path):
    server.files["/f/a.pt"] = PAYLOAD
    reg = load_registry(_registry(tmp_path, [_entry("test.a", [server.base + "/f/a.pt"])]))
    seen: list[tuple[int, int | None]] = []
    path = ensure("test.a", reg, options=_opts(), progress=lambda d, t: seen.append((d, t)))
    assert path == env / "test.a" / "a.pt" and path.read_bytes() == PAYLOAD
    assert seen[0] == (0, len(PAYLOAD)) and seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    meta = json.loads((path.parent / "a.pt.meta.json").read_text())
    assert meta["sha256"] == SHA and meta["source"] == "download" and meta["url"].endswith("/f/a.pt")
    assert _files(env) == [path, path.parent / "a.pt.meta.json"]  # no .part, no lock file left
    # a second call finds the verified file and makes no request
    n = len(server.requests)
    assert ensure("test.a", reg, options=_opts()) == path and len(server.requests) == n


def test_sha256_mismatch_leaves_nothing(server, env, tmp_path):
    server.files["/f/a.pt"] = PAYLOAD
    reg = load_registry(_registry(tmp_path, [_entry("test.a", [server.base + "/f/a.pt"], sha="0" * 64)]))
    with pytest.raises(DownloadError) as ei:
        ensure("test.a", reg, options=_opts())
    msg = str(ei.value)
    assert "sha256" in msg and SHA in msg and "0" * 64 in msg and "rejected" in msg
    assert _files(env) == [] and not (env / "test.a").exists()


def test_interrupted_transfer_resumes_with_range(server, env, tmp_path):
    server.files["/f/a.pt"] = PAYLOAD
    server.close_midway.add("/f/a.pt")
    reg = load_registry(_registry(tmp_path, [_entry("test.a", [server.base + "/f/a.pt"])]))
    sleeps: list[float] = []
    path = ensure("test.a", reg, options=_opts(sleeps))
    assert path.read_bytes() == PAYLOAD and sleeps == [1.0]
    (first, h1), (second, h2) = server.requests
    assert "Range" not in h1 and h2["Range"] == f"bytes={len(PAYLOAD) // 2}-"


def test_partial_file_from_an_earlier_run_is_resumed(server, env, tmp_path):
    server.files["/f/a.pt"] = PAYLOAD
    reg = load_registry(_registry(tmp_path, [_entry("test.a", [server.base + "/f/a.pt"])]))
    dest = entry_path(reg.get("test.a"))
    dest.parent.mkdir(parents=True)
    (dest.parent / "a.pt.part").write_bytes(PAYLOAD[:1000])
    (dest.parent / "a.pt.part.url").write_text(server.base + "/f/a.pt\n")
    assert ensure("test.a", reg, options=_opts()).read_bytes() == PAYLOAD
    assert server.requests[0][1]["Range"] == "bytes=1000-"


def test_server_ignoring_range_restarts_cleanly(server, env, tmp_path):
    server.files["/f/a.pt"] = PAYLOAD
    server.close_midway.add("/f/a.pt")
    server.no_range.add("/f/a.pt")
    reg = load_registry(_registry(tmp_path, [_entry("test.a", [server.base + "/f/a.pt"])]))
    assert ensure("test.a", reg, options=_opts()).read_bytes() == PAYLOAD


def test_server_error_is_retried_then_reported(server, env, tmp_path):
    server.files["/f/a.pt"] = PAYLOAD
    server.fail["/f/a.pt"] = 100
    reg = load_registry(_registry(tmp_path, [_entry("test.a", [server.base + "/f/a.pt"])]))
    sleeps: list[float] = []
    with pytest.raises(DownloadError) as ei:
        ensure("test.a", reg, options=_opts(sleeps, attempts=4))
    assert sleeps == [1.0, 2.0, 4.0] and server.count("/f/a.pt") == 4
    assert "HTTP 500" in str(ei.value) and "after 4 tries" in str(ei.value)
    assert _files(env) == []


def test_transient_error_then_success_and_mirror_fallback(server, env, tmp_path):
    server.files["/f/a.pt"] = PAYLOAD
    server.fail["/f/a.pt"] = 2
    mirrors = [server.base + "/missing/a.pt", server.base + "/f/a.pt"]
    reg = load_registry(_registry(tmp_path, [_entry("test.a", mirrors)]))
    sleeps: list[float] = []
    assert ensure("test.a", reg, options=_opts(sleeps)).read_bytes() == PAYLOAD
    assert server.count("/missing/a.pt") == 1  # 404: no retries, next mirror
    assert sleeps == [1.0, 2.0]


def test_backoff_schedule_is_capped():
    assert backoff_delays(7) == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff_delays(1) == []


def test_concurrent_downloads_produce_one_good_file(server, env, tmp_path):
    server.files["/f/a.pt"] = PAYLOAD
    server.delay = 0.02  # ~0.12 s per transfer, so the threads overlap
    reg = load_registry(_registry(tmp_path, [_entry("test.a", [server.base + "/f/a.pt"])]))
    entry = reg.get("test.a")
    dest = entry_path(entry)
    results, errors = [], []

    def worker() -> None:
        try:
            results.append(download_entry(entry, dest, _opts()))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(results) == 4 and all(v.ok for v in results)
    assert dest.read_bytes() == PAYLOAD
    assert server.count("/f/a.pt") == 1  # the others waited on the lock and found the verified file
    assert _files(env) == [dest, dest.parent / "a.pt.meta.json"]


def test_offline_makes_no_connection(server, env, tmp_path, monkeypatch):
    server.files["/f/a.pt"] = PAYLOAD
    url = server.base + "/f/a.pt"
    reg_file = _registry(tmp_path, [_entry("test.a", [url])])
    reg = load_registry(reg_file)

    def no_network(*args, **kwargs):
        raise AssertionError("network access in offline mode")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("GIE_OFFLINE", "1")
    expected = env / "test.a" / "a.pt"
    with pytest.raises(WeightsUnavailableError) as ei:
        ensure("test.a", reg)
    err = ei.value
    for part in (str(expected), url, SHA, "test.a"):
        assert part in str(err)
    assert err.path == str(expected) and err.urls == [url] and err.sha256 == SHA
    # the same through --weights resolution and the CLI
    with pytest.raises(WeightsUnavailableError):
        resolve_weights("test.a", registry=reg)
    res = CliRunner().invoke(app, ["weights", "download", "test.a", "--registry", str(reg_file)])
    assert res.exit_code == 1 and str(expected) in res.stderr and SHA in res.stderr and url in res.stderr
    res = CliRunner().invoke(
        app, ["weights", "download", "test.a", "--offline", "--registry", str(reg_file)], env={"GIE_OFFLINE": ""}
    )
    assert res.exit_code == 1 and "offline" in res.stderr
    assert server.requests == []
    # once the file is placed by hand it is used (and verified) without any network
    expected.parent.mkdir(parents=True)
    expected.write_bytes(PAYLOAD)
    assert ensure("test.a", reg) == expected
    expected.write_bytes(PAYLOAD[:-1] + b"x")
    with pytest.raises(WeightsUnavailableError, match="bad"):
        ensure("test.a", reg)


def test_drive_confirmation_page_is_followed(server, env, tmp_path):
    server.files["/drive/FILEID"] = PAYLOAD
    server.drive.add("/uc")
    url = server.base + "/uc?export=download&id=FILEID"
    reg = load_registry(_registry(tmp_path, [_entry("test.drive", [url])]))
    path = ensure("test.drive", reg, options=_opts())
    assert path.read_bytes() == PAYLOAD
    (p1, _), (p2, _) = server.requests
    assert p1 == "/uc?export=download&id=FILEID"
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(p2).query))
    assert urllib.parse.urlsplit(p2).path == "/download" and q == {
        "id": "FILEID",
        "export": "download",
        "confirm": "t",
        "uuid": "1234-abcd",
    }


def test_drive_quota_page_is_an_error_not_a_file(server, env, tmp_path):
    server.quota.add("/uc")
    reg = load_registry(_registry(tmp_path, [_entry("test.drive", [server.base + "/uc?id=X"], sha="unknown")]))
    with pytest.raises(DownloadError, match="quota"):
        ensure("test.drive", reg, options=_opts())
    assert _files(env) == []


def test_drive_confirm_url_variants():
    base = "https://drive.google.com/uc?export=download&id=ABC"
    legacy = '<a id="uc-download-link" href="/uc?export=download&amp;confirm=Xy_1&amp;id=ABC">Download anyway</a>'
    assert drive_confirm_url(legacy, base) == "https://drive.google.com/uc?export=download&confirm=Xy_1&id=ABC"
    form = (
        '<form id="download-form" action="https://drive.usercontent.google.com/download" method="get">'
        '<input type="hidden" name="id" value="ABC"><input type="hidden" name="confirm" value="t">'
        '<input type="hidden" name="uuid" value="u-1"></form>'
    )
    assert drive_confirm_url(form, base) == "https://drive.usercontent.google.com/download?id=ABC&confirm=t&uuid=u-1"
    assert drive_confirm_url("<html><title>Not found</title></html>", base) is None


def test_unknown_hash_is_verified_by_size_and_recorded(server, env, tmp_path, caplog):
    server.files["/f/a.pt"] = PAYLOAD
    reg = load_registry(_registry(tmp_path, [_entry("test.a", [server.base + "/f/a.pt"], sha="unknown")]))
    with caplog.at_level("WARNING", logger="gie_cli"):
        path = ensure("test.a", reg, options=_opts())
    assert "size only" in caplog.text
    v = verify_cached(path, reg.get("test.a"), rehash=True)
    assert v.ok and v.level == "recorded" and v.sha256 == SHA
    path.write_bytes(PAYLOAD[:-1] + b"!")  # same size, other bytes: caught by the recorded hash
    assert not verify_cached(path, reg.get("test.a")).ok


def test_wrong_size_without_hash_is_rejected(server, env, tmp_path):
    server.files["/f/a.pt"] = PAYLOAD
    reg = load_registry(
        _registry(tmp_path, [_entry("test.a", [server.base + "/f/a.pt"], sha="unknown", size=len(PAYLOAD) + 1)])
    )
    with pytest.raises(DownloadError, match="expected"):
        ensure("test.a", reg, options=_opts())
    assert _files(env) == []


def test_resolve_weights_paths_names_and_nothing(server, env, tmp_path):
    server.files["/f/a.pt"] = PAYLOAD
    reg = load_registry(_registry(tmp_path, [_entry("test.a", [server.base + "/f/a.pt"], method=["e4e"])]))
    own = tmp_path / "mine.pt"
    own.write_bytes(b"\x80weights")
    assert resolve_weights(str(own), registry=reg) == own
    with pytest.raises(UsageError, match="needs --weights") as ei:
        resolve_weights(None, method="e4e", registry=reg)
    assert "test.a" in str(ei.value)
    with pytest.raises(UsageError, match="file not found"):
        resolve_weights(str(tmp_path / "nope.pt"), registry=reg)
    with pytest.raises(UsageError, match="did you mean test.a"):
        resolve_weights("test.b", registry=reg)
    assert resolve_weights("test.a", method="e4e", registry=reg).read_bytes() == PAYLOAD


def test_progress_bars_can_be_disabled(monkeypatch):
    monkeypatch.setenv("GIE_DISABLE_PROGRESS_BARS", "1")
    assert progress_enabled() is False


def test_concurrent_processes_produce_one_good_file(server, env, tmp_path):
    import subprocess
    import sys

    server.files["/f/a.pt"] = PAYLOAD
    server.delay = 0.05
    reg_file = _registry(tmp_path, [_entry("test.a", [server.base + "/f/a.pt"])])
    code = "from gie_cli.weights import ensure, load_registry; print(ensure('test.a', load_registry()))"
    environ = {**os.environ, "GIE_WEIGHTS_TOML": str(reg_file), "GIE_CACHE_DIR": str(env)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1].decode() for o in outs]
    dest = env / "test.a" / "a.pt"
    assert {o[0].decode().strip() for o in outs} == {str(dest)}
    assert dest.read_bytes() == PAYLOAD and server.count("/f/a.pt") == 1

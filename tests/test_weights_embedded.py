"""Embedded registry entries (the demo zoo shipped in gie_cli/zoo/): parsing, defaults, resolution, CLI, hashes."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from gie_cli.cli import app
from gie_cli.errors import CheckpointError, UsageError, WeightsUnavailableError
from gie_cli.weights import (
    embedded_file,
    embedded_notice,
    ensure,
    entry_status,
    load_registry,
    remove,
    resolve_weights,
    store,
    verify_embedded,
)
from gie_cli.weights import registry as registry_mod
from gie_cli.weights.embed_hashes import embed_hashes, main, rewrite_text
from gie_cli.weights.registry import RegistryError, parse_entry

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
PAYLOAD = b"\x80\x02demo zoo weights" + bytes(range(256)) * 4
NOTICE = (
    "using the embedded demo model demo.e4e (64 px synthetic faces, not for real photos; "
    "for FFHQ: --weights e4e.ffhq, see gie weights list)"
)


@pytest.fixture
def pkg(tmp_path, monkeypatch) -> Path:
    """A fake package folder for embedded paths, a private cache, no registry override, fresh per-process caches."""
    for var in ("GIE_OFFLINE", "GIE_WEIGHTS_TOML", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GIE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GIE_DISABLE_PROGRESS_BARS", "1")
    root = tmp_path / "pkg"
    (root / "zoo").mkdir(parents=True)
    monkeypatch.setattr(registry_mod, "package_dir", lambda: root)
    monkeypatch.setattr(store, "_EMBEDDED_CHECKED", {})
    monkeypatch.setattr(store, "_ANNOUNCED", set())
    return root


def _write_registry(folder: Path, data: bytes | None, known: bool = True, name: str = "weights.toml") -> Path:
    """A registry with a downloadable ``e4e.ffhq`` and an embedded ``demo.e4e`` (default for e4e)."""
    sha = hashlib.sha256(data).hexdigest() if data is not None and known else "unknown"
    size = len(data) if data is not None and known else '"unknown"'
    text = f"""# test registry
[[weight]]
name = "e4e.ffhq"
filename = "e4e_ffhq_encode.pt"
urls = ["http://127.0.0.1:9/e4e.pt"]
sha256 = "unknown"
size = "unknown"
format = "pt"
method = ["e4e"]
license = "MIT"

[[weight]]
name = "demo.e4e"
embedded = "zoo/demo-e4e.safetensors"
sha256 = "{sha}"  # filled in by embed_hashes
size = {size}
format = "safetensors"
method = ["e4e"]
default_for = ["e4e"]
real = "e4e.ffhq"
config = {{ size = 64 }}
license = "MIT"
"""
    p = folder / name
    p.write_text(text)
    return p


def _setup(pkg: Path, data: bytes = PAYLOAD, known: bool = True):
    (pkg / "zoo" / "demo-e4e.safetensors").write_bytes(data)
    reg_file = _write_registry(pkg.parent, data, known)
    return reg_file, load_registry(reg_file)


# ----------------------------------------------------------------------------------------------- parsing


def test_parse_embedded_keys(pkg):
    _, reg = _setup(pkg)
    e = reg.get("demo.e4e")
    assert e.embedded == "zoo/demo-e4e.safetensors" and e.filename == "demo-e4e.safetensors" and e.urls == ()
    assert e.default_for == ("e4e",) and e.real == "e4e.ffhq" and e.size == len(PAYLOAD)
    assert e.embedded_path == pkg / "zoo" / "demo-e4e.safetensors"
    assert reg.get("e4e.ffhq").embedded_path is None
    assert reg.default_for("e4e") is e and reg.default_for("psp") is None and reg.defaults == {"e4e": "demo.e4e"}
    d = e.to_dict()
    assert d["embedded"] == e.embedded and d["default_for"] == ["e4e"] and d["real"] == "e4e.ffhq"


BASE = {"name": "x.y", "sha256": "unknown", "size": "unknown", "format": "safetensors", "method": ["e4e"]}


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"embedded": "/abs/zoo/x.safetensors"}, "relative file path"),
        ({"embedded": "../x.safetensors"}, "no '..'"),
        ({"embedded": "zoo/../../x.safetensors"}, "no '..'"),
        ({"embedded": "zoo\\x.safetensors"}, "relative file path"),
        ({"embedded": "C:/x.safetensors"}, "relative file path"),
        ({"embedded": "~/x.safetensors"}, "relative file path"),
        ({"embedded": "zoo//x.safetensors"}, "relative file path"),
        ({"embedded": "zoo/"}, "relative file path"),
        ({"filename": "x.pt", "urls": ["https://e/x"], "default_for": ["e4e"]}, "need 'embedded'"),
        ({"filename": "x.pt", "urls": ["https://e/x"], "real": "e4e.ffhq"}, "need 'embedded'"),
        ({"embedded": "zoo/x.safetensors", "default_for": ["psp"]}, "default_for psp not in method"),
        ({"embedded": "zoo/x.safetensors", "real": "Not A Name"}, "registry name"),
        ({"embedded": "zoo/x.safetensors", "subdir": "torch"}, "no 'convert' or 'subdir'"),
        ({"filename": "x.pt"}, "'urls' needs at least one mirror"),
    ],
)
def test_parse_rejects_bad_embedded_entries(extra, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        parse_entry({**BASE, **extra})


def test_parse_still_requires_hash_and_size_for_embedded():
    item = {k: v for k, v in BASE.items() if k != "sha256"}
    with pytest.raises(ValueError, match="'sha256' is required"):
        parse_entry({**item, "embedded": "zoo/x.safetensors"})


def test_registry_rejects_two_defaults_and_unknown_real(pkg, tmp_path):
    reg = _write_registry(tmp_path, None).read_text()
    second = reg.split("[[weight]]")[2].replace("demo.e4e", "demo2.e4e").replace("demo-e4e", "demo2-e4e")
    p = tmp_path / "twice.toml"
    p.write_text(reg + "\n[[weight]]" + second)
    with pytest.raises(RegistryError, match="demo.e4e is already the default for e4e"):
        load_registry(p)
    p.write_text(reg.replace('real = "e4e.ffhq"', 'real = "nope.ffhq"'))
    with pytest.raises(RegistryError, match="real 'nope.ffhq' is not a registry name"):
        load_registry(p)


def test_registry_loads_while_the_embedded_file_is_absent(pkg, tmp_path):
    reg = load_registry(_write_registry(tmp_path, None))
    assert reg.default_for("e4e").name == "demo.e4e" and not reg.get("demo.e4e").embedded_path.exists()


def test_the_shipped_registry_declares_the_demo_zoo():
    reg = load_registry(ROOT / "weights.toml")
    assert reg.defaults == {
        "optim": "world.generator",
        "generator": "world.generator",
        "e4e": "world.e4e",
        "attributes": "world.attributes",
        "gradstyle": "world.gradstyle",
        "hfgi": "world.hfgi",
        "style_transformer": "world.style_transformer",
        "latent_classifier": "world.latent_classifier",
        "edit_transformer": "world.edit_transformer",
        "sfe": "world.sfe",
        "ood": "world.ood",
    }
    pairs = [("world.generator", "stylegan2"), ("world.e4e", "e4e"), ("world.attributes", "attributes")]
    for name, method in [*pairs, ("world.gradstyle", "gradstyle"), ("world.hfgi", "hfgi")]:
        e = reg.get(name)
        assert e.embedded.startswith("zoo/world-") and e.format == "safetensors" and method in e.method
        assert e.embedded_path == ROOT / "gie_cli" / e.embedded and e.config["size"] == 64
    assert reg.get("world.e4e").real == "e4e.ffhq" and reg.get("world.generator").real == "stylegan2.ffhq"
    assert reg.get("world.hfgi").real == "hfgi.ffhq"
    assert reg.get("world.style_transformer").real == "style_transformer.ffhq"
    assert reg.get("world.sfe").real == "sfe.editor_light"
    assert reg.get("world.ood").real == ""  # no official OOD weights were released
    assert reg.get("world.attributes").real == "" and reg.get("world.gradstyle").real == ""  # no official GradStyle
    assert embedded_notice(reg.get("world.e4e")) == (
        "using the embedded demo model world.e4e (64 px synthetic faces, not for real photos; "
        "for FFHQ: --weights e4e.ffhq, see gie weights list)"
    )
    assert embedded_notice(reg.get("world.attributes")).endswith("not for real photos; see gie weights list)")


# ----------------------------------------------------------------------------------------------- resolution


def test_no_spec_resolves_to_the_default_and_logs_one_line(pkg, caplog):
    _, reg = _setup(pkg)
    with caplog.at_level(logging.INFO, logger="gie_cli"):
        assert resolve_weights(None, method="e4e", registry=reg) == pkg / "zoo" / "demo-e4e.safetensors"
        assert resolve_weights("", method="e4e", registry=reg) == pkg / "zoo" / "demo-e4e.safetensors"
    lines = [r for r in caplog.records if "embedded demo model" in r.getMessage()]
    assert [r.getMessage() for r in lines] == [NOTICE]
    assert lines[0].levelno == logging.INFO and lines[0].name.startswith("gie_cli.")
    assert not (pkg.parent / "cache").exists()  # nothing cached, nothing downloaded


def test_explicit_name_resolves_offline_without_the_cache(pkg, monkeypatch, caplog):
    _, reg = _setup(pkg)
    monkeypatch.setenv("GIE_OFFLINE", "1")
    with caplog.at_level(logging.INFO, logger="gie_cli"):
        assert resolve_weights("demo.e4e", method="e4e", registry=reg) == pkg / "zoo" / "demo-e4e.safetensors"
        assert ensure("demo.e4e", reg) == pkg / "zoo" / "demo-e4e.safetensors"
    # an explicit name is announced too: every command says when it runs on the demo models
    assert sum("embedded demo model demo.e4e" in r.getMessage() for r in caplog.records) == 1
    assert not (pkg.parent / "cache").exists()
    assert not list((pkg / "zoo").glob("*.meta.json"))  # no verification record written into the package


def test_an_embedded_file_given_by_path_is_announced(pkg, caplog):
    _, reg = _setup(pkg)
    path = pkg / "zoo" / "demo-e4e.safetensors"
    with caplog.at_level(logging.INFO, logger="gie_cli"):
        assert resolve_weights(str(path), method="e4e", registry=reg) == path
    assert any("embedded demo model demo.e4e" in r.getMessage() for r in caplog.records)


def test_missing_embedded_file_is_a_clear_error(pkg):
    _, reg = _setup(pkg)
    (pkg / "zoo" / "demo-e4e.safetensors").unlink()
    with pytest.raises(WeightsUnavailableError) as ei:
        resolve_weights(None, method="e4e", registry=reg)
    msg = str(ei.value)
    assert str(pkg / "zoo" / "demo-e4e.safetensors") in msg and "demo.e4e" in msg
    assert "pip install --force-reinstall gie" in msg and "scripts/build_zoo.sh" in msg and "--weights e4e.ffhq" in msg
    with pytest.raises(WeightsUnavailableError):
        resolve_weights("demo.e4e", registry=reg)


def test_corrupted_embedded_file_is_rejected_and_checked_once(pkg, monkeypatch):
    _, reg = _setup(pkg)
    f = pkg / "zoo" / "demo-e4e.safetensors"
    calls = []
    real_check = store.verify_embedded
    monkeypatch.setattr(store, "verify_embedded", lambda e: calls.append(e.name) or real_check(e))
    for _ in range(3):
        assert resolve_weights("demo.e4e", registry=reg) == f
    assert calls == ["demo.e4e"]  # hashed once per process
    f.write_bytes(b"\x81" + PAYLOAD[1:])  # same size, other content
    with pytest.raises(CheckpointError) as ei:
        resolve_weights(None, method="e4e", registry=reg)
    assert "sha256" in str(ei.value) and "pip install --force-reinstall gie" in str(ei.value)
    f.write_bytes(PAYLOAD[:-1])
    with pytest.raises(CheckpointError, match="size"):
        embedded_file(reg.get("demo.e4e"))


def test_unknown_hash_is_used_with_one_warning_but_junk_is_rejected(pkg, caplog):
    _, reg = _setup(pkg, known=False)
    with caplog.at_level(logging.INFO, logger="gie_cli"):
        for _ in range(2):
            assert resolve_weights(None, method="e4e", registry=reg).read_bytes() == PAYLOAD
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "embed_hashes" in warnings[0]
    assert verify_embedded(reg.get("demo.e4e")).level == "none"
    (pkg / "zoo" / "demo-e4e.safetensors").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n")
    with pytest.raises(CheckpointError, match="Git LFS pointer"):
        resolve_weights("demo.e4e", registry=reg)


def test_no_default_for_the_method_is_a_usage_error(pkg):
    _, reg = _setup(pkg)
    with pytest.raises(UsageError) as ei:
        resolve_weights(None, method="psp", what="a pSp checkpoint", registry=reg)
    msg = str(ei.value)
    assert msg.startswith("--method psp has no embedded default; pass --weights (a pSp checkpoint)")
    assert "no built-in default" not in msg and "embedded defaults exist for: e4e" in msg
    assert ei.value.exit_code == 2


def test_embedded_entries_are_not_imported_or_removed(pkg, tmp_path):
    _, reg = _setup(pkg)
    e = reg.get("demo.e4e")
    src = tmp_path / "demo-e4e.safetensors"
    src.write_bytes(PAYLOAD)
    with pytest.raises(UsageError, match="embedded in the gie package"):
        store.import_file(src, e)
    with pytest.raises(UsageError, match="nothing to remove"):
        remove(e)
    assert (pkg / "zoo" / "demo-e4e.safetensors").read_bytes() == PAYLOAD
    st = entry_status(e, verify=True)
    assert st.state == "embedded" and not st.cached and st.verified.ok and st.verified.level == "sha256"
    assert st.to_dict()["status"] == "embedded" and st.to_dict()["present"] is True


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_list_path_verify_download_rm(pkg, monkeypatch):
    reg_file, _ = _setup(pkg)
    monkeypatch.setenv("GIE_WEIGHTS_TOML", str(reg_file))
    f = pkg / "zoo" / "demo-e4e.safetensors"

    res = runner.invoke(app, ["weights", "list"])
    assert res.exit_code == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("demo.e4e"))
    assert "embedded, default for e4e" in line
    res = runner.invoke(app, ["weights", "list", "--json"])
    rows = {r["name"]: r for r in map(json.loads, res.stdout.splitlines())}
    demo = rows["demo.e4e"]
    assert demo["status"] == "embedded" and demo["default_for"] == ["e4e"] and demo["path"] == str(f)
    assert demo["present"] is True and demo["cached"] is False and demo["embedded"] == "zoo/demo-e4e.safetensors"
    assert rows["e4e.ffhq"]["status"] == "missing" and rows["e4e.ffhq"]["default_for"] == []

    res = runner.invoke(app, ["weights", "path", "demo.e4e"])
    assert res.exit_code == 0 and res.stdout.strip() == str(f)

    res = runner.invoke(app, ["weights", "verify", "demo.e4e"])
    assert res.exit_code == 0 and res.stdout.startswith("ok\tdemo.e4e\tsha256\t")
    res = runner.invoke(app, ["weights", "verify", "--json"])  # default: every file present (here: only the demo)
    assert res.exit_code == 0 and [json.loads(x)["name"] for x in res.stdout.splitlines()] == ["demo.e4e"]

    res = runner.invoke(app, ["weights", "download", "demo.e4e"], env={"GIE_OFFLINE": "1"})
    assert res.exit_code == 0 and res.stdout.strip() == str(f) and "nothing to download" in res.stderr
    res = runner.invoke(app, ["weights", "download", "demo.e4e", "--json"])
    assert json.loads(res.stdout) == {"name": "demo.e4e", "path": str(f), "ok": True, "embedded": True}

    res = runner.invoke(app, ["weights", "rm", "demo.e4e"])
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "embedded in the gie package" in res.stderr
    res = runner.invoke(app, ["weights", "rm", "e4e.ffhq", "demo.e4e"])  # refused before anything is deleted
    assert res.exit_code == 2
    assert runner.invoke(app, ["weights", "rm", "--all"]).exit_code == 0  # --all skips embedded entries
    res = runner.invoke(app, ["weights", "import", str(f), "--name", "demo.e4e"])
    assert res.exit_code == 2 and "embedded" in res.stderr
    assert f.read_bytes() == PAYLOAD

    f.write_bytes(b"\x81" + PAYLOAD[1:])
    res = runner.invoke(app, ["weights", "verify", "demo.e4e"])
    assert res.exit_code == 1 and "BAD\tdemo.e4e" in res.stdout
    f.unlink()
    res = runner.invoke(app, ["weights", "verify", "demo.e4e"])
    assert res.exit_code == 1 and "MISSING\tdemo.e4e" in res.stdout
    res = runner.invoke(app, ["weights", "list"])
    assert "embedded (MISSING), default for e4e" in res.stdout
    res = runner.invoke(app, ["weights", "download", "demo.e4e"])
    assert res.exit_code == 1 and "pip install --force-reinstall gie" in res.stderr


def test_invert_without_weights_uses_the_embedded_default(pkg, monkeypatch, tmp_path, tiny_e4e):
    ckpt = pkg / "zoo" / "demo-e4e.safetensors"
    tiny_e4e.save(ckpt)
    monkeypatch.setenv("GIE_WEIGHTS_TOML", str(_write_registry(tmp_path, ckpt.read_bytes())))
    monkeypatch.setenv("GIE_OFFLINE", "1")
    img = tmp_path / "in" / "face.png"
    img.parent.mkdir()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(img)
    res = runner.invoke(app, ["invert", str(img), "-o", str(tmp_path / "out"), "--no-align"])  # a prepared crop
    assert res.exit_code == 0, res.stderr
    assert res.stderr.count("using the embedded demo model demo.e4e") == 1
    assert (tmp_path / "out" / "face.latent.safetensors").is_file()


# ----------------------------------------------------------------------------------------------- embed_hashes


def test_embed_hashes_rewrites_only_the_embedded_lines(pkg, tmp_path, capsys):
    (pkg / "zoo" / "demo-e4e.safetensors").write_bytes(PAYLOAD)
    a = _write_registry(tmp_path, None, name="a.toml")
    b = _write_registry(tmp_path, None, name="b.toml")
    before = a.read_text()
    assert main([str(a), str(b), "--check"]) == 1 and a.read_text() == before
    assert main([str(a), str(b)]) == 0
    after = a.read_text()
    assert after == b.read_text()
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    assert f'sha256 = "{digest}"  # filled in by embed_hashes' in after and f"size = {len(PAYLOAD)}\n" in after
    assert after.replace(f'"{digest}"', '"unknown"').replace(f"size = {len(PAYLOAD)}\n", 'size = "unknown"\n') == (
        before
    )  # comments and the other entry untouched
    e = load_registry(a).get("demo.e4e")
    assert (e.sha256, e.size) == (digest, len(PAYLOAD))
    assert main([str(a), "--check"]) == 0 and "up to date" in capsys.readouterr().out
    (pkg / "zoo" / "demo-e4e.safetensors").unlink()
    changes, missing = embed_hashes([a])
    assert changes == {a: []} and missing == [pkg / "zoo" / "demo-e4e.safetensors"]
    assert main([str(a)]) == 1 and "missing" in capsys.readouterr().err


def test_rewrite_text_needs_the_lines():
    text = '[[weight]]\nname = "x.y"\nembedded = "zoo/x.safetensors"\nformat = "safetensors"\n'
    with pytest.raises(ValueError, match="needs 'sha256"):
        rewrite_text(text, {"zoo/x.safetensors": ("0" * 64, 3)})
    assert rewrite_text(text, {}) == (text, [])

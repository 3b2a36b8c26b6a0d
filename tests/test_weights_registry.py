"""Weights registry: weights.toml contents and packaging, cache location, `gie weights` CLI, --weights resolution."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from gie_cli.cli import app
from gie_cli.errors import CheckpointError, UsageError, WeightsUnavailableError
from gie_cli.weights import cache_dir, entry_path, import_file, load_registry, registry_path, resolve_weights
from gie_cli.weights.cache import file_lock, is_offline
from gie_cli.weights.registry import RegistryError, packaged_registry_path

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

REQUIRED = {
    "stylegan2.ffhq",
    "e4e.ffhq",
    "psp.ffhq",
    "hfgi.ffhq",
    "style_transformer.ffhq",
    "sfe.editor_light",
    "sfe.inverter_light",
    "arcface.ir_se50",
    "lpips.vgg",
    "lpips.alex",
    "fid.inception",
    "directions.age",
    "directions.smile",
    "directions.pose",
    "directions.ffhq_pca",
}


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    for var in ("GIE_CACHE_DIR", "GIE_OFFLINE", "GIE_WEIGHTS_TOML", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GIE_DISABLE_PROGRESS_BARS", "1")
    return tmp_path


# ----------------------------------------------------------------------------------------------- the registry file


def test_registry_covers_the_official_weights(clean_env):
    reg = load_registry()
    assert reg.path.resolve() == (ROOT / "weights.toml").resolve()  # the top-level file links to the packaged one
    assert REQUIRED <= set(reg.names)
    for e in reg:
        assert (e.urls or e.embedded) and e.license and e.source and e.format and e.method, e.name
        for u in e.urls:
            if "drive.google.com" in u:
                assert u.startswith("https://drive.google.com/uc?export=download&id="), u
    assert reg.get("e4e.ffhq").urls[0].endswith("id=1cUv_reLE6k3604or78EranS7XzuVMWeO")
    assert reg.get("sfe.editor_light").sha256_prefix == "ced3e798"
    assert reg.get("sfe.editor_light").urls[0].startswith("https://huggingface.co/AIRI-Institute/StyleFeatureEditor/")
    assert reg.get("lpips.vgg").urls == ("https://download.pytorch.org/models/vgg16-397923af.pth",)
    assert reg.get("stylegan2_ada.ffhq").convert == "nvidia-ada-generator"
    age = reg.get("directions.age")
    assert age.size == 2808 and len(age.sha256) == 64
    assert age.urls[0].startswith("https://raw.githubusercontent.com/omertov/encoder4editing/")
    assert [e.name for e in reg.for_method("e4e")][0] == "e4e.ffhq"


def test_direction_hashes_match_the_reference_files(clean_env):
    ref = Path(__file__).parent / "fixtures" / "directions"  # byte-identical copies of the official files
    reg = load_registry()
    for name in ("age", "smile", "pose", "ffhq_pca"):
        e = reg.get(f"directions.{name}")
        data = (ref / e.filename).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (e.size, e.sha256)


def test_packaged_copy_is_identical():
    assert packaged_registry_path().read_bytes() == (ROOT / "weights.toml").read_bytes(), (
        "gie_cli/weights/weights.toml is stale: cp weights.toml gie_cli/weights/weights.toml"
    )


def test_installed_wheel_finds_its_registry(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (src / name).write_bytes((ROOT / name).read_bytes())
    # build from a copy, so no build/ folder appears in the working tree
    shutil.copytree(ROOT / "gie_cli", src / "gie_cli", ignore=shutil.ignore_patterns("__pycache__"))
    build = "import setuptools.build_meta as b, sys; print(b.build_wheel(sys.argv[1]))"
    out = subprocess.run(
        [sys.executable, "-c", build, str(tmp_path / "dist")], cwd=src, capture_output=True, text=True, check=True
    )
    wheel = tmp_path / "dist" / out.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as z:
        assert "gie_cli/weights/weights.toml" in z.namelist()
        z.extractall(tmp_path / "site")
    probe = (
        "import gie_cli.weights as w; r = w.load_registry(); print(r.path); print(len(r)); "
        "print(r.get('e4e.ffhq').filename)"
    )
    environ = {k: v for k, v in os.environ.items() if k != "GIE_WEIGHTS_TOML"}
    environ["PYTHONPATH"] = str(tmp_path / "site")
    res = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=environ, capture_output=True, text=True, check=True
    )
    path, count, filename = res.stdout.split()
    assert Path(path) == tmp_path / "site" / "gie_cli" / "weights" / "weights.toml"
    assert int(count) == len(load_registry(ROOT / "weights.toml")) and filename == "e4e_ffhq_encode.pt"


def test_registry_override_and_validation(clean_env, monkeypatch):
    p = clean_env / "reg.toml"
    p.write_text(
        '[[weight]]\nname = "x.y"\nfilename = "f.pt"\nurls = ["https://example.org/f.pt"]\n'
        'sha256 = "unknown"\nsize = 10\nformat = "pt"\n'
    )
    monkeypatch.setenv("GIE_WEIGHTS_TOML", str(p))
    assert registry_path() == p and load_registry().names == ["x.y"]
    bad = clean_env / "bad.toml"
    bad.write_text(
        '[[weight]]\nname = "Bad Name"\nfilename = "f.pt"\nurls = ["https://e/f"]\nsha256 = "unknown"\n'
        'size = 1\nformat = "pt"\n'
        '[[weight]]\nname = "a.b"\nfilename = "f.pt"\nurls = ["https://e/f"]\nsha256 = "abc"\nsize = 1\n'
        'format = "pt"\n'
        '[[weight]]\nname = "a.c"\nfilename = "f.pt"\nurls = []\nsize = 1\nformat = "zip"\ncolour = 1\n'
    )
    with pytest.raises(RegistryError) as ei:
        load_registry(bad)
    msg = str(ei.value)
    assert "Bad Name" in msg and "64 hex digits" in msg and "unknown key(s) colour" in msg
    bad.write_text("[[weight]\nname=")
    with pytest.raises(RegistryError, match="not valid TOML"):
        load_registry(bad)
    with pytest.raises(RegistryError, match="not found"):
        load_registry(clean_env / "missing.toml")


# ----------------------------------------------------------------------------------------------- cache location


def test_cache_dir_precedence(clean_env, monkeypatch):
    import platformdirs

    monkeypatch.chdir(clean_env)
    assert cache_dir() == Path(platformdirs.user_cache_dir("gie", appauthor=False))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # not absolute: ignored, never the CWD
    assert cache_dir() == Path(platformdirs.user_cache_dir("gie", appauthor=False))
    monkeypatch.setenv("XDG_CACHE_HOME", str(clean_env / "xdg"))
    assert cache_dir() == clean_env / "xdg" / "gie"
    monkeypatch.setenv("GIE_CACHE_DIR", "rel")
    assert cache_dir() == clean_env / "rel" and cache_dir().is_absolute()
    monkeypatch.setenv("GIE_CACHE_DIR", str(clean_env / "env"))
    assert cache_dir() == clean_env / "env"
    assert cache_dir(clean_env / "flag") == clean_env / "flag"
    monkeypatch.setenv("GIE_OFFLINE", "1")
    assert is_offline() and is_offline(True)
    monkeypatch.setenv("GIE_OFFLINE", "0")
    assert not is_offline() and is_offline(True)


def test_lpips_backbone_goes_where_the_metric_looks(clean_env, monkeypatch):
    from gie_cli.metrics import lpips as glp

    monkeypatch.setenv("XDG_CACHE_HOME", str(clean_env / "xdg"))
    reg = load_registry()
    for net, name in (("vgg", "lpips.vgg"), ("alex", "lpips.alex")):
        assert glp.backbone_weight_candidates(net)[0] == entry_path(reg.get(name))
    res = runner.invoke(app, ["weights", "path", "lpips.vgg"])
    assert res.exit_code == 0 and Path(res.stdout.strip()) == glp.backbone_weight_candidates("vgg")[0]
    # an import through a registry entry of the same layout lands where find_backbone_weights finds it
    fake = clean_env / "vgg16-397923af.pth"
    fake.write_bytes(b"\x80\x02fake torchvision weights")
    reg_file = clean_env / "reg.toml"
    reg_file.write_text(
        '[[weight]]\nname = "lpips.vgg"\nfilename = "vgg16-397923af.pth"\nurls = ["https://e/v"]\n'
        f'sha256 = "{hashlib.sha256(fake.read_bytes()).hexdigest()}"\nsize = "unknown"\nformat = "pth"\n'
        'subdir = "torch"\n'
    )
    res = runner.invoke(app, ["weights", "import", str(fake), "--registry", str(reg_file)])
    assert res.exit_code == 0, res.stderr
    assert glp.find_backbone_weights("vgg") == Path(res.stdout.strip()) == clean_env / "xdg/gie/torch" / fake.name


def test_file_lock_is_exclusive_and_cleans_up(clean_env):
    lock = clean_env / "d" / "x.lock"
    with file_lock(lock):
        assert lock.exists()
        with pytest.raises(TimeoutError):
            with file_lock(lock, poll=0.01, timeout=0.05):
                pass
    assert not lock.exists()


# ----------------------------------------------------------------------------------------------- CLI


def _test_registry(folder: Path, files: dict[str, bytes]) -> Path:
    lines = []
    for name, data in files.items():
        lines += [
            "[[weight]]",
            f'name = "test.{name}"',
            f'filename = "{name}.pt"',
            f'urls = ["http://127.0.0.1:9/{name}.pt"]',
            f'sha256 = "{hashlib.sha256(data).hexdigest()}"',
            f"size = {len(data)}",
            'format = "pt"',
            'method = ["e4e"]',
            'license = "MIT"',
            "",
        ]
    p = folder / "weights.toml"
    p.write_text("\n".join(lines))
    return p


def test_cli_list_import_path_verify_rm(clean_env, monkeypatch):
    a, b = os.urandom(5000), os.urandom(7000)
    reg = _test_registry(clean_env, {"a": a, "b": b})
    cache = clean_env / "cache"
    monkeypatch.setenv("GIE_WEIGHTS_TOML", str(reg))
    monkeypatch.setenv("GIE_CACHE_DIR", str(cache))

    res = runner.invoke(app, ["weights", "list", "--json"])
    assert res.exit_code == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["name"] for r in rows] == ["test.a", "test.b"] and not any(r["cached"] for r in rows)
    assert rows[0]["sha256"] == hashlib.sha256(a).hexdigest() and rows[0]["size"] == 5000
    assert rows[0]["path"] == str(cache / "test.a" / "a.pt")

    res = runner.invoke(app, ["weights", "path", "test.a"])
    assert res.exit_code == 0 and res.stdout.strip() == str(cache / "test.a" / "a.pt")
    assert runner.invoke(app, ["weights", "path", "test.zzz"]).exit_code == 2

    src = clean_env / "a.pt"
    src.write_bytes(a)
    res = runner.invoke(app, ["weights", "import", str(src)])  # matched by file name
    assert res.exit_code == 0, res.stderr
    assert Path(res.stdout.strip()).read_bytes() == a
    other = clean_env / "renamed.bin"
    other.write_bytes(b)
    res = runner.invoke(app, ["weights", "import", str(other), "--link", "--json"])  # matched by hash
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["name"] == "test.b" and info["check"] == "sha256" and os.path.samefile(info["path"], other)
    wrong = clean_env / "wrong.pt"
    wrong.write_bytes(bytes([a[0] ^ 0xFF]) + a[1:])
    res = runner.invoke(app, ["weights", "import", str(wrong), "--name", "test.a", "--force"])
    assert res.exit_code == 1 and "sha256" in res.stderr
    assert (cache / "test.a" / "a.pt").read_bytes() == a  # the good copy is untouched

    res = runner.invoke(app, ["weights", "list"])
    assert res.exit_code == 0 and res.stdout.count("cached") == 2

    res = runner.invoke(app, ["weights", "verify", "--json"])
    assert res.exit_code == 0, res.stderr
    assert [json.loads(line)["ok"] for line in res.stdout.splitlines()] == [True, True]
    (cache / "test.a" / "a.pt").write_bytes(bytes([a[0] ^ 0xFF]) + a[1:])  # corrupt it in place
    res = runner.invoke(app, ["weights", "verify"])
    assert res.exit_code == 1 and "BAD\ttest.a" in res.stdout and "ok\ttest.b" in res.stdout

    res = runner.invoke(app, ["weights", "rm", "test.a"])
    assert res.exit_code == 0 and str(cache / "test.a" / "a.pt") in res.stdout
    assert not (cache / "test.a").exists()
    res = runner.invoke(app, ["weights", "verify", "test.a"])
    assert res.exit_code == 1 and "MISSING" in res.stdout
    assert runner.invoke(app, ["weights", "rm", "--all"]).exit_code == 0
    assert not any(p.is_file() for p in cache.rglob("*"))
    assert runner.invoke(app, ["weights", "rm"]).exit_code == 2


def test_import_rejects_and_places(clean_env):
    data = os.urandom(1000)
    reg = load_registry(_test_registry(clean_env, {"a": data}))
    cache = clean_env / "c"
    bad = clean_env / "bad.pt"
    bad.write_bytes(data[:-1])
    with pytest.raises(CheckpointError, match="size"):
        import_file(bad, reg.get("test.a"), cache)
    assert not cache.exists()
    good = clean_env / "good.pt"
    good.write_bytes(data)
    dest, v = import_file(good, reg.get("test.a"), cache)
    assert dest == cache / "test.a" / "a.pt" and dest.read_bytes() == data and v.level == "sha256"
    assert json.loads((dest.parent / "a.pt.meta.json").read_text())["source"] == "import"


# ----------------------------------------------------------------------------------------------- --weights wiring


def test_require_weights_resolves_through_the_registry(clean_env, monkeypatch):
    data = os.urandom(100)
    monkeypatch.setenv("GIE_WEIGHTS_TOML", str(_test_registry(clean_env, {"a": data})))
    monkeypatch.setenv("GIE_CACHE_DIR", str(clean_env / "cache"))
    monkeypatch.setenv("GIE_OFFLINE", "1")
    with pytest.raises(UsageError, match="test.a"):
        resolve_weights(None, method="e4e", what="an e4e checkpoint")
    with pytest.raises(UsageError, match="file not found"):
        resolve_weights("missing/e4e.pt", method="e4e", what="an e4e checkpoint")
    with pytest.raises(WeightsUnavailableError) as ei:
        resolve_weights("test.a", method="e4e", what="an e4e checkpoint")
    assert str(clean_env / "cache" / "test.a" / "a.pt") in str(ei.value)


def test_invert_accepts_a_registry_name(clean_env, tiny_e4e):
    ckpt = clean_env / "tiny.safetensors"
    tiny_e4e.save(ckpt)
    reg = clean_env / "weights.toml"
    reg.write_text(
        '[[weight]]\nname = "tiny.e4e"\nfilename = "tiny.safetensors"\nurls = ["http://127.0.0.1:9/t"]\n'
        f'sha256 = "{hashlib.sha256(ckpt.read_bytes()).hexdigest()}"\nsize = {ckpt.stat().st_size}\n'
        'format = "safetensors"\nmethod = ["e4e"]\n'
    )
    env = {"GIE_WEIGHTS_TOML": str(reg), "GIE_CACHE_DIR": str(clean_env / "cache"), "GIE_OFFLINE": "1"}
    img = clean_env / "in" / "face.png"
    img.parent.mkdir()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(img)
    args = ["invert", str(img), "-o", str(clean_env / "out"), "--method", "e4e", "--weights", "tiny.e4e", "--no-align"]
    res = runner.invoke(app, args, env=env)
    assert res.exit_code == 1 and "tiny.e4e" in res.stderr and "offline" in res.stderr
    res = runner.invoke(app, ["weights", "import", str(ckpt), "--name", "tiny.e4e"], env=env)
    assert res.exit_code == 0, res.stderr
    res = runner.invoke(app, args, env=env)
    assert res.exit_code == 0, res.stderr
    assert (clean_env / "out" / "face.latent.safetensors").is_file()


def test_approximate_size_only_rejects_far_too_small_files(clean_env):
    from gie_cli.weights.cache import check_file
    from gie_cli.weights.registry import parse_entry

    base = {"name": "x.y", "filename": "f.pt", "urls": ["https://e/f"], "sha256": "unknown", "size": "unknown"}
    entry = parse_entry({**base, "format": "pt", "size_approx": 1000})
    f = clean_env / "f.pt"
    f.write_bytes(b"\x80" * 400)
    assert not check_file(f, entry).ok
    f.write_bytes(b"\x80" * 2000)  # bigger than thought: accepted, with a note
    v = check_file(f, entry)
    assert v.ok and v.level == "approx" and "25%" in v.reason
    f.write_bytes(b"<!DOCTYPE html><html>quota exceeded</html>" + b" " * 2000)
    assert "HTML" in check_file(f, entry).reason

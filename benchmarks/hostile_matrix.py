"""The hostile-input matrix of issue 15, end to end on the embedded demo zoo: one line per case.

Each case runs real `gie` commands in a scratch folder and prints ``case  rc  status  verdict  note``: ``rc`` is the
exit code of the command under test, ``status`` the manifest status of the item that matters (``-`` when no item
ran), and ``verdict`` ``PASS`` when gie behaved as issue 15 requires, ``FAIL`` otherwise. Exit code 1 when any case
fails. Offline, CPU, about a minute on 2 cores::

    python benchmarks/hostile_matrix.py [--keep DIR] [-k SUBSTRING]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

GIE = [sys.executable, "-m", "gie_cli"]
FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "images"


@dataclass
class Outcome:
    """What a case saw: the exit code, the item's manifest status, whether gie did what the issue asks, a note."""

    rc: int | str
    status: str
    ok: bool
    note: str = ""


def gie(
    *args: str, cwd: Path, stdin: bytes | None = None, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``gie ARGS`` in ``cwd`` (stdout and stderr captured as text)."""
    env = {**os.environ, "GIE_DISABLE_PROGRESS_BARS": "1", "GIE_OFFLINE": "1", **(env or {})}
    res = subprocess.run(GIE + list(args), cwd=cwd, input=stdin, capture_output=True, timeout=timeout, env=env)
    res.stdout, res.stderr = res.stdout.decode(errors="replace"), res.stderr.decode(errors="replace")
    return res


def manifest(folder: Path) -> list[dict]:
    """The manifest's records (a line that does not parse becomes ``{"torn": line}``)."""
    path = folder / "manifest.jsonl"
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            out.append({"torn": line})
    return out


def status_of(folder: Path, name: str) -> str:
    """The last manifest status of the input whose path ends with ``name``."""
    recs = [r for r in manifest(folder) if str(r.get("input", "")).endswith(name)]
    return recs[-1]["status"] if recs else "-"


def one_line_error(stderr: str) -> bool:
    """The command's error is one ``error:`` line."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    return len(errors) == 1


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def latent_config(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    return load_file(str(path)), meta


def write_latent(path: Path, tensors: dict, meta: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=meta)


# --------------------------------------------------------------------------------------------------- the world
class World:
    """Shared inputs, made once: aligned world crops, world photos, and e4e inversions of the crops."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.crops = root / "crops"
        self.photos = root / "photos"
        self.inv = root / "inv"
        for args in (
            ["synth", "-o", "crops", "-n", "3", "--faces", "--size", "64"],
            ["synth", "-o", "photos", "-n", "2"],
        ):
            res = gie(*args, "-q", cwd=root)
            assert res.returncode == 0, res.stderr
        res = gie("invert", "crops", "-o", "inv", "-q", cwd=root)
        assert res.returncode == 0, res.stderr

    def scratch(self, name: str) -> Path:
        path = self.root / name
        path.mkdir()
        return path


# --------------------------------------------------------------------------------------------------- cases
def torn_manifest_tail(w: World) -> Outcome:
    d = w.scratch("torn")
    res = gie("invert", str(w.crops / "000000.png"), "-o", "out", "-q", cwd=d)
    with open(d / "out" / "manifest.jsonl", "a", encoding="utf-8") as f:
        f.write('{"run": "crashed", "command": "invert", "input": "cro')  # what a full disk leaves
    res = gie("invert", str(w.crops / "000001.png"), "-o", "out", "-q", cwd=d)
    torn = [r for r in manifest(d / "out") if "torn" in r]
    return Outcome(
        res.returncode,
        status_of(d / "out", "000001.png"),
        not torn and res.returncode == 0,
        f"{len(torn)} unparsable line(s) after the re-run",
    )


def skip_replaced_input(w: World) -> Outcome:
    d = w.scratch("replaced")
    shutil.copy(w.crops / "000000.png", d / "a.png")
    gie("invert", "a.png", "-o", "out", "--no-align", "-q", cwd=d)  # a crop away from its world: say it is aligned
    shutil.copy(w.crops / "000001.png", d / "a.png")  # same name, other face
    res = gie("invert", "a.png", "-o", "out", "--no-align", "-q", cwd=d)
    st = status_of(d / "out", "a.png")
    _, meta = latent_config(d / "out" / "a.latent.safetensors")
    recorded = json.loads(meta["gie_config"]).get("source_sha256")
    return Outcome(res.returncode, st, st == "ok" and recorded == sha256(d / "a.png"), "redone for the new input")


def skip_method_changed(w: World) -> Outcome:
    d = w.scratch("method")
    gie("invert", str(w.crops / "000000.png"), "-o", "out", "-q", cwd=d)
    res = gie("invert", str(w.crops / "000000.png"), "-o", "out", "-m", "gradstyle", "-q", cwd=d)
    st = status_of(d / "out", "000000.png")
    return Outcome(res.returncode, st, st == "ok", "e4e outputs are not a gradstyle result")


def skip_name_collision(w: World) -> Outcome:
    d = w.scratch("collide")
    for sub, src in (("x", "000000.png"), ("y", "000001.png")):
        (d / sub).mkdir()
        shutil.copy(w.crops / src, d / sub / "a.png")
    gie("invert", "x/a.png", "y/a.png", "-o", "out", "--no-align", "-q", cwd=d)
    res = gie("invert", "y/a.png", "-o", "out", "--no-align", "-q", "--json", cwd=d)
    rec = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")][-1]
    latent = (
        d / rec["outputs"]["latent"]
        if not Path(rec["outputs"]["latent"]).is_absolute()
        else Path(rec["outputs"]["latent"])
    )
    _, meta = latent_config(latent)
    recorded = json.loads(meta["gie_config"]).get("source_sha256")
    return Outcome(
        res.returncode, rec["status"], recorded == sha256(d / "y" / "a.png"), f"outputs {latent.name} belong to y/a.png"
    )


def nan_weights(w: World) -> Outcome:
    d = w.scratch("nanw")
    import torch

    from gie_cli.methods import create_method

    method = create_method("e4e")
    with torch.no_grad():
        next(method.encoder.parameters()).view(-1)[0] = float("nan")
    method.save(d / "nan.safetensors")
    res = gie("invert", str(w.crops / "000000.png"), "-w", "nan.safetensors", "-o", "out", "-q", cwd=d)
    st = status_of(d / "out", "000000.png")
    return Outcome(res.returncode, st, st == "failed" and res.returncode == 1, "non-finite result named")


def edit_power(power: str, expect: str) -> Callable[[World], Outcome]:
    def case(w: World) -> Outcome:
        d = w.scratch(f"power{power}")
        res = gie(
            "edit", str(w.inv / "000000.latent.safetensors"), "-d", "smile", f"--power={power}", "-o", "out", cwd=d
        )
        st = status_of(d / "out", "000000.latent.safetensors")
        if expect == "failed":
            return Outcome(res.returncode, st, st == "failed" and res.returncode == 1, "non-finite edit")
        warned = any("range" in line.lower() and "smile" in line for line in res.stderr.splitlines())
        return Outcome(res.returncode, st, warned, "warned: outside the direction's range" if warned else "no warning")

    return case


def nan_latent(w: World) -> Outcome:
    d = w.scratch("nanlat")
    tensors, meta = latent_config(w.inv / "000000.latent.safetensors")
    tensors["wplus"].view(-1)[0] = float("nan")
    write_latent(d / "a.latent.safetensors", tensors, meta)
    res = gie("edit", "a.latent.safetensors", "-d", "smile", "--power=2", "-o", "out", "-q", cwd=d)
    st = status_of(d / "out", "a.latent.safetensors")
    return Outcome(res.returncode, st, st == "failed" and res.returncode == 1, "latent holding NaN")


def optim_huge_lr(w: World) -> Outcome:
    d = w.scratch("lr")
    res = gie(
        "invert",
        str(w.crops / "000000.png"),
        "-m",
        "optim",
        "--set",
        "lr=1e30",
        "--set",
        "steps=3",
        "-o",
        "out",
        "-q",
        cwd=d,
    )
    st = status_of(d / "out", "000000.png")
    return Outcome(res.returncode, st, st != "ok" and res.returncode != 0, "never ok")


def tiny_image(w: World) -> Outcome:
    d = w.scratch("tiny")
    Image.new("RGB", (1, 1), (128, 90, 70)).save(d / "dot.png")
    res = gie("invert", "dot.png", "-o", "out", "--no-align", "-q", cwd=d)
    st = status_of(d / "out", "dot.png")
    return Outcome(res.returncode, st, st == "failed" and res.returncode == 1, "below the minimum size")


def small_face_upscaled(w: World) -> Outcome:
    d = w.scratch("smallface")
    img = Image.open(w.photos / "000000.png")
    side = json.loads((w.photos / "000000.landmarks.json").read_text())
    f = 0.25
    img.resize((round(img.width * f), round(img.height * f)), Image.LANCZOS).save(d / "small.png")
    side["image_size"] = [round(s * f) for s in side["image_size"]]
    for face in side["faces"]:
        face["points"] = [[x * f, y * f] for x, y in face["points"]]
        for k in ("box", "bbox"):
            if k in face:
                face[k] = [v * f for v in face[k]]
    (d / "small.landmarks.json").write_text(json.dumps(side))
    res = gie("align", "small.png", "-o", "out", "--backend", "file", cwd=d)
    warned = any("upscal" in line.lower() for line in res.stderr.splitlines())
    return Outcome(res.returncode, status_of(d / "out", "small.png"), warned, "upscale warned" if warned else "silent")


def latent_without_weights_path(w: World) -> Outcome:
    d = w.scratch("gsrecord")
    res = gie("invert", str(w.crops / "000000.png"), "-m", "gradstyle", "-o", "inv", "-q", cwd=d)
    lat = d / "inv" / "000000.latent.safetensors"
    tensors, meta = latent_config(lat)
    cfg = json.loads(meta["gie_config"])
    cfg.pop("weights_path", None)
    cfg["weights"] = "my-gradstyle.safetensors@0123456789ab"  # weights that are not on this machine
    meta["gie_config"] = json.dumps(cfg)
    write_latent(lat, tensors, meta)
    res = gie("edit", str(lat), "-d", "smile", "--power=2", "-o", "out", "-q", cwd=d)
    st = status_of(d / "out", "000000.latent.safetensors")
    named = "my-gradstyle" in res.stderr or any("my-gradstyle" in str(r.get("reason")) for r in manifest(d / "out"))
    return Outcome(res.returncode, st, st == "failed" and named, "fails naming the missing weights")


def sigterm(w: World) -> Outcome:
    d = w.scratch("sigterm")
    env = {**os.environ, "GIE_DISABLE_PROGRESS_BARS": "1", "GIE_OFFLINE": "1"}
    args = GIE + ["invert", str(w.crops), "-m", "optim", "--set", "steps=400", "-b", "1", "-o", "out", "-q"]
    proc = subprocess.Popen(args, cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(6)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    leftovers = [p.name for p in (d / "out").rglob("*") if ".tmp-" in p.name] if (d / "out").is_dir() else []
    return Outcome(rc, "-", rc == 143 and not leftovers, f"{len(leftovers)} temporary file(s) left")


def leftover_tmp_removed(w: World) -> Outcome:
    d = w.scratch("leftover")
    (d / "out").mkdir()
    junk = d / "out" / "000000.recon.png.tmp-0123456789abcdef0123456789abcdef"
    junk.write_bytes(b"partial")
    res = gie("invert", str(w.crops / "000000.png"), "-o", "out", "-q", cwd=d)
    return Outcome(res.returncode, status_of(d / "out", "000000.png"), not junk.exists(), "stale temporary removed")


def concurrent_runs(w: World) -> Outcome:
    d = w.scratch("concurrent")
    env = {**os.environ, "GIE_DISABLE_PROGRESS_BARS": "1", "GIE_OFFLINE": "1"}
    args = GIE + ["invert", str(w.crops), "-m", "optim", "--set", "steps=30", "-b", "1", "-o", "out", "-q"]
    procs = [subprocess.Popen(args, cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in "ab"]
    rcs = [p.wait(timeout=600) for p in procs]
    recs = [r for r in manifest(d / "out") if "torn" not in r]
    runs = {r.get("run") for r in recs}
    oks: dict[str, int] = {}
    for r in recs:
        oks[r["input"]] = oks.get(r["input"], 0) + (r["status"] == "ok")
    duplicated = sorted(k for k, v in oks.items() if v > 1)
    refused = any(rc == 2 for rc in rcs)
    ok = (len(runs) == 2 or refused) and not duplicated
    return Outcome(",".join(map(str, rcs)), "-", ok, f"{len(runs)} run id(s), {len(duplicated)} item(s) done twice")


def output_is_a_file(w: World) -> Outcome:
    d = w.scratch("ofile")
    (d / "some_file.txt").write_text("x")
    res = gie("invert", str(w.crops / "000000.png"), "-o", "some_file.txt", cwd=d)
    return Outcome(res.returncode, "-", res.returncode == 2 and one_line_error(res.stderr), res.stderr.strip()[:80])


def usage_up_front(*extra: str) -> Callable[[World], Outcome]:
    def case(w: World) -> Outcome:
        d = w.scratch("up" + "".join(c for c in "".join(extra) if c.isalnum()))
        res = gie("invert", str(w.crops), "-o", "out", *extra, cwd=d)
        ran = len(manifest(d / "out"))
        return Outcome(res.returncode, "-", res.returncode == 2 and ran == 0, f"{ran} item(s) ran before the error")

    return case


def dangling_link_argument(w: World) -> Outcome:
    d = w.scratch("dangarg")
    (d / "gone.png").symlink_to(d / "nowhere.png")
    res = gie("invert", "gone.png", str(w.crops / "000000.png"), "-o", "out", "-q", cwd=d)
    st = status_of(d / "out", "gone.png")
    good = status_of(d / "out", "000000.png")
    return Outcome(res.returncode, st, st == "failed" and good == "ok" and res.returncode == 1, f"other item {good}")


def dangling_link_in_folder(w: World) -> Outcome:
    d = w.scratch("dangdir")
    (d / "in").mkdir()
    shutil.copy(w.crops / "000000.png", d / "in" / "a.png")
    (d / "in" / "gone.png").symlink_to(d / "in" / "nowhere.png")
    res = gie("invert", "in", "-o", "out", "-q", cwd=d)
    st = status_of(d / "out", "gone.png")
    return Outcome(res.returncode, st, st == "failed" and res.returncode == 1, "recorded in the manifest")


def binary_stdin(w: World) -> Outcome:
    d = w.scratch("binstdin")
    utf8 = {"PYTHONIOENCODING": "utf-8:strict"}  # stdin decoded strictly, as in an en_US.UTF-8 shell
    res = gie("invert", "-", "-o", "out", cwd=d, stdin=b"\xff\xfe\x00\x81garbage\n", env=utf8)
    return Outcome(res.returncode, "-", res.returncode == 2 and one_line_error(res.stderr), res.stderr.strip()[:80])


def weights_import_no_force(w: World) -> Outcome:
    d = w.scratch("wimport")
    import torch

    os.environ["GIE_CACHE_DIR"] = str(d / "cache")
    try:
        first, second = d / "first.pt", d / "second.pt"
        torch.save({"w": torch.zeros(3)}, first)
        torch.save({"w": torch.ones(3)}, second)
        entry = "restyle_psp.ffhq"  # a registry entry with no sha256 and no size: nothing else protects the copy
        gie("weights", "import", str(first), "--name", entry, cwd=d)
        res = gie("weights", "import", str(second), "--name", entry, cwd=d)
        kept = [p for p in (d / "cache").rglob("*.pt")]
        same = len(kept) == 1 and sha256(kept[0]) == sha256(first)
        return Outcome(res.returncode, "-", res.returncode != 0 and same, "existing copy kept without --force")
    finally:
        os.environ.pop("GIE_CACHE_DIR", None)


def weights_import_pickle(w: World) -> Outcome:
    d = w.scratch("wpickle")
    os.environ["GIE_CACHE_DIR"] = str(d / "cache")
    try:
        tiny = d / "ffhq.pkl"
        tiny.write_bytes(pickle.dumps({"G_ema": None, "note": "not a network"}))
        res = gie("weights", "import", str(tiny), "--name", "stylegan2_ada.ffhq", cwd=d)
        return Outcome(
            res.returncode, "-", res.returncode != 0, f"{tiny.stat().st_size}-byte pickle, entry with no sha256"
        )
    finally:
        os.environ.pop("GIE_CACHE_DIR", None)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares ``width x height`` pixels (PIL's size checks run on open; the pixels are missing)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    )


def huge_images(w: World) -> Outcome:
    d = w.scratch("huge")
    Image.new("RGB", (9000, 9000), (120, 100, 90)).save(d / "p81.png")  # 81 MP, really there
    _png_header_only(d / "p95.png", 10000, 9500)  # between PIL's warning and error limits
    _png_header_only(d / "p400.png", 20000, 20000)  # a decompression bomb
    res = gie("invert", "p81.png", "p95.png", "p400.png", "-o", "out", "--no-align", "-q", cwd=d)
    leak = "DecompressionBombWarning" in res.stderr
    reasons = {r["input"]: str(r.get("reason")) for r in manifest(d / "out") if "input" in r}
    text = res.stderr + " ".join(reasons.values())
    import re

    stated = [float(m) for m in re.findall(r"(\d+(?:\.\d+)?) ?(?:megapixels|MP)", text)]
    ok81 = status_of(d / "out", "p81.png")
    consistent = all((81 <= n) == (ok81 == "ok") for n in stated) and status_of(d / "out", "p400.png") == "failed"
    note = f"81 MP {ok81}; limits stated: {stated or 'none'}; raw PIL warning {'leaked' if leak else 'no'}"
    return Outcome(res.returncode, ok81, not leak and consistent and bool(stated), note)


def truncated_latent(w: World) -> Outcome:
    d = w.scratch("trunc")
    data = (w.inv / "000000.latent.safetensors").read_bytes()
    (d / "a.latent.safetensors").write_bytes(data[: len(data) // 2])
    res = gie("edit", "a.latent.safetensors", "-d", "smile", "--power=2", "-o", "out", "-q", cwd=d)
    text = res.stderr + " ".join(str(r.get("reason")) for r in manifest(d / "out"))
    ok = res.returncode == 1 and "download it again" not in text and ("truncat" in text or "corrupt" in text)
    return Outcome(res.returncode, status_of(d / "out", "a.latent.safetensors"), ok, "says truncated, not download")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def refused_pickle_hint(w: World) -> Outcome:
    d = w.scratch("evil")
    with open(d / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    res = gie("invert", str(w.crops / "000000.png"), "-w", "evil.pt", "-o", "out", cwd=d)
    text = res.stderr + " ".join(str(r.get("reason")) for r in manifest(d / "out"))
    ok = res.returncode != 0 and "weights_only=False" not in text and "this must never run" not in res.stdout
    return Outcome(res.returncode, status_of(d / "out", "000000.png"), ok, "no weights_only=False advice")


def nvidia_pickle_hint(w: World) -> Outcome:
    d = w.scratch("nvpkl")
    with open(d / "network-snapshot.pkl", "wb") as f:
        pickle.dump({"G_ema": _Evil()}, f)
    res = gie("invert", str(w.crops / "000000.png"), "-w", "network-snapshot.pkl", "-o", "out", cwd=d)
    text = res.stderr + " ".join(str(r.get("reason")) for r in manifest(d / "out"))
    return Outcome(
        res.returncode, "-", res.returncode != 0 and "--convert" in text, "points to weights import --convert"
    )


def real_photo_demo_warning(w: World) -> Outcome:
    d = w.scratch("real")
    shutil.copy(FIXTURES / "e4e_input_img.jpg", d / "face.jpg")
    res = gie("invert", "face.jpg", "-o", "out", "--no-align", "-q", cwd=d)
    warned = any("demo" in line.lower() for line in res.stderr.splitlines())
    recs = [r for r in manifest(d / "out") if str(r.get("input", "")).endswith("face.jpg")]
    recorded = bool(recs) and "demo" in json.dumps(recs[-1]).lower()
    return Outcome(
        res.returncode,
        status_of(d / "out", "face.jpg"),
        warned and recorded,
        "WARNING under -q and 'demo' in the record",
    )


def square_photo_not_aligned(w: World) -> Outcome:
    d = w.scratch("square")
    img = Image.open(w.photos / "000000.png")
    side = img.height
    canvas = Image.new("RGB", (side, side))
    canvas.paste(img.crop((0, 0, side, side)))
    canvas.save(d / "square.png")
    res = gie("invert", "square.png", "-o", "out", "-q", cwd=d)
    recs = [r for r in manifest(d / "out") if str(r.get("input", "")).endswith("square.png")]
    st = recs[-1]["status"] if recs else "-"
    how = (recs[-1].get("info") or {}).get("aligned") if recs else None
    ok = st == "failed" or (st == "ok" and how not in (None, "assumed", "as-is", "square"))
    return Outcome(res.returncode, st, ok, f"aligned: {how}")


CASES: dict[str, Callable[[World], Outcome]] = {
    "1 torn manifest tail": torn_manifest_tail,
    "2 skip: input replaced": skip_replaced_input,
    "2 skip: method changed": skip_method_changed,
    "2 skip: same name, other folder": skip_name_collision,
    "3 NaN inside the weights": nan_weights,
    "3 edit --power=1e39": edit_power("1e39", "failed"),
    "3 edit --power=1e9 warns": edit_power("1e9", "warn"),
    "3 latent holding NaN": nan_latent,
    "3 optim --set lr=1e30": optim_huge_lr,
    "4 1x1 image": tiny_image,
    "4 small face upscaled by align": small_face_upscaled,
    "5 record names missing weights": latent_without_weights_path,
    "6 SIGTERM mid-batch": sigterm,
    "6 stale temporary files": leftover_tmp_removed,
    "6 two runs on one folder": concurrent_runs,
    "7 -o names a file": output_is_a_file,
    "7 --alpha purple": usage_up_front("--alpha", "purple"),
    "7 --set lr=nan": usage_up_front("-m", "optim", "--set", "lr=nan"),
    "7 dangling link argument": dangling_link_argument,
    "7 dangling link in a folder": dangling_link_in_folder,
    "8 weights import replaces": weights_import_no_force,
    "8 weights import of a pickle": weights_import_pickle,
    "8 81/95/400 MP images": huge_images,
    "8 truncated latent": truncated_latent,
    "8 refused pickle hint": refused_pickle_hint,
    "8 NVIDIA .pkl as --weights": nvidia_pickle_hint,
    "9 real photo, no --weights": real_photo_demo_warning,
    "9 square photo, auto align": square_photo_not_aligned,
    "9 binary bytes on stdin": binary_stdin,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary folder)")
    ap.add_argument("-k", default="", help="only the cases whose name contains this")
    args = ap.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="gie-hostile-"))
    root.mkdir(parents=True, exist_ok=True)
    world = World(root)
    failed = 0
    print(f"{'case':<34} {'rc':>5}  {'status':<8} verdict  note")
    for name, case in CASES.items():
        if args.k not in name:
            continue
        try:
            out = case(world)
        except Exception as e:  # a case that cannot run is a failure of the matrix, shown as such
            out = Outcome("-", "-", False, f"case crashed: {type(e).__name__}: {e}"[:120])
        failed += not out.ok
        print(f"{name:<34} {out.rc!s:>5}  {out.status:<8} {'PASS' if out.ok else 'FAIL':<7}  {out.note}", flush=True)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

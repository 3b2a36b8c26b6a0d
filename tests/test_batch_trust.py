"""Issue 15, batch trust: manifests never torn, skips only of really finished items, stable output names, unique
run ids, concurrent runs without duplicated work, SIGTERM and leftover temp files, early usage errors."""

from __future__ import annotations

import errno
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import batch_items
from PIL import Image
from typer.testing import CliRunner

import gie_cli
from gie_cli.cli import app
from gie_cli.cli import batch as batch_mod
from gie_cli.cli.batch import BatchJob, Item, PerItem, Record, Reporter, plan_items
from gie_cli.errors import GieError

REPO = Path(gie_cli.__file__).resolve().parents[1]
IMAGES = Path(__file__).parent / "fixtures" / "images"
runner = CliRunner()


def _invoke(*args: object, input: bytes | str | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _write(it: Item) -> Record:
    it.outputs["image"].parent.mkdir(parents=True, exist_ok=True)
    it.outputs["image"].write_bytes(b"made from " + it.source.read_bytes())
    return Record(str(it.source), "ok", {k: str(v) for k, v in it.outputs.items()})


def _plan(inputs: list[Path], out: Path, command: str | None = None) -> list[Item]:
    kw = {"command": command} if command and "command" in inspect.signature(plan_items).parameters else {}
    return plan_items([str(p) for p in inputs], out, False, (".png",), lambda s, n: {"image": out / f"{n}.png"}, **kw)


# --------------------------------------------------------------------------------------------- 1: torn manifests
def test_disk_full_mid_record_leaves_no_torn_line_and_the_rerun_manifest_parses(tmp_path, monkeypatch):
    items = batch_items(tmp_path, 3)
    real = batch_mod._write_all
    calls = []

    def disk_full_on_second_record(fd: int, data: bytes) -> None:
        calls.append(len(data))
        if len(calls) == 2:
            os.write(fd, data[: len(data) // 2])  # half the line reaches the disk, then ENOSPC
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(batch_mod, "_write_all", disk_full_on_second_record)
    with pytest.raises(GieError, match="disk is full"):
        BatchJob("t", tmp_path / "out", items).run(lambda todo: PerItem(lambda it, bs: _write(it)))
    monkeypatch.setattr(batch_mod, "_write_all", real)
    manifest = tmp_path / "out" / "manifest.jsonl"
    assert manifest.read_bytes().endswith(b"\n")
    assert BatchJob("t", tmp_path / "out", items).run(lambda todo: PerItem(lambda it, bs: _write(it))) == 0
    recs = _lines(manifest)  # every line parses
    # x0 recorded; x1 finished but its record hit the full disk (its outputs are complete: skipped); x2 done now
    assert [r["status"] for r in recs][-3:] == ["skipped", "skipped", "ok"]


def test_a_torn_manifest_tail_from_a_crash_is_moved_aside_never_appended_to(tmp_path):
    items = batch_items(tmp_path, 2)
    out = tmp_path / "out"
    out.mkdir()
    good = json.dumps({"run": "r0", "command": "t", "input": "old.png", "status": "ok"})
    torn = b'{"run": "r1", "command": "t", "input": "/x/y.png", "sta'  # cut mid-record (disk full, kill -9)
    (out / "manifest.jsonl").write_bytes(good.encode() + b"\n" + torn)
    assert BatchJob("t", out, items).run(lambda todo: PerItem(lambda it, bs: _write(it))) == 0
    recs = _lines(out / "manifest.jsonl")  # every line parses: the new records are not glued onto the torn one
    assert [r["status"] for r in recs] == ["ok", "ok", "ok"] and recs[0]["input"] == "old.png"
    assert (out / "manifest.jsonl.torn").read_bytes() == torn + b"\n"  # quarantined, not lost


# --------------------------------------------------------------------------------------------- 2: stale skips
def test_skip_redoes_an_item_whose_input_was_replaced(tmp_path):
    items = batch_items(tmp_path, 2)
    work = lambda todo: PerItem(lambda it, bs: _write(it))  # noqa: E731
    assert BatchJob("t", tmp_path / "out", items).run(work) == 0
    items[0].source.write_bytes(b"another photo under the same name")
    manifest = tmp_path / "out" / "manifest.jsonl"
    manifest.unlink()
    assert BatchJob("t", tmp_path / "out", items).run(work) == 0
    recs = {Path(r["input"]).name: r for r in _lines(manifest)}
    assert recs["x0.png"]["status"] == "ok" and "input changed" in recs["x0.png"]["info"]["redone"]
    assert recs["x1.png"]["status"] == "skipped"
    assert (tmp_path / "out" / "x0.png").read_bytes() == b"made from another photo under the same name"


def test_skip_redoes_an_item_made_with_other_options_and_error_policy_reports_it(tmp_path):
    items = batch_items(tmp_path, 1)
    work = lambda todo: PerItem(lambda it, bs: _write(it))  # noqa: E731
    manifest = tmp_path / "out" / "manifest.jsonl"
    assert BatchJob("t", tmp_path / "out", items, request={"method": "a", "weights": "w1"}).run(work) == 0
    assert BatchJob("t", tmp_path / "out", items, request={"method": "a", "weights": "w1"}).run(work) == 0
    assert BatchJob("t", tmp_path / "out", items, request={"method": "b", "weights": "w1"}).run(work) == 0
    assert BatchJob("t", tmp_path / "out", items, request={"method": "b", "weights": "w2"}).run(work) == 0
    assert [r["status"] for r in _lines(manifest)] == ["ok", "skipped", "ok", "ok"]
    job = BatchJob("t", tmp_path / "out", items, on_existing="error", request={"method": "c"})
    assert job.run(work) == 1 and _lines(manifest)[-1]["status"] == "failed"


def test_output_names_do_not_depend_on_argument_order(tmp_path):
    x, y = tmp_path / "x" / "a.png", tmp_path / "y" / "a.png"
    for p in (x, y):
        p.parent.mkdir()
        p.write_bytes(p.parent.name.encode())
    out = tmp_path / "out"
    one = {str(it.source): it.name for it in _plan([x, y], out)}
    two = {str(it.source): it.name for it in _plan([y, x], out)}
    assert one == two and len(set(one.values())) == 2


def test_a_later_run_with_one_of_two_same_named_inputs_does_not_skip_against_the_other(tmp_path):
    x, y = tmp_path / "x" / "a.png", tmp_path / "y" / "a.png"
    for p in (x, y):
        p.parent.mkdir()
        p.write_bytes(p.parent.name.encode())
    out = tmp_path / "out"
    work = lambda todo: PerItem(lambda it, bs: _write(it))  # noqa: E731
    assert BatchJob("t", out, _plan([x, y], out, command="t")).run(work) == 0
    first = {r["input"]: r["outputs"] for r in _lines(out / "manifest.jsonl")}
    made = {p.name: p.read_bytes() for p in out.glob("*.png")}
    (out / "manifest.jsonl").unlink()
    for inputs in ([y], [x], [y, x]):  # every later run: each input finds its own outputs, whatever else is given
        BatchJob("t", out, _plan(inputs, out, command="t")).run(work)
    for r in _lines(out / "manifest.jsonl"):
        assert r["status"] == "skipped" and r["outputs"] == first[r["input"]], r  # skipped against its own outputs
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == made


# ------------------------------------------------------------------------- 2 through a real command (gie align)
@pytest.fixture()
def astro(tmp_path) -> Path:
    from skimage import data

    d = tmp_path / "photos"
    d.mkdir()
    Image.fromarray(data.astronaut()).save(d / "astro.png")
    (d / "astro.landmarks.json").write_text((IMAGES / "astronaut.landmarks.json").read_text())
    return d


def test_gie_align_rerun_redoes_a_replaced_photo_and_a_changed_size(astro, tmp_path):
    out = tmp_path / "out"
    base = ["align", astro / "astro.png", "-o", out, "--backend", "file", "--json"]
    assert _invoke(*base, "--size", "64").exit_code == 0
    again = _invoke(*base, "--size", "64")
    assert again.exit_code == 0 and json.loads(again.stdout)["status"] == "skipped"
    changed = _invoke(*base, "--size", "96")  # same output names, other options: redone
    assert changed.exit_code == 0 and json.loads(changed.stdout)["status"] == "ok"
    assert Image.open(out / "astro.png").size == (96, 96)
    darker = (np.asarray(Image.open(astro / "astro.png")) // 2).astype(np.uint8)
    Image.fromarray(darker).save(astro / "astro.png")  # the photo replaced, same name and landmarks
    replaced = _invoke(*base, "--size", "96")
    assert replaced.exit_code == 0 and json.loads(replaced.stdout)["status"] == "ok"
    assert np.asarray(Image.open(out / "astro.png")).mean() < 100


# ------------------------------------------------------------------- 6: run ids, concurrency, SIGTERM, temp files
def test_run_ids_are_unique_within_one_second(tmp_path):
    ids = {Reporter(tmp_path, 1, False, "t").run_id for _ in range(20)}
    assert len(ids) == 20


_SLOW = r"""
import inspect, sys, time
from pathlib import Path
import typer
from gie_cli.cli import command
from gie_cli.cli.batch import BatchJob, PerItem, Record, plan_items
from gie_cli.io.atomic import atomic_write

app = typer.Typer()

@command(target=app)
def slow(inputs: list[str], output: Path = typer.Option(..., "-o"), delay: float = 0.1) -> None:
    kw = {"command": "slow"} if "command" in inspect.signature(plan_items).parameters else {}
    items = plan_items(inputs, output, False, (".txt",), lambda s, n: {"out": output / f"{n}.out"}, **kw)

    def process(it, bs):
        with atomic_write(it.outputs["out"], "wb") as f:
            f.write(b"partial")
            f.flush()
            time.sleep(delay)
            f.write(it.source.read_bytes())
        return Record(str(it.source), "ok", {"out": str(it.outputs["out"])})

    raise typer.Exit(BatchJob("slow", output, items).run(lambda todo: PerItem(process)))

app()
"""


def _slow(tmp_path: Path, n: int, delay: float, out: Path) -> list[str]:
    src = tmp_path / "in"
    src.mkdir(exist_ok=True)
    for i in range(n):
        (src / f"t{i}.txt").write_text(f"text {i}")
    return [
        sys.executable,
        "-c",
        _SLOW,
        *sorted(str(p) for p in src.glob("*.txt")),
        "-o",
        str(out),
        "--delay",
        str(delay),
    ]


def test_two_concurrent_runs_on_one_folder_never_both_do_an_item(tmp_path):
    out = tmp_path / "out"
    cmd = _slow(tmp_path, 6, 0.15, out)
    env = {**os.environ, "PYTHONPATH": str(REPO), "GIE_DISABLE_PROGRESS_BARS": "1"}
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    recs = _lines(out / "manifest.jsonl")
    assert len(recs) == 12 and len({r["run"] for r in recs}) == 2  # two runs, told apart
    for name in {r["input"] for r in recs}:
        statuses = sorted(r["status"] for r in recs if r["input"] == name)
        assert statuses == ["ok", "skipped"], (name, statuses)  # done once; the other run skips the finished item
    assert sorted(p.read_text() for p in out.glob("*.out")) == [f"partialtext {i}" for i in range(6)]


def test_sigterm_stops_like_ctrl_c_with_exit_143_and_no_temp_files(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "GIE_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.Popen(
        _slow(tmp_path, 3, 30.0, out), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 30
    while not list(out.glob("*.tmp-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert list(out.glob("*.tmp-*")), "the slow item never started writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 143, err.decode()
    assert not list(out.rglob("*.tmp-*")) and not list(out.glob("*.out"))
    assert b"Traceback" not in err


def test_leftover_temp_files_of_gie_are_removed_at_the_start_of_a_run(tmp_path):
    items = batch_items(tmp_path, 1)
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    ours = [out / f"x0.png.tmp-{'a' * 32}", out / "sub" / f"y.recon.png.tmp-{'0f' * 16}"]
    theirs = [out / "notes.tmp-backup", out / f"x.png.tmp-{'g' * 32}"]
    for p in ours + theirs:
        p.write_bytes(b"left by a killed run")
    assert BatchJob("t", out, items).run(lambda todo: PerItem(lambda it, bs: _write(it))) == 0
    assert not any(p.exists() for p in ours) and all(p.exists() for p in theirs)


# --------------------------------------------------------------------------------------------- 7, 9: usage errors
def test_output_that_is_a_file_is_a_one_line_usage_error(astro, tmp_path):
    target = tmp_path / "some_file.txt"
    target.write_text("keep me")
    res = _invoke("align", astro / "astro.png", "-o", target, "--backend", "file")
    assert res.exit_code == 2 and "-o" in res.stderr and "not a folder" in res.stderr, res.output
    assert "FileExistsError" not in res.output and len(res.stderr.strip().splitlines()) == 1
    assert target.read_text() == "keep me"


def test_missing_and_dangling_inputs_are_failed_items_and_the_batch_goes_on(astro, tmp_path):
    (astro / "gone.png").symlink_to(tmp_path / "nowhere.png")  # dangling, inside the folder
    named = tmp_path / "named.png"
    named.symlink_to(tmp_path / "nowhere2.png")  # dangling, named on the command line
    out = tmp_path / "out"
    res = _invoke(
        "align", astro, named, tmp_path / "missing.png", "-o", out, "--backend", "file", "--size", "64", "--json"
    )
    assert res.exit_code == 1, res.output
    status = {Path(r["input"]).name: r for r in map(json.loads, res.stdout.splitlines())}
    assert status["astro.png"]["status"] == "ok"  # the good input is still done
    assert status["gone.png"]["status"] == "failed" and "broken symbolic link" in status["gone.png"]["reason"]
    assert status["named.png"]["status"] == "failed" and "broken symbolic link" in status["named.png"]["reason"]
    assert status["missing.png"]["status"] == "failed" and "not found" in status["missing.png"]["reason"]
    manifest = {Path(r["input"]).name: r["status"] for r in _lines(out / "manifest.jsonl")}
    assert manifest == {k: v["status"] for k, v in status.items()}


def test_binary_bytes_on_stdin_are_a_clear_usage_error(tmp_path):
    res = _invoke("align", "-", "-o", tmp_path / "out", "--backend", "file", input=b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    assert res.exit_code == 2 and "stdin" in res.stderr and "binary" in res.stderr, res.output
    assert "UnicodeDecodeError" not in res.output

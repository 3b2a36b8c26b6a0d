"""The overlapped batch pipeline (issue 21): loader threads and a background writer give the same outputs, manifest
and done records as the serial run, record an item only once its outputs are on disk, and keep memory bounded."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_e4e
from typer.testing import CliRunner

from gie_cli.cli import app
from gie_cli.cli.batch import BatchJob, Item, PerBatch, PerItem, Record
from gie_cli.io.atomic import atomic_write_text, write_text_output
from gie_cli.io.images import tensor_to_image
from gie_cli.io.latents import load_latent
from gie_cli.io.writer import BackgroundWriter, collect_writes, run_or_defer


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("pipeline")
    make_tiny_e4e().save(root / "e4e.safetensors")
    (root / "in").mkdir()
    for i in range(14):
        x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)) * 2 - 1
        tensor_to_image(x).save(root / "in" / f"f{i:02d}.png")
    (root / "in" / "f05.png").write_bytes(b"not an image")  # fails when loaded
    tensor_to_image(torch.zeros(3, 32, 24)).save(root / "in" / "f09.png")  # not square: fails when loaded
    return {"root": root, "weights": root / "e4e.safetensors", "in": root / "in"}


def _invert(inputs: dict, out: Path, *extra: str):
    args = ["invert", inputs["in"], "-m", "e4e", "-w", inputs["weights"], "--no-align", "-b", 3, "-o", out, *extra]
    return CliRunner().invoke(app, [str(a) for a in args])


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _strip(rec: dict) -> dict:
    return {k: rec[k] for k in ("input", "status", "outputs", "reason")}


def test_overlapped_run_equals_the_serial_run(inputs, tmp_path):
    serial, overlapped = tmp_path / "serial", tmp_path / "overlapped"
    r0 = _invert(inputs, serial, "--workers", "0")
    r1 = _invert(inputs, overlapped, "--workers", "3")
    assert r0.exit_code == r1.exit_code == 1, (r0.output, r1.output)  # two inputs fail
    m0, m1 = _manifest(serial), _manifest(overlapped)
    # the same records in the same order (outputs differ by folder only)
    norm = lambda recs, out: [json.loads(json.dumps(_strip(r)).replace(str(out), "OUT")) for r in recs]  # noqa: E731
    assert norm(m0, serial) == norm(m1, overlapped)
    assert [r["status"] for r in m1].count("failed") == 2 and [r["status"] for r in m1].count("ok") == 12
    for p in sorted(serial.glob("*.latent.safetensors")):
        q = overlapped / p.name
        assert torch.equal(load_latent(p)[0], load_latent(q)[0])
        img = p.name.replace(".latent.safetensors", ".recon.png")
        assert (serial / img).read_bytes() == (overlapped / img).read_bytes()
    # a re-run skips every finished item, whatever the worker count
    _invert(inputs, serial, "--workers", "2")
    assert [r["status"] for r in _manifest(serial)[14:]].count("skipped") == 12


def test_a_failed_background_write_fails_its_item_only(inputs, tmp_path):
    out = tmp_path / "o"
    (out / "f03.recon.png").mkdir(parents=True)  # the image cannot replace a folder: its write fails
    res = _invert(inputs, out, "--workers", "2")
    assert res.exit_code == 1
    recs = {Path(r["input"]).name: r for r in _manifest(out)}
    assert recs["f03.png"]["status"] == "failed" and "f03.recon.png" in recs["f03.png"]["reason"]
    assert recs["f04.png"]["status"] == "ok" and (out / "f04.recon.png").is_file()
    assert not list(out.glob("*.tmp-*"))  # nothing half-written
    # no done record for the failed item: a re-run (once the folder is gone) does it
    (out / "f03.recon.png").rmdir()
    res = _invert(inputs, out, "--workers", "2")
    recs = [r for r in _manifest(out)[14:] if Path(r["input"]).name == "f03.png"]
    assert recs[0]["status"] == "ok"


def _job(tmp_path: Path, n: int, workers: int, **kw) -> BatchJob:
    src = tmp_path / "src"
    src.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        (src / f"{i}.txt").write_text(str(i))
        items.append(Item(src / f"{i}.txt", str(i), {"out": tmp_path / "out" / f"{i}.out"}))
    return BatchJob("t", tmp_path / "out", items, workers=workers, **kw)


def test_items_are_recorded_only_after_their_writes_land(tmp_path):
    gate = threading.Event()
    seen: list[tuple[str, bool]] = []

    def slow_write(path: Path, text: str) -> None:
        gate.wait(5)
        atomic_write_text(path, text)

    def process(it: Item, _bs) -> Record:
        run_or_defer(slow_write, it.outputs["out"], it.source.read_text())
        return Record(str(it.source), "ok", {"out": str(it.outputs["out"])})

    job = _job(tmp_path, 5, workers=1)
    add = job.add

    def spy(rec, it=None):
        seen.append((rec.status, it.outputs["out"].exists()))
        add(rec, it)

    job.add = spy  # type: ignore[method-assign]
    threading.Timer(0.3, gate.set).start()
    assert job.run(lambda todo: PerItem(process)) == 0
    assert seen == [("ok", True)] * 5


def test_fail_fast_and_prepare_failures_keep_the_serial_order(tmp_path):
    def prepare(it: Item):
        if it.name == "2":
            raise ValueError("bad input")
        return int(it.source.read_text())

    def compute(xs):
        return [x * 10 for x in xs]

    def finish(it: Item, x, y) -> Record:
        write_text_output(it.outputs["out"], str(y))
        return Record(str(it.source), "ok", {"out": str(it.outputs["out"])}, timings_ms={"save": 0.0})

    orders = []
    for workers in (0, 2):
        root = tmp_path / f"w{workers}"
        job = _job(root, 7, workers=workers)
        assert job.run(lambda todo: PerBatch(compute, finish, 2, prepare)) == 1
        recs = _manifest(root / "out")
        orders.append([(Path(r["input"]).name, r["status"]) for r in recs])
        assert (root / "out" / "6.out").read_text() == "60"
    assert orders[0] == orders[1] and ("2.txt", "failed") in orders[0]
    # --fail-fast: nothing after the failed item is recorded
    root = tmp_path / "ff"
    job = _job(root, 7, workers=2, fail_fast=True)
    job.run(lambda todo: PerBatch(compute, finish, 2, prepare))
    names = [Path(r["input"]).name for r in _manifest(root / "out")]
    assert names[-1] == "2.txt" and "3.txt" not in names


def test_writer_queue_is_bounded():
    """Compute cannot run arbitrarily far ahead of the disk: a full write queue blocks the next write."""
    writer = BackgroundWriter(max_pending=1)
    gate = threading.Event()
    with collect_writes(writer) as writes:
        run_or_defer(gate.wait, 5)  # taken by the writer thread, which blocks on the gate
        time.sleep(0.1)
        run_or_defer(gate.wait, 5)  # fills the queue
        third = threading.Thread(target=lambda: writes.append(writer.submit(lambda: None)))
        third.start()
        third.join(0.3)
        blocked = third.is_alive()
        gate.set()
        third.join(5)
    writer.close()
    assert blocked and len(writes) == 3 and all(f.done() and f.exception() is None for f in writes)

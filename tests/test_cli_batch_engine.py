"""The batch engine of invert/edit/align/paste (gie_cli.cli.batch), checked directly with fake work functions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import batch_items

from gie_cli.cli.batch import BatchJob, Item, PerBatch, PerItem, Record
from gie_cli.errors import GieError


def _write(it: Item) -> Record:
    it.outputs["image"].parent.mkdir(parents=True, exist_ok=True)
    it.outputs["image"].write_text("done")
    return Record(str(it.source), "ok", {k: str(v) for k, v in it.outputs.items()})


def _manifest(tmp_path: Path) -> list[dict]:
    path = tmp_path / "out" / "manifest.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _job(tmp_path: Path, items: list[Item], **kw) -> BatchJob:
    return BatchJob("test", tmp_path / "out", items, **kw)


def _batch_work(sizes: list[int], oom_above: int = 10**9, fail: set[str] = frozenset()) -> PerBatch:
    def compute(payloads: list[Item]) -> list[str]:
        sizes.append(len(payloads))
        if len(payloads) > oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return ["r"] * len(payloads)

    def finish(it: Item, payload: Item, result: str) -> Record:
        if it.name in fail:
            raise GieError(f"cannot save {it.name}")
        return _write(it)

    return PerBatch(compute, finish, batch_size=8)


def test_oom_halves_the_batch_and_every_item_ends_ok(tmp_path, caplog):
    items = batch_items(tmp_path, 10)
    sizes: list[int] = []
    code = _job(tmp_path, items).run(lambda todo: _batch_work(sizes, oom_above=4))
    assert code == 0
    assert sizes[:2] == [8, 4] and max(sizes[1:]) <= 4 and sum(sizes[1:]) == 10
    recs = _manifest(tmp_path)
    assert len(recs) == 10 and {r["status"] for r in recs} == {"ok"}
    assert "batch size reduced to 4" in caplog.text


def test_oom_drops_the_cuda_graphs_before_the_retry(tmp_path, monkeypatch):
    """A captured CUDA graph keeps its memory pool until it is dropped (``empty_cache`` cannot free it): out-of-memory
    drops every generator's graphs, so the retry at half the batch size captures its own in freed memory."""
    from gie_cli.models import stylegan2

    class _Owner:  # stands in for a generator (the cache is keyed weakly by its generator)
        pass

    owner, cache = _Owner(), stylegan2._FastCache()
    cache.graphs.update({("batch", 8): "graph", ("batch", 3): "graph"})
    monkeypatch.setitem(stylegan2._FAST_CACHES, owner, cache)
    seen: list[tuple[int, int]] = []

    def compute(payloads: list[Item]) -> list[str]:
        seen.append((len(payloads), len(cache.graphs)))
        if len(payloads) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        cache.graphs[("batch", len(payloads))] = "graph"  # this size's graph, captured anew
        return ["r"] * len(payloads)

    items = batch_items(tmp_path, 6)
    code = _job(tmp_path, items).run(lambda todo: PerBatch(compute, lambda it, p, r: _write(it), batch_size=8))
    assert code == 0 and {r["status"] for r in _manifest(tmp_path)} == {"ok"}
    assert seen[0] == (6, 2)  # the first try saw the graphs captured before
    assert seen[1] == (4, 0)  # the retry after out-of-memory: all dropped
    assert stylegan2.drop_cuda_graphs() == 2 and not cache.graphs  # the graphs the retries captured (sizes 4 and 2)


def test_oom_at_batch_size_one_fails_those_items_and_goes_on(tmp_path):
    items = batch_items(tmp_path, 3)
    calls: list[int] = []

    def compute(payloads):
        calls.append(len(payloads))
        if payloads[0].name == "x1":
            raise torch.cuda.OutOfMemoryError("simulated")
        return [None] * len(payloads)

    work = PerBatch(compute, lambda it, p, r: _write(it), batch_size=1)
    assert _job(tmp_path, items).run(lambda todo: work) == 1
    status = {Path(r["input"]).name: (r["status"], r["reason"]) for r in _manifest(tmp_path)}
    assert status["x0.png"][0] == "ok" and status["x2.png"][0] == "ok"
    assert status["x1.png"] == ("failed", "CUDA out of memory at batch size 1")


def test_prepare_runs_once_per_item_even_when_the_batch_is_retried(tmp_path):
    items = batch_items(tmp_path, 4)
    prepared: list[str] = []
    sizes: list[int] = []
    work = _batch_work(sizes, oom_above=2)
    work.batch_size = 4

    def prepare(it: Item):
        prepared.append(it.name)
        return it

    work.prepare = prepare
    assert _job(tmp_path, items).run(lambda todo: work) == 0
    assert sorted(prepared) == ["x0", "x1", "x2", "x3"] and sizes == [4, 2, 2]


def test_a_failing_item_does_not_stop_the_others_and_exit_code_is_1(tmp_path, capsys):
    items = batch_items(tmp_path, 5)
    code = _job(tmp_path, items).run(lambda todo: _batch_work([], fail={"x2"}))
    assert code == 1
    recs = {Path(r["input"]).name: r for r in _manifest(tmp_path)}
    assert len(recs) == 5 and recs["x2.png"]["status"] == "failed" and recs["x2.png"]["reason"] == "cannot save x2"
    assert sum(r["status"] == "ok" for r in recs.values()) == 4
    err = capsys.readouterr().err
    assert "4 ok" in err and "1 failed" in err and "x2.png: cannot save x2" in err


def test_per_item_failures_are_captured_with_their_reason(tmp_path):
    items = batch_items(tmp_path, 3)

    def process(it: Item, batch_size):
        if it.name == "x0":
            raise ValueError("bad pixels")
        if it.name == "x1":
            raise GieError("no face record")
        return _write(it)

    assert _job(tmp_path, items).run(lambda todo: PerItem(process)) == 1
    reasons = {Path(r["input"]).name: r["reason"] for r in _manifest(tmp_path)}
    assert reasons == {"x0.png": "ValueError: bad pixels", "x1.png": "no face record", "x2.png": None}


@pytest.mark.parametrize("batched", [True, False])
def test_fail_fast_stops_at_the_first_failure(tmp_path, batched):
    items = batch_items(tmp_path, 6)
    if batched:
        work = _batch_work([], fail={"x1"})
        work.batch_size = 2
    else:
        work = PerItem(lambda it, bs: (_ for _ in ()).throw(GieError("boom")) if it.name == "x1" else _write(it))
    code = _job(tmp_path, items, fail_fast=True).run(lambda todo: work)
    assert code == 1
    recs = _manifest(tmp_path)
    assert [Path(r["input"]).name for r in recs] == ["x0.png", "x1.png"] and recs[-1]["status"] == "failed"
    assert not (tmp_path / "out" / "x2.png").exists()


def test_per_item_oom_halves_the_batch_size_and_retries_the_item(tmp_path):
    items = batch_items(tmp_path, 2)
    seen: list[int] = []

    def process(it: Item, batch_size: int) -> Record:
        seen.append(batch_size)
        if batch_size > 2:
            raise torch.cuda.OutOfMemoryError("simulated")
        return _write(it)

    assert _job(tmp_path, items).run(lambda todo: PerItem(process, batch_size=8)) == 0
    assert seen == [8, 4, 2, 2] and {r["status"] for r in _manifest(tmp_path)} == {"ok"}


def test_dry_run_lists_the_work_and_writes_nothing(tmp_path, capsys):
    items = batch_items(tmp_path, 3)
    job = _job(tmp_path, items)
    assert job.dry_run(", method m") == 0
    out, err = capsys.readouterr()
    assert out.count("todo\t") == 3 and "dry run: 3 input(s), method m" in err
    assert not (tmp_path / "out").exists()


def test_skip_policy_and_no_work_when_everything_exists(tmp_path, capsys):
    items = batch_items(tmp_path, 3)
    called: list[int] = []

    def work(todo):
        called.append(len(todo))
        return PerItem(lambda it, bs: _write(it))

    # the first two finished by an earlier run (outputs alone, with no record of what made them, are redone:
    # tests/test_batch_trust.py)
    assert _job(tmp_path, items[:2]).run(work) == 0 and called == [2]
    (tmp_path / "out" / "manifest.jsonl").unlink()
    assert _job(tmp_path, items).run(work) == 0
    assert called == [2, 1]
    assert [r["status"] for r in _manifest(tmp_path)] == ["skipped", "skipped", "ok"]
    # everything done: the work (model loading) is never set up
    (tmp_path / "out" / "manifest.jsonl").unlink()
    assert _job(tmp_path, items).run(work) == 0 and called == [2, 1]
    # --on-existing error: items with outputs fail, exit code 1
    (tmp_path / "out" / "manifest.jsonl").unlink()
    assert _job(tmp_path, items, on_existing="error").run(work) == 1
    assert {r["status"] for r in _manifest(tmp_path)} == {"failed"}
    assert "outputs exist" in capsys.readouterr().err


def test_precheck_failure_fails_the_item_before_the_skip_policy(tmp_path):
    items = batch_items(tmp_path, 2)
    _write(items[0])

    def precheck(it: Item) -> None:
        if it.name == "x0":
            raise GieError("no alignment record")

    job = _job(tmp_path, items, precheck=precheck)
    assert job.run(lambda todo: PerItem(lambda it, bs: _write(it))) == 1
    assert [(Path(r["input"]).name, r["status"]) for r in _manifest(tmp_path)] == [
        ("x0.png", "failed"),
        ("x1.png", "ok"),
    ]


def test_a_usage_error_naming_a_parameter_fails_its_item_with_the_flag(tmp_path):
    from gie_cli.errors import UsageError

    items = batch_items(tmp_path, 2)

    def process(it: Item, batch_size) -> Record:
        if it.name == "x0":
            raise UsageError("the recorded weights w.pt do not exist", hint="pass the checkpoint", param="weights")
        return _write(it)

    assert _job(tmp_path, items).run(lambda todo: PerItem(process)) == 1
    reasons = {Path(r["input"]).name: r["reason"] for r in _manifest(tmp_path)}
    assert reasons["x0.png"] == "--weights: the recorded weights w.pt do not exist (hint: pass the checkpoint)"

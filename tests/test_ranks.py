"""Multi-process runs (issue 21): torchrun-style ranks on one output folder give one output per input, the same latents
as one process, and one merged manifest, also after a rank is killed mid-run and the run is repeated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_e4e
from typer.testing import CliRunner

from gie_cli.cli import app
from gie_cli.cli.batch import STATE_DIR, Shard, merge_rank_manifests, rank_manifest, shard_number
from gie_cli.cli.ranks import Ranks, _child_args, rank_shard, ranks_from_env, require_rendezvous
from gie_cli.errors import UsageError
from gie_cli.io.images import tensor_to_image
from gie_cli.io.latents import load_latent

N_INPUTS = 40


def test_ranks_from_env():
    assert ranks_from_env({}) is None and ranks_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert ranks_from_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}) == Ranks(2, 4, 0)
    for bad in (
        {"WORLD_SIZE": "2"},
        {"WORLD_SIZE": "2", "RANK": "x"},
        {"WORLD_SIZE": "2", "RANK": "2"},
        {"WORLD_SIZE": "x"},
    ):
        with pytest.raises(UsageError):
            ranks_from_env(bad)


def test_a_benchmark_rank_without_a_rendezvous_stops_before_any_work(monkeypatch, tmp_path):
    """``gie benchmark`` ranks meet at the end (rank 0 gathers the rows): a rank that cannot meet fails at once."""
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(UsageError, match="MASTER_ADDR, MASTER_PORT is not set"):
        require_rendezvous(Ranks(0, 2, 0))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    res = CliRunner().invoke(app, ["benchmark", "--methods", "e4e", "--n", "2", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "MASTER_ADDR" in res.output and not (tmp_path / "o").exists()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    require_rendezvous(Ranks(1, 2, 1))


def test_rank_shards_split_a_job_array_shard_exactly(tmp_path):
    paths = [tmp_path / f"x{i}.png" for i in range(300)]
    for outer in (None, Shard(1, 3)):
        want = {p for p in paths if outer is None or shard_number(p, outer.count) == outer.index}
        parts = []
        for r in range(4):
            s = rank_shard(outer, Ranks(r, 4, r))
            parts.append({p for p in paths if shard_number(p, s.count) == s.index})
        assert set().union(*parts) == want and sum(len(p) for p in parts) == len(want)  # disjoint, exact
    assert rank_shard(Shard(1, 3), None) == Shard(1, 3)


def test_child_args_drop_nproc():
    assert _child_args(["invert", "in", "--nproc", "2", "-o", "x"]) == ["invert", "in", "-o", "x"]
    assert _child_args(["invert", "--nproc=3", "in"]) == ["invert", "in"]


def test_merge_keeps_live_ranks_and_never_appends_twice(tmp_path):
    out = tmp_path
    (out / STATE_DIR / "locks" / "runs").mkdir(parents=True)
    dead = rank_manifest(out, "20260101T000000.000Z-aaaaaaaa", 0)
    dead.parent.mkdir(parents=True)
    dead.write_text('{"a": 1}\n{"a": 2}\n{"a": 3')  # killed mid-line: the torn line is moved aside
    from filelock import FileLock

    live_id = "20260101T000000.000Z-bbbbbbbb"
    lock = FileLock(str(out / STATE_DIR / "locks" / "runs" / f"{live_id}.lock"))
    lock.acquire()
    live = rank_manifest(out, live_id, 1)
    live.write_text('{"b": 1}\n')
    assert merge_rank_manifests(out) == 2
    assert (out / "manifest.jsonl").read_text() == '{"a": 1}\n{"a": 2}\n' and live.exists() and not dead.exists()
    assert (out / "manifest.jsonl.torn").read_text().startswith('{"a": 3')
    # a merge cut off after its append: the next one removes the file without appending it again
    cut = dead.parent / "20260101T000000.000Z-cccccccc.rank-0.jsonl.merging"
    cut.write_text('{"c": 1}\n')
    with open(out / "manifest.jsonl", "a") as f:
        f.write('{"c": 1}\n')
    lock.release()
    assert merge_rank_manifests(out) == 1  # only the live rank's line, now that it ended
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert lines == ['{"a": 1}', '{"a": 2}', '{"c": 1}', '{"b": 1}'] and not list(dead.parent.iterdir())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ranks")
    make_tiny_e4e().save(root / "e4e.safetensors")
    (root / "in").mkdir()
    for i in range(N_INPUTS):  # 256 px: each item takes a moment to load, so a rank can be stopped mid-run
        x = torch.rand(3, 256, 256, generator=torch.Generator().manual_seed(i)) * 2 - 1
        tensor_to_image(x).save(root / "in" / f"f{i:02d}.png")
    return {"root": root, "weights": root / "e4e.safetensors", "in": root / "in"}


def _args(inputs: dict, out: Path) -> list[str]:
    # batch size 1: a batch's composition changes CPU float rounding, so bit-exact comparisons need equal batches
    args = ["invert", inputs["in"], "-w", inputs["weights"], "--no-align", "-b", 1, "--workers", 0, "-o", out]
    return [str(a) for a in args]


def _ranks(inputs: dict, out: Path, world: int = 2) -> list[subprocess.Popen]:
    """Start ``world`` processes as torchrun would (its environment variables)."""
    procs = []
    for r in range(world):
        env = dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), OMP_NUM_THREADS="1",
                   GIE_DISABLE_PROGRESS_BARS="1")  # fmt: skip
        cmd = [sys.executable, "-m", "gie_cli", *_args(inputs, out)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    return procs


def _latents(out: Path) -> dict[str, torch.Tensor]:
    return {p.name: load_latent(p)[0] for p in sorted(out.glob("*.latent.safetensors"))}


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single(inputs, tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("single")
    res = CliRunner().invoke(app, _args(inputs, out))
    assert res.exit_code == 0, res.output
    return _latents(out)


def test_two_ranks_equal_one_process_with_one_merged_manifest(inputs, single, tmp_path):
    out = tmp_path / "o"
    procs = _ranks(inputs, out)
    assert [p.wait(120) for p in procs] == [0, 0], [p.stderr.read().decode()[-2000:] for p in procs]
    got = _latents(out)
    assert got.keys() == single.keys() and len(got) == N_INPUTS
    assert all(torch.equal(got[k], single[k]) for k in got)  # bit-exact
    recs = _records(out)
    assert sorted(Path(r["input"]).name for r in recs) == sorted(f"f{i:02d}.png" for i in range(N_INPUTS))
    assert {r["status"] for r in recs} == {"ok"} and len({r["run"] for r in recs}) == 2  # both ranks worked
    assert not list((out / STATE_DIR / "ranks").iterdir())  # every rank manifest merged


def test_a_killed_rank_loses_and_duplicates_nothing_when_the_run_is_repeated(inputs, single, tmp_path):
    out = tmp_path / "o"
    procs = _ranks(inputs, out)
    ranks_dir = out / STATE_DIR / "ranks"
    deadline = time.monotonic() + 120
    stopped_at = None
    while time.monotonic() < deadline:  # stop rank 0 once it has finished a few items
        files = list(ranks_dir.glob("*.rank-0.jsonl")) if ranks_dir.is_dir() else []
        lines = files[0].read_text().count("\n") if files else 0
        if lines >= 3:
            procs[0].send_signal(signal.SIGSTOP)
            stopped_at = files[0].read_text().count("\n")
            break
        time.sleep(0.005)
    procs[0].kill()
    procs[0].wait(30)
    assert procs[1].wait(120) == 0
    assert stopped_at is not None and stopped_at < N_INPUTS // 2 - 2, stopped_at  # killed mid-run
    assert len(_latents(out)) < N_INPUTS
    # the run is repeated: the killed rank's work is skipped, the rest done, its lines merged once
    procs = _ranks(inputs, out)
    assert [p.wait(120) for p in procs] == [0, 0], [p.stderr.read().decode()[-2000:] for p in procs]
    got = _latents(out)
    assert got.keys() == single.keys() and all(torch.equal(got[k], single[k]) for k in got)
    assert not list(out.glob("*.tmp-*")) and not list(ranks_dir.iterdir())
    names = sorted(f"f{i:02d}.png" for i in range(N_INPUTS))
    recs = _records(out)
    first_runs = {r["run"] for r in recs[:-N_INPUTS]}
    repeat = recs[-N_INPUTS:]  # the repeated run: one line per input, done now or skipped as done before
    assert not {r["run"] for r in repeat} & first_runs
    assert sorted(Path(r["input"]).name for r in repeat) == names
    assert {r["status"] for r in repeat} <= {"ok", "skipped"}
    ok = [Path(r["input"]).name for r in recs if r["status"] == "ok"]
    assert len(ok) == len(set(ok))  # no input was done twice

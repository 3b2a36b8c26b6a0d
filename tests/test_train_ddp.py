"""Data-parallel `gie train` (issue 21): 2 gloo ranks (torchrun's environment, and --nproc) train the same weights as
one process on the same global batches, resume from a snapshot and write one run folder; batch shares and loader
workers keep the data order."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_face, make_tiny_e4e_world
from typer.testing import CliRunner

from gie_cli.cli import app
from gie_cli.io.checkpoint import read_checkpoint
from gie_cli.training import create_trainer
from gie_cli.training.data import ImageFolder, LoaderSettings, endless, index_batches, loader_settings
from gie_cli.training.loop import _rank_batches

runner = CliRunner()
SETTINGS = {"encoder": "tiny", "input_size": "32", "lr": "0.002", "lpips_lambda": "0"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A tiny generator checkpoint and 8 images it drew."""
    return make_tiny_e4e_world(tmp_path_factory.mktemp("ddp"))


def _args(world: dict, runs: Path, steps: int, *extra: str, batch: int = 4) -> list[str]:
    args = ["train", "-m", "e4e", "--data", world["data"], "-w", world["weights"], "-b", batch, "--steps", steps]
    args += ["--run-dir", runs, "--seed", 0, "--no-progress", *extra]
    for kv in SETTINGS.items():
        args += ["--set", "=".join(kv)]
    return [str(a) for a in args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", GIE_DISABLE_PROGRESS_BARS="1", **extra)


def _two_ranks(args: list[str]) -> list[str]:
    """Run ``gie <args>`` as ranks 0 and 1 of a gloo group, as torchrun starts them; their stdout."""
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "gie_cli", *args],
            env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-3000:] for _, e in outs]
    return [o for o, _ in outs]


def _encoder(path: Path) -> dict[str, torch.Tensor]:
    """The encoder's tensors of a training snapshot."""
    return read_checkpoint(path)["modules"]["encoder"]


def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys: list[str] | None = None) -> float:
    """``|a - b| / |b|`` over the float tensors ``keys`` (default: all) as one vector."""
    keys = [k for k in (keys or list(b)) if b[k].is_floating_point()]
    return float(sum((a[k] - b[k]).square().sum() for k in keys) / sum(b[k].square().sum() for k in keys)) ** 0.5


def _assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """The same weights up to float rounding (which Adam amplifies on near-zero gradients): 1e-4 relative overall,
    1e-2 per tensor (a layer left out of the averaging, or unsynchronised BatchNorm statistics, give ~2e-2 overall);
    integer buffers equal. Returns the overall relative difference."""
    assert got.keys() == want.keys()
    for k in want:
        if want[k].is_floating_point():
            assert _rel(got, want, [k]) <= 1e-2, (k, _rel(got, want, [k]))
        else:
            assert torch.equal(got[k], want[k]), k
    diff = _rel(got, want)
    assert diff <= 1e-4, diff
    return diff


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_train_the_single_process_weights_and_resume(world, tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    # one process: 2 steps, then resumed to 3 (a resume restarts the data order); one thread like each rank (and
    # much faster than two beside other work on a 2-core machine)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for steps, extra in ((2, ()), (3, ("--resume", "latest"))):
            res = runner.invoke(app, _args(world, single, steps, *extra), env={"GIE_DISABLE_PROGRESS_BARS": "1"})
            assert res.exit_code == 0, res.output
    finally:
        torch.set_num_threads(threads)
    # two ranks with 2 images each: torchrun's environment, then resumed through --nproc
    out0, out1 = _two_ranks(_args(world, ddp, 2))
    run = ddp / "00000-e4e"
    assert out0.strip() == str(run / "e4e.safetensors") and out1 == ""  # rank 0 alone prints
    res = subprocess.run(
        [sys.executable, "-m", "gie_cli", *_args(world, ddp, 3, "--resume", "latest", "--nproc", "2")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert [p.name for p in ddp.iterdir()] == ["00000-e4e"]  # rank 0 alone made a run folder
    assert json.loads((run / "options.json").read_text())["world_size"] == 2
    s_run = single / "00000-e4e"
    # the same weights (BatchNorm statistics included) after 2 steps and after the resumed one
    torch.manual_seed(0)
    trainer = create_trainer(
        "e4e", data=str(world["data"]), weights=str(world["weights"]), device="cpu", batch_size=4, seed=0, **SETTINGS
    )
    init = {k: v.clone() for k, v in trainer.encoder.state_dict().items()}
    for snap in ("snapshot-0000002.pt", "snapshot-0000003.pt"):
        want = _encoder(s_run / snap)
        diff = _assert_close(_encoder(run / snap), want)
        assert _rel(want, init) > 100 * max(diff, 1e-6), (snap, _rel(want, init), diff)  # the weights moved
    # metrics are averaged over the ranks: the global batch's
    for a, b in zip(_metrics(s_run), _metrics(run), strict=True):
        assert a["step"] == b["step"] and abs(a["l2"] - b["l2"]) <= 1e-5 * a["l2"], (a, b)


def test_batch_size_must_split_over_the_processes(world, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    res = runner.invoke(app, _args(world, tmp_path / "r", 1, batch=3))
    assert res.exit_code == 2 and "--batch-size" in res.stderr and "divisible by the 2 processes" in res.stderr
    for k in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    res = runner.invoke(app, _args(world, tmp_path / "r", 1))
    assert res.exit_code == 2 and "MASTER_ADDR" in res.stderr
    assert not (tmp_path / "r").exists()


def test_global_batches_split_over_ranks_and_workers_keep_the_order(tmp_path):
    for i in range(6):
        make_face(i, 16).save(tmp_path / f"{i}.png")
    data = ImageFolder(tmp_path, 8)

    def take(n: int, **settings: int) -> list[torch.Tensor]:
        with loader_settings(LoaderSettings(**settings)):
            stream = endless(data, 4, seed=3)
            return [next(stream) for _ in range(n)]

    one = take(4)
    assert all(b.shape == (4, 3, 8, 8) for b in one)
    assert any(not torch.equal(b, b.flip(-1)) for b in one)  # asymmetric images: flips show
    shares = [take(4, rank=r, world=2) for r in range(2)]
    assert all(torch.equal(torch.cat([s0, s1]), b) for s0, s1, b in zip(*shares, one, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(take(4, workers=2), one, strict=True))  # flips drawn in the sampler
    # index streams shard themselves the same way; the loop cuts other streams; too many ranks for a batch: refused
    with loader_settings(LoaderSettings(rank=1, world=2)) as scope:
        got = list(itertools.islice(_rank_batches(index_batches(10, 4, seed=0), scope), 3))
        cut = list(itertools.islice(_rank_batches(({"i": torch.arange(4) + 4 * k} for k in range(9)), scope), 2))
    want = list(itertools.islice(index_batches(10, 4, seed=0), 3))
    assert all(torch.equal(g, w[2:]) for g, w in zip(got, want, strict=True))
    assert [c["i"].tolist() for c in cut] == [[2, 3], [6, 7]]
    with loader_settings(LoaderSettings(rank=0, world=8)), pytest.raises(Exception, match="cannot be split"):
        next(endless(data, 4, seed=0))

"""``--shard i/N`` (issue 21, part): disjoint shards that cover the inputs, named and computed as one run over all of
them, so a job array over one output folder gives the same outputs as one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_e4e
from typer.testing import CliRunner

from gie_cli.cli import app
from gie_cli.cli.batch import Shard, parse_shard, shard_number
from gie_cli.errors import UsageError
from gie_cli.io.images import tensor_to_image
from gie_cli.io.latents import load_latent


def test_parse_shard():
    assert parse_shard("0/3") == Shard(0, 3) and parse_shard("2/3") == Shard(2, 3) and str(Shard(1, 4)) == "1/4"
    for bad in ("3/3", "-1/3", "1", "a/3", "1/0", "1/2/3"):
        with pytest.raises(UsageError, match="i/N"):
            parse_shard(bad)


def test_shard_number_depends_on_the_input_alone(tmp_path):
    paths = [tmp_path / f"x{i}.png" for i in range(60)]
    first = [shard_number(p, 3) for p in paths]
    assert first == [shard_number(p, 3) for p in reversed(paths)][::-1]  # order does not matter
    assert set(first) == {0, 1, 2}
    assert shard_number(tmp_path / "sub" / ".." / "x5.png", 3) == first[5]  # the resolved path counts


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("shard")
    make_tiny_e4e().save(root / "e4e.safetensors")
    (root / "in" / "sub").mkdir(parents=True)
    for i in range(12):
        x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)) * 2 - 1
        folder = root / "in" / ("sub" if i % 4 == 0 else "")
        tensor_to_image(x).save(folder / f"f{i:02d}.png")
    tensor_to_image(torch.zeros(3, 32, 32)).save(root / "in" / "sub" / "f01.png")  # a name clash across folders
    return {"root": root, "weights": root / "e4e.safetensors", "in": root / "in"}


def _invert(inputs: dict, out: Path, *extra: str):
    # batch size 1: a batch's composition changes CPU float rounding, so bit-exact comparisons need equal batches
    args = [
        "invert",
        inputs["in"],
        "-r",
        "-m",
        "e4e",
        "-w",
        inputs["weights"],
        "--no-align",
        "-b",
        1,
        "-o",
        out,
        *extra,
    ]
    return CliRunner().invoke(app, [str(a) for a in args])


def _latents(out: Path) -> dict[str, torch.Tensor]:
    return {p.relative_to(out).as_posix(): load_latent(p)[0] for p in sorted(out.rglob("*.latent.safetensors"))}


def test_three_shards_are_disjoint_cover_the_inputs_and_equal_one_run(inputs, tmp_path):
    res = _invert(inputs, tmp_path / "all")
    assert res.exit_code == 0, res.output
    whole = _latents(tmp_path / "all")
    assert len(whole) == 13
    parts = []
    for i in range(3):  # separate folders: what each shard does alone
        res = _invert(inputs, tmp_path / f"s{i}", "--shard", f"{i}/3")
        assert res.exit_code == 0, res.output
        parts.append(_latents(tmp_path / f"s{i}"))
    names = [set(p) for p in parts]
    assert all(names) and not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert set().union(*names) == set(whole)  # including the clashing name, suffixed as in one run
    for part in parts:
        for name, w in part.items():
            assert torch.equal(w, whole[name]), name
    for i in range(3):  # one folder, as a job array writes it: one manifest line per input, same outputs
        res = _invert(inputs, tmp_path / "array", "--shard", f"{i}/3")
        assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in (tmp_path / "array" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(x["input"] for x in lines) == sorted({x["input"] for x in lines}) and len(lines) == 13
    assert all(x["status"] == "ok" for x in lines)
    array = _latents(tmp_path / "array")
    assert set(array) == set(whole) and all(torch.equal(array[k], whole[k]) for k in whole)


def test_bad_shard_is_a_usage_error(inputs, tmp_path):
    res = _invert(inputs, tmp_path / "x", "--shard", "3/3")
    assert res.exit_code == 2 and "--shard" in res.output
    assert not (tmp_path / "x").exists()

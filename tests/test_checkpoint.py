"""Tests of gie_cli.io.checkpoint and gie_cli.errors: safe reading, specific failures, strict loading, safetensors."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from gie_cli.errors import CheckpointError, GieError, ImageLoadError, StateDictMismatchError, UsageError
from gie_cli.io.checkpoint import (
    GIE_CONFIG_KEY,
    get_prefixed,
    latent_avg_as_wplus,
    load_safetensors,
    load_state_dict_strict,
    read_checkpoint,
    save_safetensors,
    strip_prefix,
)


class Payload:
    """A custom class: pickling an instance needs code execution to load."""

    def __init__(self) -> None:
        self.value = 42


def _ckpt() -> dict:
    return {
        "state_dict": {"encoder.w": torch.randn(4, 3), "decoder.b": torch.zeros(2, dtype=torch.float16)},
        "opts": {"lr": 1e-4, "n_styles": 18, "dataset_type": "ffhq_encode", "flag": True, "none": None, "l": [1, 2]},
        "latent_avg": torch.randn(18, 512),
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, b[k]) and v.dtype == b[k].dtype
        elif isinstance(v, dict):
            _assert_same(v, b[k])
        else:
            assert v == b[k]


def _err(path: Path) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    return info.value


# ----------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("legacy", [False, True])
def test_round_trip_zip_and_legacy(tmp_path: Path, legacy: bool) -> None:
    ck = _ckpt()
    torch.save(ck, tmp_path / "c.pt", _use_new_zipfile_serialization=not legacy)
    assert (tmp_path / "c.pt").read_bytes()[:2] == (b"\x80\x02" if legacy else b"PK")
    _assert_same(read_checkpoint(tmp_path / "c.pt"), ck)


def test_latent_avg_1d_and_namespace_opts(tmp_path: Path) -> None:
    torch.save({"latent_avg": torch.ones(512), "opts": argparse.Namespace(lr=0.1, n=3)}, tmp_path / "c.pt")
    ck = read_checkpoint(tmp_path / "c.pt")
    assert ck["latent_avg"].shape == (512,)
    assert ck["opts"] == {"lr": 0.1, "n": 3}


def test_bare_state_dict(tmp_path: Path) -> None:
    sd = nn.Linear(3, 2).state_dict()
    torch.save(sd, tmp_path / "sd.pth")
    _assert_same(read_checkpoint(tmp_path / "sd.pth"), dict(sd))


def test_missing_and_empty(tmp_path: Path) -> None:
    assert "not found" in _err(tmp_path / "nope.pt").reason
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "empty file" in _err(tmp_path / "empty.pt").reason


def test_html_page(tmp_path: Path) -> None:
    page = (
        "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>"
        "Google Drive can't scan this file for viruses. <a href='/uc?export=download&confirm=t'>Download</a>"
        "</body></html>"
    )
    (tmp_path / "e4e_ffhq_encode.pt").write_text(page)
    err = _err(tmp_path / "e4e_ffhq_encode.pt")
    assert "HTML page" in err.reason and "Google Drive" in err.reason
    assert err.hint and "gdown" in err.hint
    (tmp_path / "other.pt").write_text("\n  <html><body>403 Forbidden</body></html>")
    assert "HTML page" in _err(tmp_path / "other.pt").reason


def test_text_and_lfs_pointer(tmp_path: Path) -> None:
    (tmp_path / "lfs.pt").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    assert "Git LFS" in _err(tmp_path / "lfs.pt").reason
    (tmp_path / "txt.pt").write_text("404: Not Found")
    assert "text file" in _err(tmp_path / "txt.pt").reason


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated(tmp_path: Path, legacy: bool) -> None:
    torch.save(_ckpt(), tmp_path / "full.pt", _use_new_zipfile_serialization=not legacy)
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    err = _err(tmp_path / "half.pt")
    assert "truncated or corrupt" in err.reason


def test_garbage_binary(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"\x00\x01\x02garbage" * 50)
    assert "not a PyTorch checkpoint" in _err(tmp_path / "junk.pt").reason


@pytest.mark.parametrize("legacy", [False, True])
def test_pickled_objects_refused(tmp_path: Path, legacy: bool) -> None:
    torch.save(
        {"state_dict": {}, "payload": Payload()}, tmp_path / "evil.pt", _use_new_zipfile_serialization=not legacy
    )
    err = _err(tmp_path / "evil.pt")
    assert "pickled Python objects" in err.reason and "Payload" in err.reason
    # issue 15 (finding 8): the hint never suggests executing the pickle (torch.load(..., weights_only=False))
    assert "refuses" in err.reason and err.hint and "weights_only=False" not in err.hint


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_non_dict_top_level_and_torchscript(tmp_path: Path) -> None:
    torch.save(torch.ones(3), tmp_path / "t.pt")
    assert "top level is a Tensor" in _err(tmp_path / "t.pt").reason
    torch.jit.save(torch.jit.trace(nn.Linear(2, 2), torch.zeros(1, 2)), tmp_path / "ts.pt")
    assert "TorchScript" in _err(tmp_path / "ts.pt").reason


def test_read_safetensors_by_suffix_and_content(tmp_path: Path) -> None:
    tensors = {"a.w": torch.randn(2, 3), "b": torch.arange(4)}
    save_file(tensors, tmp_path / "m.safetensors")
    save_file(tensors, tmp_path / "m.pt")  # content sniffing, whatever the suffix
    _assert_same(read_checkpoint(tmp_path / "m.safetensors"), tensors)
    _assert_same(read_checkpoint(tmp_path / "m.pt"), tensors)
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-5])
    assert "safetensors" in _err(tmp_path / "cut.safetensors").reason


# ----------------------------------------------------------------------------------------------- state dicts


def test_get_prefixed_and_strip_prefix() -> None:
    sd = {"encoder.a": 1, "encoder.b.c": 2, "encoderx.d": 3, "decoder.e": 4, "encoder.module.f": 5}
    assert get_prefixed(sd, "encoder") == {"a": 1, "b.c": 2, "module.f": 5}
    assert get_prefixed(sd, "encoder.") == get_prefixed(sd, "encoder")
    assert get_prefixed(sd, "encoder.module") == {"f": 5}
    assert get_prefixed(sd, "missing") == {}
    assert strip_prefix({"module.a": 1, "module.b": 2}) == {"a": 1, "b": 2}
    assert strip_prefix({"module.a": 1, "c": 3}, "module.") == {"a": 1, "c": 3}
    with pytest.raises(ValueError, match="twice"):
        strip_prefix({"module.a": 1, "a": 2})


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def test_load_state_dict_strict_reports_everything() -> None:
    sd = dict(_net().state_dict())
    del sd["0.bias"]
    sd["0.weight"] = torch.zeros(5, 4)
    sd["extra.thing"] = torch.zeros(1)
    with pytest.raises(StateDictMismatchError) as info:
        load_state_dict_strict(_net(), sd, "weights.pt [encoder.*]")
    err = info.value
    assert err.missing == ["0.bias"] and err.unexpected == ["extra.thing"]
    assert err.shape_mismatch == [("0.weight", (5, 4), (3, 4))]
    msg = str(err)
    assert "weights.pt [encoder.*]" in msg and "0.bias" in msg and "extra.thing" in msg and "(5, 4)" in msg
    assert "\n" not in msg


def test_load_state_dict_strict_no_common_keys_hint() -> None:
    sd = {f"encoder.{k}": v for k, v in _net().state_dict().items()}
    with pytest.raises(StateDictMismatchError) as info:
        load_state_dict_strict(_net(), sd, "x.pt")
    assert info.value.hint and "encoder" in info.value.hint and "prefix" in info.value.hint


def test_load_state_dict_strict_fp16_into_fp32() -> None:
    src = _net()
    with torch.no_grad():
        src[0].weight.uniform_(-1, 1)
    sd = {k: v.half() if v.is_floating_point() else v for k, v in src.state_dict().items()}
    dst = _net()
    load_state_dict_strict(dst, sd, "fp16.pt")
    assert dst[0].weight.dtype == torch.float32
    assert torch.equal(dst[0].weight, src[0].weight.half().float())
    assert dst[1].num_batches_tracked.dtype == torch.int64


def test_latent_avg_as_wplus() -> None:
    d = torch.randn(512)
    for shape in [(512,), (1, 512), (18, 512), (1, 18, 512)]:
        x = d.expand(*shape).clone()
        w = latent_avg_as_wplus(x, 18)
        assert w.shape == (18, 512) and torch.equal(w[7], d)
        assert w.data_ptr() != x.data_ptr()
    for bad in [(14, 512), (2, 18, 512), (1, 1, 1, 512)]:
        with pytest.raises(CheckpointError, match="latent_avg has shape"):
            latent_avg_as_wplus(torch.zeros(bad), 18, source="e4e.pt")


# ----------------------------------------------------------------------------------------------- gie format


def test_safetensors_round_trip_with_config(tmp_path: Path) -> None:
    base = torch.randn(4, 6)
    tensors = {"w": base, "w_alias": base, "view": base[1:3], "t": base.t(), "h": torch.ones(3, dtype=torch.float16)}
    config = {"format": "gie-checkpoint/1", "generator": {"size": 1024, "style_dim": 512}, "note": "héllo"}
    path = tmp_path / "out" / "model.safetensors"
    save_safetensors(path, tensors, config)
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]  # no temp file left
    loaded, cfg = load_safetensors(path)
    assert cfg == config
    # half precision (how the embedded zoo is stored) comes back as float32 with the same values
    _assert_same(loaded, {k: v.contiguous().float() if k == "h" else v.contiguous() for k, v in tensors.items()})


def test_half_precision_copy_keeps_config_and_named_fp32_tensors(tmp_path: Path) -> None:
    from safetensors import safe_open

    from gie_cli.io.checkpoint import half_precision_copy

    t = {"a.w": torch.randn(5, 3), "latent_avg": torch.randn(4), "n": torch.arange(3)}
    save_safetensors(tmp_path / "src.safetensors", t, {"format": "gie-checkpoint/1"})
    half_precision_copy(tmp_path / "src.safetensors", tmp_path / "dst.safetensors", keep_fp32=("latent_avg",))
    with safe_open(str(tmp_path / "dst.safetensors"), framework="pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"a.w": "F16", "latent_avg": "F32", "n": "I64"}
    loaded, cfg = load_safetensors(tmp_path / "dst.safetensors")
    assert cfg == {"format": "gie-checkpoint/1"} and loaded["a.w"].dtype == torch.float32
    torch.testing.assert_close(loaded["a.w"], t["a.w"], atol=2e-3, rtol=1e-3)
    assert torch.equal(loaded["latent_avg"], t["latent_avg"]) and torch.equal(loaded["n"], t["n"])


def test_safetensors_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="JSON"):
        save_safetensors(tmp_path / "x.safetensors", {"a": torch.ones(1)}, {"bad": object()})
    assert not (tmp_path / "x.safetensors").exists()
    save_file({"a": torch.ones(1)}, tmp_path / "plain.safetensors", metadata={"other": "1"})
    assert load_safetensors(tmp_path / "plain.safetensors")[1] == {}
    save_file({"a": torch.ones(1)}, tmp_path / "badcfg.safetensors", metadata={GIE_CONFIG_KEY: "{nope"})
    with pytest.raises(CheckpointError, match="invalid"):
        load_safetensors(tmp_path / "badcfg.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_safetensors(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_safetensors(tmp_path / "missing.safetensors")


# ----------------------------------------------------------------------------------------------- errors


def test_error_strings_and_pickling() -> None:
    errs: list[GieError] = [
        ImageLoadError("a.jpg", "empty file (0 bytes)", hint="re-export it"),
        CheckpointError("b.pt", "is an HTML page", hint="download again"),
        StateDictMismatchError("c.pt", ["m"], ["u"], [("s", (1,), (2,))]),
        UsageError("bad --size\nvalue", hint="use a power of two"),
    ]
    for e in errs:
        s = str(e)
        assert "\n" not in s
        copy = pickle.loads(pickle.dumps(e))
        assert type(copy) is type(e) and str(copy) == s
    assert str(errs[0]) == "image a.jpg: empty file (0 bytes) (hint: re-export it)"
    assert errs[0].path == "a.jpg" and errs[1].reason == "is an HTML page"
    assert UsageError("x").exit_code == 2 and CheckpointError("p", "r").exit_code == 1


def test_mismatch_listing_is_capped() -> None:
    err = StateDictMismatchError("big.pt", [f"k{i}" for i in range(25)], [], [])
    s = str(err)
    assert "25 missing" in s and "k9" in s and "k10" not in s and "and 15 more" in s


def test_save_safetensors_rows_writes_the_stacked_tensors_row_by_row(tmp_path):
    """The row-by-row writer (latent packs) gives a file any safetensors reader loads as the stacked tensors, in every
    dtype gie stores, and refuses rows that do not fit its layout without leaving a file behind."""
    from safetensors.torch import load_file

    from gie_cli.io.checkpoint import load_safetensors, save_safetensors_rows

    g = torch.Generator().manual_seed(0)
    full = {
        "wplus": torch.randn(5, 3, 4, generator=g),
        "extra.feature": torch.randn(5, 2, 3, 3, generator=g).to(torch.float16),
        "extra.bf": torch.randn(5, 7, generator=g).to(torch.bfloat16),
        "extra.ids": torch.arange(5, dtype=torch.int64)[:, None],
    }
    layout = {k: (v.dtype, tuple(v.shape)) for k, v in full.items()}
    path = tmp_path / "rows.safetensors"
    n = save_safetensors_rows(path, layout, ({k: v[i : i + 1] for k, v in full.items()} for i in range(5)), {"a": 1})
    assert n == 5
    loaded = load_file(str(path))
    assert loaded.keys() == full.keys() and all(torch.equal(loaded[k], full[k]) for k in full)
    tensors, config = load_safetensors(path)
    assert config == {"a": 1} and torch.equal(tensors["extra.bf"], full["extra.bf"])
    bad_rows = [
        ({k: v[i : i + 1] for k, v in full.items() if k != "extra.ids"} for i in range(5)),  # a tensor missing
        ({**{k: v[i : i + 1] for k, v in full.items()}, "wplus": full["wplus"][i, :2]} for i in range(5)),  # shape
        ({k: v[i : i + 1].double() for k, v in full.items()} for i in range(5)),  # dtype
        ({k: v[i : i + 1] for k, v in full.items()} for i in range(4)),  # too few rows
        ({k: v[i % 5 : i % 5 + 1] for k, v in full.items()} for i in range(6)),  # too many
    ]
    for j, rows in enumerate(bad_rows):
        out = tmp_path / f"bad{j}.safetensors"
        with pytest.raises(CheckpointError, match="cannot save"):
            save_safetensors_rows(out, layout, rows, {})
        assert not out.exists() and not list(tmp_path.glob(f"bad{j}*"))

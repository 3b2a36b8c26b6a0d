"""Official-format checkpoints (built here from the parity fixtures) load through the user's path and reproduce the
recorded outputs: pSp-family files (`state_dict` with encoder./decoder., `opts`, `latent_avg`) and rosinality files."""

from __future__ import annotations

import gc

import pytest
import torch
from conftest import assert_parity, assert_parity_io, load_parity, slow

from gie_cli.errors import StateDictMismatchError
from gie_cli.methods import create_method
from gie_cli.models.loading import build_generator, read_components


def _official_file(tmp_path, kind: str, legacy: bool, avg_rows: int):
    enc_sd, enc_io, _ = load_parity(f"{kind}_encoder_ir_se50")
    dec_sd, dec_io, _ = load_parity("stylegan2_g1024")
    sd = {f"encoder.{k}": v for k, v in enc_sd.items()} | {f"decoder.{k}": v for k, v in dec_sd.items()}
    avg = torch.randn(512, generator=torch.Generator().manual_seed(3)) * 0.1
    latent_avg = avg.repeat(avg_rows, 1) if avg_rows else avg
    opts = {
        "encoder_type": "Encoder4Editing" if kind == "e4e" else "GradualStyleEncoder",
        "stylegan_size": 1024,
        "start_from_latent_avg": True,
        "dataset_type": "ffhq_encode",
    }
    path = tmp_path / f"{kind}_ffhq_encode.pt"
    torch.save(
        {"state_dict": sd, "opts": opts, "latent_avg": latent_avg}, path, _use_new_zipfile_serialization=not legacy
    )
    del sd, enc_sd, dec_sd
    gc.collect()
    return path, avg, enc_io, dec_io


@slow  # 1024 px decoder + ir_se50 encoder: 13-14 s each (tiny pSp-format file: test_invert_cli)
@pytest.mark.parametrize("kind,legacy,avg_rows", [("e4e", False, 18), ("psp", True, 0)])
def test_official_psp_family_checkpoint(tmp_path, kind, legacy, avg_rows):
    path, avg, enc_io, dec_io = _official_file(tmp_path, kind, legacy, avg_rows)
    method = create_method(kind, str(path))
    assert method.weights_id.startswith(path.name)
    with torch.no_grad():
        codes = method.invert(enc_io["img"]).wplus
        assert_parity(codes, enc_io["codes"] + avg)  # latent_avg [18,512] or [512] is added to every row
        img = method.generator(dec_io["wplus"])
    assert_parity_io(img, dec_io, "img_from_wplus")


def test_rosinality_generator_file(tmp_path):
    sd, io, _ = load_parity("stylegan2_g256")
    path = tmp_path / "stylegan2-256.pt"
    avg = torch.randn(512)
    torch.save({"g_ema": sd, "latent_avg": avg}, path)
    g = build_generator(read_components(path)).eval()
    assert torch.equal(g.w_avg, avg)
    with torch.no_grad():
        assert_parity_io(g(io["wplus"]), io, "img_from_wplus")
    # a truncated state dict is refused with the file and the missing keys named
    del sd["to_rgbs.0.bias"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save({"g_ema": sd}, path)
    with pytest.raises(StateDictMismatchError) as e:
        build_generator(read_components(path))
    msg = str(e.value)
    assert "stylegan2-256.pt" in msg and "to_rgbs.0.bias" in msg and "extra.weight" in msg

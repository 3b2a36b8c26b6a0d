"""pSp / e4e encoders: official state-dict layout, parity with recorded official outputs, tiny configs."""

from __future__ import annotations

import json
import re
import time

import pytest
import torch
from conftest import PARITY, assert_parity, load_parity, manifest_keys

from gie_cli.models.encoders import (
    ENCODER_CONFIGS,
    BottleneckIR,
    BottleneckIRSE,
    Encoder4Editing,
    GradualStyleBlock,
    GradualStyleEncoder,
    IRSEBackbone,
    create_encoder,
)

FIXTURES = {"e4e": "e4e_encoder_ir_se50", "psp": "psp_encoder_ir_se50"}
PYRAMID_256 = {  # per item
    "c1": (128, 64, 64),
    "c2": (256, 32, 32),
    "c3": (512, 16, 16),
    "p2": (512, 32, 32),
    "p1": (512, 64, 64),
}


def _meta_encoder(name: str, **cfg):
    """Build without allocating/initialising weights (the IR-SE50 encoders hold ~267M parameters)."""
    with torch.device("meta"):
        return create_encoder(name, preset="ir_se50", **cfg)


@pytest.fixture(scope="module", params=list(FIXTURES))
def official(request):
    """``(name, encoder loaded strictly with the fixture weights, io)``, built once per fixture."""
    name = request.param
    sd, io, _ = load_parity(FIXTURES[name])
    enc = _meta_encoder(name)
    enc.load_state_dict(sd, strict=True, assign=True)
    return name, enc.eval(), io


@pytest.mark.parametrize("name", list(FIXTURES))
def test_official_state_dict_layout(name):
    enc = _meta_encoder(name)
    ours = [(k, list(v.shape)) for k, v in enc.state_dict().items()]
    assert ours == manifest_keys(FIXTURES[name])  # same names, same shapes, same order


@pytest.mark.parametrize("name", list(FIXTURES))
def test_official_state_dict_dtypes(name):
    tensors = json.loads((PARITY / FIXTURES[name] / "manifest.json").read_text())["tensors"]
    enc = _meta_encoder(name)
    for k, v in enc.state_dict().items():
        assert str(v.dtype).removeprefix("torch.") == tensors[k]["dtype"], k


def test_official_parity_codes_and_pyramid(official):
    name, enc, io = official
    cls = Encoder4Editing if name == "e4e" else GradualStyleEncoder
    assert type(enc) is cls
    with torch.no_grad():
        codes, feats = enc(io["img"], return_features=True)
    ref = io["codes"]
    n = len(io["img"])  # the fixture keeps 1 item (slim.json first_item)
    assert codes.shape == ref.shape == (n, 18, 512)
    torch.testing.assert_close(codes, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    err = assert_parity(codes, ref, max_abs=1e-4)
    print(f"\n{FIXTURES[name]}: max abs error {err:.3g} (|ref| max {ref.abs().max().item():.3g})")
    assert {k: tuple(v.shape) for k, v in feats.items()} == {k: (n, *s) for k, s in PYRAMID_256.items()}
    # the plain forward gives the same codes as the return_features path
    with torch.no_grad():
        assert torch.equal(enc(io["img"]), codes)


@pytest.mark.parametrize("official", ["e4e"], indirect=True)
def test_e4e_progressive_stage_on_official(official):
    _, enc, io = official
    ref = io["codes"]
    try:
        enc.set_progressive_stage(5)  # rows 1..5 get their deltas, rows 6..17 stay at the base code (= row 0)
        with torch.no_grad():
            codes = enc(io["img"])
    finally:
        enc.set_progressive_stage(18)
    assert_parity(codes[:, :6], ref[:, :6])
    assert_parity(codes[:, 6:], ref[:, :1].expand(-1, 12, -1))


# --------------------------------------------------------------------------------------------------- tiny configs


def _tiny(name: str, **cfg):
    torch.manual_seed(0)
    return create_encoder(name, preset="tiny", **cfg).eval()


def _normalise(key: str) -> str:
    return re.sub(r"(body|styles|convs)\.\d+", r"\1.N", key)


@pytest.mark.parametrize("name", ["psp", "e4e"])
def test_tiny_keeps_official_key_names(name):
    official_names = {_normalise(k) for k, _ in manifest_keys(FIXTURES[name])}
    tiny_names = {_normalise(k) for k in _tiny(name).state_dict()}
    assert tiny_names == official_names


@pytest.mark.parametrize("name", ["psp", "e4e"])
@pytest.mark.parametrize("hw", [(128, 128), (64, 64), (64, 128), (32, 32)])
def test_tiny_forward_shapes(name, hw):
    enc = _tiny(name)
    cfg = ENCODER_CONFIGS["tiny"]
    x = torch.randn(2, 3, *hw).clamp(-1, 1)
    with torch.no_grad():
        t0 = time.perf_counter()
        codes, feats = enc(x, return_features=True)
        dt = time.perf_counter() - t0
    assert codes.shape == (2, cfg["n_styles"], cfg["style_dim"])
    assert torch.isfinite(codes).all()
    h, w = hw
    c = cfg["widths"]
    assert feats["c1"].shape == (2, c[1], h // 4, w // 4)
    assert feats["c2"].shape == (2, c[2], h // 8, w // 8)
    assert feats["c3"].shape == (2, c[3], h // 16, w // 16)
    assert feats["p2"].shape == (2, c[3], h // 8, w // 8)
    assert feats["p1"].shape == (2, c[3], h // 4, w // 4)
    print(f"\ntiny {name} {hw}: {dt * 1e3:.1f} ms")  # speed sanity only, no timing assert


def test_tiny_psp_rows_are_independent_blocks():
    enc = _tiny("psp")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        codes, feats = enc(x, return_features=True)
        for i in range(enc.n_styles):
            level = "c3" if i < 3 else "p2" if i < 7 else "p1"
            assert enc.level_of(i) == level
            torch.testing.assert_close(codes[:, i], enc.styles[i](feats[level]))


def test_e4e_progressive_stage_tiny():
    enc = _tiny("e4e")
    n = enc.n_styles
    assert enc.progressive_stage == n  # official default: "Inference" = all deltas
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full, feats = enc(x, return_features=True)
        base = enc.styles[0](feats["c3"])
        torch.testing.assert_close(full[:, 0], base)
        for i in range(1, n):
            torch.testing.assert_close(full[:, i], base + enc.styles[i](feats[enc.level_of(i)]))
        for stage in (0, 1, 3, 7, n - 1):
            enc.set_progressive_stage(stage)
            codes = enc(x)
            lazy_and_full = enc(x, return_features=True)[0]
            torch.testing.assert_close(codes, lazy_and_full)
            torch.testing.assert_close(codes[:, : stage + 1], full[:, : stage + 1])
            torch.testing.assert_close(codes[:, stage + 1 :], base[:, None].expand(-1, n - stage - 1, -1))
    with pytest.raises(ValueError):
        enc.set_progressive_stage(n + 1)


# --------------------------------------------------------------------------------------- building blocks, configs


def test_backbone_depths_and_modes():
    with torch.device("meta"):
        for layers, units in ((50, 24), (100, 49), (152, 50)):
            bb = IRSEBackbone(layers, "ir_se")
            assert len(bb.body) == units
        ir = IRSEBackbone(50, "ir")
    assert bb.stage_ends == (2, 10, 46, 49)  # 152 layers: (3, 8, 36, 3) units
    assert IRSEBackbone(unit_counts=(1, 1, 1, 1), widths=(8, 8, 16, 16)).stage_ends == (0, 1, 2, 3)
    assert not any(".res_layer.5." in k for k in ir.state_dict())
    assert all(type(u) is BottleneckIR for u in ir.body)
    assert all(type(u) is BottleneckIRSE for u in bb.body)
    # official taps of IR-SE50: c1 = unit 6, c2 = unit 20, c3 = unit 23
    with torch.device("meta"):
        assert IRSEBackbone(50).stage_ends == (2, 6, 20, 23)


def test_bottleneck_units_standalone():
    unit = BottleneckIR(16, 32, 2).eval()
    assert [k for k in unit.state_dict() if k.endswith("weight")] == [
        "shortcut_layer.0.weight",
        "shortcut_layer.1.weight",
        "res_layer.0.weight",
        "res_layer.1.weight",
        "res_layer.2.weight",
        "res_layer.3.weight",
        "res_layer.4.weight",
    ]
    assert unit(torch.randn(1, 16, 8, 8)).shape == (1, 32, 4, 4)
    same = BottleneckIRSE(32, 32, 1).eval()
    assert isinstance(same.shortcut_layer, torch.nn.MaxPool2d)
    assert same.res_layer[5].fc1.weight.shape == (2, 32, 1, 1) and same.res_layer[5].fc1.bias is None
    assert same(torch.randn(1, 32, 8, 8)).shape == (1, 32, 8, 8)


def test_gradual_style_block():
    blk = GradualStyleBlock(32, 16, 8)
    assert [k for k in blk.state_dict()] == [
        "convs.0.weight",
        "convs.0.bias",
        "convs.2.weight",
        "convs.2.bias",
        "convs.4.weight",
        "convs.4.bias",
        "linear.weight",
        "linear.bias",
    ]
    assert blk(torch.randn(2, 32, 8, 8)).shape == (2, 16)
    assert blk(torch.randn(2, 32, 4, 4)).shape == (2, 16)  # smaller maps end at 1x1 too
    with pytest.raises(ValueError):
        blk(torch.randn(2, 32, 16, 16))  # larger than built for


def test_input_checks():
    enc = _tiny("psp")
    for bad in (torch.randn(3, 64, 64), torch.randn(1, 1, 64, 64), torch.randn(1, 3, 72, 64)):
        with pytest.raises(ValueError):
            enc(bad)


def test_create_encoder_from_json_like_config():
    enc = create_encoder(
        "E4E", mode="ir", unit_counts=[1, 1, 1, 1], widths=[8, 16, 32, 32], n_styles=4, style_dim=16, input_size=64
    )
    assert isinstance(enc, Encoder4Editing) and enc.n_styles == 4
    assert enc.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 4, 16)
    assert isinstance(create_encoder("psp", preset="tiny", n_styles=6), GradualStyleEncoder)
    with pytest.raises(ValueError):
        create_encoder("restyle")
    with pytest.raises(ValueError):
        create_encoder("psp", preset="huge")
    with pytest.raises(TypeError):
        create_encoder("psp", preset="tiny", bogus=1)

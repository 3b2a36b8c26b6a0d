"""StyleFeatureEditor's official modules (Bobkov et al., CVPR 2024) against the parity fixtures: the Inverter
(``fs_backbone`` + ``fuser``) and the Feature Editor load strictly with the official keys and reproduce the recorded
outputs of the official code."""

from __future__ import annotations

import torch
from conftest import _fixture_weights, assert_parity, assert_parity_io, first_items, load_parity, manifest_keys

from gie_cli.io.checkpoint import load_state_dict_strict
from gie_cli.methods.sfe import ContentLayerDeepFast, Inverter


def _generated(cfg: dict, n: int) -> dict[str, torch.Tensor]:
    """The generated inputs, cut to the ``n`` items the fixture's io.pt keeps (slim.json first_item)."""
    fw = _fixture_weights()
    return {k: first_items(fw.make_tensor(k, spec, {}), n) for k, spec in cfg.get("generated_inputs", {}).items()}


def test_inverter_has_the_official_keys_and_reproduces_codes_feature_and_fused_feature():
    sd, io, cfg = load_parity("sfe_inverter")
    net = Inverter().eval()
    assert [(k, list(v.shape)) for k, v in net.state_dict().items()] == manifest_keys("sfe_inverter")
    load_state_dict_strict(net, sd, "sfe inverter fixture")
    gen = _generated(cfg, len(io["w_recon"]))
    assert torch.equal(gen["F_w"][:, :4, :4, :4], io["F_w_fp"])
    with torch.no_grad():
        codes, predicted = net(io["img"])
        fused = net.fuse(predicted, gen["F_w"])
    assert_parity(codes, io["w_recon"], 1e-4 * float(io["w_recon"].abs().max()))
    assert_parity_io(predicted, io, "F_pred", rel=True)
    assert_parity_io(fused, io, "fused", rel=True)


def test_feature_editor_has_the_official_keys_and_reproduces_the_edited_feature():
    sd, io, cfg = load_parity("sfe_editor")
    net = ContentLayerDeepFast(6, 1024, 512).eval()
    assert [(k, list(v.shape)) for k, v in net.state_dict().items()] == manifest_keys("sfe_editor")
    load_state_dict_strict(net, sd, "sfe feature editor fixture")
    gen = _generated(cfg, len(io["out_ch0_8"]))
    assert torch.equal(gen["F_k"][:, :4, :4, :4], io["F_k_fp"]) and torch.equal(
        gen["delta"][:, :4, :4, :4], io["delta_fp"]
    )
    with torch.no_grad():
        out = net(torch.cat([gen["F_k"], gen["delta"]], dim=1))
    assert_parity_io(out, io, "out", rel=True)

"""StyleFeatureEditor's official modules (Bobkov et al., CVPR 2024) against the parity fixtures: the Inverter
(``fs_backbone`` + ``fuser``) and the Feature Editor load strictly with the official keys and reproduce the recorded
outputs of the official code."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from conftest import _fixture_weights, assert_parity, load_parity, manifest_keys

from gie_cli.io.checkpoint import load_state_dict_strict
from gie_cli.methods.sfe import ContentLayerDeepFast, Inverter


def _generated(cfg: dict) -> dict[str, torch.Tensor]:
    fw = _fixture_weights()
    return {k: fw.make_tensor(k, spec, {}) for k, spec in cfg.get("generated_inputs", {}).items()}


def _summaries(out: torch.Tensor, io: dict, name: str, pool: int) -> None:
    """``out`` against the fixture's ``<name>_pool<k>`` and ``<name>_ch0_8`` summaries (relative 1e-4)."""
    for key, got in ((f"{name}_pool{pool}", F.avg_pool2d(out, pool)), (f"{name}_ch0_8", out[:, :8])):
        assert_parity(got, io[key], 1e-4 * float(io[key].abs().max()))


def test_inverter_has_the_official_keys_and_reproduces_codes_feature_and_fused_feature():
    sd, io, cfg = load_parity("sfe_inverter")
    net = Inverter().eval()
    assert [(k, list(v.shape)) for k, v in net.state_dict().items()] == manifest_keys("sfe_inverter")
    load_state_dict_strict(net, sd, "sfe inverter fixture")
    gen = _generated(cfg)
    assert torch.equal(gen["F_w"][:, :4, :4, :4], io["F_w_fp"])
    with torch.no_grad():
        codes, predicted = net(io["img"])
        fused = net.fuse(predicted, gen["F_w"])
    assert_parity(codes, io["w_recon"], 1e-4 * float(io["w_recon"].abs().max()))
    _summaries(predicted, io, "F_pred", 8)
    _summaries(fused, io, "fused", 8)


def test_feature_editor_has_the_official_keys_and_reproduces_the_edited_feature():
    sd, io, cfg = load_parity("sfe_editor")
    net = ContentLayerDeepFast(6, 1024, 512).eval()
    assert [(k, list(v.shape)) for k, v in net.state_dict().items()] == manifest_keys("sfe_editor")
    load_state_dict_strict(net, sd, "sfe feature editor fixture")
    gen = _generated(cfg)
    assert torch.equal(gen["F_k"][:, :4, :4, :4], io["F_k_fp"]) and torch.equal(
        gen["delta"][:, :4, :4, :4], io["delta_fp"]
    )
    with torch.no_grad():
        out = net(torch.cat([gen["F_k"], gen["delta"]], dim=1))
    _summaries(out, io, "out", 4)

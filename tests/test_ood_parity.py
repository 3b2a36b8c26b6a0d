"""OOD GAN inversion's SAMM (Yin et al., ICCV 2023) against the parity fixture: the 64x64 level's
``StyledscaleNshfitBlock`` loads strictly with the official ``modulation.2.*`` keys and reproduces the recorded warped
feature and (dx, dy, alpha) of the official code, alone (case A) and merged with the 32x32 level's result (case B)."""

from __future__ import annotations

import pytest
import torch
from conftest import _fixture_weights, assert_parity, assert_parity_io, first_items, load_parity, manifest_keys

from gie_cli.io.checkpoint import load_state_dict_strict
from gie_cli.methods.ood.modules import SAMMBlock


@pytest.fixture(scope="module")
def fixture():
    sd, io, cfg = load_parity("ood_samm")
    block = SAMMBlock(512, scale=0.08, iterations=2).eval()
    assert [(k, list(v.shape)) for k, v in block.state_dict().items()] == manifest_keys("ood_samm")
    load_state_dict_strict(block, sd, "ood samm fixture")
    n = len(io["A_align"])
    fw = _fixture_weights()
    gen = {k: first_items(fw.make_tensor(k, spec, {}), n) for k, spec in cfg["generated_inputs"].items()}
    assert torch.equal(gen["enc_feat"][:, :4, :4, :4], io["enc_feat_fp"][:n])
    assert torch.equal(gen["gen_feat"][:, :4, :4, :4], io["gen_feat_fp"][:n])
    return block, io, gen


@pytest.mark.parametrize("case", ["A", "B"])
def test_samm_block_reproduces_the_official_warp_and_align(fixture, case):
    block, io, gen = fixture
    prev = io["prev_align"] if case == "B" else None
    with torch.no_grad():
        warped, align = block(gen["enc_feat"], gen["gen_feat"], prev=prev)
    assert_parity(align, io[f"{case}_align"], 1e-4)
    assert_parity_io(warped, io, f"{case}_warped", rel=True)

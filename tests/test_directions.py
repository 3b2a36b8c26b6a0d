"""Directions: official importers and conventions, file format, generator binding, StyleSpace hooks, fitting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURES

from gie_cli.editing import Direction, DirectionError, apply, check_generator, generator_binding, generator_fingerprint
from gie_cli.editing.fit import (
    detect_stylespace_channels,
    interfacegan_direction,
    linear_boundary,
    pca,
    sample_w,
    style_statistics,
    stylespace_direction,
)
from gie_cli.editing.importers import FFHQ_GANSPACE_EDITS, import_file, import_ganspace, import_interfacegan
from gie_cli.editing.stylespace import layer_to_s_index, s_index_to_layer, style_vectors
from gie_cli.errors import CheckpointError
from gie_cli.io.checkpoint import read_checkpoint
from gie_cli.models.stylegan2 import Generator

OFFICIAL = FIXTURES / "directions"


def _tiny(seed: int = 0, style_dim: int = 32) -> Generator:
    torch.manual_seed(seed)
    g = Generator(32, style_dim=style_dim, n_mlp=2, channel_max=32).eval()
    g.mean_latent(512)
    return g


def _codes(b: int = 3, n: int = 18, d: int = 512, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------- importers
def test_interfacegan_1x512_broadcasts_to_all_layers_with_e4e_and_sfe_conventions():
    raw = read_checkpoint(OFFICIAL / "age.pt", allow_tensor=True)[""]
    assert raw.shape == (1, 512)
    d = import_interfacegan(OFFICIAL / "age.pt")
    assert (d.space, d.scale, d.layers, d.power_range) == ("w", 1.0, list(range(18)), (-5.0, 5.0))
    assert d.generator["fingerprint"] is None and d.generator["n_latent"] == 18
    assert d.provenance["sha256"] == "50074516b1629707d89b5e43d6b8abd1792212fa3b961a87a11323d6a5222ae0"
    w = _codes()
    delta = apply(d, 3.0, w).delta
    assert torch.allclose(delta, 3.0 * raw[0].expand(3, 18, 512), atol=1e-6)  # e4e: w + factor * d
    sfe = import_interfacegan(OFFICIAL / "age.pt", convention="sfe")
    assert sfe.scale == 0.5 and sfe.power_range == (-10.0, 10.0)  # SFE's own range, in SFE's factor units
    assert torch.allclose(apply(sfe, 3.0, w).delta, 1.5 * raw[0].expand(3, 18, 512), atol=1e-6)  # w + factor/2 * d
    smile = import_interfacegan(OFFICIAL / "smile.pt", layers=[0, 1, 2, 3])
    dsm = apply(smile, -2.0, w).delta
    assert torch.count_nonzero(dsm[:, 4:]) == 0 and torch.allclose(dsm[:, :4], -2.0 * smile.tensors["vector"])


def test_pose_1x18x512_is_a_per_layer_wplus_direction():
    raw = read_checkpoint(OFFICIAL / "pose.pt", allow_tensor=True)[""]
    assert raw.shape == (1, 18, 512)
    (d,) = import_file(OFFICIAL / "pose.pt")
    assert d.space == "wplus" and d.tensors["vector"].shape == (18, 512) and d.provenance["identical_rows"]
    w = _codes()
    assert torch.allclose(apply(d, -1.5, w).delta, -1.5 * raw.expand(3, -1, -1), atol=1e-6)
    with pytest.raises(DirectionError, match="exceed the codes' 14"):
        apply(d, 1.0, _codes(n=14))


def test_ganspace_matches_hand_computation_of_the_official_formula():
    pca_dict = read_checkpoint(OFFICIAL / "ffhq_pca.pt")
    dirs = {d.name: d for d in import_ganspace(OFFICIAL / "ffhq_pca.pt")}
    assert set(dirs) == set(FFHQ_GANSPACE_EDITS)
    d = dirs["eye_openness"]  # (54, 7, 8, strength)
    assert d.layers == [7] and d.params["component"] == 54 and d.params["mode"] == "set"
    w = _codes(2, seed=3)
    power = 5.0
    got = apply(d, power, w).delta.numpy()
    mean = pca_dict["mean"].numpy().reshape(-1)
    comp = pca_dict["comp"][54].numpy().reshape(-1)
    std = float(pca_dict["std"][54])
    for b in range(2):
        coord = float(np.sum((w[b, 0].numpy() - mean) * comp)) / std  # layer 0 of the W+ code, as the official code
        want = np.zeros((18, 512), np.float32)
        want[7:8] = (power - coord) * comp * std
        np.testing.assert_allclose(got[b], want, atol=1e-4)
    # "set" semantics: for a W code (all layers equal) the edited layer's coordinate becomes the power
    wb = w[:, :1].expand(-1, 18, -1)
    edited = (wb + apply(d, power, wb).delta)[:, 7].numpy()
    np.testing.assert_allclose(((edited - mean) @ comp) / std, [power, power], atol=1e-3)
    beard = dirs["trimmed_beard"]
    assert beard.layers == [7, 8] and beard.params["strength"] == 20.0 and beard.power_range == (-30.0, 30.0)
    add = import_ganspace(OFFICIAL / "ffhq_pca.pt", mode="add")[0]
    c = add.tensors["component"]
    assert torch.allclose(apply(add, 2.0, w).delta[:, add.layers], 2.0 * add.params["std"] * c.expand(2, 1, -1))


def test_sfe_boundary_npy_is_applied_with_the_full_factor(tmp_path):
    b = np.random.default_rng(0).standard_normal((1, 9216)).astype(np.float32)
    b /= np.linalg.norm(b)
    path = tmp_path / "Smiling_boundary.npy"
    np.save(path, b)
    (d,) = import_file(path)
    assert (d.name, d.space, d.scale, d.power_range) == ("fs_smiling", "wplus", 1.0, (-10.0, 10.0))
    w = _codes(2)
    delta = apply(d, 4.0, w).delta
    # SFE's fs edit: (w.flatten() + factor * boundary).view(-1, 18, 512)
    want = torch.from_numpy(w.reshape(2, -1).numpy() + 4.0 * b).view(2, 18, 512) - w
    assert torch.allclose(delta, want, atol=1e-5)
    # ... while SFE's InterFaceGAN path halves the factor: the two conventions are explicit, not accidental
    assert import_interfacegan(OFFICIAL / "smile.pt", convention="sfe").scale == 0.5
    np.save(tmp_path / "odd.npy", np.zeros((1, 1000), np.float32))
    with pytest.raises(DirectionError, match="W\\+ rows"):
        import_file(tmp_path / "odd.npy")


def test_file_roundtrip_and_bad_files(tmp_path):
    d = import_interfacegan(OFFICIAL / "smile.pt", convention="sfe")
    path = d.save(tmp_path)
    assert path.name == "smile.direction.safetensors"
    back = Direction.load(path)
    assert back.config() == d.config() and torch.equal(back.tensors["vector"], d.tensors["vector"])
    with pytest.raises(CheckpointError, match="top level is a Tensor"):
        read_checkpoint(OFFICIAL / "age.pt")  # a bare tensor needs allow_tensor=True
    with pytest.raises(DirectionError, match="not an official direction file"):
        torch.save({"a": torch.zeros(1)}, tmp_path / "x.pt")
        import_file(tmp_path / "x.pt")
    with pytest.raises(DirectionError, match="unknown space"):
        Direction("x", "nope", {"vector": torch.zeros(4)}, [0])


# --------------------------------------------------------------------------------------------------- binding
def test_fingerprint_identifies_the_synthesis_weights():
    g1, g2 = _tiny(0), _tiny(0)
    fp = generator_fingerprint(g1)
    assert len(fp) == 64 and fp == generator_fingerprint(g2)
    with torch.no_grad():
        g2.style[1].weight.add_(1.0)  # the mapping MLP (Style Transformer fine-tunes it) is not part of it
        g2.noises.noise_0.normal_()
    assert generator_fingerprint(g2) == fp
    with torch.no_grad():
        g2.convs[0].conv.weight[0, 0, 0, 0, 0] += 1e-3
    assert generator_fingerprint(g2) != fp  # cache invalidated by the in-place change
    assert generator_fingerprint(_tiny(1)) != fp


def test_wrong_generator_is_refused_unless_forced(caplog):
    g, other = _tiny(0), _tiny(1)
    d = Direction("v", "w", {"vector": torch.ones(32) / 32**0.5}, list(range(8)), generator=generator_binding(g, "a"))
    check_generator(d, g)
    with pytest.raises(DirectionError, match="was made for generator a"):
        check_generator(d, other)
    check_generator(d, other, force=True)
    assert "anyway" in caplog.text
    unbound = Direction(
        "u", "w", {"vector": torch.ones(32)}, [0], generator=generator_binding(g, "a", fingerprint=False)
    )
    check_generator(unbound, other)
    assert "not bound" in caplog.text
    official = import_interfacegan(OFFICIAL / "age.pt")  # FFHQ shapes: never on a 32-wide generator, even forced
    with pytest.raises(DirectionError, match="width 512"):
        check_generator(official, g, force=True)


# --------------------------------------------------------------------------------------------------- StyleSpace
def test_stylespace_indexing_matches_sfe_tables():
    # SFE's STYLESPACE_IDX maps paper indices (ToRGB included) to conv styles: 0->0, 2->1, 3->2, 6->4, 12->8, 15->10
    for s, layer in [(0, 0), (2, 1), (3, 2), (5, 3), (6, 4), (9, 6), (12, 8), (15, 10), (24, 16)]:
        assert s_index_to_layer(s) == layer and layer_to_s_index(layer) == s
    for torgb in (1, 4, 7, 25):
        with pytest.raises(ValueError, match="ToRGB"):
            s_index_to_layer(torgb)


def test_style_offsets_equal_the_wplus_edit_they_encode():
    g = _tiny()
    w = g.broadcast(sample_w(g, 2, seed=5))
    dw = torch.randn(2, 32)
    wp = w.clone()
    wp[:, 2] += dw  # W+ entry 2 modulates conv layer 2 only
    mod = g.convs[1].conv.modulation
    offset = F.linear(dw, mod.weight * mod.scale)  # affine: A(w + dw) - A(w)
    with torch.no_grad():
        ref = g(wp)
        base = g(w)
        hooked = g(w, style_offsets={2: offset})
        after = g(w)
    assert torch.allclose(hooked, ref, atol=1e-5) and not torch.allclose(hooked, base, atol=1e-3)
    assert torch.equal(after, base)  # nothing stays on the generator
    with pytest.raises(ValueError, match="style offset of layer 2"):
        g(w, style_offsets={2: torch.zeros(1, 5)})


def test_stylespace_single_channel_direction_and_detection():
    g = _tiny()
    w = sample_w(g, 1500, seed=2)
    mean, std = style_statistics(g, w)[5]
    d = stylespace_direction("ch", g, 5, 7, float(std[7]), generator_binding(g), {})
    e = apply(d, 2.0, g.broadcast(w[:4]))
    assert set(e.styles) == {5} and torch.count_nonzero(e.delta) == 0
    assert torch.allclose(e.styles[5][:, 7], torch.full((4,), 2.0 * float(std[7])))
    assert torch.count_nonzero(e.styles[5]) == 4
    # a label that is a style channel is found by StyleSpace's detection
    s = style_vectors(g, w, [3])[3][:, 11]
    labels = (s > s.quantile(0.8)).float()
    layer, channel, theta, sign = detect_stylespace_channels(g, w, labels, top=3)[0]
    assert (layer, channel, sign) == (3, 11, 1.0) and theta > 1.0


# --------------------------------------------------------------------------------------------------- fitting
def test_interfacegan_recovers_a_planted_direction():
    g = _tiny()
    w = sample_w(g, 3000, seed=1)
    planted = torch.randn(32, generator=torch.Generator().manual_seed(7))
    planted /= planted.norm()
    labels = ((w - w.mean(0)) @ planted > 0).float()
    for solver in ("svm", "logistic"):
        fit = linear_boundary(w, labels, solver=solver)
        cos = float(fit.normal @ planted)
        assert cos >= 0.9, (solver, cos)
        assert fit.stats["val_accuracy"] > 0.95
    # continuous scores: InterFaceGAN's extremes (chosen ratio) of each side
    scores = (w - w.mean(0)) @ planted + 0.05 * torch.randn(3000, generator=torch.Generator().manual_seed(1))
    fit = linear_boundary(w, scores, chosen_ratio=0.2)
    assert fit.stats["n_pos"] == fit.stats["n_neg"] == 600 and float(fit.normal @ planted) >= 0.9
    d = interfacegan_direction("planted", fit, g.n_latent, 32, generator_binding(g), {"method": "fit"})
    assert d.space == "w" and d.layers == list(range(8)) and abs(float(d.tensors["vector"].norm()) - 1) < 1e-5


def test_joint_regression_holds_correlated_labels_apart():
    """Latents built from two correlated labels through known directions: the joint fit recovers each label's own
    direction, where regressing on one label at a time mixes in the other."""
    from gie_cli.editing.fit import multi_label_regression

    gen = torch.Generator().manual_seed(0)
    n, d = 4000, 16
    a = torch.randn(n, generator=gen)
    b = 0.8 * a + 0.6 * torch.randn(n, generator=gen)  # corr(a, b) = 0.8
    da, db = torch.randn(d, generator=gen), torch.randn(d, generator=gen)
    x = a[:, None] * da + b[:, None] * db + 0.05 * torch.randn(n, d, generator=gen) + 3.0
    fit = multi_label_regression(x, torch.stack([a, b], 1), ridge=0.0)
    torch.testing.assert_close(fit.coef, torch.stack([da, db]), atol=0.01, rtol=0.01)
    assert (fit.r2 > 0.99).all()
    alone = multi_label_regression(x, a[:, None], ridge=0.0).coef[0]  # drags db along: da + 0.8 db
    torch.testing.assert_close(alone, da + 0.8 * db, atol=0.05, rtol=0.05)
    with pytest.raises(DirectionError):
        multi_label_regression(x[:2], torch.stack([a, b], 1)[:2])


def test_ganspace_components_are_orthonormal_and_ordered_by_variance():
    g = _tiny()
    w = sample_w(g, 4000, seed=4)
    res = pca(w, 12)
    c = res.components
    assert torch.allclose(c @ c.T, torch.eye(12), atol=1e-5)
    assert bool((res.std[:-1] >= res.std[1:]).all()) and bool((res.explained[:-1] >= res.explained[1:]).all())
    proj = (w - res.mean) @ c.T
    assert torch.allclose(proj.std(0), res.std, rtol=1e-3)  # std is the spread of the samples' coordinates
    # the first component carries more variance than any random unit direction
    r = torch.nn.functional.normalize(torch.randn(50, 32), dim=1)
    assert float(((w - res.mean) @ r.T).std(0).max()) <= float(res.std[0]) + 1e-4


def test_shipped_official_directions_are_found_by_name(monkeypatch, tmp_path):
    from gie_cli.editing import list_directions, load_direction

    monkeypatch.setenv("GIE_CACHE_DIR", str(tmp_path))  # an empty user folder
    monkeypatch.delenv("GIE_DIRECTIONS_PATH", raising=False)
    names = {d["name"] for d in list_directions() if not d["shadowed"]}
    assert {"age", "smile", "pose", *FFHQ_GANSPACE_EDITS} <= names
    from gie_cli.editing import load_direction_candidates

    # "smile" is also a synthetic-world direction (directions/, first on the path); the FFHQ file is a candidate
    cands = load_direction_candidates("smile")
    smile = next(d for d in cands if d.path.parent.name == "shipped")
    assert smile.provenance["source"].startswith("omertov/encoder4editing")
    raw = read_checkpoint(OFFICIAL / "smile.pt", allow_tensor=True)[""]
    assert torch.equal(smile.tensors["vector"], raw[0]) and smile.scale == 1.0
    # a same-named file in the user folder shadows the shipped one
    (tmp_path / "directions").mkdir()
    import_interfacegan(OFFICIAL / "age.pt", name="smile", convention="sfe").save(tmp_path / "directions")
    assert load_direction("smile").scale == 0.5


def test_world_directions_are_package_data_found_from_the_package(monkeypatch, tmp_path):
    """The synthetic world's directions live in the package (so a wheel carries them), are found through
    importlib.resources and not through a source checkout's root, and the top-level `directions` is a link to them."""
    from importlib import resources
    from pathlib import Path

    from gie_cli.editing import DIRECTION_SUFFIX, list_directions, shipped_directions_dirs

    monkeypatch.setenv("GIE_CACHE_DIR", str(tmp_path))  # an empty user folder
    monkeypatch.delenv("GIE_DIRECTIONS_PATH", raising=False)
    package = Path(str(resources.files("gie_cli.editing")))
    world = package / "world"
    assert shipped_directions_dirs() == [world, package / "shipped"]
    found = {
        Path(d["path"]).name.removesuffix(DIRECTION_SUFFIX)
        for d in list_directions()
        if Path(d["path"]).parent == world
    }
    assert {"yaw", "smile", "mouth_open", "glasses", "age", "hair_length", "hair_lightness"} <= found
    root = Path(__file__).resolve().parents[1]
    assert (root / "directions").resolve() == world.resolve()  # the design card's folder is the package folder
    assert '"editing/world/*.safetensors"' in (root / "pyproject.toml").read_text()  # ... shipped in wheels

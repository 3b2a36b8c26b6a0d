"""The embedded demo zoo: registered, hashed, small, half precision, and the README's offline main job works on it
(synth photos -> align -> invert -> edit) with the world directions bound to the embedded generator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from gie_cli.cli import app
from gie_cli.editing import Direction, generator_fingerprint, list_directions
from gie_cli.io.images import sha256_file
from gie_cli.methods import create_method
from gie_cli.metrics.ssim import psnr
from gie_cli.synth.estimator import AttributeEstimator
from gie_cli.synth.params import ATTRIBUTES
from gie_cli.synth.zoo import ZOO_DIR, ZOO_FILES
from gie_cli.weights import load_registry, resolve_weights

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
WORLD_DIRECTIONS = ["yaw", "smile", "mouth_open", "glasses", "age", "hair_length", "hair_lightness"]


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_zoo_files_are_registered_hashed_small_and_half_precision():
    from safetensors import safe_open

    reg = load_registry()
    total = 0
    for kind, (fname, name) in ZOO_FILES.items():
        path = ZOO_DIR / fname
        assert path.is_file(), f"{path} missing: run scripts/build_zoo.sh"
        entry = reg.get(name)
        assert entry.sha256 == sha256_file(path) and entry.size == path.stat().st_size, f"{name}: run embed_hashes"
        total += entry.size
        with safe_open(str(path), framework="pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys() if k not in ("latent_avg",)}
        assert dtypes <= {"F16", "I64", "BOOL"}, (kind, dtypes)
    assert total <= 40_000_000  # the zoo's cap
    assert (ZOO_DIR / ZOO_FILES["hfgi"][0]).stat().st_size <= 4_000_000  # issue 17: HFGI adds at most 4 MB
    assert (ZOO_DIR / ZOO_FILES["style_transformer"][0]).stat().st_size <= 4_000_000  # issue 18: at most 4 MB
    assert (ZOO_DIR / ZOO_FILES["sfe"][0]).stat().st_size <= 6_000_000  # issue 19: SFE adds at most 6 MB
    assert (ZOO_DIR / ZOO_FILES["ood"][0]).stat().st_size <= 4_000_000  # issue 20: OOD adds at most 4 MB
    editing = sum((ZOO_DIR / ZOO_FILES[k][0]).stat().st_size for k in ("latent_classifier", "edit_transformer"))
    assert editing <= 1_000_000  # its label- and reference-editing models
    assert resolve_weights(None, method="e4e") == ZOO_DIR / ZOO_FILES["e4e"][0]
    assert resolve_weights(None, method="optim") == ZOO_DIR / ZOO_FILES["generator"][0]
    assert resolve_weights(None, method="gradstyle") == ZOO_DIR / ZOO_FILES["gradstyle"][0]
    assert resolve_weights(None, method="hfgi") == ZOO_DIR / ZOO_FILES["hfgi"][0]
    for kind in ("style_transformer", "latent_classifier", "edit_transformer", "sfe", "ood"):
        assert resolve_weights(None, method=kind) == ZOO_DIR / ZOO_FILES[kind][0]


def test_no_zoo_model_is_stored_twice():
    from safetensors import safe_open

    from gie_cli.synth.zoo import ZOO_BASES
    from gie_cli.weights import load_components

    reg = load_registry()
    for kind, (base, parts) in ZOO_BASES.items():
        path = ZOO_DIR / ZOO_FILES[kind][0]
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
        dropped = tuple(f"{p}." for p in parts if p != "latent_avg")  # a part, or a dotted prefix inside one
        assert not any(k.startswith(dropped) for k in keys), (kind, keys)
        comp = load_components(path)  # the parts come back from the base, which is the registered file
        assert comp.config["base"] == {"weights": base, "sha256": reg.get(base).sha256, "parts": parts}
        back = {f"{pre}.{k}" for pre, sd in comp.parts.items() for k in sd}
        assert all(any(k.startswith(d) for k in back) for d in dropped) and comp.latent_avg is not None


def test_world_gradstyle_reconstructs_held_out_faces_better_than_its_e4e():
    from gie_cli.benchmark.data import synthface_data

    x = synthface_data(8, 64, seed=123).images  # [-1, 1]
    gs, e4e = create_method("gradstyle", None, "cpu"), create_method("e4e", None, "cpu")
    with torch.no_grad():
        ours, bare = ((m.render(m.invert(x)) - x).square().mean().item() for m in (gs, e4e))
    gain_db = 10 * np.log10(bare / ours)
    assert gain_db > 0.5, (ours, bare)


@torch.no_grad()
def test_world_gradstyle_aligners_beat_doing_nothing_on_held_out_faces():
    """Issue 16: on held-out world faces, for every stage, Aligner(warp(F), warp(f), f) is closer to F than warp(F)
    (relative L1), Aligner(0, ., .) = 0, and the Editing Stream at alpha = 0 stays within 0.5 dB of the
    Reconstruction Stream."""
    from gie_cli.benchmark.data import synthface_data
    from gie_cli.ops.warp import random_perspective

    x = synthface_data(16, 64, seed=321).images
    gs = create_method("gradstyle", None, "cpu")
    src, dst = random_perspective(len(x), 0.15, torch.Generator().manual_seed(5))
    probe = gs.probe_alignment(x, src, dst)
    assert len(probe.stages) == 3
    for stage, e in probe.stages.items():
        aligned, unaligned = float(e["aligned"].mean()), float(e["unaligned"].mean())
        assert aligned < unaligned, (stage, aligned, unaligned)
    inv = gs.invert(x)
    residuals = gs.stored_residuals(inv)
    sources = gs.source_features(inv.wplus, residuals)
    for s in gs.net.stages:
        zero = gs.net.gam[str(s.layer)](
            torch.zeros_like(residuals[s.layer]).float(), sources[s.layer], sources[s.layer]
        )
        assert torch.equal(zero, torch.zeros_like(zero)), s.layer
    zero, recon = (float(psnr(y.clamp(-1, 1), x, data_range=2.0).mean()) for y in (probe.zero_edit, gs.render(inv)))
    assert zero > recon - 0.5, (zero, recon)


@torch.no_grad()
def test_world_gradstyle_edits_beat_e4e_edits_against_the_true_edited_photos():
    """Issue 16: GradStyle's Editing Stream keeps its reconstruction's gain through an edit. Against the renderer's
    true edited photos (for the amount each method edited) its smile:+2 and age:+2 edits beat e4e's; on yaw:+1, a
    pose change, the GAM's alignment beats injecting the residuals unaligned and stays within 0.5 dB of e4e (on
    these 16 faces it is 0.18 dB below e4e, on the benchmark's 32 faces 0.19 dB above)."""
    from gie_cli.benchmark.data import synthface_data
    from gie_cli.benchmark.world import load_judge
    from gie_cli.editing import apply, render_edit

    data = synthface_data(16, 64, seed=321)
    judge, reason, _ = load_judge(None, torch.device("cpu"))
    assert judge is not None, reason
    methods = {name: create_method(name, None, "cpu") for name in ("e4e", "gradstyle")}
    methods["unaligned"] = create_method("gradstyle", None, "cpu", use_gam="false")
    for attr, power in (("smile", 2.0), ("age", 2.0), ("yaw", 1.0)):
        d = Direction.load(ROOT / "directions" / f"{attr}.direction.safetensors")
        scores = {}
        for name, m in methods.items():
            inv = m.invert(data.images)
            recon, edited = m.render(inv), render_edit(m, inv, apply(d, power, inv.wplus))
            gt, _, _ = judge.edit_ground_truth(data.params, attr, recon, edited, 64)
            scores[name] = float(psnr(edited.clamp(-1, 1), gt, data_range=2.0).mean())
        if attr == "yaw":
            assert scores["gradstyle"] > scores["unaligned"] and scores["gradstyle"] > scores["e4e"] - 0.5, (
                attr,
                scores,
            )
        else:
            assert scores["gradstyle"] > scores["e4e"] + 1.0, (attr, scores)


@torch.no_grad()
def test_world_hfgi_reconstructs_better_than_its_e4e_and_keeps_part_of_it_through_edits():
    """Issue 17: on held-out world faces HFGI's reconstruction beats its e4e's by over 1.5 dB (the benchmark's 32
    faces: +2.8 dB), and its smile:+2 and age:+2 edits beat e4e's against the renderer's true edited photos (for the
    amount each method edited). Its ADA is not asserted to align: on the world it does not (see the README)."""
    from gie_cli.benchmark.data import synthface_data
    from gie_cli.benchmark.world import load_judge
    from gie_cli.editing import apply, render_edit

    data = synthface_data(16, 64, seed=321)
    judge, reason, _ = load_judge(None, torch.device("cpu"))
    assert judge is not None, reason
    hf, e4e = create_method("hfgi", None, "cpu"), create_method("e4e", None, "cpu")
    invs = {"hfgi": hf.invert(data.images), "e4e": e4e.invert(data.images)}
    recon = {k: (m.render(invs[k]) - data.images).square().mean().item() for k, m in (("hfgi", hf), ("e4e", e4e))}
    assert 10 * np.log10(recon["e4e"] / recon["hfgi"]) > 1.5, recon
    for attr in ("smile", "age"):
        d = Direction.load(ROOT / "directions" / f"{attr}.direction.safetensors")
        scores = {}
        for name, m in (("hfgi", hf), ("e4e", e4e)):
            inv = invs[name]
            edited = render_edit(m, inv, apply(d, 2.0, inv.wplus))
            gt, _, _ = judge.edit_ground_truth(data.params, attr, m.render(inv), edited, 64)
            scores[name] = float(psnr(edited.clamp(-1, 1), gt, data_range=2.0).mean())
        assert scores["hfgi"] > scores["e4e"] + 0.3, (attr, scores)


@torch.no_grad()
def test_world_style_transformer_reconstructs_better_than_its_e4e_with_its_own_mapping():
    """Issue 18: on held-out world faces Style Transformer's reconstruction beats e4e's; it renders with its own
    fine-tuned mapping MLP (the synthesis is world.generator's, so the world's directions still bind to it)."""
    from gie_cli.benchmark.data import synthface_data

    x = synthface_data(16, 64, seed=321).images
    st, e4e = create_method("style_transformer", None, "cpu"), create_method("e4e", None, "cpu")
    mse = {k: (m.render(m.invert(x)) - x).square().mean().item() for k, m in (("st", st), ("e4e", e4e))}
    assert 10 * np.log10(mse["e4e"] / mse["st"]) > 0.2, mse  # the benchmark's 32 faces: +0.4 dB
    mapping = [(a, b) for a, b in zip(st.generator.style.parameters(), e4e.generator.style.parameters(), strict=True)]
    assert any(not torch.equal(a, b) for a, b in mapping)  # fine-tuned
    assert generator_fingerprint(st.generator) == generator_fingerprint(e4e.generator)  # same synthesis network


@torch.no_grad()
def test_world_sfe_reconstructs_better_than_its_e4e_and_its_masked_edits_keep_the_background():
    """Issue 19: on held-out world faces SFE's reconstruction (through the Feature Editor with Δ = 0) beats its e4e's
    by over 1.5 dB (these 16 faces: +2.6 dB); its yaw edit moves the attribute at least 80% as far as e4e's (measured
    89%), its smile edit only about half as far (measured 49%: the issue's 80% is not met, see the README); masked by
    the true face region, the smile edit changes the rest of the image less than unmasked."""
    from gie_cli.benchmark.data import synthface_data
    from gie_cli.benchmark.world import load_judge
    from gie_cli.editing import apply, render_edit
    from gie_cli.methods import EDIT_MASK_KEY
    from gie_cli.metrics.regions import masked_mse

    data = synthface_data(16, 64, seed=321)
    judge, reason, _ = load_judge(None, torch.device("cpu"))
    assert judge is not None, reason
    sfe, e4e = create_method("sfe", None, "cpu"), create_method("e4e", None, "cpu")
    invs = {"sfe": sfe.invert(data.images), "e4e": e4e.invert(data.images)}
    recs = {k: m.render(invs[k]) for k, m in (("sfe", sfe), ("e4e", e4e))}
    mse = {k: (r - data.images).square().mean().item() for k, r in recs.items()}
    assert 10 * np.log10(mse["e4e"] / mse["sfe"]) > 1.5, mse
    change: dict[str, float] = {}
    for attr in ("yaw", "smile"):
        d = Direction.load(ROOT / "directions" / f"{attr}.direction.safetensors")
        for name, m in (("sfe", sfe), ("e4e", e4e)):
            edited = render_edit(m, invs[name], apply(d, 1.0, invs[name].wplus))
            _, moved, _ = judge.edit_ground_truth(data.params, attr, recs[name], edited, 64)
            change[f"{attr}.{name}"] = float(moved.mean())
    assert change["yaw.sfe"] >= 0.8 * change["yaw.e4e"] > 0, change
    assert change["smile.sfe"] >= 0.35 * change["smile.e4e"] > 0, change
    inv = invs["sfe"]
    masked = type(inv)(inv.wplus, {**inv.extras, EDIT_MASK_KEY: data.face_masks[:, None].float()})
    bg = {}
    for name, i in (("plain", inv), ("masked", masked)):
        edited = render_edit(sfe, i, apply(d, 1.0, inv.wplus))
        _, bg[name] = masked_mse((edited + 1) / 2, (recs["sfe"] + 1) / 2, data.face_masks)
    assert bg["masked"].mean() < 0.9 * bg["plain"].mean(), bg


@torch.no_grad()
def test_world_ood_keeps_the_objects_and_edits_around_them():
    """Issue 20: on held-out world faces that all carry an object, world.ood reconstructs the object region far better
    than its e4e (the blend puts the photo back there) and the whole image better too; its mask is higher on the objects
    than elsewhere; a smile edit keeps the object region closer to the photo than e4e's edit does."""
    from gie_cli.benchmark.data import synthface_data
    from gie_cli.editing import apply, render_edit

    data = synthface_data(16, 64, seed=321, ood_prob=1.0)
    ood, e4e = create_method("ood", None, "cpu"), create_method("e4e", None, "cpu")
    invs = {"ood": ood.invert(data.images), "e4e": e4e.invert(data.images)}
    recs = {k: m.render(invs[k]) for k, m in (("ood", ood), ("e4e", e4e))}
    obj = data.ood_masks[:, None].expand_as(data.images)
    err = {k: (r - data.images).square() for k, r in recs.items()}
    gain = 10 * np.log10(float(err["e4e"][obj].mean() / err["ood"][obj].mean()))
    assert gain > 2.0, {k: e[obj].mean() for k, e in err.items()}  # measured on these faces: 3.1 dB
    assert err["ood"].mean() < err["e4e"].mean()
    mask = ood.mask_of(invs["ood"])
    assert mask[data.ood_masks[:, None]].mean() > mask[~data.ood_masks[:, None]].mean()
    d = Direction.load(ROOT / "directions" / "smile.direction.safetensors")
    kept = {}
    for name, m in (("ood", ood), ("e4e", e4e)):
        edited = render_edit(m, invs[name], apply(d, 1.0, invs[name].wplus))
        kept[name] = (edited - data.images).square()[obj].mean()
    assert kept["ood"] < 0.6 * kept["e4e"], kept  # measured 0.50


@torch.no_grad()
def test_world_reference_edits_take_the_reference_attribute():
    """Issue 18: world.edit_transformer on held-out faces' Style Transformer codes, each face taking its hair lightness
    from the previous one: the estimator reads the edited images closer to the references' true value than the
    reconstructions, and the other attributes move less than the edited one. (Smile and glasses transfers barely
    move: see the README's Style Transformer section.)"""
    from gie_cli.benchmark.data import synthface_data
    from gie_cli.benchmark.runner import reference_params
    from gie_cli.benchmark.world import load_judge
    from gie_cli.editing.reference import load_edit_transformer
    from gie_cli.synth.params import attribute_index

    data = synthface_data(16, 64, seed=321)
    judge, reason, _ = load_judge(None, torch.device("cpu"))
    assert judge is not None, reason
    st = create_method("style_transformer", None, "cpu")
    editor = load_edit_transformer(resolve_weights(None, method="edit_transformer"))
    inv = st.invert(data.images)
    rec = judge.attributes(st.render(inv))
    for attr in ("hair_lightness",):
        w = inv.wplus
        edited = judge.attributes(st.render(inv, editor.offset(w, w.roll(1, 0), editor.attribute_index(attr))))
        i = attribute_index(attr)
        want = judge.truth(reference_params(data.params))[:, i]
        before, after = (rec[:, i] - want).abs().mean(), (edited[:, i] - want).abs().mean()
        assert after < 0.6 * before, (attr, before, after)  # the benchmark's 32 faces: 0.662 -> 0.297
        moved = (edited - rec).abs().mean(0)
        assert moved[i] > torch.cat([moved[:i], moved[i + 1 :]]).mean(), (attr, moved)


def test_world_directions_are_bound_to_the_embedded_generator():
    g = create_method("e4e", None, "cpu").generator
    fp = generator_fingerprint(g)
    bound = {d["name"] for d in list_directions() if (d.get("generator") or {}).get("fingerprint") == fp}
    assert set(WORLD_DIRECTIONS) <= bound
    for name in WORLD_DIRECTIONS:
        assert (ROOT / "directions" / f"{name}.direction.safetensors").is_file()


@torch.no_grad()
def test_world_directions_move_their_attribute():
    """Sampled faces edited by -2 and +2 along each direction: the estimator sees the target attribute increase, by
    more than the other attributes move on average."""
    g = create_method("e4e", None, "cpu").generator
    est = AttributeEstimator.load(resolve_weights(None, method="attributes"))
    names = [a.name for a in ATTRIBUTES]
    w = g.broadcast(g.mapping(torch.randn(24, g.style_dim, generator=torch.Generator().manual_seed(3))))
    for name in WORLD_DIRECTIONS:
        d = Direction.load(ROOT / "directions" / f"{name}.direction.safetensors")
        lo, hi = (est(g(w + d.apply(p, w).delta, noise_mode="const")) for p in (-2.0, 2.0))
        change = (hi - lo).mean(0)
        i = names.index(name)
        others = torch.cat([change[:i], change[i + 1 :]]).abs()
        assert change[i] > 0.1 and change[i] > 2 * others.mean(), (name, float(change[i]), float(others.mean()))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def test_readme_main_job_runs_offline_on_the_zoo(tmp_path, monkeypatch):
    """synth photos -> align -> invert (no --weights) -> edit by name, offline; reconstructions resemble the faces."""
    from gie_cli.weights import store

    monkeypatch.setattr(store, "_ANNOUNCED", set())  # announced once per process: earlier tests may have used it
    monkeypatch.setenv("GIE_OFFLINE", "1")
    monkeypatch.setenv("GIE_CACHE_DIR", str(tmp_path / "cache"))  # no user directions or weights
    photos, aligned, out, edits = (tmp_path / n for n in ("photos", "aligned", "out", "edits"))
    assert _invoke("synth", "-o", photos, "-n", "2", "--seed", "11").exit_code == 0
    res = _invoke("align", photos, "-o", aligned, "--size", "256")
    assert res.exit_code == 0, res.output
    assert "upscaled" not in res.stderr  # the README's size suits the demo photos
    res = _invoke("invert", aligned, "-o", out, "--json")
    assert res.exit_code == 0, res.output
    assert "embedded demo model world.e4e" in res.stderr and "e4e.ffhq" in res.stderr
    recs = [json.loads(x) for x in res.stdout.splitlines()]
    assert [r["status"] for r in recs] == ["ok", "ok"]
    for r in recs:
        src = np.asarray(Image.open(r["input"]).convert("RGB"))
        rec = np.asarray(Image.open(r["outputs"]["image"]).convert("RGB").resize(src.shape[:2][::-1], Image.BICUBIC))
        assert _psnr(src, rec) > 20.0, r["input"]  # measured 21.9-24.7 dB on the README demo photos
    res = _invoke("edit", out, "-d", "smile", "-d", "age", "--power=-2,2", "--grid", "-o", edits, "--json")
    assert res.exit_code == 0, res.output
    assert "anyway" not in res.stderr  # the world directions are bound to the embedded generator: no warning
    for name in ("000000", "000001"):
        for key in ("smile-2", "smile+2", "age-2", "age+2", "grid"):
            assert (edits / f"{name}.{key}.png").is_file()


@pytest.mark.parametrize("method", ["e4e", "optim", "gradstyle", "hfgi", "sfe"])
def test_describe_names_the_embedded_weights(method):
    m = create_method(method, None, "cpu", **({"steps": "1"} if method == "optim" else {}))
    assert Path(m.describe()["weights_path"]).parent == ZOO_DIR

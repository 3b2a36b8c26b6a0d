"""`gie benchmark` end to end on tiny random models and synthetic-world faces; the world's ground-truth edits."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_e4e
from PIL import Image
from typer.testing import CliRunner

from gie_cli.benchmark.data import synthface_data
from gie_cli.benchmark.metrics import MetricSuite, to_size
from gie_cli.benchmark.world import WorldJudge
from gie_cli.cli import app
from gie_cli.cli.benchmark import parse_edits, parse_method_entries, split_settings, split_weights
from gie_cli.editing import Direction, generator_binding
from gie_cli.errors import UsageError
from gie_cli.methods import Inversion, create_method
from gie_cli.methods.e4e import EncoderMethod
from gie_cli.synth.estimator import AttributeEstimator
from gie_cli.synth.params import ATTRIBUTE_NAMES, attribute_vector, sample_params
from gie_cli.synth.render import render

runner = CliRunner()
N, BATCH, SEED = 5, 2, 4242


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Tiny e4e weights (32 px generator), a random attribute estimator and a ``smile`` direction for the generator."""
    root = tmp_path_factory.mktemp("bench")
    method = make_tiny_e4e()
    method.save(root / "e4e.safetensors")
    torch.manual_seed(1)
    AttributeEstimator(width=4).save(root / "est.safetensors")
    g = method.generator
    vec = F.normalize(torch.randn(g.style_dim, generator=torch.Generator().manual_seed(2)), dim=0)
    (root / "dirs").mkdir()
    Direction("smile", "w", {"vector": vec}, list(range(g.n_latent)), generator=generator_binding(g, "tiny")).save(
        root / "dirs"
    )
    return {"root": root, "e4e": root / "e4e.safetensors", "est": root / "est.safetensors", "dirs": root / "dirs"}


@pytest.fixture(scope="module")
def isolated(files):
    """No metric weights anywhere (cache and torch hub in temp folders), directions from the fixture folder first."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GIE_CACHE_DIR", str(files["root"] / "cache"))
        mp.setenv("GIE_DIRECTIONS_PATH", str(files["dirs"]))
        mp.setattr(torch.hub, "get_dir", lambda: str(files["root"] / "hub"))
        yield mp


@pytest.fixture(scope="module")
def world_run(files, isolated):
    out = files["root"] / "out"
    args = [
        "benchmark", "--methods", "e4e,optim", "--data", "synthface", "--n", N, "--seed", SEED, "--ood-prob", 1,
        "--edits", "smile:2,pose:1", "--weights", f"e4e={files['e4e']}", "--weights", f"optim={files['e4e']}",
        "--weights", f"attributes={files['est']}", "--set", "optim.steps=2", "--set", "optim.loss=l2",
        "-b", BATCH, "-o", out, "--json",
    ]  # fmt: skip
    res = runner.invoke(app, [str(a) for a in args])
    return res, out


def _noise_folder(folder: Path, n: int, size: int, seed: int) -> Path:
    """``n`` random ``size`` px RGB images ``f0.png ...`` in a new ``folder`` (stand-ins for aligned crops)."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"f{i}.png")
    return folder


def test_benchmark_writes_json_and_markdown(world_run):
    res, out = world_run
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x.get("method") for x in lines[:2]] == ["e4e", "optim"] and "summary" in lines[2]
    assert lines[2]["summary"]["failed"] == [] and lines[2]["outputs"]["json"] == str(out / "benchmark.json")
    doc = json.loads((out / "benchmark.json").read_text())
    assert doc["format"] == "gie-benchmark/1"
    assert doc["data"]["n"] == N and doc["data"]["seed"] == SEED and doc["data"]["images_with_ood"] == N
    env = doc["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["dtype"] == "float32"
    assert env["git_commit"] and env["date"]
    assert doc["command"].startswith("gie benchmark --methods e4e,optim --data synthface --n 5")
    rows = {r["method"]: r for r in doc["results"]}
    for name, row in rows.items():
        assert row["status"] == "ok", row
        t = row["timing"]
        assert t["timed_images"] == N - BATCH and t["timed_batches"] == 2 and t["warmup_batches"] == 1
        assert t["images_per_s"] > 0 and t["encode_ms"] > 0 and t["render_ms"] > 0
        assert row["memory"]["peak_mb"] > 0
        m = row["metrics"]
        for k in ("mse", "psnr", "ssim", "ms-ssim", "attr_mae", "ood_mse_in", "ood_mse_out"):
            assert isinstance(m[k], float) and np.isfinite(m[k]), (name, k)
        assert 0 < m["mse"] < 4 and -1 <= m["ssim"] <= 1
        assert not {"lpips-vgg", "lpips-alex", "identity", "fid"} & set(m)
        edits = {e["edit"]: e for e in row["edits"]}
        assert edits["smile:+2"]["status"] == "ok" and edits["smile:+2"]["attribute"] == "smile"
        em = edits["smile:+2"]["metrics"]
        for k in ("edit_attr", "edit_others", "gt_mse", "gt_psnr", "gt_ssim", "gt_ms-ssim"):
            assert isinstance(em[k], float), (name, k)
        assert edits["smile:+2"]["edit_ms"] > 0
        assert edits["pose:+1"]["status"] == "unavailable" and "another generator" in edits["pose:+1"]["reason"]
    assert rows["optim"]["options"] == {"steps": "2", "loss": "l2"}
    # metrics without weights: unavailable, with the file to fetch
    unav = doc["unavailable"]
    assert set(unav) == {"lpips-vgg", "lpips-alex", "identity", "fid"}
    assert "vgg16-397923af.pth" in unav["lpips-vgg"] and "model_ir_se50.pth" in unav["identity"]
    assert "pt_inception-2015-12-05-6726825d.pth" in unav["fid"] and "arcface.ir_se50" in unav["identity"]
    md = (out / "benchmark.md").read_text()
    assert "| method | images/s | encode ms/img | render ms/img | peak MiB | MSE | PSNR dB |" in md
    assert md.count("\n| e4e |") == 3 and md.count("\n| optim |") == 3  # one quality row, two edit rows
    assert "| e4e | smile:+2 |" in md and "| optim | pose:+1 | unavailable |" in md
    assert "## Unavailable metrics" in md and "- fid: weights file pt_inception" in md
    assert "## Definitions" in md and "crop rows 35:223, columns 32:220" in md
    assert "unavailable metrics: lpips-vgg, lpips-alex, identity, fid" in res.stderr
    assert "gie benchmark: synthface" in res.stderr  # the table goes to stderr with --json


def test_benchmark_values_match_independent_computation(world_run, files):
    _, out = world_run
    doc = json.loads((out / "benchmark.json").read_text())
    data = synthface_data(N, 64, SEED, 1.0)
    method = create_method("e4e", str(files["e4e"]))
    with torch.no_grad():
        recon = method.render(method.invert(data.images))
    assert recon.shape[-1] == 32  # the tiny generator: upsampled to the 64 px of the benchmark
    a = (F.interpolate(recon, size=(64, 64), mode="bilinear", align_corners=False).clamp(-1, 1) + 1) / 2
    b = (data.images + 1) / 2
    per_mse = ((a - b) ** 2).mean(dim=(1, 2, 3)).double()
    m = doc["results"][0]["metrics"]
    assert m["mse"] == pytest.approx(float(per_mse.mean()), rel=1e-4)
    assert m["psnr"] == pytest.approx(float((10 * torch.log10(1 / per_mse)).mean()), abs=1e-3)
    masks = data.ood_masks[:, None].expand_as(a)
    inside = [float(((a[i] - b[i]) ** 2)[masks[i]].mean()) for i in range(N)]
    assert m["ood_mse_in"] == pytest.approx(float(np.mean(inside)), rel=1e-4)
    est = AttributeEstimator.load(files["est"])
    with torch.no_grad():
        truth = torch.from_numpy(np.stack([attribute_vector(p) for p in data.params]))
        want = (est(data.images) - truth).abs().mean().item()
    assert doc["data"]["estimator_mae_on_inputs"] == pytest.approx(want, abs=1e-5)


def test_benchmark_on_a_folder_and_a_failing_method(files, isolated, tmp_path):
    folder = _noise_folder(tmp_path / "aligned", 3, 48, seed=0)
    out = tmp_path / "out"
    args = [
        "benchmark", "--methods", "e4e,psp", "--data", folder, "--size", 64, "--weights", f"e4e={files['e4e']}",
        "--weights", f"psp={tmp_path / 'missing.pt'}", "--metrics", "mse,psnr,identity", "--edits", "smile:1",
        "-o", out,
    ]  # fmt: skip
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 1, res.output  # psp failed; e4e still measured
    doc = json.loads((out / "benchmark.json").read_text())
    rows = {r["method"]: r for r in doc["results"]}
    assert rows["psp"]["status"] == "failed" and "missing.pt" in rows["psp"]["reason"]
    e4e = rows["e4e"]
    assert e4e["status"] == "ok" and set(e4e["metrics"]) == {"mse", "psnr"}  # no ground truth for real images
    assert e4e["timing"]["timed_images"] == 3  # a single batch is run twice: warm-up, then timed
    assert e4e["edits"][0]["status"] == "ok" and e4e["edits"][0]["metrics"] == {}  # identity unavailable
    assert doc["data"] == {"source": str(folder), "n": 3, "size": 64}
    assert set(doc["unavailable"]) == {"identity"}
    md = (out / "benchmark.md").read_text()
    assert "gie benchmark" in res.stdout and "| psp | failed | (reason below) |" in md  # the table on stdout
    assert "## Failed methods" in md and f"- psp: {rows['psp']['reason']}" in md


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--methods", "e4e,nope"], "unknown method"),
        (["--methods", "e4e,e4e"], "twice"),
        (["--methods", "a.b=e4e"], "bad label"),
        (["--edits", "smile"], "DIRECTION:POWER"),
        (["--weights", "sharpness=x.pth"], "neither a benchmarked method nor a metric"),
        (["--set", "steps=3"], "METHOD.KEY"),
        (["--metrics", "psnr,bleu"], "unknown metric"),
        (["--seed", "7"], "trained on"),
        (["--size", "16"], "too small"),
    ],
)
def test_benchmark_usage_errors(args, needle, tmp_path, isolated):
    res = runner.invoke(app, ["benchmark", "-o", str(tmp_path / "o"), "--n", "2", *args])
    assert res.exit_code == 2, res.output
    assert needle in res.stderr


def test_option_parsers():
    assert [(e.direction, e.power, e.label) for e in parse_edits("smile:3, age:-2")] == [
        ("smile", 3.0, "smile:+3"),
        ("age", -2.0, "age:-2"),
    ]
    with pytest.raises(UsageError):
        parse_edits("smile:3,smile:3")
    (ref,) = parse_edits("ref:hair_lightness:1")
    assert (ref.direction, ref.power, ref.reference, ref.label) == (
        "hair_lightness",
        1.0,
        True,
        "hair_lightness-ref:+1",
    )
    with pytest.raises(UsageError, match="names no attribute"):
        parse_edits("ref::1")
    assert split_weights(["e4e=a.pt", "identity=b.pth"], ["e4e"]) == ({"e4e": "a.pt"}, {"identity": "b.pth"})
    assert split_settings(["optim.steps=3", "optim.space=w"], ["e4e", "optim"]) == {
        "e4e": {},
        "optim": {"steps": "3", "space": "w"},
    }
    with pytest.raises(UsageError):
        split_settings(["psp.steps=3"], ["e4e"])
    known = ["e4e", "gradstyle"]
    assert parse_method_entries("e4e, full=gradstyle,no-gam=gradstyle", known) == {
        "e4e": "e4e",
        "full": "gradstyle",
        "no-gam": "gradstyle",
    }
    for bad in ("", "x=psp", "e4e,e4e=gradstyle", "=e4e"):
        with pytest.raises(UsageError):
            parse_method_entries(bad, known)


def test_benchmark_runs_one_method_under_two_labels(files, isolated, tmp_path, tiny_e4e):
    folder = _noise_folder(tmp_path / "aligned", 2, 32, seed=1)
    other = tmp_path / "other.safetensors"
    changed = tiny_e4e
    with torch.no_grad():
        changed.latent_avg.add_(0.5)  # another model: other codes, other renders
    changed.save(other)
    out = tmp_path / "out"
    args = [
        "benchmark", "--methods", "a=e4e,b=e4e", "--data", folder, "--size", 32, "--weights", f"a={files['e4e']}",
        "--weights", f"b={other}", "--metrics", "mse", "-o", out,
    ]  # fmt: skip
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "benchmark.json").read_text())
    rows = {r["method"]: r for r in doc["results"]}
    assert set(rows) == {"a", "b"} and {r["kind"] for r in rows.values()} == {"e4e"}
    assert rows["a"]["weights"] == str(files["e4e"]) and rows["b"]["weights"] == str(other)
    assert rows["a"]["metrics"]["mse"] != rows["b"]["metrics"]["mse"]  # two models, two rows
    assert doc["settings"]["method_kinds"] == {"a": "e4e", "b": "e4e"} and "--methods a=e4e,b=e4e" in doc["command"]
    assert "| a (e4e) |" in (out / "benchmark.md").read_text()


def test_metric_suite_values(tmp_path):
    from gie_cli.metrics.lpips import LPIPS

    torch.manual_seed(0)
    feats = LPIPS("alex", pretrained_backbone=False).net.features.state_dict()
    ckpt = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save({f"features.{k}": v for k, v in feats.items()}, ckpt)
    names = ["mse", "psnr", "ssim", "ms-ssim", "lpips-alex"]
    suite = MetricSuite(names, torch.device("cpu"), {"lpips-alex": ckpt})
    assert all(suite.available(n) for n in names) and suite.unavailable() == {}
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    v = suite.pairwise(x, y, prefix="gt_")
    assert set(v) == {f"gt_{n}" for n in names}
    a, b = (x + 1) / 2, (y + 1) / 2  # MSE, PSNR and SSIM on [0, 1] images
    per_mse = ((a - b) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(v["gt_mse"], per_mse) and torch.allclose(v["gt_psnr"], -10 * torch.log10(per_mse))
    assert torch.allclose(v["gt_lpips-alex"], LPIPS("alex", backbone_weights=ckpt)(x, y), atol=1e-6)
    skm = pytest.importorskip("skimage.metrics")
    for i in range(2):
        ref = skm.structural_similarity(
            a[i].numpy(), b[i].numpy(), channel_axis=0, data_range=1.0, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False,
        )  # fmt: skip
        assert v["gt_ssim"][i].item() == pytest.approx(ref, abs=1e-4)
    same = suite.pairwise(x, x)
    assert torch.allclose(same["lpips-alex"], torch.zeros(2), atol=1e-6) and torch.isinf(same["psnr"]).all()
    assert torch.allclose(same["ssim"], torch.ones(2), atol=1e-5) and torch.equal(same["mse"], torch.zeros(2))
    # outputs of another size: area average when shrinking (pSp's face_pool), bilinear when enlarging
    big = torch.rand(1, 3, 256, 256, generator=g)
    assert torch.allclose(to_size(big, 64), big.reshape(1, 3, 64, 4, 64, 4).mean(dim=(3, 5)), atol=1e-6)
    assert to_size(x, 128).shape == (2, 3, 128, 128) and to_size(x, 64) is x


# ----------------------------------------------------------------------------------------------- world ground truth


class _SmileFromBrightness(torch.nn.Module):
    """A stand-in estimator: the ``smile`` column is 4x the mean pixel value, every other attribute 0."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(img.shape[0], len(ATTRIBUTE_NAMES))
        out[:, ATTRIBUTE_NAMES.index("smile")] = 4 * img.mean(dim=(1, 2, 3))
        return out


def test_world_ground_truth_edit():
    rng = np.random.default_rng(11)
    params = [sample_params(rng, 0.5) for _ in range(2)]
    judge = WorldJudge(_SmileFromBrightness(), torch.device("cpu"))
    # the change is read on the attribute's [-1, 1] scale and mapped back to its units: yaw spans 60 degrees
    moved = judge.edited_params(params, "yaw", torch.tensor([0.5, -0.25]))
    assert moved[0].yaw == pytest.approx(params[0].yaw + 15.0) and moved[1].yaw == pytest.approx(params[1].yaw - 7.5)
    assert dataclasses.replace(moved[0], yaw=params[0].yaw) == params[0]  # nothing else changed
    src = judge.render(params, 64)
    recon = src.clone()
    edited = (src + 0.05).clamp(-1, 1)
    gt, change, others = judge.edit_ground_truth(params, "smile", recon, edited, 64)
    want = 4 * (edited.mean(dim=(1, 2, 3)) - recon.mean(dim=(1, 2, 3)))
    assert torch.allclose(change, want) and torch.equal(others, torch.zeros(2))
    for i, p in enumerate(params):  # smile spans [-1, 1]: its units equal the normalised scale
        ref = render(dataclasses.replace(p, smile=p.smile + float(want[i])), 64)
        assert torch.equal(gt[i], ref.to_tensor())
    # no change: the ground truth is the source photo itself, pixel for pixel
    gt0, change0, _ = judge.edit_ground_truth(params, "smile", recon, recon, 64)
    assert torch.equal(change0, torch.zeros(2)) and torch.equal(gt0, src)


def test_benchmark_contact_sheet_shows_inputs_reconstructions_edits_and_truth(world_run):
    res, out = world_run
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "benchmark.json").read_text())
    assert doc["contact_sheet"] == "contact_sheet.png" and "--sheet 8" in doc["command"]
    assert all("_sheet" not in r for r in doc["results"])
    sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("RGB"))
    # columns: input | e4e recon, smile | optim recon, smile | truth smile (pose is unavailable); rows: the N faces
    cell, pad, head = 64, 2, 26
    assert sheet.shape == (head + N * (cell + pad) + pad, 6 * (cell + pad) + pad, 3)
    x = synthface_data(N, 64, SEED, ood_prob=1.0).images
    want = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(N):
        y0 = head + pad + i * (cell + pad)
        got = sheet[y0 : y0 + cell, pad : pad + cell]
        assert np.array_equal(got, want[i]), i  # the input column is the input, face by face
    # every other column holds images, not blank cells
    for j in range(1, 6):
        x0 = pad + j * (cell + pad)
        assert sheet[head + pad : head + pad + cell, x0 : x0 + cell].std() > 5, j


def test_reference_edits_move_each_face_toward_its_reference(tmp_path):
    """Issue 18: ``ref:ATTR:POWER`` edits each face with the embedded editing transformer, the previous face of its
    batch as reference; the estimator reads the edited faces closer to the references' true values. An attribute the
    editor does not know is reported unavailable with the reason, not run."""
    args = ["benchmark", "--methods", "style_transformer", "--data", "synthface", "--n", 8, "-b", 8,
            "--edits", "ref:hair_lightness:1,ref:nose:1", "--metrics", "psnr", "-o", tmp_path / "out"]  # fmt: skip
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    edits = {e["edit"]: e for e in doc["results"][0]["edits"]}
    m = edits["hair_lightness-ref:+1"]["metrics"]
    assert edits["hair_lightness-ref:+1"]["attribute"] == "hair_lightness" and m["ref_gap"] < 0.7 * m["ref_gap0"], m
    assert (
        edits["nose-ref:+1"]["status"] == "unavailable" and "cannot transfer 'nose'" in edits["nose-ref:+1"]["reason"]
    )
    assert "ref:hair_lightness:1" in doc["command"]


def test_masked_sfe_edits_keep_the_background_and_report_the_face_split(files, isolated, tmp_path):
    """Issue 19: ``LABEL.edit_mask=truth|landmarks`` masks SFE's edits with the world's face region (or its landmark
    hull); every edit reports its change inside and outside the true face. With the Feature Editor at ``F_k - Δ``, the
    mask removes the feature's edit outside the face, so the masked edit changes the background less. A method
    without masked editing is failed with the reason."""
    from conftest import make_tiny_sfe

    from gie_cli.methods.sfe import ContentLayerDeepFast
    from gie_cli.methods.sfe.train import zero_init_feature_net

    editor = ContentLayerDeepFast(2, 64, 32)
    zero_init_feature_net(editor, (1.0, -1.0))
    sfe = tmp_path / "sfe.safetensors"
    make_tiny_sfe(editor.eval()).save(sfe)
    out = tmp_path / "out"
    args = [
        "benchmark", "--methods", "sfe,sfe+mask=sfe,sfe+lm=sfe,e4e", "--data", "synthface", "--n", 4, "--seed", SEED,
        "--size", 32, "--edits", "smile:3", "--metrics", "mse", "--weights", f"attributes={files['est']}",
        "--weights", f"e4e={files['e4e']}", "--set", "e4e.edit_mask=truth", "-b", 4, "-o", out,
        *[a for label in ("sfe", "sfe+mask", "sfe+lm") for a in ("--weights", f"{label}={sfe}")],
        "--set", "sfe+mask.edit_mask=truth", "--set", "sfe+lm.edit_mask=landmarks",
    ]  # fmt: skip
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 1, res.output  # the e4e row failed
    rows = {r["method"]: r for r in json.loads((out / "benchmark.json").read_text())["results"]}
    assert rows["e4e"]["status"] == "failed" and "no masked editing" in rows["e4e"]["reason"]
    assert [rows[k]["edit_mask"] for k in ("sfe", "sfe+mask", "sfe+lm")] == ["none", "truth", "landmarks"]
    plain, masked, lm = (rows[k]["edits"][0]["metrics"] for k in ("sfe", "sfe+mask", "sfe+lm"))
    assert rows["sfe"]["metrics"]["mse"] == rows["sfe+mask"]["metrics"]["mse"]  # the reconstruction is never masked
    for m in (plain, masked, lm):
        assert {"edit_change_face", "edit_change_bg", "gt_mse_face", "gt_mse_bg"} <= set(m)
    assert masked["edit_change_bg"] < 0.9 * plain["edit_change_bg"], (masked, plain)
    assert lm["edit_change_bg"] < 0.9 * plain["edit_change_bg"], (lm, plain)


class _BlendingE4E(EncoderMethod):
    """A test double of OOD inversion: the tiny e4e that keeps the input photo where its ``mask_of`` says. The mask
    is each input's true object mask (``keep="truth"``, looked up among ``photos``) or empty (``keep="none"``)."""

    photos: torch.Tensor
    truth: torch.Tensor
    keep: str

    @classmethod
    def of(cls, photos: torch.Tensor, truth: torch.Tensor, keep: str) -> _BlendingE4E:
        method = make_tiny_e4e()
        method.__class__ = cls  # the same weights as the fixture's e4e
        method.photos, method.truth, method.keep = photos, truth, keep
        return method

    def invert(self, images: torch.Tensor) -> Inversion:
        inv = super().invert(images)
        hit = (images[:, None] == self.photos[None]).flatten(2).all(dim=2)  # [B, N]
        assert bool(hit.any(dim=1).all()), "an input that is not one of the benchmark's photos"
        mask = self.truth[hit.float().argmax(dim=1)][:, None].float()  # [B, 1, S, S]
        inv.extras["photo"] = images.clone()
        inv.extras["keep"] = mask if self.keep == "truth" else torch.zeros_like(mask)
        return inv

    def mask_of(self, inv: Inversion) -> torch.Tensor:
        return inv.extras["keep"]

    def render(self, inv: Inversion, delta=None, style_offsets=None) -> torch.Tensor:
        drawn = super().render(inv, delta, style_offsets)
        m = inv.extras["keep"]
        return m * inv.extras["photo"] + (1 - m) * drawn


def test_ood_mask_and_region_metrics_flow_into_the_report(files, isolated, tmp_path, monkeypatch):
    """Methods with ``mask_of`` (OOD inversion) get mask_iou and aoa; every method gets PSNR/SSIM inside the objects
    and the face; edits get edit_ood_mse. A double that keeps the photo exactly on the true objects scores IoU 1,
    exact objects and edits that keep them; one with an empty mask scores AOA 0 and renders as plain e4e; e4e itself
    has no mask metrics (blank cells)."""
    from gie_cli.methods.registry import REGISTRY

    n, size = 4, 32  # the tiny generator's size: masks and renders are compared without resizing
    data = synthface_data(n, size, SEED, ood_prob=1.0)
    assert bool(data.ood_masks.flatten(1).any(dim=1).all())
    for name, keep in (("truthmask", "truth"), ("nomask", "none")):
        double = _BlendingE4E.of(data.images, data.ood_masks, keep)
        monkeypatch.setitem(REGISTRY.plugins, name, (lambda weights, m=double: m, "test double"))
    out = tmp_path / "out"
    args = [
        "benchmark", "--methods", "e4e,truthmask,nomask", "--data", "synthface", "--n", n, "--seed", SEED,
        "--size", size, "--ood-prob", 1, "--edits", "smile:2", "--metrics", "mse,psnr,ssim", "--weights",
        f"e4e={files['e4e']}", "--weights", f"attributes={files['est']}", "-b", 2, "--sheet", 0, "-o", out,
    ]  # fmt: skip
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "benchmark.json").read_text())
    rows = {r["method"]: r for r in doc["results"]}
    plain, truth, none = (rows[k]["metrics"] for k in ("e4e", "truthmask", "nomask"))
    assert not {"mask_iou", "aoa"} & set(plain)  # no mask_of: no value, not 0
    assert truth["mask_iou"] == 1.0 and none["mask_iou"] == 0.0
    assert truth["aoa"] == pytest.approx(100 * float(data.ood_masks.float().mean()), rel=1e-6) and none["aoa"] == 0.0
    # the photo kept on the objects: exact there; the empty mask changes nothing
    assert truth["ood_mse_in"] == 0.0 and truth["psnr_ood"] == "inf" and truth["ssim_ood"] > plain["ssim_ood"]
    for k in ("psnr_ood", "ssim_ood", "psnr_face", "ssim_face", "mse"):
        assert none[k] == plain[k], k
    # e4e's region PSNR, recomputed here
    e4e = create_method("e4e", str(files["e4e"]))
    with torch.no_grad():
        a, b = (e4e.render(e4e.invert(data.images)).clamp(-1, 1) + 1) / 2, (data.images + 1) / 2
    for key, masks in (("psnr_ood", data.ood_masks), ("psnr_face", data.face_masks)):
        m = masks[:, None].expand_as(a)
        want = [float(-10 * torch.log10(((a[i] - b[i]) ** 2)[m[i]].mean())) for i in range(n)]
        assert plain[key] == pytest.approx(float(np.mean(want)), abs=1e-3), key
    assert -1 <= plain["ssim_face"] <= 1 and -1 <= plain["ssim_ood"] <= 1
    # edits: the objects kept in place by the blending double, not by e4e
    edit = {k: rows[k]["edits"][0]["metrics"] for k in rows}
    assert edit["truthmask"]["edit_ood_mse"] == 0.0 and edit["e4e"]["edit_ood_mse"] > 1e-3
    assert edit["nomask"]["edit_ood_mse"] == pytest.approx(edit["e4e"]["edit_ood_mse"], rel=1e-6)
    # the report: the columns, blank cells for e4e, and one definition line per metric
    md = (out / "benchmark.md").read_text()
    lines = md.splitlines()
    start = lines.index("## Reconstruction") + 2
    table = [[c.strip() for c in line.strip("|").split("|")] for line in lines[start : lines.index("## Edits")] if line]
    cols, cells = table[0], {row[0]: row for row in table[2:]}
    for h in ("PSNR OOD dB", "SSIM OOD", "PSNR face dB", "SSIM face", "mask IoU", "AOA %"):
        assert h in cols, h
    iou, aoa, ood_psnr = cols.index("mask IoU"), cols.index("AOA %"), cols.index("PSNR OOD dB")
    assert (cells["e4e"][iou], cells["e4e"][aoa]) == ("", "")
    assert (cells["truthmask"][iou], cells["nomask"][iou], cells["nomask"][aoa]) == ("1.0000", "0.0000", "0.00")
    assert cells["truthmask"][aoa] == f"{truth['aoa']:.2f}" and cells["truthmask"][ood_psnr] == "inf"
    assert "| method | edit | edit ms/img |" in md and "OOD MSE to input" in md
    for k in ("psnr_ood", "ssim_ood", "psnr_face", "ssim_face", "mask_iou", "aoa", "edit_ood_mse"):
        assert sum(line.startswith(f"- {k}: ") for line in lines) == 1, k
    assert "- aoa: average OOD area in percent" in md


def test_benchmark_ranks_deal_the_methods_and_rank0_reports_them_in_order(files, isolated, tmp_path, tiny_e4e):
    """``--nproc 2``: two processes (gloo rendezvous), methods dealt in turn; the gathered report lists every method in
    the ``--methods`` order with the same metrics as one process, each row naming the rank that ran it, and a method
    failing on rank 1 fails the run as in one process."""
    import os
    import subprocess
    import sys

    other = tmp_path / "other.safetensors"
    with torch.no_grad():
        tiny_e4e.latent_avg.add_(0.5)
    tiny_e4e.save(other)
    common = [
        "benchmark", "--methods", "a=e4e,b=e4e,c=e4e", "--data", "synthface", "--n", 4, "--seed", SEED,
        "--edits", "smile:1", "--weights", f"a={files['e4e']}", "--weights", f"b={tmp_path / 'missing.safetensors'}",
        "--weights", f"c={other}", "--weights", f"attributes={files['est']}", "--metrics", "mse,psnr",
        "-b", 2, "--sheet", 2, "--device", "cpu", "--json",
    ]  # fmt: skip
    one = runner.invoke(app, [str(a) for a in [*common, "-o", tmp_path / "one"]])
    assert one.exit_code == 1, one.output  # b fails
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "gie_cli", *[str(a) for a in [*common, "-o", tmp_path / "two", "--nproc", 2]]]
    two = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 1, two.stderr[-3000:]
    lines = [json.loads(x) for x in two.stdout.splitlines()]
    assert [r["method"] for r in lines[:3]] == ["a", "b", "c"] and "summary" in lines[3]  # only rank 0 printed
    doc_one = json.loads((tmp_path / "one" / "benchmark.json").read_text())
    doc_two = json.loads((tmp_path / "two" / "benchmark.json").read_text())
    assert doc_two["settings"]["ranks"] == 2 and "ranks" not in doc_one["settings"]
    assert [(r["method"], r["rank"]) for r in doc_two["results"]] == [("a", 0), ("b", 1), ("c", 0)]
    assert [r["status"] for r in doc_two["results"]] == ["ok", "failed", "ok"]
    assert lines[3]["summary"]["failed"] == ["b"] and "missing.safetensors" in doc_two["results"][1]["reason"]
    for r1, r2 in zip(doc_one["results"][::2], doc_two["results"][::2], strict=True):
        assert r2["device"] == "cpu"
        for key in ("mse", "psnr"):
            assert r2["metrics"][key] == pytest.approx(r1["metrics"][key], rel=1e-5)
        e1, e2 = r1["edits"][0]["metrics"], r2["edits"][0]["metrics"]
        assert e2["gt_mse"] == pytest.approx(e1["gt_mse"], rel=1e-5)
        assert e2["edit_change_face"] == pytest.approx(e1["edit_change_face"], rel=1e-5)
    assert doc_two["results"][0]["metrics"]["mse"] != doc_two["results"][2]["metrics"]["mse"]  # c ran its own model
    report = (tmp_path / "two" / "benchmark.md").read_text()
    assert (tmp_path / "two" / "contact_sheet.png").exists() and "| c (e4e) |" in report

"""Label-based editing from `gie edit` (Style Transformer, Hu et al. 2022): a latent classifier trained by gie's trainer
on the synthetic world's known attributes, then `gie edit --classifier ... --attribute ...` on any method's codes."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from gie_cli.cli import app
from gie_cli.editing.label import load_latent_classifier
from gie_cli.synth.params import ATTRIBUTE_NAMES

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """240 labelled world faces, a latent classifier trained on world.e4e's codes of them, two inverted faces."""
    root = tmp_path_factory.mktemp("label_world")
    faces = root / "faces"
    res = _invoke("synth", "-o", faces, "--faces", "-n", 240, "-s", 64, "--seed", 3)
    assert res.exit_code == 0, res.output
    runs = root / "runs"
    res = _invoke("train", "--method", "latent_classifier", "--data", faces, "-w", "world.e4e", "-b", 64,
                  "--steps", 60, "--run-dir", runs, "--set", "holdout=0.2", "--set", "lr=0.003",
                  "--set", "hidden=64,32", "--set", "weight_decay=0.1")  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (runs / "00000-latent_classifier" / "metrics.jsonl").read_text().splitlines()]
    inv = root / "inv"
    photos = root / "photos"
    photos.mkdir()
    for name in ("000230.png", "000231.png"):  # held-out faces
        (photos / name).write_bytes((faces / name).read_bytes())
    res = _invoke("invert", photos, "-m", "e4e", "--no-align", "-o", inv)
    assert res.exit_code == 0, res.output
    return {"root": root, "faces": faces, "classifier": res_path(runs), "rows": rows, "inv": inv}


def res_path(runs):
    return runs / "00000-latent_classifier" / "latent_classifier.safetensors"


def test_the_trainer_learns_held_out_attributes_from_codes(world):
    first, last = world["rows"][0], world["rows"][-1]
    assert last["val_bce"] < first["val_bce"] - 0.03, (first, last)  # held-out faces: it generalises
    assert last["val_acc"] > max(0.7, first["val_acc"] + 0.1), (first, last)
    clf = load_latent_classifier(world["classifier"])
    assert clf.attributes == list(ATTRIBUTE_NAMES) and clf.activation == "leakyrelu"
    assert clf.generator["fingerprint"] and clf.generator["n_latent"] == 10  # bound to world.generator


@pytest.mark.parametrize("order", [1, 2])
def test_gie_edit_with_a_classifier_moves_the_attribute_the_estimator_reads(world, tmp_path, order):
    from gie_cli.io.images import image_to_tensor, load_image
    from gie_cli.synth.estimator import world_attributes

    out = tmp_path / "edits"
    res = _invoke("edit", world["inv"], "--classifier", world["classifier"], "-a", "hair_lightness", "-p", 0,
                  "-p", 6, "--order", order, "-o", out, "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(recs) == 2 and all(r["status"] == "ok" for r in recs)
    i = ATTRIBUTE_NAMES.index("hair_lightness")
    for stem in ("000230", "000231"):
        key = f"hair_lightness-label{order}"
        zero = image_to_tensor(load_image(out / f"{stem}.{key}+0.png"))
        edited = image_to_tensor(load_image(out / f"{stem}.{key}+6.png"))
        a0, a1 = world_attributes(torch.stack([zero, edited]))[:, i].tolist()
        assert a1 > a0 + 0.1, (stem, a0, a1)  # target 1: lighter hair, as the renderer's estimator reads it


def test_label_edit_errors_name_the_fix(world, tmp_path):
    res = _invoke("edit", world["inv"], "--classifier", world["classifier"], "-o", tmp_path / "o")
    assert res.exit_code == 2 and "--attribute" in res.output
    res = _invoke("edit", world["inv"], "--classifier", world["classifier"], "-a", "beard", "-o", tmp_path / "o")
    assert res.exit_code == 2 and "unknown attribute 'beard'" in res.output and "hair_lightness" in res.output
    res = _invoke("edit", world["inv"], "--classifier", world["faces"] / "000000.png", "-a", "smile", "-o", tmp_path)
    assert res.exit_code != 0 and "000000.png" in res.output
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------------- reference edits
@pytest.fixture(scope="module")
def editor(world):
    runs = world["root"] / "editor_runs"
    res = _invoke("train", "--method", "edit_transformer", "--data", world["faces"], "-w", "world.e4e", "-b", 64,
                  "--steps", 150, "--run-dir", runs, "--set", f"classifier={world['classifier']}",
                  "--set", "attributes=hair_lightness,smile,glasses", "--set", "holdout=0.2")  # fmt: skip
    assert res.exit_code == 0, res.output
    run = runs / "00000-edit_transformer"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"path": run / "edit_transformer.safetensors", "rows": rows}


def test_the_editing_transformer_learns_to_take_the_reference_attribute(editor):
    from gie_cli.editing.reference import load_edit_transformer

    first, last = editor["rows"][0], editor["rows"][-1]
    assert first["val_gap"] == pytest.approx(first["val_gap0"], abs=0.02)  # zero-initialised head: no edit at first
    assert last["val_gap"] < 0.8 * last["val_gap0"], last  # held-out pairs: the classifier reads the reference's value
    assert last["val_drift"] < 0.1, last  # while the other attributes stay
    model = load_edit_transformer(editor["path"])
    assert model.attributes == ["hair_lightness", "smile", "glasses"] and model.generator["fingerprint"]


def test_gie_edit_with_a_reference_moves_the_attribute_toward_the_reference(world, editor, tmp_path):
    from gie_cli.io.images import image_to_tensor, load_image
    from gie_cli.synth.estimator import world_attributes

    i = ATTRIBUTE_NAMES.index("hair_lightness")
    faces = sorted(world["faces"].glob("00022*.png"))  # held-out faces
    reads = world_attributes(torch.stack([image_to_tensor(load_image(p)) for p in faces]))[:, i]
    sources = [image_to_tensor(load_image(world["faces"] / f"{s}.png")) for s in ("000230", "000231")]
    src = float(world_attributes(torch.stack(sources))[:, i].mean())
    ref = faces[int((reads - src).abs().argmax())]  # the reference whose hair differs most from the sources'
    out = tmp_path / "edits"
    res = _invoke("edit", world["inv"], "--reference", ref, "--editor", editor["path"], "-a", "hair_lightness",
                  "-p", 0, "-p", 1, "-o", out, "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert all(r["status"] == "ok" for r in recs) and recs[0]["info"]["references"]["hair_lightness-ref"]["powers"]
    target = float(world_attributes(image_to_tensor(load_image(ref))[None])[0, i])
    for stem in ("000230", "000231"):
        zero = image_to_tensor(load_image(out / f"{stem}.hair_lightness-ref+0.png"))
        edited = image_to_tensor(load_image(out / f"{stem}.hair_lightness-ref+1.png"))
        a0, a1 = world_attributes(torch.stack([zero, edited]))[:, i].tolist()
        assert abs(a1 - target) < abs(a0 - target) - 0.05, (stem, a0, a1, target)


def test_reference_edit_errors_name_the_fix(world, editor, tmp_path):
    ref = world["faces"] / "000001.png"
    res = _invoke("edit", world["inv"], "--reference", ref, "--editor", editor["path"], "-o", tmp_path / "o")
    assert res.exit_code == 2 and "--attribute" in res.output
    res = _invoke("edit", world["inv"], "--reference", ref, "--editor", editor["path"], "-a", "age", "-o", tmp_path)
    assert res.exit_code == 2 and "cannot transfer 'age'" in res.output and "hair_lightness" in res.output
    res = _invoke("edit", world["inv"], "--reference", tmp_path / "nope.png", "-a", "smile", "-o", tmp_path / "o")
    assert res.exit_code == 2 and "nope.png" in res.output
    res = _invoke("edit", world["inv"], "--reference", ref, "--editor", world["classifier"], "-a", "smile",
                  "-o", tmp_path / "o")  # fmt: skip
    assert res.exit_code != 0 and "not an editing transformer" in res.output
    assert not (tmp_path / "o").exists()

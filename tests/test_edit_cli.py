"""`gie edit` and `gie directions` end to end on a tiny e4e: stdin JSON lines, parity with the method's render,
generator binding (refused / --force), grid, resume, StyleSpace edits, paste-back, import/list/show/fit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, make_face, make_tiny_e4e
from PIL import Image
from typer.testing import CliRunner

from gie_cli.cli import app
from gie_cli.editing import Direction, apply, generator_binding, generator_fingerprint, render_edit
from gie_cli.editing.fit import stylespace_direction
from gie_cli.io.images import load_image, tensor_to_image
from gie_cli.io.latents import load_latent
from gie_cli.methods import Inversion, create_method

runner = CliRunner()


def _invoke(*args, input=None, env=None):
    return runner.invoke(app, [str(a) for a in args], input=input, env=env)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_e4e_weights):
    """Tiny e4e weights, two aligned crops inverted by `gie invert --json`, and directions for its generator."""
    root = tmp_path_factory.mktemp("edit")
    weights = tiny_e4e_weights
    photos = root / "aligned"
    photos.mkdir()
    for i in (1, 2):
        make_face(i, 64).save(photos / f"p{i}.png")
    res = _invoke("invert", photos, "-o", root / "inv", "--weights", weights, "--json", "--no-align")  # crops
    assert res.exit_code == 0, res.output
    method = create_method("e4e", str(weights))
    g = method.generator
    dirs = root / "dirs"
    binding = generator_binding(g, method.weights_id)
    vec = torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(0)), dim=0)
    Direction("tilt", "w", {"vector": vec}, list(range(g.n_latent)), 1.0, (-3.0, 3.0), generator=binding).save(dirs)
    stylespace_direction("chan", g, 3, 5, 0.7, binding, {"method": "test"}).save(dirs)
    other = make_tiny_e4e()
    with torch.no_grad():
        other.generator.convs[0].conv.weight.mul_(1.1)  # same shapes, other weights
    foreign = generator_binding(other.generator, "other")
    Direction("foreign", "w", {"vector": vec}, list(range(g.n_latent)), generator=foreign).save(dirs)
    return {"root": root, "weights": weights, "inv_json": res.stdout, "method": method, "dirs": dirs, "vec": vec}


def _render(method, latent: Path, direction: Direction, power: float) -> Image.Image:
    wplus, extras, _ = load_latent(latent)
    inv = Inversion(wplus, extras)
    with torch.no_grad():
        return tensor_to_image(render_edit(method, inv, apply(direction, power, wplus))[0])


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def test_edit_from_stdin_json_lines_matches_the_method_render(setup, tmp_path):
    out = tmp_path / "edits"
    tilt, chan = setup["dirs"] / "tilt.direction.safetensors", setup["dirs"] / "chan.direction.safetensors"
    res = _invoke(
        "edit", "-", "-d", tilt, "-d", chan, "-p", "-2", "--power=3", "-o", out, "--json", input=setup["inv_json"]
    )
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in res.stdout.splitlines()]
    assert [Path(r["input"]).name for r in recs] == ["p1.latent.safetensors", "p2.latent.safetensors"]
    assert all(r["status"] == "ok" for r in recs)
    assert set(recs[0]["outputs"]) == {"tilt-2", "tilt+3", "chan-2", "chan+3"}
    chan = recs[0]["info"]["directions"]["chan"]
    assert {k: chan[k] for k in ("space", "powers")} == {"space": "stylespace", "powers": [-2.0, 3.0]}
    assert chan["generator"]  # the id of the generator the direction is bound to
    for name in ("p1", "p2"):
        latent = setup["root"] / "inv" / f"{name}.latent.safetensors"
        for d, p in (("tilt", 3.0), ("chan", -2.0)):
            saved = load_image(out / f"{name}.{d}{p:+g}.png")
            ref = _render(setup["method"], latent, Direction.load(setup["dirs"] / f"{d}.direction.safetensors"), p)
            assert np.abs(_pixels(saved) - _pixels(ref)).max() <= 1
        recon = load_image(setup["root"] / "inv" / f"{name}.recon.png")
        assert np.abs(_pixels(load_image(out / f"{name}.tilt+3.png")) - _pixels(recon)).mean() > 1  # it edits
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 2


def test_wrong_generator_is_refused_unless_forced(setup, tmp_path):
    latent = setup["root"] / "inv" / "p1.latent.safetensors"
    foreign = setup["dirs"] / "foreign.direction.safetensors"
    res = _invoke("edit", latent, "-d", foreign, "-p", "1", "-o", tmp_path / "a")
    assert res.exit_code == 1
    assert "was made for generator other" in res.stderr and "--force" in res.stderr
    assert not (tmp_path / "a" / "p1.foreign+1.png").exists()
    res = _invoke("edit", latent, "-d", foreign, "-p", "1", "-o", tmp_path / "b", "--force")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b" / "p1.foreign+1.png").exists() and "anyway" in res.stderr
    # an official FFHQ direction never fits the 32-wide tiny generator, even forced
    res = _invoke("edit", latent, "-d", FIXTURES / "directions" / "smile.pt", "-p", "1", "-o", tmp_path / "c")
    assert res.exit_code == 2 and "gie directions import" in res.stderr  # a raw official file must be imported first
    ffhq = tmp_path / "ffhq"
    assert _invoke("directions", "import", FIXTURES / "directions" / "smile.pt", "-o", ffhq).exit_code == 0
    res = _invoke(
        "edit", latent, "-d", ffhq / "smile.direction.safetensors", "-p", "1", "-o", tmp_path / "c", "--force"
    )
    assert res.exit_code == 1 and "width 512" in res.stderr and "--force cannot" in res.stderr


def test_a_direction_name_resolves_to_the_file_bound_to_the_latents_generator(setup, tmp_path, tiny_e4e):
    """Two folders on the search path hold a direction called "tilt": the first is bound to another generator, the
    second to the latent's; the name picks the second (no --force needed) and the record says which generator."""
    g = setup["method"].generator
    vec = setup["vec"]
    other = tiny_e4e
    with torch.no_grad():
        other.generator.convs[0].conv.weight.mul_(1.1)
    first, second = tmp_path / "first", tmp_path / "second"
    Direction(
        "tilt", "w", {"vector": -vec}, list(range(g.n_latent)), generator=generator_binding(other.generator, "other")
    ).save(first)
    Direction.load(setup["dirs"] / "tilt.direction.safetensors").save(second)
    latent = setup["root"] / "inv" / "p1.latent.safetensors"
    env = {"GIE_DIRECTIONS_PATH": f"{first}{os.pathsep}{second}"}
    res = _invoke("edit", latent, "-d", "tilt", "-p", "2", "-o", tmp_path / "out", "--json", env=env)
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout.splitlines()[0])
    assert rec["info"]["directions"]["tilt"]["generator"] == setup["method"].weights_id
    want = _render(setup["method"], latent, Direction.load(second / "tilt.direction.safetensors"), 2.0)
    assert np.abs(_pixels(Image.open(tmp_path / "out" / "p1.tilt+2.png")) - _pixels(want)).max() <= 1
    # a generator none of them is bound to gets the search-path winner, refused as usual
    res = _invoke("edit", latent, "-d", first / "tilt.direction.safetensors", "-p", "2", "-o", tmp_path / "o2")
    assert res.exit_code == 1 and "--force" in res.stderr


def test_grid_resume_and_dry_run(setup, tmp_path):
    out = tmp_path / "g"
    inv = setup["root"] / "inv"
    args = ("edit", inv, "-d", setup["dirs"] / "tilt.direction.safetensors", "-o", out, "--grid", "--grid-size", "24")
    res = _invoke(*args)  # no --power: the ends of the recommended range
    assert res.exit_code == 0, res.output
    assert (out / "p1.tilt-3.png").exists() and (out / "p1.tilt+3.png").exists()
    grid = Image.open(out / "p1.grid.png")
    assert grid.size == (3 * 24, 24)  # reconstruction + 2 powers, one direction row
    recon = load_image(inv / "p1.recon.png").resize((24, 24), Image.Resampling.LANCZOS)
    assert np.abs(_pixels(grid.crop((0, 0, 24, 24)).convert("RGB")) - _pixels(recon)).max() <= 2
    mtime = (out / "p1.tilt+3.png").stat().st_mtime_ns
    res = _invoke(*args)
    assert res.exit_code == 0 and "2 skipped" in res.stderr
    assert (out / "p1.tilt+3.png").stat().st_mtime_ns == mtime
    dry = _invoke(*args, "-p", "1", "--dry-run")
    assert dry.exit_code == 0 and dry.stdout.count("todo") == 2 and not (out / "p1.tilt+1.png").exists()


def test_paste_back_uses_the_alignment_record(setup, tmp_path):
    inv = tmp_path / "inv"
    inv.mkdir()
    src = setup["root"] / "inv" / "p1.latent.safetensors"
    (inv / "p1.latent.safetensors").write_bytes(src.read_bytes())
    photo = tmp_path / "photo.png"
    Image.new("RGB", (96, 80), (10, 200, 30)).save(photo)
    record = {  # the 32px crop covers photo pixels 20..84 x 8..72 (scale 0.5)
        "format": "gie-align/1",
        "transform": [[0.5, 0.0, -10.0], [0.0, 0.5, -4.0], [0.0, 0.0, 1.0]],
        "output_size": 32,
        "source_size": [96, 80],
        "source": str(photo),
    }
    (inv / "p1.align.json").write_text(json.dumps(record))
    out = tmp_path / "o"
    tilt = setup["dirs"] / "tilt.direction.safetensors"
    res = _invoke("edit", inv, "-d", tilt, "-p", "2", "-o", out, "--paste-back", "--json")
    assert res.exit_code == 0, res.output
    pasted = load_image(out / "p1.tilt+2.paste.png")
    assert pasted.size == (96, 80)
    px = _pixels(pasted)
    assert (px[0, 0] == (10, 200, 30)).all() and not (px[40, 52] == (10, 200, 30)).all()
    assert json.loads(res.stdout)["info"]["align_record"].endswith("p1.align.json")
    (inv / "p1.align.json").unlink()
    res = _invoke("edit", inv, "-d", tilt, "-p", "1", "-o", tmp_path / "o2", "--paste-back")
    assert res.exit_code == 1 and "no alignment record" in res.stderr


def test_usage_errors(setup, tmp_path):
    latent = setup["root"] / "inv" / "p1.latent.safetensors"
    assert _invoke("edit", latent, "-o", tmp_path / "o").exit_code == 2  # no --direction
    res = _invoke("edit", latent, "-d", "no_such_direction", "-p", "1", "-o", tmp_path / "o")
    assert res.exit_code == 2 and "not found" in res.stderr
    res = _invoke("edit", latent, "-d", setup["dirs"] / "tilt.direction.safetensors", "-p", "x", "-o", tmp_path / "o")
    assert res.exit_code == 2 and "not a number" in res.stderr
    # library errors name their parameter; the CLI shows the flag
    res = _invoke("edit", latent, "-o", tmp_path / "o")
    assert res.exit_code == 2 and "--direction" in res.stderr and "gie directions list" in res.stderr
    res = _invoke("edit", latent, "-d", "tilt", "-p", "1", "--ext", "gif", "-o", tmp_path / "o")
    assert res.exit_code == 2 and "--ext" in res.stderr and "'gif'" in res.stderr


def test_out_of_memory_while_rendering_edits_halves_the_batch_and_keeps_the_outputs(setup, tmp_path, monkeypatch):
    """CUDA out-of-memory (simulated) while rendering an edit batch at the requested size: the edit is retried at
    half the batch size, every item ends ok, and the images equal those of a run that never ran out of memory."""
    import gie_cli.editing.session as session_mod

    inv = setup["root"] / "inv"
    args = ("edit", inv, "-d", setup["dirs"] / "tilt.direction.safetensors", "-p", "-2,-1,1,2", "-b", "4", "--json")
    ref = _invoke(*args, "-o", tmp_path / "ref")
    assert ref.exit_code == 0, ref.output
    real = session_mod.render_edit
    sizes: list[int] = []

    def render_edit(method, inversion, edit):
        sizes.append(len(edit))
        if len(edit) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(method, inversion, edit)

    monkeypatch.setattr(session_mod, "render_edit", render_edit)
    res = _invoke(*args, "-o", tmp_path / "oom")
    assert res.exit_code == 0, res.output
    assert sizes == [4, 2, 2, 2, 2]  # p1 at 4 (out of memory), then 2 + 2; p2 keeps the smaller size
    assert "batch size reduced to 2" in res.stderr
    recs = [json.loads(x) for x in res.stdout.splitlines()]
    assert [r["status"] for r in recs] == ["ok", "ok"]
    for name in ("p1", "p2"):
        for p in ("-2", "-1", "+1", "+2"):
            got, want = (load_image(tmp_path / d / f"{name}.tilt{p}.png") for d in ("oom", "ref"))
            assert np.array_equal(_pixels(got), _pixels(want)), (name, p)


def test_help_of_edit_and_directions_shows_examples_without_importing_torch():
    import subprocess
    import sys

    commands = [
        ["edit"],
        ["directions"],
        ["directions", "list"],
        ["directions", "show"],
        ["directions", "import"],
        ["directions", "fit"],
        *(["directions", "fit", k] for k in ("interfacegan", "regression", "ganspace", "stylespace", "label")),
    ]
    for args in commands:
        res = runner.invoke(app, [*args, "--help"])
        assert res.exit_code == 0 and "Examples" in res.stdout and f"gie {' '.join(args)}" in res.stdout, args
    code = (
        "import sys; from gie_cli.cli import app\n"
        "for args in (['edit', '--help'], ['directions', 'fit', 'regression', '--help']):\n"
        "    try:\n        app(args)\n    except SystemExit as e:\n        assert e.code in (0, None)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# --------------------------------------------------------------------------------------------------- directions CLI
def test_directions_import_list_show(tmp_path):
    env = {"GIE_CACHE_DIR": str(tmp_path / "cache"), "GIE_DIRECTIONS_PATH": ""}
    official = FIXTURES / "directions"
    files = [official / f for f in ("age.pt", "smile.pt", "pose.pt", "ffhq_pca.pt")]
    res = _invoke("directions", "import", *files, "--json", env=env)
    assert res.exit_code == 0, res.output
    made = {json.loads(x)["name"]: json.loads(x) for x in res.stdout.splitlines()}
    assert {"age", "smile", "pose", "eye_openness", "lipstick", "displeased"} <= set(made) and len(made) == 13
    assert made["pose"]["space"] == "wplus" and made["lipstick"]["mode"] == "set"
    assert Path(made["age"]["path"]).parent == tmp_path / "cache" / "directions"
    res = _invoke("directions", "import", official / "age.pt", "--convention", "sfe", "--name", "age_sfe", env=env)
    assert res.exit_code == 0
    again = _invoke("directions", "import", official / "age.pt", env=env)
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    listing = _invoke("directions", "list", "--json", env=env)
    names = {json.loads(x)["name"]: json.loads(x) for x in listing.stdout.splitlines()}
    assert names["age_sfe"]["scale"] == 0.5 and names["age"]["scale"] == 1.0
    show = _invoke("directions", "show", "age_sfe", "--json", env=env)
    cfg = json.loads(show.stdout)
    assert cfg["scale"] == 0.5 and cfg["power_range"] == [-10.0, 10.0] and cfg["tensors"]["vector"]["shape"] == [512]
    assert cfg["provenance"]["method"] == "import:interfacegan[sfe]" and len(cfg["provenance"]["sha256"]) == 64


def test_directions_fit_commands_bind_to_the_weights(setup, tmp_path):
    w = setup["weights"]
    out = tmp_path / "d"
    g = setup["method"].generator
    # InterFaceGAN from a labels file (W samples labelled by a planted direction) and from a labelling function
    from gie_cli.editing.fit import sample_w
    from gie_cli.io.checkpoint import save_safetensors

    ws = sample_w(g, 1500, seed=3)
    planted = setup["vec"]
    save_safetensors(
        tmp_path / "labels.safetensors", {"w": ws, "labels": ((ws - ws.mean(0)) @ planted > 0).float()}, {}
    )
    res = _invoke(
        "directions",
        "fit",
        "interfacegan",
        "-n",
        "ifg",
        "-w",
        w,
        "--labels",
        tmp_path / "labels.safetensors",
        "-o",
        out,
        "--json",
    )
    assert res.exit_code == 0, res.output
    d = Direction.load(out / "ifg.direction.safetensors")
    assert float(d.tensors["vector"] @ planted) >= 0.9
    assert d.generator["fingerprint"] == generator_fingerprint(g)
    fn = tmp_path / "labeller.py"
    fn.write_text(
        f"import torch\nP = torch.tensor({planted.tolist()})\ndef label(w):\n    return (w @ P > 0).float()\n"
    )
    res = _invoke(
        "directions",
        "fit",
        "interfacegan",
        "-n",
        "ifg2",
        "-w",
        w,
        "--classifier",
        f"{fn}:label",
        "--samples",
        "1500",
        "-o",
        out,
    )
    assert res.exit_code == 0, res.output
    assert float(Direction.load(out / "ifg2.direction.safetensors").tensors["vector"] @ planted) >= 0.9
    # joint regression on two named label columns: power = label units, named after the columns
    other = torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(9)), dim=0)
    both = torch.stack([(ws - ws.mean(0)) @ planted, (ws - ws.mean(0)) @ other], 1)
    save_safetensors(tmp_path / "multi.safetensors", {"w": ws, "labels": both}, {"columns": ["tilt", "turn"]})
    res = _invoke(
        "directions", "fit", "regression", "-w", w, "--labels", tmp_path / "multi.safetensors", "-a", "turn", "-o", out
    )
    assert res.exit_code == 0, res.output
    turn = Direction.load(out / "turn.direction.safetensors")
    assert turn.space == "w" and turn.power_range == (-1.0, 1.0) and turn.provenance["method"] == "fit:regression"
    moved = (ws[:50] + turn.tensors["vector"] - ws.mean(0)) @ other - (ws[:50] - ws.mean(0)) @ other
    torch.testing.assert_close(moved, torch.ones(50), atol=0.05, rtol=0.05)  # one unit of the "turn" label
    res = _invoke("directions", "fit", "regression", "-w", w, "--labels", tmp_path / "multi.safetensors", "-a", "x")
    assert res.exit_code == 2 and "tilt, turn" in res.stderr
    # GANSpace and StyleSpace
    res = _invoke(
        "directions", "fit", "ganspace", "-w", w, "-k", "3", "--samples", "2000", "--layers", "2:6", "-o", out
    )
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == 3
    pc = Direction.load(out / "pc_pc00.direction.safetensors")
    assert pc.layers == [2, 3, 4, 5] and pc.params["mode"] == "add"
    res = _invoke(
        "directions",
        "fit",
        "stylespace",
        "-n",
        "ss",
        "-w",
        w,
        "--layer",
        "5",
        "--channel",
        "2",
        "--s-index",
        "--samples",
        "800",
        "-o",
        out,
    )
    assert res.exit_code == 0, res.output
    ss = Direction.load(out / "ss.direction.safetensors")
    assert ss.layers == [3] and ss.scale > 0  # S index 5 = conv layer 3; scale = the channel's std
    # label-based: a classifier trained on labelled W+ latents
    wp = g.broadcast(ws[:400]).contiguous() + 0.1 * torch.randn(400, g.n_latent, 32)
    lab = ((wp.mean(1) - ws.mean(0)) @ planted > 0).float()
    save_safetensors(tmp_path / "wplus.safetensors", {"wplus": wp, "labels": lab}, {})
    res = _invoke(
        "directions",
        "fit",
        "label",
        "-n",
        "lab",
        "-w",
        w,
        "--attribute",
        "0",
        "--labels",
        tmp_path / "wplus.safetensors",
        "--order",
        "2",
        "--steps",
        "20",
        "-o",
        out,
    )
    assert res.exit_code == 0, res.output
    lab_dir = Direction.load(out / "lab.direction.safetensors")
    assert lab_dir.space == "label" and lab_dir.params["order"] == 2
    # the fitted directions edit the tiny e4e latents
    latent = setup["root"] / "inv" / "p1.latent.safetensors"
    res = _invoke(
        "edit",
        latent,
        "-d",
        out / "lab.direction.safetensors",
        "-d",
        out / "ss.direction.safetensors",
        "-p",
        "2",
        "-o",
        tmp_path / "e",
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "e" / "p1.lab+2.png").exists() and (tmp_path / "e" / "p1.ss+2.png").exists()


def test_directions_choices_and_library_errors_name_the_flag(setup, tmp_path):
    env = {"GIE_CACHE_DIR": str(tmp_path / "cache"), "GIE_DIRECTIONS_PATH": ""}
    official = FIXTURES / "directions"
    res = _invoke("directions", "import", official / "age.pt", "--convention", "stylegan", env=env)
    assert res.exit_code == 2 and "--convention" in res.stderr and "'stylegan'" in res.stderr
    res = _invoke("directions", "import", official / "ffhq_pca.pt", "--name", "x", env=env)
    assert res.exit_code == 2 and "--name:" in res.stderr and "several named edits" in res.stderr
    res = _invoke("directions", "import", official / "ffhq_pca.pt", "--edits", "nope", env=env)
    assert res.exit_code == 2 and "--edits: unknown GANSpace edit(s) nope" in res.stderr
    w = setup["weights"]
    res = _invoke("directions", "fit", "interfacegan", "-n", "x", "-w", w, "--classifier", "no_colon", env=env)
    assert res.exit_code == 2 and "error: --classifier: labelling function 'no_colon' is not" in res.stderr
    res = _invoke("directions", "fit", "interfacegan", "-n", "x", "-w", w, "--labels", "l.csv", "--solver", "tree")
    assert res.exit_code == 2 and "--solver" in res.stderr and "'tree'" in res.stderr

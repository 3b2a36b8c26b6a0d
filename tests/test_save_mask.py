"""`gie invert --save-mask`: the blending mask of methods with ``mask_of`` (ood) beside each reconstruction, its
manifest entry, the usage error of methods without a mask, and resuming a folder made without masks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_face, make_tiny_e4e
from PIL import Image
from typer.testing import CliRunner, Result

from gie_cli.cli import app
from gie_cli.io.images import mask_to_image
from gie_cli.methods import Inversion, register_method
from gie_cli.methods.e4e import EncoderMethod
from gie_cli.methods.registry import REGISTRY

runner = CliRunner()
MASKED = "masked_e4e_test"
"""The test double's method name (a plugin registered for the tests of this file)."""


class MaskedE4E(EncoderMethod):
    """The tiny e4e plus a known blending mask: the left half keeps the photo (1), the right half does not (0)."""

    def mask_of(self, inv: Inversion) -> torch.Tensor:
        """``[B, 1, S, S]``: 1 on the left half, 0 on the right half."""
        s = self.generator.size
        m = torch.zeros(inv.wplus.shape[0], 1, s, s)
        m[..., : s // 2] = 1.0
        return m


def _masked_method(weights: str | None = None, **options: object) -> MaskedE4E:
    """Plugin factory of :class:`MaskedE4E` (no weights file: the tiny e4e's fixed random weights)."""
    model = make_tiny_e4e()
    model.__class__ = MaskedE4E
    return model


@pytest.fixture(autouse=True)
def masked_method() -> Iterator[str]:
    """Register the test double as a plugin method for one test."""
    register_method(MASKED, "tiny e4e with a known blending mask (test double)")(_masked_method)
    try:
        yield MASKED
    finally:
        REGISTRY.plugins.pop(MASKED, None)


@pytest.fixture()
def faces(tmp_path: Path) -> Path:
    """Three aligned-crop stand-ins (80 px squares) in ``tmp_path/aligned``."""
    d = tmp_path / "aligned"
    d.mkdir()
    for i, name in enumerate(("face01", "face02", "face03")):
        make_face(i + 1).save(d / f"{name}.png")
    return d


def _invert(*args: object) -> Result:
    """``gie invert ARGS --no-align`` (the crops carry no evidence of being aligned)."""
    return runner.invoke(app, ["invert", *(str(a) for a in args), "--no-align"])


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _check_mask(mask: Path, recon: Path) -> None:
    """``mask`` is an 8-bit grayscale PNG at ``recon``'s size holding the double's mask (255 left, 0 right)."""
    with Image.open(mask) as im:
        assert im.format == "PNG" and im.mode == "L"
        arr = np.asarray(im)
    with Image.open(recon) as rec:
        assert (arr.shape[1], arr.shape[0]) == rec.size
    half = arr.shape[1] // 2
    assert (arr[:, :half] == 255).all() and (arr[:, half:] == 0).all()


def test_save_mask_writes_one_mask_per_item(faces, tmp_path):
    out = tmp_path / "out"
    res = _invert(faces, "-o", out, "-m", MASKED, "--save-mask", "--json", "-b", "2")
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(lines) == 3 and all(x["status"] == "ok" for x in lines)
    by_input = {Path(r["input"]).stem: r for r in _records(out)}
    for name in ("face01", "face02", "face03"):
        mask, recon = out / f"{name}.recon_mask.png", out / f"{name}.recon.png"
        _check_mask(mask, recon)
        assert by_input[name]["outputs"]["mask"] == str(mask)
    assert {Path(x["outputs"]["mask"]).name for x in lines} == {f"face0{i}.recon_mask.png" for i in (1, 2, 3)}
    assert not list(out.rglob("*.tmp-*"))


def test_save_mask_with_a_method_without_mask_is_a_usage_error(faces, tmp_path, tiny_e4e_weights):
    out = tmp_path / "out"
    res = _invert(faces, "-o", out, "-m", "e4e", "--weights", tiny_e4e_weights, "--save-mask")
    assert res.exit_code == 2, res.output
    errors = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr
    assert "--save-mask" in errors[0] and "method e4e" in errors[0] and "--method ood" in errors[0]
    assert not out.exists()  # checked before any item runs: nothing written


def test_rerun_with_save_mask_adds_the_missing_masks(faces, tmp_path):
    out = tmp_path / "out"
    res = _invert(faces, "-o", out, "-m", MASKED, "--json")
    assert res.exit_code == 0, res.output
    assert not list(out.glob("*_mask.png"))
    assert all("mask" not in r["outputs"] for r in _records(out))

    res = _invert(faces, "-o", out, "-m", MASKED, "--save-mask", "--dry-run")
    assert res.exit_code == 0, res.output
    planned = res.stdout.splitlines()
    assert len(planned) == 3 and all(x.startswith("todo\t") and "recon_mask.png" in x for x in planned)

    res = _invert(faces, "-o", out, "-m", MASKED, "--save-mask", "--json")
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x["status"] for x in lines] == ["ok"] * 3
    for name in ("face01", "face02", "face03"):
        _check_mask(out / f"{name}.recon_mask.png", out / f"{name}.recon.png")

    # both requests are remembered: re-runs with and without the flag skip; a deleted mask is made again
    for extra in (["--save-mask"], []):
        res = _invert(faces, "-o", out, "-m", MASKED, "--json", *extra)
        assert [json.loads(x)["status"] for x in res.stdout.splitlines()] == ["skipped"] * 3, res.output
    (out / "face02.recon_mask.png").unlink()
    res = _invert(faces, "-o", out, "-m", MASKED, "--save-mask", "--json")
    status = {Path(r["input"]).stem: r["status"] for r in map(json.loads, res.stdout.splitlines())}
    assert status == {"face01": "skipped", "face02": "ok", "face03": "skipped"}
    _check_mask(out / "face02.recon_mask.png", out / "face02.recon.png")


def test_mask_to_image_resizes_and_quantizes():
    m = torch.zeros(1, 1, 16, 16)
    m[..., :8] = 1.0
    img = mask_to_image(m, (32, 32))
    arr = np.asarray(img)
    assert img.mode == "L" and img.size == (32, 32)
    assert (arr[:, :15] == 255).all() and (arr[:, 17:] == 0).all() and 0 < arr[0, 15] < 255
    half = torch.full((1, 4, 6), 0.5)
    half[0, 0, 0] = float("nan")  # NaN -> 0, out of range -> clamped
    half[0, 0, 1], half[0, 0, 2] = 2.0, -1.0
    assert np.asarray(mask_to_image(half)).tolist() == [[0, 255, 0, 128, 128, 128]] + [[128] * 6] * 3

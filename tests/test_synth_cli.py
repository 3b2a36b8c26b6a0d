"""`gie synth` renders world photos that `gie align --backend file` aligns offline."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from gie_cli.cli import app

runner = CliRunner()


def test_synth_photos_then_align(tmp_path):
    photos, aligned = tmp_path / "photos", tmp_path / "aligned"
    res = runner.invoke(app, ["synth", "-o", str(photos), "-n", "3", "--size", "96"])
    assert res.exit_code == 0, res.output
    assert len(list(photos.glob("*.png"))) == 3 and len(list(photos.glob("*.landmarks.json"))) == 3
    recs = [json.loads(x) for x in (photos / "params.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and recs[0]["kind"] == "photo"
    res = runner.invoke(app, ["align", str(photos), "-o", str(aligned), "--backend", "file", "--size", "64", "--json"])
    assert res.exit_code == 0, res.output
    assert [json.loads(x)["status"] for x in res.stdout.splitlines()] == ["ok"] * 3
    res = runner.invoke(app, ["synth", "-o", str(photos), "-n", "1"])
    assert res.exit_code == 2 and "not empty" in res.stderr

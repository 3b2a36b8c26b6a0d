"""CLI basics: --version without torch, help, device resolution, exit codes, stdout/stderr separation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from gie_cli import __version__
from gie_cli.cli import app
from gie_cli.device import resolve_device, resolve_dtype
from gie_cli.errors import UsageError

runner = CliRunner()


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["invert", "--help"], ["weights", "--help"]])
def test_version_and_help_do_not_import_torch(args):
    code = (
        "import sys; from gie_cli.cli import app\n"
        f"try:\n    app({args!r})\nexcept SystemExit as e:\n    assert e.code in (0, None)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    if args == ["--version"]:
        assert out.stdout.strip() == f"gie {__version__}"


def test_module_entry_point_and_help():
    out = subprocess.run([sys.executable, "-m", "gie_cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "invert" in out.stdout
    res = runner.invoke(app, [])
    assert "Usage" in res.output


def test_info_json_on_stdout_and_device_log_on_stderr():
    res = runner.invoke(app, ["info", "--json", "--device", "auto"])
    assert res.exit_code == 0
    facts = json.loads(res.stdout)
    assert facts["device"] in ("cpu", "cuda") and facts["torch"] == torch.__version__
    assert {"e4e", "psp", "optim"} <= set(facts["methods"]) and "e4e" in facts["trainable"]
    assert "device:" in res.stderr and "auto" in res.stderr  # --device auto says what it chose
    quiet = runner.invoke(app, ["-q", "info", "--json"])
    assert quiet.exit_code == 0 and quiet.stderr == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error path")
def test_explicit_cuda_without_cuda_is_a_usage_error():
    res = runner.invoke(app, ["info", "--device", "cuda"])
    assert res.exit_code == 2
    assert "CUDA is not usable" in res.stderr and res.stderr.count("\n") == 1  # one line
    with pytest.raises(UsageError):
        resolve_device("cuda:0")


def test_bad_device_and_dtype_specs():
    for bad in ("gpu", "cuda:x", "cpu0"):
        with pytest.raises(UsageError, match="invalid --device"):
            resolve_device(bad)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    with pytest.raises(UsageError, match="needs a CUDA device"):
        resolve_dtype("bf16", torch.device("cpu"))
    with pytest.raises(UsageError, match="invalid --dtype"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_unknown_command_and_option_exit_2():
    assert runner.invoke(app, ["bogus"]).exit_code == 2
    assert runner.invoke(app, ["info", "--bogus"]).exit_code == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_resolves():
    assert resolve_device("cuda:0").type == "cuda"

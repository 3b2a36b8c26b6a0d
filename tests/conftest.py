"""Shared test helpers: parity fixtures (official layouts, deterministic weights, recorded outputs), the torchvision
import shim."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
PARITY = FIXTURES / "parity"

torch.set_num_threads(min(2, os.cpu_count() or 1))


def _fixture_weights():
    spec = importlib.util.spec_from_file_location("fixture_weights", PARITY / "fixture_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_parity(name: str) -> tuple[dict, dict, dict]:
    """Return ``(state_dict, io, config)`` of the parity fixture ``name``."""
    folder = PARITY / name
    sd = _fixture_weights().make_state_dict(folder)
    io = torch.load(folder / "io.pt", weights_only=True)
    cfg = json.loads((folder / "manifest.json").read_text())["config"]
    return sd, io, cfg


def manifest_keys(name: str) -> list[tuple[str, list[int]]]:
    """The fixture's state-dict keys and shapes in official order."""
    tensors = json.loads((PARITY / name / "manifest.json").read_text())["tensors"]
    return [(k, v["shape"]) for k, v in tensors.items()]


def assert_parity(out: torch.Tensor, ref: torch.Tensor, max_abs: float = 1e-4) -> float:
    """Assert ``out`` reproduces ``ref`` (max abs error <= ``max_abs``); returns the error."""
    assert out.shape == ref.shape, (tuple(out.shape), tuple(ref.shape))
    err = (out.detach().float() - ref.float()).abs().max().item()
    assert err <= max_abs, f"max abs error {err:.3g} > {max_abs}"
    return err


slow = pytest.mark.skipif(not os.environ.get("GIE_SLOW_TESTS"), reason="slow test: set GIE_SLOW_TESTS=1")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def import_torchvision():
    """torchvision, importable on the CPU torch (test-only shim, docs/environment.md section 3).

    torchvision 0.28's CUDA ``_C.so`` cannot load against a CPU torch, and its meta registrations then fail with
    "operator torchvision::nms does not exist": the op schemas are defined first and the import retried.
    """
    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision

        torchvision._compat_lib = lib  # keep the library (and its schemas) alive
    return torchvision

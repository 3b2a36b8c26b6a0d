"""Shared test helpers: parity fixtures (official layouts, deterministic weights, recorded outputs), the tiny e4e and
the synthetic face the CLI tests share, the torchvision import shim; the ``slow`` marker (run with GIE_SLOW_TESTS=1),
``--order=reverse|shuffle|shuffle:SEED``, and per-test isolation of global state (logging, torch settings, RNG seeds,
cwd, environment)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"
PARITY = FIXTURES / "parity"

torch.set_num_threads(min(2, os.cpu_count() or 1))
# The tests never use the network (CI has none): gie runs offline unless a test unsets this for a local server.
os.environ["GIE_OFFLINE"] = "1"


# --------------------------------------------------------------------------------------------------- slow tests, order
def slow_tests_enabled() -> bool:
    """GIE_SLOW_TESTS=1 (any value but empty or 0) runs the tests marked ``slow``; by default they are skipped."""
    return os.environ.get("GIE_SLOW_TESTS", "") not in ("", "0")


_ORDER = pytest.StashKey[tuple]()


def pytest_addoption(parser):
    parser.addoption(
        "--order",
        default="default",
        help="run the tests in 'default', 'reverse', 'shuffle' (random seed, printed in the header) or "
        "'shuffle:SEED' order; tests stay grouped by module, modules and the tests in each are reordered",
    )


def pytest_configure(config):
    value = config.getoption("order")
    kind, _, seed = value.partition(":")
    if kind not in ("default", "reverse", "shuffle") or (seed and (kind != "shuffle" or not seed.isdigit())):
        raise pytest.UsageError(f"--order={value}: expected default, reverse, shuffle or shuffle:SEED")
    if kind == "shuffle":
        seed = int(seed) if seed else random.SystemRandom().randrange(10**6)
    config.stash[_ORDER] = (kind, seed if kind == "shuffle" else None)


def pytest_report_header(config):
    kind, seed = config.stash[_ORDER]
    order = f"shuffle (seed {seed}: rerun with --order=shuffle:{seed})" if kind == "shuffle" else kind
    slow = "run" if slow_tests_enabled() else "skipped (set GIE_SLOW_TESTS=1 to run them)"
    return [f"test order: {order}", f"slow tests: {slow}"]


def pytest_terminal_summary(terminalreporter, config):
    kind, seed = config.stash[_ORDER]
    if kind == "shuffle":  # also under -q, which hides the header
        terminalreporter.write_line(f"test order: shuffle (rerun with --order=shuffle:{seed})")
    elif kind == "reverse":
        terminalreporter.write_line("test order: reverse")


@pytest.hookimpl(tryfirst=True)  # before pytest groups the items by parametrized module-scoped fixtures
def pytest_collection_modifyitems(config, items):
    if not slow_tests_enabled():
        skip = pytest.mark.skip(reason="slow test: set GIE_SLOW_TESTS=1")
        for item in items:
            if item.get_closest_marker("slow"):
                item.add_marker(skip)
    kind, seed = config.stash[_ORDER]
    if kind == "default":
        return
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    groups = list(modules.values())
    if kind == "reverse":
        groups = [g[::-1] for g in groups[::-1]]
    else:
        rng = random.Random(seed)
        rng.shuffle(groups)
        for g in groups:
            rng.shuffle(g)
    items[:] = [item for g in groups for item in g]


# --------------------------------------------------------------------------------------------------- global state
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Every test (and the module fixtures it builds first) starts from the same global RNG state, whatever ran
    before it: no test relies on the seeds another test left."""
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)


def _is_pytest_handler(h: logging.Handler) -> bool:
    return type(h).__module__.startswith("_pytest")


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Restore what a test (the CLI's logging set-up, torch settings) may change in the process: the ``gie_cli`` and
    root loggers, torch's default dtype, thread count and grad mode, the working directory and os.environ."""
    log, root = logging.getLogger("gie_cli"), logging.getLogger()
    saved_log = (log.handlers[:], log.level, log.propagate, log.disabled)
    saved_root = (root.handlers[:], root.level)
    saved_torch = (torch.get_default_dtype(), torch.get_num_threads(), torch.is_grad_enabled())
    cwd, environ = os.getcwd(), dict(os.environ)
    yield
    log.handlers[:], log.propagate, log.disabled = saved_log[0], saved_log[2], saved_log[3]
    log.setLevel(saved_log[1])
    for h in root.handlers[:]:
        if h not in saved_root[0] and not _is_pytest_handler(h):
            root.removeHandler(h)
    root.setLevel(saved_root[1])
    dtype, threads, grad = saved_torch
    torch.set_default_dtype(dtype)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.set_grad_enabled(grad)
    if os.getcwd() != cwd:
        os.chdir(cwd)
    if dict(os.environ) != environ:
        os.environ.clear()
        os.environ.update(environ)


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
    own = {len(t) for t in io.values() if t.ndim}  # the batch the fixture keeps (slim.json first_item: 1)
    for key, other in _SLIM["same_as"].get(name, {}).items():  # entries dropped as copies of another fixture's
        io[key] = torch.load(PARITY / other / "io.pt", weights_only=True)[key]
        assert not own or len(io[key]) in own, (
            f"{name}[{key!r}] refilled from {other} has batch {len(io[key])}, not {own}"
        )
    cfg = json.loads((folder / "manifest.json").read_text())["config"]
    return sd, io, cfg


def first_items(t: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` items of ``t``: a generated input (``make_tensor`` at the manifest's batch 2) cut to the items
    the fixture's ``io.pt`` keeps (slim.json ``first_item`` keeps 1)."""
    assert 0 < n <= len(t), (n, tuple(t.shape))
    return t[:n]


#: how the copies in tests/fixtures/parity were slimmed (``slim.py``): dropped duplicates, summarized outputs, first
#: items of per-item modules
_SLIM = json.loads((PARITY / "slim.json").read_text())


def assert_parity_io(
    out: torch.Tensor, io: dict, name: str, rows: slice = slice(None), max_abs: float = 1e-4, rel: bool = False
) -> float:
    """Assert ``out`` reproduces the fixture output ``io[name][rows]``; where the fixture keeps only summaries of it
    (``<name>_pool<k>`` with ``<name>_crop64`` or ``<name>_ch0_8``: the shared fixtures' conventions, re-pooled by
    ``slim.json``), the same reductions of ``out``. With ``rel``, ``max_abs`` is relative to each reference's largest
    magnitude. Returns the largest error."""

    def check(got: torch.Tensor, ref: torch.Tensor) -> float:
        ref = ref[rows]
        return assert_parity(got, ref, max_abs * float(ref.abs().max()) if rel else max_abs)

    if name in io:
        return check(out, io[name])
    pools = [k for k in io if re.fullmatch(rf"{re.escape(name)}_pool\d+", k)]
    assert len(pools) == 1, f"fixture has no single pooled summary of {name!r}: {sorted(io)}"
    errors = [check(torch.nn.functional.avg_pool2d(out, int(pools[0].rpartition("_pool")[2])), io[pools[0]])]
    if f"{name}_crop64" in io:
        h, w = out.shape[-2] // 2, out.shape[-1] // 2
        errors.append(check(out[..., h - 32 : h + 32, w - 32 : w + 32], io[f"{name}_crop64"]))
    if f"{name}_ch0_8" in io:
        errors.append(check(out[:, :8], io[f"{name}_ch0_8"]))
    assert len(errors) > 1, f"fixture keeps no full-resolution part of {name!r}"
    return max(errors)


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


slow = pytest.mark.slow  # skipped unless GIE_SLOW_TESTS=1 (pytest_collection_modifyitems above)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# --------------------------------------------------------------------------------------------------- tiny models
def make_tiny_e4e(kind: str = "e4e"):
    """A tiny random e4e (or pSp, ``kind="psp"``): 32 px generator with 32-d styles, 64 px ir_se encoder; the same
    weights on every call."""
    from gie_cli.methods.e4e import EncoderMethod
    from gie_cli.models.encoders import create_encoder
    from gie_cli.models.stylegan2 import Generator

    torch.manual_seed(0)
    g = Generator(32, style_dim=32, n_mlp=2, channel_max=32)
    g.mean_latent(512)
    cfg = {
        "mode": "ir_se",
        "unit_counts": [1, 1, 1, 1],
        "widths": [8, 16, 24, 32],
        "n_styles": g.n_latent,
        "style_dim": 32,
        "input_size": 64,
    }
    enc = create_encoder(kind, **cfg)
    return EncoderMethod(g, enc, g.broadcast(g.w_avg[None])[0].clone(), kind, cfg, True, "tiny").eval()


def write_cli_inputs(root: Path, generator, n: int = 2) -> Path:
    """For CLI tests on a tiny method: ``n`` random 32 px images ``root/in/f<i>.png`` (seeds 0..n-1) and a W direction
    ``root/up.direction.safetensors`` bound to ``generator`` (range -3..3). Returns ``root / "in"``."""
    from gie_cli.editing import Direction, generator_binding
    from gie_cli.io.images import tensor_to_image

    (root / "in").mkdir()
    for i in range(n):
        x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)) * 2 - 1
        tensor_to_image(x).save(root / "in" / f"f{i}.png")
    vec = torch.randn(generator.style_dim, generator=torch.Generator().manual_seed(5))
    Direction("up", "w", {"vector": vec / vec.norm()}, list(range(generator.n_latent)), power_range=(-3.0, 3.0),
              generator=generator_binding(generator, "tiny")).save(root)  # fmt: skip
    return root / "in"


def make_tiny_sfe(editor=None):
    """SFE on :func:`make_tiny_e4e`'s 32 px generator: Inverter at 32 px, so the feature is the 8 px block's (layer 2);
    a random Feature Editor unless ``editor`` is given."""
    from gie_cli.methods.sfe import ContentLayerDeepFast, Inverter
    from gie_cli.methods.sfe.method import SFEMethod

    e4e = make_tiny_e4e()
    g = e4e.generator
    torch.manual_seed(0)
    c = g.layer_channels(2)
    inv = Inverter(input_size=32, n_styles=g.n_latent, style_dim=g.style_dim, feature_channels=c,
                   unit_counts=(1, 1, 1, 1), widths=(8, 16, 24, 32), fuser_length=2).eval()  # fmt: skip
    editor = editor if editor is not None else ContentLayerDeepFast(2, 2 * c, c).eval()
    return SFEMethod(g, e4e, inv, editor, e4e.latent_avg, "tiny").eval()


def make_tiny_e4e_world(root: Path) -> dict:
    """:func:`make_tiny_e4e` saved as ``root/e4e.safetensors`` and 8 images its generator drew (truncation 0.7) in
    ``root/data``: ``{"root", "weights", "data", "e4e", "images" [8, 3, 32, 32]}``, for the refinement trainers."""
    from gie_cli.io.images import tensor_to_image

    e4e = make_tiny_e4e()
    weights = root / "e4e.safetensors"
    e4e.save(weights)
    data = root / "data"
    data.mkdir()
    with torch.no_grad():
        z = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
        imgs = e4e.generator.generate(z, truncation=0.7).clamp(-1, 1)
    for i, im in enumerate(imgs):
        tensor_to_image(im).save(data / f"{i:02d}.png")
    return {"root": root, "weights": weights, "data": data, "e4e": e4e, "images": imgs}


def make_face(seed: int, size: int = 80) -> Image.Image:
    """A flat-coloured ``size`` px square with an asymmetric blob, colours keyed by ``seed``."""
    rng = np.random.default_rng(seed)
    arr = np.zeros((size, size, 3), np.uint8)
    arr[:] = rng.integers(0, 255, 3)
    arr[size // 4 : size // 2, size // 5 : size // 2] = rng.integers(0, 255, 3)  # asymmetric blob
    return Image.fromarray(arr)


@pytest.fixture()
def tiny_e4e():
    """A fresh :func:`make_tiny_e4e` (the test may change it)."""
    return make_tiny_e4e()


@pytest.fixture(scope="session")
def tiny_e4e_weights(tmp_path_factory) -> Path:
    """:func:`make_tiny_e4e` saved as ``tiny_e4e.safetensors``, shared by the whole session: read it, never write it."""
    path = tmp_path_factory.mktemp("tiny_e4e") / "tiny_e4e.safetensors"
    make_tiny_e4e().save(path)
    return path


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


def batch_items(tmp_path: Path, n: int) -> list:
    """``n`` batch-engine items ``in/x{i}.png`` (distinct bytes) -> ``out/x{i}.png``, for engine tests."""
    from gie_cli.cli.batch import Item

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir(exist_ok=True)
    items = []
    for i in range(n):
        p = src / f"x{i}.png"
        p.write_bytes(f"input {i}".encode())
        items.append(Item(p, f"x{i}", {"image": out / f"x{i}.png"}))
    return items

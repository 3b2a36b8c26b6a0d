"""NVIDIA stylegan2-ada-pytorch -> rosinality conversion: parity with NVIDIA's outputs, restricted pickle import."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import assert_parity, assert_parity_io, load_parity
from torch import nn
from typer.testing import CliRunner

from gie_cli.cli import app
from gie_cli.errors import CheckpointError, UsageError
from gie_cli.models.loading import build_generator, read_components
from gie_cli.models.stylegan2 import Generator, convert_nvidia_ada_generator, generator_config_from_state_dict
from gie_cli.weights import resolve_weights
from gie_cli.weights.nvidia import load_network_pickle, stub_state_dict

FIXTURE = "nvidia_ada_g256"


@pytest.fixture(scope="module")
def nvidia():
    return load_parity(FIXTURE)


def _generator(sd: dict, w_avg: torch.Tensor) -> Generator:
    g = Generator(**generator_config_from_state_dict(sd)).eval()
    g.load_state_dict(sd, strict=True)
    g.w_avg.copy_(w_avg)
    return g


def test_converter_reproduces_nvidia_outputs(nvidia):
    sd, io, cfg = nvidia
    rs, w_avg = convert_nvidia_ada_generator(sd)
    g = _generator(rs, w_avg)
    assert list(rs) == list(g.state_dict())  # rosinality key order
    assert g.n_latent == cfg["num_ws"] == 14
    with torch.no_grad():
        errs = [
            assert_parity(g.broadcast(g.mapping(io["z"])), io["ws"]),
            assert_parity(g.broadcast(g.mapping(io["z"], truncation=0.7)), io["ws_trunc07"]),
            # one sample per image keeps this fast on a CPU (the import test renders img's second sample)
            assert_parity_io(g(io["wplus"][:1], noise_mode="const"), io, "img", slice(0, 1)),  # G.synthesis(wplus)
            assert_parity_io(g.generate(io["z"][1:]), io, "img_z", slice(1, None)),  # G(z, None, psi=1, 'const')
        ]
    assert max(errs) < 5e-5, errs


def test_converter_rejects_other_layouts(nvidia):
    sd, _, _ = nvidia
    with pytest.raises(ValueError, match="not an NVIDIA"):
        convert_nvidia_ada_generator({"style.1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="class-conditional"):
        convert_nvidia_ada_generator({**sd, "mapping.embed.weight": torch.zeros(1)})
    no_rgb = {k: v for k, v in sd.items() if not k.startswith("synthesis.b64.torgb")}
    with pytest.raises(ValueError, match="skip"):
        convert_nvidia_ada_generator(no_rgb)
    with pytest.raises(ValueError, match="unexpected"):
        convert_nvidia_ada_generator({**sd, "synthesis.b8.extra": torch.zeros(1)})


# ----------------------------------------------------------------------------------------------- fake NVIDIA pickle

_BUFFERS = ("w_avg", "resample_filter", "noise_const")
_CLASSES = {
    "": "Generator",
    "mapping": "MappingNetwork",
    "synthesis": "SynthesisNetwork",
    "torgb": "ToRGBLayer",
    "affine": "FullyConnectedLayer",
    "conv0": "SynthesisLayer",
    "conv1": "SynthesisLayer",
}


class _FakeNvidiaModules:
    """Registers modules named like NVIDIA's (torch_utils.persistence, dnnlib.util, training.networks) while pickling.

    The classes reduce exactly like ``torch_utils.persistence.persistent_class`` objects: a call to
    ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with the class name, source text and ``__dict__``.
    """

    names = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util", "training", "training.networks")

    def __enter__(self):
        mods = {n: types.ModuleType(n) for n in self.names}

        def _reconstruct_persistent_obj(meta):  # pragma: no cover - must never run when gie reads the pickle
            raise AssertionError("NVIDIA reconstruct hook executed")

        _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
        _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
        mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj

        class EasyDict(dict):
            pass

        EasyDict.__module__ = "dnnlib.util"
        EasyDict.__qualname__ = "EasyDict"
        mods["dnnlib.util"].EasyDict = EasyDict

        def reduce(self):
            meta = {
                "type": "class",
                "version": 4,
                "module_src": "import os\nos.system('echo pwned')  # stand-in for training/networks.py\n",
                "class_name": type(self).__name__,
                "state": dict(self.__dict__),
            }
            return (_reconstruct_persistent_obj, (meta,), None)

        self.classes = {}
        for name in set(_CLASSES.values()) | {"SynthesisBlock"}:
            cls = type(name, (nn.Module,), {"__reduce__": reduce, "__module__": "training.networks"})
            setattr(mods["training.networks"], name, cls)
            self.classes[name] = cls
        self.easydict = EasyDict
        self.saved = {n: sys.modules.get(n) for n in self.names}
        sys.modules.update(mods)
        return self

    def __exit__(self, *exc):
        for n, m in self.saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:  # pragma: no cover
                sys.modules[n] = m

    def build(self, sd: dict, init_kwargs: dict) -> nn.Module:
        root = self.classes["Generator"]()
        for key, value in sd.items():
            *path, leaf = key.split(".")
            mod = root
            for part in path:
                if part not in mod._modules:
                    cls = _CLASSES.get(part) or ("SynthesisBlock" if part.startswith("b") else "FullyConnectedLayer")
                    mod.add_module(part, self.classes[cls]())
                mod = mod._modules[part]
            if leaf in _BUFFERS:
                mod.register_buffer(leaf, value.clone())
            else:
                mod.register_parameter(leaf, nn.Parameter(value.clone()))
        root._init_kwargs = self.easydict(init_kwargs)
        root._init_args = ()
        return root


def _write_fake_pickle(path: Path, sd: dict, cfg: dict, protocol: int = 3) -> None:
    kw = cfg["ctor_kwargs"]
    with _FakeNvidiaModules() as fake:
        init = {
            "z_dim": kw["z_dim"],
            "c_dim": 0,
            "w_dim": kw["w_dim"],
            "img_resolution": kw["img_resolution"],
            "img_channels": 3,
            "mapping_kwargs": fake.easydict(num_layers=8),
            "synthesis_kwargs": fake.easydict(
                channel_base=32768, channel_max=512, num_fp16_res=0, conv_clamp=256, architecture="skip"
            ),
        }
        g = fake.build(sd, init)
        data = {"G_ema": g, "training_set_kwargs": fake.easydict(resolution=256), "augment_pipe": None}
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=protocol)
    assert "torch_utils" not in sys.modules and "training.networks" not in sys.modules


def test_import_convert_nvidia_pickle(nvidia, tmp_path, monkeypatch):
    sd, io, cfg = nvidia
    pkl = tmp_path / "ffhq-test.pkl"
    _write_fake_pickle(pkl, sd, cfg)
    # the restricted reader rebuilds the state dict without importing NVIDIA's modules
    data = load_network_pickle(pkl)
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
    assert data["G_ema"].class_name == "Generator" and data["G_ema"].init_kwargs["img_resolution"] == 256
    got = stub_state_dict(data["G_ema"])
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)

    monkeypatch.setenv("GIE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "g256.safetensors"
    res = CliRunner().invoke(app, ["weights", "import", "--convert", str(pkl), "-o", str(out)])
    assert res.exit_code == 0, res.stderr
    assert res.stdout.strip() == str(out)
    assert "execute arbitrary code" in res.stderr and "conv_clamp=256" in res.stderr
    comp = read_components(out)
    assert comp.config["converted_from"].startswith("nvidia") and comp.config["generator"]["size"] == 256
    rs, w_avg = convert_nvidia_ada_generator(sd)
    assert torch.equal(comp.latent_avg, w_avg)
    assert set(comp.part("decoder")) == set(rs)
    assert all(torch.equal(comp.part("decoder")[k], v) for k, v in rs.items())
    # with --name the conversion goes to the cache, where `--weights NAME` finds it
    reg = tmp_path / "weights.toml"
    reg.write_text(
        '[[weight]]\nname = "test.ada"\nfilename = "ffhq-test.pkl"\nurls = ["http://127.0.0.1:9/x.pkl"]\n'
        'sha256 = "unknown"\nsize = "unknown"\nformat = "pkl"\nconvert = "nvidia-ada-generator"\n'
    )
    monkeypatch.setenv("GIE_WEIGHTS_TOML", str(reg))
    with pytest.raises(UsageError, match="import --convert"):
        resolve_weights("test.ada")
    res = CliRunner().invoke(app, ["weights", "import", "--convert", str(pkl), "--name", "test.ada"])
    assert res.exit_code == 0, res.stderr
    assert (
        resolve_weights("test.ada") == Path(res.stdout.strip()) == tmp_path / "cache/test.ada/ffhq-test.gie.safetensors"
    )
    g = build_generator(comp).eval()
    with torch.no_grad():  # end to end on the sample the converter test does not render
        assert_parity_io(g(io["wplus"][1:], noise_mode="const"), io, "img", slice(1, None))


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (__import__("os").system, (f"touch {marker}",))

    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"G_ema": Evil()}))
    with pytest.raises(CheckpointError, match="refusing to load global (posix|os|nt).system"):
        load_network_pickle(bad)
    assert not marker.exists()


def test_protocol2_pickle_and_missing_g_ema(tmp_path):
    with _FakeNvidiaModules() as fake:
        g = fake.build({"mapping.fc0.weight": torch.ones(2, 2), "mapping.w_avg": torch.zeros(2)}, {"c_dim": 0})
        raw = pickle.dumps({"G": g, "kwargs": fake.easydict(a=1)}, protocol=2)  # bytes as _codecs.encode
    p = tmp_path / "small.pkl"
    p.write_bytes(raw)
    data = load_network_pickle(p)
    assert torch.equal(stub_state_dict(data["G"])["mapping.fc0.weight"], torch.ones(2, 2))
    res = CliRunner().invoke(app, ["weights", "import", "--convert", str(p), "-o", str(tmp_path / "x.safetensors")])
    assert res.exit_code == 1 and "has no G_ema" in res.stderr

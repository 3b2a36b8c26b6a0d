"""The package's structure: one-way layering, lazy catalog, inference free of training code, typed settings."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gie_cli import catalog
from gie_cli.errors import UsageError
from gie_cli.settings import coerce, parse_settings
from gie_cli.tools import layering


def test_the_package_has_no_cycle_and_no_upward_import():
    report = layering.check()
    assert report.graph, "the checker saw no imports"
    assert report.ok, "\n".join(report.violations)


def _write_package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "gie_cli"
    for rel, text in files.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return pkg


def test_layering_check_catches_cycles_upward_imports_training_and_private_names(tmp_path):
    pkg = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "models/__init__.py": "",
            "models/net.py": "def f(): from gie_cli.weights import store\n",  # models -> weights: upward
            "weights/__init__.py": "",
            "weights/store.py": "from gie_cli.models import net\n",
            "training/__init__.py": "",
            "training/loop.py": "from gie_cli.methods.a import A\n",  # training -> methods: upward
            "methods/__init__.py": "",
            "methods/a/__init__.py": "",
            "methods/a/method.py": "from gie_cli.methods.a.train import T\nfrom gie_cli.io.x import _hidden\n",
            "methods/a/train.py": "from gie_cli.methods.a.method import M\n",
            "methods/a/util.py": "from gie_cli.editing import lib\n",  # only a method's train module sits that high
            "editing/__init__.py": "",
            "editing/lib.py": "",
            "io/__init__.py": "",
            "io/x.py": "_hidden = 1\n",
        },
    )
    found = layering.check(pkg).violations
    text = "\n".join(found)
    assert "gie_cli.models.net (line 1) imports gie_cli.weights.store: upward import (models -> weights)" in text
    assert "gie_cli.training.loop (line 1) imports gie_cli.methods.a: upward import (training -> methods)" in text
    assert "gie_cli.methods.a.method (line 1) imports gie_cli.methods.a.train: inference code imports training" in text
    assert "gie_cli.methods.a.method (line 2) imports gie_cli.io.x: private name(s) _hidden from another module" in text
    assert "gie_cli.methods.a.util (line 1) imports gie_cli.editing.lib: upward import (methods -> editing)" in text
    cycles = [v for v in found if v.startswith("import cycle")]
    assert any("gie_cli.models.net" in c and "gie_cli.weights.store" in c for c in cycles), cycles
    assert any("gie_cli.methods.a.method" in c and "gie_cli.methods.a.train" in c for c in cycles), cycles
    assert layering.main([str(pkg)]) == 1


def test_layering_check_passes_a_clean_package(tmp_path):
    pkg = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "models/__init__.py": "from gie_cli.io import x\n",
            "io/__init__.py": "",
            "io/x.py": "",
            "cli/__init__.py": "from gie_cli.models import *\nfrom gie_cli.training import loop\n",
            "training/__init__.py": "",
            "training/loop.py": "from gie_cli.models import *\n",
            "methods/__init__.py": "",
            "methods/a/__init__.py": "",
            "methods/a/train.py": "from gie_cli.editing import lib\n",  # a trainer may use edit directions
            "editing/__init__.py": "",
            "editing/lib.py": "from gie_cli.models import *\n",
        },
    )
    assert layering.check(pkg).violations == []
    assert layering.main([str(pkg)]) == 0


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {m for m in out.stdout.split() if m.startswith("gie_cli")}


def test_the_method_registry_imports_no_method_until_one_is_created():
    mods = _modules_after("from gie_cli.methods import list_methods\nassert 'gradstyle' in list_methods()")
    builtin = {e.target.partition(":")[0] for e in catalog.METHODS.values()}
    assert not mods & builtin, sorted(mods & builtin)


def test_inference_imports_no_training_code():
    mods = _modules_after(
        "from gie_cli.methods import create_method\n"
        "for name in ('e4e', 'gradstyle', 'optim'):\n"
        "    create_method(name, steps=1) if name == 'optim' else create_method(name)"
    )
    training = sorted(m for m in mods if m.startswith("gie_cli.training") or m.endswith(".train"))
    assert not training, training
    assert "gie_cli.methods.gradstyle.method" in mods and "gie_cli.methods.e4e.method" in mods


@pytest.mark.parametrize("table", [catalog.METHODS, catalog.TRAINERS], ids=["methods", "trainers"])
def test_every_catalog_entry_names_a_callable(table):
    for name, entry in table.items():
        assert callable(catalog.load(entry)), name
        assert entry.summary and "\n" not in entry.summary


def test_catalog_names_are_what_the_registries_list():
    from gie_cli.methods import list_methods
    from gie_cli.training import list_trainers

    assert list(list_methods()) == sorted(catalog.METHODS)
    assert list(list_trainers()) == sorted(catalog.TRAINERS)


def test_a_plugin_method_registers_beside_the_catalog_and_cannot_shadow_it():
    from gie_cli.methods import method_factory, register_method
    from gie_cli.methods.registry import REGISTRY

    with pytest.raises(ValueError, match="already registered"):
        register_method("e4e", "shadow")(lambda weights, **_: None)

    @register_method("test-plugin", "a plugin")
    def factory(weights, **_):
        return weights

    try:
        assert method_factory("test-plugin") is factory
    finally:
        REGISTRY.plugins.pop("test-plugin")
    with pytest.raises(UsageError, match="unknown method 'nope'"):
        method_factory("nope")


@dataclasses.dataclass
class _Cfg:
    steps: int = 3
    lr: float = 0.1
    flag: bool = False
    name: str = "x"


def test_settings_are_coerced_to_the_field_types():
    cfg = parse_settings(_Cfg, {"steps": "7", "lr": "1e-3", "flag": "yes", "name": "7"}, "thing")
    assert cfg == _Cfg(steps=7, lr=1e-3, flag=True, name="7")
    assert parse_settings(_Cfg, {"steps": 4, "flag": False}, "thing") == _Cfg(steps=4)
    assert coerce("thing", "flag", "off", bool) is False


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"step": "1"}, r"gradstyle training has no setting 'step' \(hint: known: flag, lr, name, steps\)"),
        ({"steps": "1.5"}, r"gradstyle training setting steps='1.5' is not a valid int"),
        ({"flag": "maybe"}, r"gradstyle training setting flag='maybe' is not a valid bool"),
    ],
)
def test_settings_errors_name_their_owner(settings, message):
    with pytest.raises(UsageError, match=message):
        parse_settings(_Cfg, settings, "gradstyle training")


def test_generators_and_encoders_are_built_through_create_model(monkeypatch):
    from gie_cli.methods import create_method
    from gie_cli.models import registry

    built: list[str] = []
    for name in ("stylegan2", "e4e"):
        factory = registry._REGISTRY[name]
        monkeypatch.setitem(
            registry._REGISTRY, name, lambda *a, _f=factory, _n=name, **k: built.append(_n) or _f(*a, **k)
        )
    method = create_method("e4e")
    assert built == ["stylegan2", "e4e"]
    assert method.device == method.generator.device == method.encoder.input_layer[0].weight.device

"""Reading NVIDIA stylegan2-ada-pytorch network pickles without running their code, and converting ``G_ema``.

A network pickle (``ffhq.pkl`` of stylegan2-ada-pytorch, PTI, SFE) stores each network as a
``torch_utils.persistence`` object: a call to ``_reconstruct_persistent_obj(meta)`` where ``meta`` holds the class's
*source code* and the object's ``__dict__``. Unpickling it normally imports ``torch_utils``/``dnnlib`` and executes
that source. The :class:`RestrictedUnpickler` here resolves only an allow-list of globals: the persistence hook
becomes a :class:`PersistentStub` that keeps the class name and the state (never the code), ``dnnlib.EasyDict``
becomes a plain dict, tensors are rebuilt with torch's own rebuild helpers (their storages through a weights-only
``torch.load``), and any other global is refused.
"""

from __future__ import annotations

import collections
import io
import logging
import pickle
import warnings
from pathlib import Path
from typing import Any

from gie_cli.errors import CheckpointError

__all__ = [
    "PICKLE_WARNING",
    "PersistentStub",
    "RestrictedUnpickler",
    "load_network_pickle",
    "stub_state_dict",
    "convert_nvidia_pickle",
]

logger = logging.getLogger(__name__)

PICKLE_WARNING = (
    "pickle files can execute arbitrary code when loaded normally; gie reads this one with a restricted unpickler "
    "that refuses every class outside an allow-list and never runs the code stored in it. Only convert files "
    "from sources you trust."
)


class PersistentStub:
    """Stand-in for an object saved by ``torch_utils.persistence`` (an ``nn.Module`` subclass of NVIDIA's code).

    Attributes:
        class_name: The original class name (e.g. ``Generator``).
        module_name: Module of the original class when the pickle names it ("" for persistence records, which
            carry the module's source text instead).
        state: The object's ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``, ``_init_kwargs``, ...).
    """

    def __init__(self, class_name: str = "", module_name: str = "", state: dict | None = None) -> None:
        self.class_name = class_name
        self.module_name = module_name
        self.state = state if isinstance(state, dict) else {}

    def __setstate__(self, state: Any) -> None:
        # objects rebuilt with NEWOBJ skip __init__: create the attributes here
        self.__dict__.setdefault("class_name", type(self).__name__)
        self.__dict__.setdefault("module_name", getattr(type(self), "__module__", ""))
        self.__dict__.setdefault("state", {})
        if isinstance(state, dict):
            self.state.update(state)

    @property
    def init_kwargs(self) -> dict:
        """Constructor keyword arguments recorded by the persistence decorator (``{}`` if absent)."""
        kw = self.state.get("_init_kwargs")
        return dict(kw) if isinstance(kw, dict) else {}

    def __repr__(self) -> str:
        return f"PersistentStub({self.module_name}.{self.class_name})"


class _ModuleStub(PersistentStub):
    """Stand-in for a plain ``torch.nn`` module class found inside a network pickle (rebuilt via copyreg)."""


def _reconstruct_persistent_obj(meta: Any) -> PersistentStub:
    """Replacement for ``torch_utils.persistence._reconstruct_persistent_obj``: keeps the state, drops the code."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise pickle.UnpicklingError("unexpected torch_utils.persistence record (not a persistent class)")
    return PersistentStub(str(meta.get("class_name", "")), "", meta.get("state") or {})


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access)."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.update(state)


def _load_storage_bytes(data: bytes) -> Any:
    """Replacement for ``torch.storage._load_from_bytes`` that never unpickles arbitrary objects."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _codecs_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Protocol-2 pickles store bytes as ``_codecs.encode(str, 'latin1')``; only that use is allowed."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError("unexpected _codecs.encode call in pickle")
    return text.encode("latin-1", errors)


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    """``copyreg._reconstructor`` limited to gie's stand-in classes."""
    if not (isinstance(cls, type) and issubclass(cls, (PersistentStub, _EasyDict))) or base is not object:
        raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r}")
    return cls.__new__(cls) if issubclass(cls, _EasyDict) else cls()


def _module_stub_class(module: str, name: str) -> type:
    return type(name, (_ModuleStub,), {"__module__": f"gie_stub.{module}"})


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for NVIDIA network pickles that resolves only allow-listed globals (see the module docstring).

    Raises ``pickle.UnpicklingError`` for any other global, naming it.
    """

    def find_class(self, module: str, name: str) -> Any:
        import torch

        key = (module, name)
        if key == ("torch_utils.persistence", "_reconstruct_persistent_obj"):
            return _reconstruct_persistent_obj
        if module in ("dnnlib.util", "dnnlib") and name == "EasyDict":
            return _EasyDict
        if key == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if key == ("builtins", "set") or key == ("__builtin__", "set"):
            return set
        if key == ("builtins", "frozenset") or key == ("__builtin__", "frozenset"):
            return frozenset
        if key == ("_codecs", "encode"):
            return _codecs_encode
        if key == ("copyreg", "_reconstructor"):
            return _reconstructor
        if key == ("builtins", "object") or key == ("__builtin__", "object"):
            return object
        if key == ("torch.storage", "_load_from_bytes"):
            return _load_storage_bytes
        if module == "torch._utils" and name in (
            "_rebuild_tensor_v2",
            "_rebuild_parameter",
            "_rebuild_parameter_with_state",
        ):
            return getattr(torch._utils, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if key == ("torch", "Size"):
            return torch.Size
        if key == ("torch", "device"):
            return torch.device
        if module.startswith("torch.nn.modules."):
            return _module_stub_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name} (not on the allow-list of NVIDIA network pickles)"
        )


def load_network_pickle(path: str | Path) -> dict[str, Any]:
    """Reads an NVIDIA network pickle with :class:`RestrictedUnpickler`.

    Args:
        path: The ``.pkl`` file.

    Returns:
        The top-level dict (``G``, ``D``, ``G_ema`` as :class:`PersistentStub`, ``training_set_kwargs``, ...).

    Raises:
        CheckpointError: Missing/unreadable file, a refused global, or a top level that is not a dict.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            obj = RestrictedUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointError(p, "file not found") from None
    except pickle.UnpicklingError as e:
        raise CheckpointError(p, f"not a readable NVIDIA network pickle: {e}") from None
    except (EOFError, OSError, ValueError, TypeError, AttributeError, RuntimeError) as e:
        raise CheckpointError(p, f"truncated or corrupt pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(p, f"top level is a {type(obj).__name__}, expected a dict with 'G_ema'")
    return obj


def network_pickle_reason(path: str | Path) -> str:
    """A reason when ``path`` is not an NVIDIA network pickle holding a ``G_ema`` network (read with
    :class:`RestrictedUnpickler`, nothing executed); ``""`` when it is."""
    try:
        data = load_network_pickle(path)
    except CheckpointError as e:
        return e.reason
    if "G_ema" not in data:
        return f"not an NVIDIA network pickle: no G_ema (top-level keys: {', '.join(map(str, data)) or 'none'})"
    if not isinstance(data["G_ema"], PersistentStub):
        return f"not an NVIDIA network pickle: its G_ema is a {type(data['G_ema']).__name__}, not a network"
    return ""


def stub_state_dict(stub: PersistentStub, prefix: str = "") -> dict[str, Any]:
    """The ``state_dict()`` the original module would return: parameters, persistent buffers, then submodules.

    Args:
        stub: Root stand-in (e.g. ``G_ema``).
        prefix: Key prefix (used in recursion).

    Returns:
        Flat ``{key: tensor}``.
    """
    import torch

    out: dict[str, Any] = {}
    state = stub.state
    for k, v in (state.get("_parameters") or {}).items():
        if v is not None:
            out[prefix + k] = v.detach() if isinstance(v, torch.Tensor) else v
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for k, v in (state.get("_buffers") or {}).items():
        if v is not None and k not in skip:
            out[prefix + k] = v
    for k, m in (state.get("_modules") or {}).items():
        if isinstance(m, PersistentStub):
            out.update(stub_state_dict(m, f"{prefix}{k}."))
    return out


def convert_nvidia_pickle(src: str | Path, dest: str | Path, source_note: str = "") -> dict[str, Any]:
    """Converts ``G_ema`` of an NVIDIA stylegan2-ada-pytorch pickle to gie's checkpoint format (safetensors).

    The file holds ``decoder.*`` (rosinality generator keys) and ``latent_avg`` (``mapping.w_avg``), with a config
    (``format``, ``generator`` kwargs, provenance) in the metadata, so
    :func:`gie_cli.models.loading.read_components` and ``build_generator`` read it.

    Args:
        src: The ``.pkl``.
        dest: Output ``.safetensors`` path.
        source_note: Provenance recorded in the config (e.g. the registry name).

    Returns:
        The config written.

    Raises:
        CheckpointError: The pickle is unreadable, has no ``G_ema``, or is not a convertible generator.
    """
    from gie_cli.io.checkpoint import GIE_CHECKPOINT_FORMAT, save_safetensors
    from gie_cli.models.stylegan2 import convert_nvidia_ada_generator, generator_config_from_state_dict

    p = Path(src)
    data = load_network_pickle(p)
    g = data.get("G_ema")
    if not isinstance(g, PersistentStub):
        raise CheckpointError(p, f"has no G_ema network (top-level keys: {', '.join(map(str, data))})")
    kwargs = g.init_kwargs
    if kwargs.get("c_dim"):
        raise CheckpointError(p, f"G_ema is class-conditional (c_dim={kwargs['c_dim']}); gie supports c_dim=0 only")
    syn = dict(kwargs.get("synthesis_kwargs") or {})
    arch = syn.get("architecture", "skip")
    if arch != "skip":
        raise CheckpointError(p, f"G_ema uses the '{arch}' architecture; only 'skip' (StyleGAN2 config-e/f) converts")
    if syn.get("conv_clamp"):
        logger.warning(
            "G_ema was built with conv_clamp=%s: NVIDIA clamps activations to +-%s, the rosinality generator does not "
            "(outputs agree while activations stay inside that range, as they do for typical latents)",
            syn["conv_clamp"],
            syn["conv_clamp"],
        )
    try:
        sd, w_avg = convert_nvidia_ada_generator(stub_state_dict(g))
    except (ValueError, KeyError) as e:
        raise CheckpointError(p, f"G_ema cannot be converted: {e}") from None
    gen_cfg = generator_config_from_state_dict(sd)
    tensors = {f"decoder.{k}": v for k, v in sd.items()}
    if w_avg is not None:
        tensors["latent_avg"] = w_avg
    config = {
        "format": GIE_CHECKPOINT_FORMAT,
        "generator": {**gen_cfg, "channels": {str(k): v for k, v in gen_cfg["channels"].items()}},
        "converted_from": "nvidia-stylegan2-ada-pytorch G_ema",
        "source": source_note or p.name,
        "nvidia_init_kwargs": {k: v for k, v in kwargs.items() if isinstance(v, int | float | str | bool)},
    }
    save_safetensors(dest, tensors, config)
    logger.info("converted G_ema of %s (%d px) to %s", p.name, gen_cfg["size"], dest)
    return config

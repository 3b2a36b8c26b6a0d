"""Checkpoint files -> modules: reading official pSp-family / rosinality checkpoints and gie's safetensors format into
parts, and building generators and encoders from them (strict loading, architectures through ``create_model``)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from gie_cli.errors import CheckpointError
from gie_cli.io.checkpoint import (
    GIE_CHECKPOINT_FORMAT,
    get_prefixed,
    latent_avg_as_wplus,
    load_safetensors,
    load_state_dict_strict,
    read_checkpoint,
    save_safetensors,
)
from gie_cli.io.images import sha256_file
from gie_cli.models.encoders import UNIT_COUNTS
from gie_cli.models.registry import create_model
from gie_cli.models.stylegan2 import Generator, generator_config_from_state_dict

log = logging.getLogger(__name__)

#: Resolves a name that is not a file (a weights-registry name) to a file; supplied by the weights layer.
Resolver = Callable[[str], Path]
#: Config key of a checkpoint that takes some parts from another file (see :func:`save_on_base`).
BASE_KEY = "base"


@dataclass
class Components:
    """State dicts and settings read from one checkpoint file.

    Attributes:
        source: the file.
        parts: prefix -> state dict (e.g. ``encoder``, ``decoder``), prefixes stripped.
        latent_avg: ``[D]`` or ``[n_latent, D]`` mean latent, if the file has one.
        opts: official ``opts`` dict or gie's config.
        config: gie's config (architecture kwargs per part); empty for official files.
        sha256: content hash of the file.
    """

    source: Path
    parts: dict[str, dict[str, Tensor]]
    latent_avg: Tensor | None = None
    opts: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    sha256: str = ""

    @property
    def weights_id(self) -> str:
        return f"{self.source.name}@{self.sha256[:12]}" if self.sha256 else self.source.name

    def part(self, name: str) -> dict[str, Tensor]:
        if name not in self.parts:
            raise CheckpointError(
                self.source,
                f"has no '{name}.*' weights (found: {', '.join(sorted(self.parts)) or 'none'})",
                hint="pass a checkpoint made for this method",
            )
        return self.parts[name]


def read_components(path: str | Path, resolve: Resolver | None = None) -> Components:
    """Read a checkpoint file into :class:`Components`.

    Accepted layouts: official pSp-family (``state_dict`` with ``encoder.``/``decoder.``/... prefixes, ``opts``,
    ``latent_avg``; DataParallel ``.module.`` infixes are removed), rosinality generator files (``g_ema``,
    ``latent_avg``; optional ``g``/``d``), and gie's safetensors (prefixed tensors + config in the metadata).

    Args:
        path: The file (or, with ``resolve``, a name it resolves).
        resolve: Maps a name that is not a file (the file itself, or the base a file is stored on) to a file;
            ``gie_cli.weights.load_components`` passes the weights registry's resolver.

    Raises:
        CheckpointError: Unreadable file, unknown layout, or a name that cannot be resolved.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        if resolve is None:
            raise CheckpointError(p, "no such file", hint="pass a checkpoint file or a weights-registry name")
        p = resolve(str(path))
    digest = sha256_file(p)
    if p.suffix == ".safetensors":
        tensors, config = load_safetensors(p)
        parts = _split_prefixes(tensors)
        avg = parts.pop("latent_avg", {}).get("")
        comp = Components(p, parts, avg, config.get("opts", {}), config, digest)
        return _merge_base(comp, config[BASE_KEY], resolve) if BASE_KEY in config else comp
    ckpt = read_checkpoint(p)
    if "state_dict" in ckpt and isinstance(ckpt["state_dict"], dict):
        sd = {re.sub(r"^(\w+)\.module\.", r"\1.", k): v for k, v in ckpt["state_dict"].items()}
        prefixes = sorted({k.split(".", 1)[0] for k in sd if "." in k})
        parts = {pre: get_prefixed(sd, pre) for pre in prefixes}
        opts = ckpt.get("opts") or {}
        return Components(p, parts, ckpt.get("latent_avg"), dict(opts) if isinstance(opts, dict) else {}, {}, digest)
    if "g_ema" in ckpt:
        parts = {"decoder": ckpt["g_ema"]}
        if isinstance(ckpt.get("d"), dict):
            parts["discriminator"] = ckpt["d"]
        return Components(p, parts, ckpt.get("latent_avg"), {}, {}, digest)
    if any(k.startswith("style.1.") for k in ckpt):  # a bare generator state dict
        return Components(p, {"decoder": ckpt}, None, {}, {}, digest)
    raise CheckpointError(
        p,
        "unrecognised checkpoint layout (expected 'state_dict' + 'opts', 'g_ema', or a gie .safetensors file)",
        hint="pass an official pSp/e4e/rosinality checkpoint or a gie checkpoint",
    )


def _resolve_base(spec: str, owner: Path, resolve: Resolver | None) -> Path:
    """The file a base reference names: a path relative to ``owner``'s folder, else a name ``resolve`` knows."""
    local = owner.parent / spec
    if local.is_file():
        return local
    if resolve is None:
        raise CheckpointError(
            owner, f"is stored on the base {spec!r}, which is not a file beside it", hint="load it by registry name"
        )
    return resolve(spec)


def _merge_base(comp: Components, base: dict, resolve: Resolver | None) -> Components:
    """Fill the parts a file stores by reference (its ``base``: see :func:`save_on_base`) from the base file.

    Raises:
        CheckpointError: A malformed reference, or a base whose sha256 is not the one the file was made with.
    """
    if not (isinstance(base, dict) and isinstance(base.get("weights"), str) and isinstance(base.get("parts"), list)):
        raise CheckpointError(comp.source, f"malformed {BASE_KEY!r} reference {base!r} (expected weights, parts)")
    path = _resolve_base(base["weights"], comp.source, resolve)
    parent = read_components(path, resolve)
    want = base.get("sha256")
    if want and parent.sha256 != want:
        raise CheckpointError(
            comp.source,
            f"was made on {base['weights']} with sha256 {want[:12]}..., but {path} has {parent.sha256[:12]}...",
            hint="use the base file it was made with (or re-pack it on this one)",
        )
    parts = {k: dict(v) for k, v in comp.parts.items()}
    for name in base["parts"]:
        if name == "latent_avg":
            continue
        part, _, sub = name.partition(".")
        theirs = _sub_part(parent.part(part), sub)
        if not theirs:
            raise CheckpointError(path, f"has no '{name}.*' weights, which the file based on it takes from it")
        mine = parts.setdefault(part, {})
        if any(k in mine for k in theirs):
            raise CheckpointError(comp.source, f"has '{name}.*' weights and also takes them from its base")
        mine.update(theirs)
    avg = comp.latent_avg
    if "latent_avg" in base["parts"]:
        if parent.latent_avg is None:
            raise CheckpointError(path, "has no latent_avg, which the file based on it takes from it")
        avg = parent.latent_avg
    config = {**{k: v for k, v in parent.config.items() if k != BASE_KEY}, **comp.config}
    opts = comp.opts or parent.opts
    return Components(comp.source, parts, avg, opts, config, comp.sha256)


def save_on_base(
    path: str | Path,
    src: str | Path,
    base: str,
    parts: list[str],
    half: bool = False,
    atol: float = 0.0,
    resolve: Resolver | None = None,
) -> Path:
    """Write ``src`` (a gie safetensors checkpoint) without the ``parts`` it shares with ``base``, which it then
    names by reference (weights name, sha256 and parts, under the config key ``base``); loading merges them back.

    Args:
        path: Output file (written atomically).
        src: A checkpoint whose ``parts`` equal ``base``'s (e.g. a GradStyle file and the e4e it was trained on).
        base: The base: a registry name, or a file path stored relative to ``path``'s folder.
        parts: Prefixes (and/or ``"latent_avg"``) taken from the base: a part (``"decoder"``) or a dotted prefix
            inside one (``"decoder.convs"``: the rest of the part stays in the file).
        half: Store the remaining float32 tensors as float16 (``latent_avg`` stays float32).
        atol: Largest allowed difference between a dropped tensor and the base's (0: identical).
        resolve: Resolves a registry-name ``base`` (see :func:`read_components`).

    Returns:
        ``path``.

    Raises:
        CheckpointError: ``src`` differs from the base in a dropped part (it was not made on this base).
    """
    src_path = Path(src)
    tensors, config = load_safetensors(src_path)
    owner = Path(path)
    base_path = Path(base) if Path(base).is_file() else _resolve_base(base, owner, resolve)
    parent = read_components(base_path, resolve)
    own = _split_prefixes(tensors)
    for name in parts:
        if name == "latent_avg":
            pair = (tensors.get("latent_avg"), parent.latent_avg)
            mine, theirs = ({"": pair[0]}, {"": pair[1]}) if None not in pair else ({}, {"": None})
            part = name
        else:
            part, _, sub = name.partition(".")
            mine, theirs = _sub_part(own.get(part, {}), sub), _sub_part(parent.parts.get(part, {}), sub)
        if not mine or set(mine) != set(theirs):
            raise CheckpointError(src_path, f"'{name}' does not match the base {base} (missing or other keys)")
        for k, v in mine.items():
            if v.shape != theirs[k].shape or (v.float() - theirs[k].float()).abs().max().item() > atol:
                raise CheckpointError(src_path, f"'{part}.{k}' differs from the base {base}: not made on it")
    dropped = tuple(f"{n}." for n in parts if n != "latent_avg")
    keep = {
        k: (v.half() if half and v.dtype == torch.float32 and k != "latent_avg" else v)
        for k, v in tensors.items()
        if not k.startswith(dropped) and not (k == "latent_avg" and "latent_avg" in parts)
    }
    ref = os.path.relpath(base_path.resolve(), owner.resolve().parent) if Path(base).is_file() else base
    config = {**config, BASE_KEY: {"weights": ref, "sha256": parent.sha256, "parts": list(parts)}}
    save_safetensors(owner, keep, config)
    return owner


def _sub_part(part: dict[str, Tensor], sub: str) -> dict[str, Tensor]:
    """The keys of one part under the dotted prefix ``sub`` (all of them for ``""``), keys kept whole."""
    return dict(part) if not sub else {k: v for k, v in part.items() if k.startswith(f"{sub}.")}


def _split_prefixes(tensors: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    parts: dict[str, dict[str, Tensor]] = {}
    for k, v in tensors.items():
        pre, _, rest = k.partition(".")
        parts.setdefault(pre, {})[rest] = v
    return parts


def build_generator(comp: Components, part: str = "decoder") -> Generator:
    """Build the generator from ``comp.parts[part]`` (architecture from gie's config or inferred from shapes) and
    load it strictly; ``w_avg`` is set from ``latent_avg`` when the file has one."""
    sd = comp.part(part)
    cfg = comp.config.get("generator") or generator_config_from_state_dict(sd)
    g = create_model("stylegan2", **cfg)
    load_state_dict_strict(g, sd, f"{comp.source} [{part}.*]")
    if comp.latent_avg is not None:
        g.w_avg.copy_(latent_avg_as_wplus(comp.latent_avg, g.n_latent)[0])
    else:
        g.mean_latent(4096)
    return g


def wplus_average(comp: Components, generator: Generator) -> Tensor:
    """The W+ average ``[n_latent, D]`` encoders start from: the file's ``latent_avg``, else the generator's ``w_avg``
    on every layer."""
    if comp.latent_avg is not None:
        return latent_avg_as_wplus(comp.latent_avg, generator.n_latent).float()
    return generator.w_avg[None].expand(generator.n_latent, -1).float()


def encoder_config_from_state_dict(sd: dict[str, Tensor]) -> dict:
    """Infer pSp/e4e encoder kwargs from an official-layout state dict (keys without the ``encoder.`` prefix)."""
    units = sorted({int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.", k))})
    depths = [int(sd[f"body.{i}.res_layer.1.weight"].shape[0]) for i in units]
    n_styles = sum(1 for k in sd if re.match(r"styles\.\d+\.linear\.weight$", k))
    n_convs = sum(1 for k in sd if re.match(r"styles\.0\.convs\.\d+\.weight$", k))
    cfg: dict = {
        "mode": "ir_se" if any(".res_layer.5.fc1." in k for k in sd) else "ir",
        "n_styles": n_styles,
        "style_dim": int(sd["styles.0.linear.weight"].shape[0]),
        "input_nc": int(sd["input_layer.0.weight"].shape[1]),
        "input_size": 2**n_convs * 16,
    }
    counts = _stage_counts(depths)
    widths = [depths[sum(counts[: i + 1]) - 1] for i in range(len(counts))]
    for num_layers, std_counts in UNIT_COUNTS.items():
        if tuple(std_counts) == tuple(counts) and tuple(widths) == (64, 128, 256, 512):
            cfg["num_layers"] = num_layers
            return cfg
    cfg.update(unit_counts=counts, widths=widths)
    return cfg


def _stage_counts(depths: list[int]) -> list[int]:
    counts: list[int] = []
    prev = None
    for d in depths:
        if d != prev:
            counts.append(0)
            prev = d
        counts[-1] += 1
    return counts


def build_encoder(comp: Components, kind: str, part: str = "encoder") -> tuple[nn.Module, dict]:
    """Build and strictly load a pSp (``kind="psp"``) or e4e (``"e4e"``) encoder; returns ``(encoder, config)``."""
    sd = comp.part(part)
    cfg = comp.config.get("encoder") or encoder_config_from_state_dict(sd)
    try:
        with torch.device("meta"):  # no allocation/initialisation of weights that the checkpoint replaces
            enc = create_model(kind, **cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(comp.source, f"cannot build the {kind} encoder: {e}") from None
    load_state_dict_strict(enc, sd, f"{comp.source} [{part}.*]", assign=True)
    assert not any(t.is_meta for t in [*enc.parameters(), *enc.buffers()]), "encoder has unloaded tensors"
    return enc, cfg


def save_components(path: str | Path, modules: dict[str, nn.Module], config: dict, latent_avg: Tensor | None) -> None:
    """Write gie's checkpoint format: ``<part>.<key>`` tensors + ``latent_avg`` + config JSON (safetensors)."""
    tensors = {f"{part}.{k}": v for part, m in modules.items() for k, v in m.state_dict().items()}
    if latent_avg is not None:
        tensors["latent_avg"] = latent_avg
    save_safetensors(path, tensors, {"format": GIE_CHECKPOINT_FORMAT, **config})

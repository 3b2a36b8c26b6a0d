"""Loading method components from official pSp-family / rosinality checkpoints or gie's safetensors format."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from gie_cli.errors import CheckpointError
from gie_cli.io.checkpoint import (
    get_prefixed,
    latent_avg_as_wplus,
    load_safetensors,
    load_state_dict_strict,
    read_checkpoint,
    save_safetensors,
)
from gie_cli.io.images import sha256_file
from gie_cli.models.encoders import UNIT_COUNTS, create_encoder
from gie_cli.models.stylegan2 import Generator, generator_config_from_state_dict
from gie_cli.weights import resolve_weights

log = logging.getLogger(__name__)

GIE_CHECKPOINT_FORMAT = "gie-checkpoint/1"


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


def read_components(path: str | Path) -> Components:
    """Read a checkpoint (a file, or a weights-registry name) into :class:`Components`.

    Accepted layouts: official pSp-family (``state_dict`` with ``encoder.``/``decoder.``/... prefixes, ``opts``,
    ``latent_avg``; DataParallel ``.module.`` infixes are removed), rosinality generator files (``g_ema``,
    ``latent_avg``; optional ``g``/``d``), and gie's safetensors (prefixed tensors + config in the metadata).
    """
    p = Path(path).expanduser()
    if not p.is_file():  # a registry name (downloaded when needed; offline: an error naming path, URLs, sha256)
        p = resolve_weights(str(path))
    digest = sha256_file(p)
    if p.suffix == ".safetensors":
        tensors, config = load_safetensors(p)
        parts = _split_prefixes(tensors)
        avg = parts.pop("latent_avg", {}).get("")
        return Components(p, parts, avg, config.get("opts", {}), config, digest)
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
    g = Generator(**cfg)
    load_state_dict_strict(g, sd, f"{comp.source} [{part}.*]")
    if comp.latent_avg is not None:
        g.w_avg.copy_(latent_avg_as_wplus(comp.latent_avg, g.n_latent)[0])
    else:
        g.mean_latent(4096)
    return g


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
            enc = create_encoder(kind, **cfg)
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


def require_weights(weights: str | None, method: str, what: str) -> Path:
    """Resolve ``--weights`` through the weights registry: a file path, or a registry name (e.g. ``e4e.ffhq``).

    A registry name that is not cached is downloaded (verified); offline (``GIE_OFFLINE=1``) it raises
    :class:`~gie_cli.errors.WeightsUnavailableError` naming the expected path, URLs and sha256. Nothing given is a
    usage error listing the registry names for ``method``, unless the method has an embedded default (the demo zoo).
    """
    return resolve_weights(weights, method=method, what=what)

"""Writes folders of world images (aligned crops or photos) with ``params.jsonl`` ground truth and sidecars."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gie_cli.io.atomic import atomic_save_image, atomic_write_text
from gie_cli.synth.params import ATTRIBUTES, attribute_vector, sample_params
from gie_cli.synth.photo import render_photo
from gie_cli.synth.render import render

__all__ = ["WORLD_VERSION", "write_dataset"]

WORLD_VERSION = 1  # bump when the renderer's output changes for the same parameters


def _pts(a: np.ndarray) -> list[list[float]]:
    return [[round(float(x), 3), round(float(y), 3)] for x, y in np.asarray(a)]


def write_dataset(
    out_dir: str | Path,
    n: int,
    seed: int,
    size: int = 128,
    photos: bool = False,
    ood_prob: float = 0.0,
    *,
    canvas_size: tuple[int, int] | None = None,
    multi_face_prob: float = 0.0,
    detail_strength: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Renders ``n`` random faces into ``out_dir`` (created if needed; existing files of the same names are replaced).

    Layout of ``out_dir``:

    - ``000000.png``, ``000001.png``, ...: the images (aligned ``size x size`` crops, or ``W x H`` photos).
    - ``000000.landmarks.json``, ...: photos only; the sidecar `gie align` reads (`gie_cli.synth.photo.sidecar_dict`).
    - ``params.jsonl``: one JSON object per image, in index order. Aligned: ``{"file", "index", "kind": "aligned",
      "size": [S, S], "params", "attributes", "landmarks68"}``; photos: ``{"file", "index", "kind": "photo",
      "size": [W, H], "faces": [{"params", "attributes", "landmarks68", "points5", "crop_quad"}, ...]}``.
      ``params`` is `FaceParams.to_dict` (re-render with ``FaceParams.from_dict``), ``attributes`` the normalised
      `attribute_vector` in `ATTRIBUTE_NAMES` order, points in pixel-centre coordinates.
    - ``world.json``: how the folder was made (world version, seed, sizes, attribute names and ranges).

    Image ``i`` depends only on ``(seed, i)`` (its generator is ``default_rng([seed, i])``), so folders written with
    the same seed agree on their common indices whatever ``n`` is. Files are written atomically.

    Args:
        out_dir: Output folder.
        n: Number of images.
        seed: Dataset seed.
        size: Side of the aligned crops; for photos, the canvas height (the default canvas is ``1.5 * size`` wide).
        photos: Write photos (faces placed in a scene, with ``.landmarks.json`` sidecars) instead of aligned crops.
        ood_prob: Probability that a face carries out-of-domain objects.
        canvas_size: Photo canvas ``(W, H)`` (overrides the default from ``size``).
        multi_face_prob: For photos, probability of a second face.
        detail_strength: Image-specific detail scale stored in each face's params (0 = clean world).
        progress: Called as ``progress(done, n)`` after each image.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    canvas = canvas_size or (int(round(1.5 * size)), int(size))
    lines: list[str] = []
    for i in range(n):
        rng = np.random.default_rng([int(seed), i])
        p = sample_params(rng, ood_prob, detail_strength=detail_strength)
        name = f"{i:06d}.png"
        rec: dict[str, Any] = {"file": name, "index": i}
        if photos:
            others = [sample_params(rng, ood_prob, detail_strength=detail_strength)] if (
                multi_face_prob > 0 and rng.random() < multi_face_prob) else []  # fmt: skip
            ph = render_photo(p, canvas, rng, others=others)
            atomic_save_image(Image.fromarray(ph.image, "RGB"), out / name)
            atomic_write_text(out / f"{i:06d}.landmarks.json", json.dumps(ph.sidecar))
            rec["kind"] = "photo"
            rec["size"] = [int(canvas[0]), int(canvas[1])]
            rec["faces"] = [
                {
                    "params": f.params.to_dict(),
                    "attributes": [round(float(v), 6) for v in attribute_vector(f.params)],
                    "landmarks68": _pts(f.landmarks68),
                    "points5": _pts(f.points5),
                    "crop_quad": _pts(f.crop_quad),
                }
                for f in ph.faces
            ]
        else:
            r = render(p, size)
            atomic_save_image(Image.fromarray(r.image, "RGB"), out / name)
            rec["kind"] = "aligned"
            rec["size"] = [int(size), int(size)]
            rec["params"] = r.params.to_dict()
            rec["attributes"] = [round(float(v), 6) for v in attribute_vector(r.params)]
            rec["landmarks68"] = _pts(r.landmarks68)
        lines.append(json.dumps(rec))
        if progress is not None:
            progress(i + 1, n)
    atomic_write_text(out / "params.jsonl", "".join(line + "\n" for line in lines))
    world = {
        "generator": "gie_cli.synth",
        "world_version": WORLD_VERSION,
        "n": int(n),
        "seed": int(seed),
        "kind": "photo" if photos else "aligned",
        "size": [int(canvas[0]), int(canvas[1])] if photos else [int(size), int(size)],
        "ood_prob": float(ood_prob),
        "multi_face_prob": float(multi_face_prob) if photos else 0.0,
        "detail_strength": float(detail_strength),
        "attributes": [{"name": a.name, "low": a.low, "high": a.high, "doc": a.doc} for a in ATTRIBUTES],
    }
    atomic_write_text(out / "world.json", json.dumps(world, indent=2) + "\n")

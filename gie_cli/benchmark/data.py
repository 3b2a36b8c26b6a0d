"""Benchmark images: held-out synthetic-world faces (with ground truth) or a folder of aligned face crops."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gie_cli.errors import UsageError

__all__ = [
    "SYNTH_SEED",
    "SYNTH_SIZE",
    "TRAINING_SEEDS",
    "BenchData",
    "folder_data",
    "synthface_data",
]

log = logging.getLogger(__name__)

SYNTH_SEED = 20261121
"""Default seed of the held-out world faces (``benchmarks/world_metrics.py`` uses the same)."""

TRAINING_SEEDS = (0, 1, 7)
"""Seeds the demo zoo was trained on (``gie train`` defaults and ``scripts/build_zoo.sh``); never benchmark on them."""

SYNTH_SIZE = 64
"""Resolution of the demo zoo's generator, the default benchmark resolution on the synthetic world."""

MIN_SIZE = 32
"""Smallest benchmark resolution (SSIM's 11 px window and LPIPS-AlexNet's 31 px receptive field must fit)."""


@dataclass
class BenchData:
    """The images every method sees, in one fixed order.

    Attributes:
        images: ``[N, 3, S, S]`` float32 images in [-1, 1] on the CPU.
        names: ``N`` item names (file stems or ``synth-00000``...).
        source: ``"synthface"`` or the folder path.
        params: The world's ``FaceParams`` per image (synthface only), else None.
        ood_masks: ``[N, S, S]`` bool union of each image's out-of-domain object masks (synthface only), else None.
        face_masks: ``[N, S, S]`` bool true face regions (visible facial skin and features; synthface only), else None.
        landmarks: ``[N, 68, 2]`` iBUG landmarks in pixels of the ``S`` px images (synthface only), else None.
        info: Facts recorded with the results (seed, resolution, OOD count, ...).
    """

    images: Tensor
    names: list[str]
    source: str
    params: list | None = None
    ood_masks: Tensor | None = None
    face_masks: Tensor | None = None
    landmarks: Tensor | None = None
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def size(self) -> int:
        """Side ``S`` of the images in pixels."""
        return int(self.images.shape[-1])

    @property
    def has_ground_truth(self) -> bool:
        """True for synthetic-world images (their parameters are known)."""
        return self.params is not None


def _check_size(size: int) -> None:
    if size < MIN_SIZE:
        raise UsageError(f"size {size} is too small", hint=f"use at least {MIN_SIZE} px", param="size", value=size)


def synthface_data(
    n: int, size: int = SYNTH_SIZE, seed: int = SYNTH_SEED, ood_prob: float = 0.3, detail_strength: float = 1.0
) -> BenchData:
    """Renders ``n`` held-out faces of the synthetic world with their parameters and object masks.

    Faces are drawn with ``sample_params(np.random.default_rng(seed), ood_prob, detail_strength=...)`` one after
    the other, so the first ``k`` faces of a larger ``n`` are the same faces.

    Args:
        n: Number of faces (>= 2).
        size: Resolution in pixels (the demo zoo's generator draws 64 px).
        seed: Random seed; the training seeds 0, 1 and 7 are refused (they would measure memorisation).
        ood_prob: Probability that a face carries out-of-domain objects (stickers, earrings, hats, occluders).
        detail_strength: Fine detail (1 = the world's normal detail, which the generator cannot draw).

    Returns:
        The images, parameters and OOD masks.

    Raises:
        UsageError: Bad ``n``, ``size``, ``ood_prob`` or a training seed.
    """
    from gie_cli.synth.params import sample_params
    from gie_cli.synth.render import render

    if n < 2:
        raise UsageError(f"n must be at least 2, got {n} (FID and averages need several images)", param="n", value=n)
    _check_size(size)
    if not 0.0 <= ood_prob <= 1.0:
        raise UsageError(f"ood_prob must be in [0, 1], got {ood_prob}", param="ood_prob", value=ood_prob)
    if seed in TRAINING_SEEDS:
        raise UsageError(
            f"seed {seed} is one of the seeds the demo zoo was trained on ({', '.join(map(str, TRAINING_SEEDS))})",
            hint=f"use a held-out seed, e.g. the default {SYNTH_SEED}",
            param="seed",
            value=seed,
        )
    rng = np.random.default_rng(seed)
    images, params, masks, faces, landmarks = [], [], [], [], []
    for _ in range(n):
        p = sample_params(rng, ood_prob, detail_strength=detail_strength)
        r = render(p, size)
        images.append(r.to_tensor())
        params.append(p)
        masks.append(torch.from_numpy(r.masks["ood"].copy()))
        faces.append(torch.from_numpy(r.masks["face"].copy()))
        landmarks.append(torch.from_numpy(np.asarray(r.landmarks68, np.float32).copy()))
    ood = torch.stack(masks)
    n_ood = int(ood.flatten(1).any(dim=1).sum())
    info = {
        "source": "synthface",
        "n": n,
        "size": size,
        "seed": seed,
        "ood_prob": ood_prob,
        "detail_strength": detail_strength,
        "images_with_ood": n_ood,
        "ood_pixel_fraction": float(ood.float().mean()),
    }
    names = [f"synth-{i:05d}" for i in range(n)]
    return BenchData(torch.stack(images), names, "synthface", params, ood, torch.stack(faces), torch.stack(landmarks),
                     info)  # fmt: skip


def folder_data(folder: str | Path, n: int | None = None, size: int = 256, recursive: bool = False) -> BenchData:
    """Loads aligned square face crops from a folder (sorted by path; the first ``n``).

    Images are read with gie's loading policy (EXIF orientation, mode and alpha conversion) and resized to
    ``size`` with PIL BILINEAR, as ``gie invert`` and the pSp/e4e test transforms (``transforms.Resize((256, 256))``)
    do.

    Args:
        folder: Folder of FFHQ-aligned crops (``gie align`` output).
        n: Use only the first ``n`` images (None: all).
        size: Benchmark resolution in pixels.
        recursive: Also read sub-folders.

    Returns:
        The images (no ground truth).

    Raises:
        UsageError: Not a folder, fewer than 2 images, or a bad size.
        ImageLoadError: An unreadable image.
    """
    from PIL import Image

    from gie_cli.io.images import image_to_tensor, iter_image_files, load_image

    _check_size(size)
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UsageError(
            f"{folder} is not a folder",
            hint="pass a folder of aligned crops or 'synthface'",
            param="data",
            value=folder,
        )
    files = iter_image_files([root], recursive)
    if n is not None:
        files = files[:n]
    if len(files) < 2:
        raise UsageError(
            f"found {len(files)} image(s) in {folder}, need at least 2",
            hint="check the folder (and whether to search sub-folders)",
            param="data",
            value=folder,
        )
    images = []
    for f in files:
        img = load_image(f)
        w, h = img.size
        if w != h:
            log.warning("%s is not square (%dx%d): is it an aligned crop?", f, w, h)
        images.append(image_to_tensor(img, size, resample=Image.Resampling.BILINEAR))
    names = [f.relative_to(root).with_suffix("").as_posix() for f in files]
    info = {"source": str(root), "n": len(files), "size": size}
    return BenchData(torch.stack(images), names, str(root), info=info)

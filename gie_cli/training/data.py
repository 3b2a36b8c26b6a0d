"""Training data: folders of aligned face images as shuffled, endless batches."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from gie_cli.errors import GieError, UsageError
from gie_cli.io.images import IMAGE_SUFFIXES, image_to_tensor, iter_image_files, load_image

log = logging.getLogger(__name__)


class ImageFolder(Dataset):
    """Images under ``root`` (recursive), loaded as ``[3, size, size]`` in [-1, 1]; unreadable files are skipped
    (logged once each).

    Args:
        root: folder of aligned square crops.
        size: output resolution (PIL bilinear resize, as the official encoders were trained).
        flip: random horizontal flips.
    """

    def __init__(self, root: str | Path, size: int, flip: bool = True) -> None:
        root = Path(root)
        if not root.is_dir():
            raise UsageError(
                f"{root} is not a folder", hint="pass a folder of aligned face images", param="data", value=root
            )
        self.files = [p for p in iter_image_files([root], recursive=True) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not self.files:
            raise UsageError(f"no images found in {root}", param="data", value=root)
        self.size, self.flip = size, flip
        self._bad: set[Path] = set()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        for k in range(len(self.files)):
            p = self.files[(i + k) % len(self.files)]
            if p in self._bad:
                continue
            try:
                x = image_to_tensor(load_image(p), size=self.size, resample=Image.Resampling.BILINEAR)
            except GieError as e:
                log.warning("skipping training image: %s", e)
                self._bad.add(p)
                continue
            if self.flip and torch.rand(()) < 0.5:
                x = x.flip(-1)
            return x
        raise UsageError("no readable training images")


def endless(dataset: Dataset, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Yield shuffled batches forever (reshuffled every epoch, deterministic from ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    bs = min(batch_size, len(dataset))
    while True:
        yield from DataLoader(dataset, batch_size=bs, shuffle=True, drop_last=True, generator=gen, num_workers=0)


def index_batches(n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Yield shuffled index batches ``[batch_size]`` over ``range(n)`` forever (for in-memory pools)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i : i + batch_size]

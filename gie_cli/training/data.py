"""Training data: folders of aligned face images as shuffled, endless batches, each process of a data-parallel run
taking its share of every global batch."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from gie_cli.errors import GieError, UsageError
from gie_cli.io.images import IMAGE_SUFFIXES, image_to_tensor, iter_image_files, load_image

log = logging.getLogger(__name__)


class ImageFolder(Dataset):
    """Images under ``root`` (recursive), loaded as ``[3, size, size]`` in [-1, 1]; unreadable files are skipped
    (logged once each).

    Indexed by ``i`` (flipped at random from torch's global generator when ``flip``) or by ``(i, flip)`` (the flip
    decided by the caller: :func:`endless` draws them with the order, so they do not depend on workers or ranks).

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

    def __getitem__(self, i: int | tuple[int, bool]) -> torch.Tensor:
        i, flip = i if isinstance(i, tuple) else (i, None)
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
            if flip is None:
                flip = self.flip and bool(torch.rand(()) < 0.5)
            return x.flip(-1) if flip else x
        raise UsageError("no readable training images")


@dataclass(frozen=True)
class LoaderSettings:
    """How :func:`endless` and :func:`index_batches` serve a training run (the loop sets them for the run).

    Attributes:
        workers: DataLoader worker processes (0: load in the training process).
        pin_memory: page-locked batches (CUDA runs).
        rank, world: this process and the number of processes: each takes the contiguous share
            ``[rank * b / world, (rank + 1) * b / world)`` of every shuffled global batch of ``b`` items.
    """

    workers: int = 0
    pin_memory: bool = False
    rank: int = 0
    world: int = 1


@dataclass
class LoaderScope:
    """The settings in force and whether a batch stream took its rank's share itself (``sharded``)."""

    settings: LoaderSettings = field(default_factory=LoaderSettings)
    sharded: bool = False


_SCOPE: ContextVar[LoaderScope | None] = ContextVar("gie_training_loader", default=None)


@contextmanager
def loader_settings(settings: LoaderSettings) -> Iterator[LoaderScope]:
    """Serve the batch streams started (first ``next``) inside the block with ``settings``."""
    scope = LoaderScope(settings)
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


def _claim() -> LoaderSettings:
    """The settings in force, noting that the calling stream shards its batches itself."""
    scope = _SCOPE.get()
    if scope is None:
        return LoaderSettings()
    scope.sharded = True
    return scope.settings


def _global_size(batch_size: int, world: int) -> int:
    """``batch_size`` rounded down to a multiple of ``world`` (equal shares)."""
    bs = batch_size - batch_size % world
    if bs < 1:
        raise UsageError(f"a global batch of {batch_size} cannot be split over {world} processes", param="batch_size")
    return bs


def _shuffled_batches(n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Global index batches: a fresh permutation of ``range(n)`` per epoch, cut into full batches."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i : i + batch_size]


class _ShareSampler(Sampler[list]):
    """Endless batch sampler: this rank's share of each global batch, as ``(index, flip)`` pairs when ``flips``.

    The order and the flips come from generators seeded with ``seed`` in the main process (never from the workers),
    so they are the same for any worker count and the union of the ranks' shares is the single-process batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world: int, flips: bool) -> None:
        self.n, self.batch_size, self.seed, self.flips = n, batch_size, seed, flips
        per = batch_size // world
        self.lo, self.hi = rank * per, (rank + 1) * per

    def __iter__(self) -> Iterator[list]:
        flip_gen = torch.Generator().manual_seed(self.seed + 1_000_003)
        for idx in _shuffled_batches(self.n, self.batch_size, self.seed):
            share = idx[self.lo : self.hi].tolist()
            if not self.flips:
                yield share
                continue
            flip = (torch.rand(self.batch_size, generator=flip_gen) < 0.5)[self.lo : self.hi].tolist()
            yield list(zip(share, flip, strict=True))


def endless(dataset: Dataset, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Yield shuffled batches forever (reshuffled every epoch).

    The order (and an :class:`ImageFolder`'s flips) is deterministic from ``seed`` whatever the number of loader
    workers. ``batch_size`` is the global batch (capped at the dataset size); in a data-parallel run
    (:class:`LoaderSettings`) this process gets and loads only its share.
    """
    s = _claim()
    bs = _global_size(min(batch_size, len(dataset)), s.world)
    flips = isinstance(dataset, ImageFolder) and dataset.flip
    loader = DataLoader(
        dataset,
        batch_sampler=_ShareSampler(len(dataset), bs, seed, s.rank, s.world, flips),
        num_workers=s.workers,
        pin_memory=s.pin_memory,
        generator=torch.Generator().manual_seed(seed),  # the workers' seeds; never the global generator
    )
    yield from loader  # one endless pass: the workers live as long as the stream


def index_batches(n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Yield shuffled index batches ``[batch_size]`` over ``range(n)`` forever (for in-memory pools); in a
    data-parallel run (:class:`LoaderSettings`) this process's share of each global batch."""
    s = _claim()
    bs = _global_size(batch_size, s.world)
    per = bs // s.world
    for idx in _shuffled_batches(n, bs, seed):
        yield idx[s.rank * per : (s.rank + 1) * per]

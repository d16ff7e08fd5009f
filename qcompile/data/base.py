"""In-memory image datasets and a deterministic, resumable batch loader with elastic resolution.

Every loader in `qcompile.data` produces an `ArrayDataset` (float32 NCHW images at a source
resolution, int64 labels). `BatchLoader` shuffles with a seeded generator per epoch, shards the
global batch across data-parallel ranks, and resizes each batch to the resolution the caller asks
for (OQA Sec. 3.3: "the input image of each subnet is resized to its resolution r").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from qcompile.errors import ConfigError

logger = logging.getLogger(__name__)

Resolution = int | Callable[[int], int] | None


def resize(images: torch.Tensor, resolution: int | None) -> torch.Tensor:
    """Bilinear resize of an NCHW batch to `resolution` x `resolution` (no-op when it already matches).

    `align_corners=False` with antialiasing off is the usual upsampling of small images (8x8 digits
    to 32x32); downsampling (elastic resolution below the source size) uses antialiasing so that
    smaller subnets see a low-passed image rather than aliased pixels.
    """
    if resolution is None:
        return images
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ConfigError("resolution", resolution, "a positive integer")
    h, w = images.shape[-2:]
    if h == resolution and w == resolution:
        return images
    down = resolution < max(h, w)
    return F.interpolate(
        images, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=down
    )


@dataclass(frozen=True)
class ArrayDataset:
    """Images (float32, N x C x H x W, normalised) and labels (int64, N) held in memory."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str = ""

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ConfigError("images", tuple(self.images.shape), "a 4-D N x C x H x W tensor")
        if self.images.dtype != torch.float32:
            raise ConfigError("images.dtype", str(self.images.dtype), "torch.float32")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ConfigError(
                "labels", (str(self.labels.dtype), tuple(self.labels.shape)), "int64 of shape (N,)"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def source_resolution(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, index: np.ndarray | torch.Tensor, name: str | None = None) -> ArrayDataset:
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return ArrayDataset(self.images[idx], self.labels[idx], self.num_classes, name or self.name)

    def loader(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        resolution: Resolution = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> BatchLoader:
        return BatchLoader(
            self,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            resolution=resolution,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
        )


@dataclass(frozen=True)
class DatasetSplits:
    """train / val / test splits of one dataset."""

    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def in_channels(self) -> int:
        return self.train.in_channels


class BatchLoader:
    """Iterates `(images float32 NCHW, labels int64)` batches of an `ArrayDataset`.

    - Order: epoch `e` uses `torch.randperm(N, generator=seed + e)` when shuffling, so the order of
      any epoch is a pure function of (seed, epoch) and a resumed run sees the same batches.
    - Data parallel: each global batch holds `batch_size * world_size` samples in order; rank `r`
      takes the slice `[r*batch_size, (r+1)*batch_size)`. The union over ranks is the batch a
      single process with batch `batch_size * world_size` would see.
    - Elastic resolution: `resolution` is an int, None (source size) or a callable of the batch index.
    - Resume: `set_epoch(e)` and `skip(k)` start the next iteration at batch `k` of epoch `e`.
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        resolution: Resolution = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ConfigError("batch_size", batch_size, ">= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError("rank", (rank, world_size), "0 <= rank < world_size")
        if len(dataset) < batch_size * world_size and drop_last:
            raise ConfigError(
                "batch_size", batch_size, f"<= {len(dataset) // world_size} for {len(dataset)} samples"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.resolution = resolution
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._start = 0

    def __len__(self) -> int:
        g = self.batch_size * self.world_size
        n = len(self.dataset)
        return n // g if self.drop_last else -(-n // g)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, batches: int) -> None:
        """Start the next iteration at batch `batches` of the current epoch (checkpoint resume)."""
        self._start = batches

    def order(self, epoch: int | None = None) -> torch.Tensor:
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + (self.epoch if epoch is None else epoch))
        return torch.randperm(n, generator=g)

    def _resolution(self, i: int) -> int | None:
        r = self.resolution
        return r(i) if callable(r) else r

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = self.order()
        g = self.batch_size * self.world_size
        start, self._start = self._start, 0
        for i in range(start, len(self)):
            glob = perm[i * g : (i + 1) * g]
            # Short last batch: split what is there evenly, so every rank gets a (maybe smaller) share.
            per = -(-len(glob) // self.world_size)
            idx = glob[self.rank * per : (self.rank + 1) * per]
            x = resize(self.dataset.images[idx], self._resolution(i))
            yield x, self.dataset.labels[idx]

"""Seeded training order and tile sampling: the same seed gives the same batches, augmentations and tiles
whatever the number of dataloader workers, and a run resumed from a checkpoint continues exactly.

:class:`SeededSampler` yields ``(index, seed)`` pairs: the order is a permutation drawn from ``(seed, epoch)``
and each item's seed from ``(seed, epoch, position)``, all in the main process, so no worker's random state
matters; :class:`~common.data.dataset.DefectDataset` seeds its augmentation (and tile choice) from the pair.
Lightning calls ``set_epoch`` before every training epoch; ``skip_once`` drops the batches a resumed run has
already trained on (the DataModule's ``state_dict`` records them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DistributedSampler

from common.data.errors import DataError


class SeededSampler(DistributedSampler):
    """A shuffled (or ordered) pass over ``range(len(data))`` as ``(index, seed)`` pairs, one DDP shard of it.

    A ``DistributedSampler`` by type only (no process group needed): Lightning then neither wraps it nor
    replaces it under DDP, and calls its ``set_epoch`` before every epoch; the DataModule gives it the rank.

    Args:
        data: The dataset (its length).
        seed: Base seed.
        shuffle: Permute per epoch.
        rank: This process's shard (DDP rank).
        world: Number of shards; every shard gets ``ceil(n / world)`` items (the first ones repeat).
    """

    def __init__(self, data: Sized, seed: int = 0, shuffle: bool = True, rank: int = 0, world: int = 1) -> None:  # noqa: D107
        # DistributedSampler.__init__ is not called: it would ask torch.distributed for the rank
        self.dataset, self.num_replicas, self.drop_last = data, world, False
        self.n, self.seed, self.shuffle, self.rank, self.world = len(data), int(seed), shuffle, rank, world
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order and seeds the next pass yields (Lightning calls it before each epoch)."""
        self.epoch = int(epoch)

    def skip_once(self, n: int) -> None:
        """The next pass starts after its first ``n`` items."""
        self._skip = int(n)

    def __len__(self) -> int:
        return -(-self.n // self.world)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        seeds = rng.integers(0, 2**31 - 1, self.n)  # per position, drawn once per epoch
        total = len(self) * self.world
        order = np.concatenate([order, order[: total - self.n]]) if total > self.n else order
        mine = list(range(self.rank, total, self.world))
        skip, self._skip = self._skip, 0
        return iter([(int(order[i]), int(seeds[i % self.n])) for i in mine[skip:]])


class TileSampler:
    """Chooses the training tile of an image in ``tile`` mode.

    Args:
        defect_fraction: When the image's mask has defect pixels, the probability that the tile is placed over
            a random defect pixel (else anywhere): defect tiles are oversampled when masks exist. 0 samples
            tiles uniformly.
    """

    def __init__(self, defect_fraction: float = 0.5) -> None:
        if not 0.0 <= defect_fraction <= 1.0:
            raise ValueError(f"defect_tile_fraction must be in [0, 1], got {defect_fraction}")
        self.defect_fraction = defect_fraction

    def choose(self, mask: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
        """``(y, x)`` top-left corner of a ``size`` tile in an image whose defect mask is ``mask`` ``(h, w)``."""
        (h, w), (th, tw) = mask.shape[:2], size
        ys, xs = np.nonzero(mask)
        if len(ys) and rng.random() < self.defect_fraction:
            k = int(rng.integers(len(ys)))
            y = int(ys[k]) - int(rng.integers(th))
            x = int(xs[k]) - int(rng.integers(tw))
        else:
            y, x = int(rng.integers(max(1, h - th + 1))), int(rng.integers(max(1, w - tw + 1)))
        return min(max(0, y), max(0, h - th)), min(max(0, x), max(0, w - tw))


def crop_tile(arrays: list[np.ndarray | None], position: tuple[int, int], size: tuple[int, int]
              ) -> list[np.ndarray | None]:
    """The ``size`` tile at ``position`` of each array, zero-padded at the bottom/right past the image."""
    (y, x), (th, tw) = position, size
    out: list[np.ndarray | None] = []
    for a in arrays:
        if a is None:
            out.append(None)
            continue
        tile = a[y : y + th, x : x + tw]
        if tile.shape[:2] != (th, tw):
            canvas = np.zeros((th, tw, *a.shape[2:]), dtype=a.dtype)
            canvas[: tile.shape[0], : tile.shape[1]] = tile
            tile = canvas
        out.append(np.ascontiguousarray(tile))
    return out


def image_size_of(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header (no decoding)."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the image size ({e})") from e

"""Latent shards through the training DataModule at scale: 2 ranks x 2 DataLoader workers see every sample exactly
once per epoch, and a mid-epoch resume continues in exactly the interrupted order (no replay, no gap).

The samples are ``defectfm precompute``'s layout (:func:`diffdefect.stage1.precompute.latent_sample`) with tiny arrays:
what is under test is the splitting of shards over ranks and worker processes and the resume bookkeeping of
:class:`~common.data.image_text.ImageTextDataModule`, not the bytes. The DataModule reads its rank, world size,
epoch and progress from the trainer; a stand-in trainer gives them here.
"""

from __future__ import annotations

import collections
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from common.data.image_text import ImageTextDataModule
from common.data.shards import ShardWriter
from diffdefect.stage1.precompute import latent_sample

SIZES = [4000, pytest.param(20_000, marks=pytest.mark.slow)]
MAXCOUNT = 700  # shards not a multiple of the 4 readers: the remainder shards are shared


def write(folder: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    with ShardWriter(folder, maxcount=MAXCOUNT) as w:
        for i in range(n):
            w.write(latent_sample(f"{i:09d}", rng.standard_normal((8, 2, 2)), np.full(4, i), np.zeros(3),
                                  f"caption {i}", {"has_text": True}))
    return [f"{i:09d}" for i in range(n)]


def trainer(rank: int, epoch: int = 0, processed: int = 0, world: int = 2) -> SimpleNamespace:
    """What ImageTextDataModule reads from a Lightning trainer."""
    progress = SimpleNamespace(current=SimpleNamespace(processed=processed), is_last_batch=False)
    loop = SimpleNamespace(epoch_progress=SimpleNamespace(current=SimpleNamespace(processed=epoch)),
                           epoch_loop=SimpleNamespace(batch_progress=progress))
    return SimpleNamespace(global_rank=rank, world_size=world, fit_loop=loop)


def datamodule(folder: Path, rank: int, epoch: int, equalize: bool = False) -> ImageTextDataModule:
    dm = ImageTextDataModule(str(folder), mode="latents", batch_size=32, num_workers=2, shuffle=True,
                             shuffle_buffer=300, seed=5, equalize=equalize)
    dm.trainer = trainer(rank, epoch)
    return dm


def keys(batches) -> list[list[str]]:
    return [list(b.key) for b in batches]


@pytest.fixture(scope="module", params=SIZES)
def shards(request, tmp_path_factory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp(f"shards{request.param}")
    return folder, write(folder, request.param)


def test_every_sample_once_per_epoch_over_2_ranks_x_2_workers(shards) -> None:
    folder, all_keys = shards
    orders = []
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            loader = datamodule(folder, rank, epoch).train_dataloader()
            batches = keys(loader)
            assert len(loader) == len(batches)  # what Lightning plans the epoch with
            seen += [k for b in batches for k in b]
        dup = [k for k, c in collections.Counter(seen).items() if c > 1]
        assert not dup and sorted(seen) == all_keys, f"epoch {epoch}: {len(dup)} duplicates, {len(seen)} seen"
        orders.append(seen)
    assert orders[0] != orders[1]  # reshuffled per epoch


def test_equalized_ranks_run_the_same_steps_without_duplicates(shards) -> None:
    folder, all_keys = shards
    per_rank = [keys(datamodule(folder, rank, 0, equalize=True).train_dataloader()) for rank in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1])  # DDP ranks stay in step
    flat = [k for batches in per_rank for b in batches for k in b]
    assert len(set(flat)) == len(flat) and set(flat) <= set(all_keys)
    assert len(all_keys) - len(flat) < 4 * MAXCOUNT  # at most a shard per reader dropped


def test_mid_epoch_resume_neither_replays_nor_skips(shards) -> None:
    folder, _ = shards
    rank, epoch = 1, 1
    full = keys(datamodule(folder, rank, epoch).train_dataloader())
    for stop in (1, len(full) // 2 + 1):  # odd: the workers' round-robin is interrupted mid-round
        dm = datamodule(folder, rank, epoch)
        it = iter(dm.train_dataloader())
        head = [list(next(it).key) for _ in range(stop)]
        dm.trainer = trainer(rank, epoch, processed=stop)
        state = dm.state_dict()
        assert state == {"epoch": epoch, "batches": stop}
        resumed = datamodule(folder, rank, epoch)
        resumed.load_state_dict(state)
        tail = keys(resumed.train_dataloader())
        assert head + tail == full, f"resume after {stop} batches: replayed or skipped samples"

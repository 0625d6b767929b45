"""WebDataset-format shards: writer/reader round trip and exactly-once splitting over ranks and workers."""

from __future__ import annotations

import collections
import io
import json
import tarfile

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from common.data.shards import (
    EpochDataLoader,
    ShardDataset,
    ShardWriter,
    assign,
    expand_urls,
    iter_tar_samples,
    round_robin_skip,
)


def write_shards(folder, n: int, maxcount: int) -> list[str]:
    with ShardWriter(folder, maxcount=maxcount) as w:
        for i in range(n):
            w.write({"__key__": f"{i:06d}", "txt": f"caption {i}", "json": {"i": i},
                     "latent.npy": np.full((2, 2), i, np.float32)})
    return [f"{i:06d}" for i in range(n)]


def test_round_trip_and_webdataset_member_names(tmp_path) -> None:
    keys = write_shards(tmp_path, 7, maxcount=3)
    urls = expand_urls(tmp_path)
    assert [u.rsplit("/", 1)[1] for u in urls] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    with tarfile.open(urls[0]) as t:
        assert t.getnames()[:3] == ["000000.json", "000000.latent.npy", "000000.txt"]
    samples = [s for u in urls for s in iter_tar_samples(u)]
    assert [s["__key__"] for s in samples] == keys
    s = samples[4]
    assert s["txt"] == b"caption 4" and json.loads(s["json"]) == {"i": 4}
    assert np.load(io.BytesIO(s["latent.npy"]))[0, 0] == 4
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["total"] == 7 and [x["count"] for x in index["shards"]] == [3, 3, 1]
    assert expand_urls(str(tmp_path / "shard-{000000..000002}.tar")) == urls
    with pytest.raises(FileNotFoundError):
        expand_urls(str(tmp_path / "nothing-*.tar"))


def test_writer_rejects_bad_keys(tmp_path) -> None:
    w = ShardWriter(tmp_path)
    w.write({"__key__": "a", "txt": "x"})
    with pytest.raises(ValueError, match="duplicate"):
        w.write({"__key__": "a", "txt": "y"})
    with pytest.raises(ValueError, match="without dots"):
        w.write({"__key__": "a.b", "txt": "y"})
    w.close()


@pytest.mark.parametrize("num_shards,readers", [(1, 4), (3, 4), (4, 4), (7, 4), (9, 4), (5, 6)])
def test_assign_covers_every_sample_once(num_shards: int, readers: int) -> None:
    sizes = [5 + (s % 3) for s in range(num_shards)]
    seen = collections.Counter()
    for r in range(readers):
        for s, stride, off in assign(num_shards, readers, r):
            seen.update((s, i) for i in range(sizes[s]) if i % stride == off)
    assert seen == collections.Counter({(s, i): 1 for s in range(num_shards) for i in range(sizes[s])})
    assert max(len(assign(num_shards, readers, r)) for r in range(readers)) <= num_shards // readers + 1


@pytest.mark.parametrize("n,maxcount", [(10, 10), (23, 4), (40, 3)])  # 1, 6 and 14 shards
def test_every_sample_once_per_epoch_over_2_ranks_x_2_workers(tmp_path, n: int, maxcount: int) -> None:
    keys = write_shards(tmp_path, n, maxcount)
    for epoch in (0, 1):
        seen = []
        for rank in range(2):
            for worker in range(2):
                ds = ShardDataset(tmp_path, rank=rank, world_size=2, shuffle=True, shuffle_buffer=4, seed=3,
                                  worker=(worker, 2))
                ds.set_epoch(epoch)
                seen += [s["__key__"] for s in ds]
        assert sorted(seen) == keys, f"epoch {epoch}: duplicates or gaps"


def test_real_dataloader_workers_split_without_duplicates(tmp_path) -> None:
    keys = write_shards(tmp_path, 23, 4)
    seen = []
    for rank in range(2):
        ds = ShardDataset(tmp_path, decode=_key, rank=rank, world_size=2)
        loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=list)
        seen += [k for batch in loader for k in batch]
    assert sorted(seen) == keys


def _key(raw):
    return raw["__key__"]


def test_equalize_gives_every_reader_the_same_count_and_len(tmp_path) -> None:
    write_shards(tmp_path, 23, 4)  # 6 shards: 4, 4, 4, 4, 4, 3
    counts = []
    for rank in range(2):
        ds = ShardDataset(tmp_path, rank=rank, world_size=2, equalize=True)
        for worker in range(2):
            ds.worker = (worker, 2)
            counts.append(sum(1 for _ in ds))
        assert ds.reader_counts(2) == [counts[-2], counts[-1]]
        assert ds.num_batches(2, 2) == sum((c + 1) // 2 for c in counts[-2:])
    assert len(set(counts)) == 1 and 4 * counts[0] >= 23 - 4 * 3  # drops less than a shard per reader


def test_round_robin_skip_matches_the_dataloader_order(tmp_path) -> None:
    assert round_robin_skip([3, 1, 2], 4) == ([1, 1, 1], 1)  # rounds: (0,1,2) (0,2) (0)
    assert round_robin_skip([3, 1, 2], 5) == ([2, 1, 2], 0)
    assert round_robin_skip([3, 1, 2], 0) == ([0, 0, 0], 0)
    write_shards(tmp_path, 23, 4)
    ds = ShardDataset(tmp_path, decode=_key, shuffle=True, shuffle_buffer=5, seed=1)
    loader = EpochDataLoader(ds, batch_size=2, num_workers=2, collate_fn=list)
    full = list(loader)
    assert len(loader) == len(full) == 12
    for skip in (5, 6, 11):
        loader.skip_once(skip)
        assert list(loader) == full[skip:]
    assert list(loader) == full  # the skip applies once


def test_tensor_fields_are_stored_as_npy(tmp_path) -> None:
    with ShardWriter(tmp_path) as w:
        w.write({"__key__": "k", "emb.npy": torch.arange(3.0)})
    (s,) = list(iter_tar_samples(expand_urls(tmp_path)[0]))
    assert np.load(io.BytesIO(s["emb.npy"])).tolist() == [0.0, 1.0, 2.0]

"""WebDataset-format tar shards: a writer and a streaming ``IterableDataset`` split over DDP ranks and workers.

Format (WebDataset's): a shard is a plain tar; a sample is the run of consecutive members sharing a key, the
member name being ``<key>.<field>`` (key = the name up to the first dot of the base name), e.g.
``000042.png``, ``000042.txt``, ``000042.json``, ``000042.latent.npy``. Shards written here can be read by
``webdataset`` and vice versa. The writer also leaves ``index.json`` (sample count per shard), which lets the
reader give every rank the same number of samples.

Why not the ``webdataset`` package: it is not a dependency, the format is a plain tar that the standard
library's ``tarfile`` reads in streaming mode, and the splitting rule below (exactly once per epoch, even with
fewer shards than readers) is a dozen lines we want under test anyway.

Splitting: with ``W = world_size x num_workers`` readers and ``S`` shards (in a per-epoch seeded order, the
same on every rank), reader ``w`` takes whole shards ``w, w + W, ...`` of the first ``(S // W) * W``; the
``R = S % W`` remaining shards are shared: reader ``w`` reads remainder shard ``w % R`` and keeps the samples whose
index ``i`` in it satisfies ``i % k == w // R`` (``k`` readers share that shard). Every sample is seen exactly
once per epoch, and each reader opens at most ``S // W + 1`` shards.

Why in ``common`` (though today only stage 1 streams shards): a shard is a storage format for any data set too
large for one folder listing (DESIGN section 5), with nothing diffusion-specific in it; image-text pairs
(:mod:`common.data.image_text`) and any later model family read it the same way. The loader that resumes a
sharded epoch mid-way lives in :mod:`common.data.resume` (re-exported here).
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from common.data.resume import EpochDataLoader, round_robin_skip

INDEX_FILE = "index.json"
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


# ----------------------------------------------------------------------------- naming
def expand_urls(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard paths from a folder (its ``*.tar``, sorted), a brace pattern (``shard-{000..009}.tar``), a glob,
    a single path or a list of any of these.

    Raises:
        FileNotFoundError: Nothing matched.
    """
    if isinstance(source, (list, tuple)):
        return [u for s in source for u in expand_urls(s)]
    source = os.fspath(source)
    if os.path.isdir(source):
        urls = sorted(glob.glob(os.path.join(source, "*.tar")))
    elif (m := _BRACE.search(source)) is not None:
        lo, hi = m.group(1), m.group(2)
        width = len(lo)
        urls = []
        for i in range(int(lo), int(hi) + 1):
            urls += expand_urls(source[: m.start()] + str(i).zfill(width) + source[m.end() :])
    elif any(c in source for c in "*?["):
        urls = sorted(glob.glob(source))
    else:
        urls = [source]
    if not urls:
        raise FileNotFoundError(f"no shards match {source!r}")
    return urls


def split_key(name: str) -> tuple[str, str]:
    """``"dir/000042.latent.npy"`` -> ``("dir/000042", "latent.npy")`` (WebDataset's key/field rule)."""
    d, base = os.path.split(name)
    key, _, field = base.partition(".")
    return (os.path.join(d, key) if d else key), field


def encode_field(value: Any) -> bytes:
    """Bytes of a field value: ``bytes`` as is, ``str`` as UTF-8, ``dict``/``list`` as JSON, arrays/tensors
    as ``.npy``."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True).encode("utf-8")
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        return buf.getvalue()
    raise TypeError(f"cannot store a {type(value).__name__} in a shard")


# ----------------------------------------------------------------------------- writing
class ShardWriter:
    """Writes samples into ``<folder>/<prefix>-000000.tar``, ``-000001.tar``... with ``maxcount`` samples each.

    Use as a context manager; ``close()`` writes ``index.json`` (``{"shards": [{"name", "count"}], "total"}``).

    Args:
        folder: Output folder (created).
        maxcount: Samples per shard (about 1000 keeps shards at a few hundred MB for 512-px PNGs).
        prefix: Shard file prefix.
    """

    def __init__(self, folder: str | os.PathLike, maxcount: int = 1000, prefix: str = "shard") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.maxcount = maxcount
        self.prefix = prefix
        self.shards: list[dict[str, Any]] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0
        self._keys: set[str] = set()

    def _open_next(self) -> None:
        self._finish()
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._tar = tarfile.open(self.folder / name, "w")
        self.shards.append({"name": name, "count": 0})
        self._count = 0

    def _finish(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def write(self, sample: dict[str, Any]) -> None:
        """Appends one sample: ``{"__key__": "000042", "png": bytes, "txt": "...", "latent.npy": array...}``.

        Raises:
            ValueError: Missing or duplicate key, or a key containing a dot.
        """
        key = sample.get("__key__")
        if not key or "." in os.path.basename(key):
            raise ValueError(f"each sample needs a '__key__' without dots, got {key!r}")
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r}")
        self._keys.add(key)
        if self._tar is None or self._count >= self.maxcount:
            self._open_next()
        assert self._tar is not None
        for field in sorted(k for k in sample if k != "__key__"):
            data = encode_field(sample[field])
            info = tarfile.TarInfo(f"{key}.{field}")
            info.size = len(data)
            info.mtime = 0  # byte-identical shards for identical inputs
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self.shards[-1]["count"] = self._count

    def close(self) -> Path:
        """Closes the last shard and writes the index; returns the index path."""
        self._finish()
        index = {"shards": self.shards, "total": sum(s["count"] for s in self.shards)}
        path = self.folder / INDEX_FILE
        path.write_text(json.dumps(index, indent=1) + "\n")
        return path

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------- reading
def iter_tar_samples(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Streams the samples of one shard: ``{"__key__": key, "__shard__": path, field: bytes, ...}``."""
    current: dict[str, Any] | None = None
    with tarfile.open(path, "r|*") as tar:  # streaming mode: members in order, no seeking
        for member in tar:
            if not member.isfile():
                continue
            key, field = split_key(member.name)
            f = tar.extractfile(member)
            data = f.read() if f is not None else b""
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__shard__": os.fspath(path)}
            current[field] = data
    if current is not None:
        yield current


def read_index(urls: Sequence[str]) -> dict[str, int] | None:
    """Sample counts per shard path from the ``index.json`` files next to the shards (``None`` if any is missing)."""
    counts: dict[str, int] = {}
    for folder in sorted({os.path.dirname(os.path.abspath(u)) for u in urls}):
        path = os.path.join(folder, INDEX_FILE)
        if not os.path.isfile(path):
            return None
        for s in json.loads(Path(path).read_text())["shards"]:
            counts[os.path.join(folder, s["name"])] = int(s["count"])
    try:
        return {u: counts[os.path.abspath(u)] for u in urls}
    except KeyError:
        return None


def assign(num_shards: int, num_readers: int, reader: int) -> list[tuple[int, int, int]]:
    """The shards reader ``reader`` of ``num_readers`` reads, as ``(shard, stride, offset)``: it keeps the
    samples ``i`` of ``shard`` with ``i % stride == offset`` (see the module docstring)."""
    full = (num_shards // num_readers) * num_readers
    out = [(s, 1, 0) for s in range(reader, full, num_readers)]
    rem = num_shards - full
    if rem:
        r = reader % rem
        stride = len(range(r, num_readers, rem))
        out.append((full + r, stride, reader // rem))
    return out


class ShardDataset(IterableDataset):
    """Streams samples from tar shards, each sample exactly once per epoch over all ranks and workers.

    Args:
        source: Shards (see :func:`expand_urls`).
        decode: Turns a raw sample dict (``bytes`` per field) into an item; ``None`` yields raw samples.
        rank: This process's rank (the DataModule passes the trainer's).
        world_size: Number of processes.
        shuffle: Shuffle the shard order per epoch (same permutation on every rank).
        shuffle_buffer: In-reader shuffle buffer size (0: stream order).
        seed: Seed of the shard order and the buffer.
        equalize: Every reader yields the same number of samples (the minimum over readers; needs
            ``index.json``): DDP ranks then run the same number of steps.
        worker: ``(worker_id, num_workers)`` override (tests; normally taken from ``get_worker_info``).
    """

    def __init__(
        self,
        source: str | os.PathLike | Sequence[str],
        decode: Callable[[dict[str, Any]], Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        shuffle_buffer: int = 0,
        seed: int = 0,
        equalize: bool = False,
        worker: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.urls = expand_urls(source)
        self.decode = decode
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.shuffle_buffer, self.seed = shuffle, shuffle_buffer, seed
        self.equalize = equalize
        self.worker = worker
        self.epoch = 0
        self.skip_per_worker: list[int] | None = None  # samples to skip once, per local worker
        self.counts = read_index(self.urls)
        if equalize and self.counts is None:
            raise FileNotFoundError("equalize=True needs the index.json that ShardWriter leaves next to the shards")

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch's shard order and shuffle seed."""
        self.epoch = int(epoch)

    # ------------------------------------------------------------------ bookkeeping
    def shard_order(self) -> list[str]:
        """This epoch's shard order (identical on every rank)."""
        if not self.shuffle:
            return list(self.urls)
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.urls))
        return [self.urls[i] for i in perm]

    def _reader_count(self, order: Sequence[str], num_readers: int, reader: int) -> int:
        assert self.counts is not None
        return sum(len(range(off, self.counts[order[s]], stride)) for s, stride, off in assign(len(order), num_readers, reader))

    def reader_counts(self, num_workers: int) -> list[int]:
        """Samples each local worker yields this epoch (after ``equalize``); needs ``index.json``."""
        order = self.shard_order()
        n = self.world_size * num_workers
        counts = [self._reader_count(order, n, self.rank * num_workers + j) for j in range(num_workers)]
        if self.equalize:
            q = min(self._reader_count(order, n, g) for g in range(n))
            counts = [q] * num_workers
        return counts

    def num_batches(self, batch_size: int, num_workers: int) -> int:
        """Batches a DataLoader over this dataset yields on this rank this epoch."""
        return sum(math.ceil(c / batch_size) for c in self.reader_counts(max(1, num_workers)))

    def skip_batches_once(self, batches: int, batch_size: int, num_workers: int) -> int:
        """The next iteration's workers skip their part of the first ``batches`` batches, before decoding.

        Returns:
            Batches the loader itself must still drop (see :func:`round_robin_skip`).
        """
        if self.counts is None:  # no index: assume the workers have equally many batches
            per, drop = [batches // num_workers] * num_workers, batches % num_workers
        else:
            per, drop = round_robin_skip([math.ceil(c / batch_size) for c in self.reader_counts(num_workers)], batches)
        self.skip_per_worker = [p * batch_size for p in per]
        return drop
    def __len__(self) -> int:
        if self.counts is None:
            raise TypeError("ShardDataset has no length without index.json")
        return sum(self.reader_counts(1))

    # ------------------------------------------------------------------ iteration
    def _raw(self, order: Sequence[str], num_readers: int, reader: int) -> Iterator[dict[str, Any]]:
        for s, stride, off in assign(len(order), num_readers, reader):
            for i, sample in enumerate(iter_tar_samples(order[s])):
                if i % stride == off:
                    yield sample

    def __iter__(self) -> Iterator[Any]:
        if self.worker is not None:
            wid, nw = self.worker
        else:
            info = get_worker_info()
            wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        order = self.shard_order()
        n_readers = self.world_size * nw
        reader = self.rank * nw + wid
        stream = self._raw(order, n_readers, reader)
        if self.shuffle_buffer > 1:
            stream = _shuffled(stream, self.shuffle_buffer, np.random.default_rng([self.seed, self.epoch, reader]))
        limit = None
        if self.equalize:
            limit = self.reader_counts(nw)[wid]
        skip = self.skip_per_worker[wid] if self.skip_per_worker is not None and wid < len(self.skip_per_worker) else 0
        for i, sample in enumerate(stream):
            if limit is not None and i >= limit:
                break
            if i < skip:
                continue  # resume: skipped before decoding
            yield self.decode(sample) if self.decode is not None else sample


def _shuffled(stream: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Reservoir-style shuffle buffer (as WebDataset's ``shuffle``)."""
    buf: list[Any] = []
    for item in stream:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(len(buf)))
        buf[j], item = item, buf[j]
        yield item
    order = rng.permutation(len(buf))
    for j in order:
        yield buf[j]


__all__ = [
    "EpochDataLoader",
    "ShardDataset",
    "ShardWriter",
    "assign",
    "encode_field",
    "expand_urls",
    "iter_tar_samples",
    "read_index",
    "round_robin_skip",
    "split_key",
]

"""Resumable loading: a run restarted from a mid-epoch checkpoint continues with exactly the batches the
uninterrupted run would have seen next.

* :class:`ResumableDistributedSampler`: map-style data (manifests), skipping at the sampler, before any file is
  read;
* :class:`ResumePoint`: the DataModule side, the epoch and the training batches of it consumed so far, saved in
  checkpoints and read back once by the next training loader;
* :class:`EpochDataLoader`: streamed shards (:class:`~common.data.shards.ShardDataset`), telling the dataset its
  epoch and the batches to skip (before decoding) at each ``iter()``, with :func:`round_robin_skip` for the order
  in which PyTorch's loader interleaves its workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch.utils.data import DataLoader, DistributedSampler


def round_robin_skip(counts: Sequence[int], skip: int) -> tuple[list[int], int]:
    """How to make a DataLoader skip its first ``skip`` batches and then continue in exactly the same order.

    PyTorch's loader yields worker batches round-robin (round ``r``: worker 0, 1, ... each gives its ``r``-th
    batch, workers that ran out drop out). Restarting workers mid-round would shift the interleaving, so each
    worker skips the whole rounds before the resume point, and the loader drops the first few batches of the
    resume round.

    Args:
        counts: Batches each worker yields this epoch.
        skip: Batches already consumed.

    Returns:
        ``(batches to skip per worker, batches for the loader to drop)``.
    """
    r = 0
    while skip > 0:
        active = sum(1 for c in counts if c > r)
        if active == 0 or skip < active:
            break
        skip -= active
        r += 1
    return [min(c, r) for c in counts], skip


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (seeded per epoch with ``set_epoch``) that can skip the first samples once.

    Used even on one process (``num_replicas=1``) so that the order is a function of (seed, epoch) only.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._skip = 0

    def skip_once(self, n: int) -> None:
        """The next iteration starts after its first ``n`` indices."""
        self._skip = int(n)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])


class _LazyIterator:
    """Creates the wrapped iterator on the first ``next``."""

    def __init__(self, start: Callable[[], Iterator[Any]]) -> None:
        self._start = start
        self._it: Iterator[Any] | None = None

    def __iter__(self) -> _LazyIterator:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            self._it = self._start()
        return next(self._it)


class EpochDataLoader(DataLoader):
    """``DataLoader`` over a :class:`ShardDataset` that tells it the epoch (and a one-time skip) at each
    ``iter()``, before workers copy it, and reports the exact number of batches as its length.

    Args:
        epoch_fn: Returns the current epoch (the DataModule passes the trainer's).
        *args: ``DataLoader`` arguments.
        **kwargs: ``DataLoader`` keyword arguments.
    """

    def __init__(self, *args: Any, epoch_fn: Callable[[], int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epoch_fn = epoch_fn
        self._skip: int | None = None

    def skip_once(self, batches: int) -> None:
        """The next iteration starts after ``batches`` batches."""
        self._skip = batches

    def __iter__(self) -> Any:
        # Lazy: the epoch is read (and workers started) at the first ``next``, i.e. after Lightning has moved
        # to the epoch (it creates the iterator early, e.g. before a resumed run enters its next epoch).
        return _LazyIterator(self._start)

    def _start(self) -> Any:
        ds = self.dataset
        if self.epoch_fn is not None:
            ds.set_epoch(self.epoch_fn())
        ds.skip_per_worker = None
        drop = 0
        if self._skip:
            drop = ds.skip_batches_once(self._skip, self.batch_size, max(1, self.num_workers))
            self._skip = None
        it = super().__iter__()
        for _ in range(drop):  # fewer than num_workers batches, decoded and discarded
            next(it, None)
        return it

    def __len__(self) -> int:
        ds = self.dataset
        if getattr(ds, "counts", None) is None:
            raise TypeError("no length: the shards have no index.json")
        return ds.num_batches(self.batch_size, self.num_workers)


class ResumePoint:
    """Mixin of a ``LightningDataModule`` (put it first among the bases): Lightning saves :meth:`state_dict` in
    checkpoints and gives it back with :meth:`load_state_dict` on resume; the training loader reads
    ``self._resume`` (``{"epoch", "batches"}`` or ``None``) once, through its sampler or :class:`EpochDataLoader`."""

    _resume: dict[str, int] | None = None

    def _epoch(self) -> int:
        """The training epoch the trainer is in (0 without one)."""
        trainer = getattr(self, "trainer", None)
        return int(trainer.fit_loop.epoch_progress.current.processed) if trainer is not None else 0

    def state_dict(self) -> dict[str, Any]:
        """Epoch and training batches of it consumed so far."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress
        # a checkpoint taken on the epoch's last batch resumes at the next epoch: nothing to skip
        batches = 0 if progress.is_last_batch else int(progress.current.processed)
        return {"epoch": self._epoch(), "batches": batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._resume = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}

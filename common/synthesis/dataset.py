"""Dataset wrapper that adds Perlin anomalies in dataloader workers, reproducibly and worker-independently.

Sample ``index`` in epoch ``e`` is synthesised with seed ``sample_seed(seed, index, e)``, so the anomalies do not
depend on the number of workers, on which worker serves which index, or on the batch size.

How the DataModule uses it::

    train = PerlinAnomalyDataset(train_dataset, PerlinAnomalyGenerator(texture_dir=...), seed=seed)
    loader = DataLoader(train, batch_size=..., num_workers=..., collate_fn=collate_samples)
    # each epoch (e.g. from a callback's on_train_epoch_start, or the DataModule's train_dataloader):
    train.set_epoch(trainer.current_epoch)

The epoch lives in a shared-memory tensor, so ``set_epoch`` also reaches persistent workers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from common.synthesis.generator import PerlinAnomalyGenerator
from common.synthesis.seeding import sample_seed


class PerlinAnomalyDataset(Dataset):
    """Wraps a map-style dataset of dicts and adds synthetic anomalies to its images.

    The wrapped items must hold ``"image"``, a ``(C, H, W)`` float tensor in ``[0, 1]``; an optional
    ``"foreground"`` (``(H, W)`` or ``(1, H, W)``) restricts where anomalies fall. The returned item is a copy
    with ``"image"`` replaced, ``"mask"`` ``(1, H, W)`` float set to the union of any existing mask and the
    synthetic one, ``"label"`` the maximum of the existing and synthetic labels, and ``"synthetic"`` (bool,
    whether an anomaly was added). ``"has_mask"`` is left as it is: a normal item's (empty) mask was known and
    now is the synthetic mask; a real defect without a mask stays unknown.

    Args:
        dataset: Map-style dataset returning dicts (e.g. :class:`common.data.dataset.DefectDataset`).
        generator: The anomaly generator.
        seed: Base seed of the per-sample seeds.
        skip_anomalous: Leave items whose ``"label"`` is already 1 untouched (real defects stay as they are).
        defect_type: If given, written to ``"defect_type"`` of synthetic items.
        defect_type_id: If given, written to ``"defect_type_id"`` of synthetic items and into
            ``"class_mask"`` (when present) under the synthetic mask.
    """

    def __init__(
        self,
        dataset: Dataset,
        generator: PerlinAnomalyGenerator,
        seed: int = 0,
        skip_anomalous: bool = True,
        defect_type: str | None = None,
        defect_type_id: int | None = None,
    ) -> None:
        self.dataset = dataset
        self.generator = generator
        self.seed = int(seed)
        self.skip_anomalous = skip_anomalous
        self.defect_type = defect_type
        self.defect_type_id = defect_type_id
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @property
    def epoch(self) -> int:
        """The epoch used in the per-sample seeds."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch (in shared memory, visible to running workers)."""
        self._epoch.fill_(int(epoch))

    def seed_of(self, index: int) -> int:
        """The seed sample ``index`` gets in the current epoch."""
        return sample_seed(self.seed, index, self.epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        if self.skip_anomalous and int(item.get("label", 0)) == 1:
            item["synthetic"] = False
            return item
        image = item["image"]
        res = self.generator(image, foreground=item.get("foreground"), seed=self.seed_of(index))
        synthetic = bool(res.label)
        item["image"] = res.image
        mask = res.mask.float()
        if item.get("mask") is not None:
            mask = torch.maximum(item["mask"].float().reshape(mask.shape), mask)
        item["mask"] = mask
        item["label"] = max(int(item.get("label", 0)), int(res.label))
        item["synthetic"] = synthetic
        if synthetic:
            if self.defect_type is not None:
                item["defect_type"] = self.defect_type
            if self.defect_type_id is not None:
                item["defect_type_id"] = self.defect_type_id
                if isinstance(item.get("class_mask"), torch.Tensor):
                    cm = item["class_mask"].clone()
                    cm[res.mask.reshape(cm.shape) > 0] = self.defect_type_id
                    item["class_mask"] = cm
        return item

"""The one DataModule of defectfm: any reader, seeded splits, few-shot subsets, joint transforms."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import albumentations as A
import lightning as L
import torch
from torch.utils.data import DataLoader

from common.data.dataset import DefectDataset, collate_samples
from common.data.errors import DataError
from common.data.readers import ClassIdSegReader, Reader
from common.data.splits import few_shot, stratified_split
from common.data.transforms import build_transform
from common.data.types import NORMAL, SampleRecord

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


class DefectDataModule(L.LightningDataModule):
    """Serves any reader's records as :class:`~common.data.types.DefectBatch` es.

    Splits: with ``split="auto"`` the dataset's own train/val/test splits are used; a missing val split is
    carved (seeded, stratified) from train or test (``val_from``); a dataset with no splits at all is split
    with ``split_ratios``. ``split="random"`` ignores the dataset's splits and splits everything with
    ``split_ratios`` (use it to get defective training samples from MVTec-style sets, whose train split is
    defect-free). The same records, ratios and seed always give the same split.

    Args:
        reader: The dataset reader (``class_path`` in YAML).
        image_size: Image side (or ``[H, W]``) after resizing.
        batch_size: Training batch size.
        eval_batch_size: Validation/test/predict batch size (defaults to ``batch_size``).
        num_workers: DataLoader workers.
        split: ``"auto"`` or ``"random"`` (see above).
        split_ratios: Train/val/test fractions for ``"random"`` or split-less datasets.
        val_from: ``"train"`` or ``"test"``: which split a missing val split is carved from.
        val_fraction: Fraction carved for val.
        seed: Seed of every split and subset.
        few_shot: Keep exactly this many training samples per class (``None``: all).
        few_shot_per: ``"defect_type"`` or ``"object_defect"``.
        train_filter: ``"all"``, or ``"normal"`` to train on defect-free samples only (normal-only regime).
        weak_labels: Drop training masks, keeping image labels only (weakly supervised regime).
        augment: Training augmentation preset: ``"none"``, ``"light"``, ``"strong"``.
        extra_train_transforms: Further albumentations transforms for training.
        vocabulary: Defect-type names, replacing the ones found in the data (``"good"`` is put first when
            missing). Use it to add names the data does not have, e.g. for open-vocabulary tests.
        predict_reader: Reader of the images to predict on; ``None`` predicts on the test split.
    """

    def __init__(
        self,
        reader: Reader,
        image_size: int | list[int] = 256,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        split: str = "auto",
        split_ratios: Sequence[float] = (0.6, 0.2, 0.2),
        val_from: str = "train",
        val_fraction: float = 0.2,
        seed: int = 0,
        few_shot: int | None = None,
        few_shot_per: str = "defect_type",
        train_filter: str = "all",
        weak_labels: bool = False,
        augment: str = "light",
        extra_train_transforms: list[A.BasicTransform] | None = None,
        vocabulary: list[str] | None = None,
        predict_reader: Reader | None = None,
    ) -> None:
        super().__init__()
        for name, value, allowed in (
            ("split", split, ("auto", "random")),
            ("val_from", val_from, ("train", "test")),
            ("train_filter", train_filter, ("all", "normal")),
            ("few_shot_per", few_shot_per, ("defect_type", "object_defect")),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        self.reader = reader
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.split = split
        self.split_ratios = tuple(split_ratios)
        self.val_from = val_from
        self.val_fraction = val_fraction
        self.seed = seed
        self.few_shot = few_shot
        self.few_shot_per = few_shot_per
        self.train_filter = train_filter
        self.weak_labels = weak_labels
        self.augment = augment
        self.extra_train_transforms = extra_train_transforms
        self._vocabulary_override = vocabulary
        self.predict_reader = predict_reader
        self._splits: dict[str, list[SampleRecord]] | None = None

    # ----------------------------------------------------------------- vocabulary (for link_arguments)
    @property
    def vocabulary(self) -> list[str]:
        """Defect-type names, index 0 = ``"good"``; ids of ``DefectBatch.defect_type_id`` index into it."""
        if self._vocabulary_override is not None:
            names = [NORMAL] + [n for n in self._vocabulary_override if n != NORMAL]
            return list(dict.fromkeys(names))
        if isinstance(self.reader, ClassIdSegReader):
            return [NORMAL, *self.reader.class_names]
        found = sorted({r.defect_type for r in self.reader.records()} - {NORMAL})
        return [NORMAL, *found]

    @property
    def object_names(self) -> list[str]:
        """Object names, sorted; ``DefectBatch.object_id`` indexes into it."""
        return sorted({r.object_name for r in self.reader.records()})

    @property
    def num_classes(self) -> int:
        """Number of defect-type classes including ``"good"``."""
        return len(self.vocabulary)

    # ----------------------------------------------------------------- splits
    def split_records(self) -> dict[str, list[SampleRecord]]:
        """The train/val/test records (computed once; deterministic from the seed)."""
        if self._splits is None:
            self._splits = self._make_splits()
            log.info("defectfm data: %s", {k: len(v) for k, v in self._splits.items()})
        return self._splits

    def _make_splits(self) -> dict[str, list[SampleRecord]]:
        records = self.reader.records()
        native = {s: [r for r in records if r.split == s] for s in SPLITS}
        unknown = sorted({r.split for r in records if r.split is not None and r.split not in SPLITS})
        if unknown:
            raise DataError(f"{self.reader.root}: unknown split names {unknown}; expected {SPLITS}")
        if self.split == "random" or not any(native.values()):
            train, val, test = stratified_split(records, self.split_ratios, self.seed)
        else:
            train, val, test = native["train"], native["val"], native["test"]
            if not val:
                source = train if self.val_from == "train" else test
                rest, val = stratified_split(source, (1 - self.val_fraction, self.val_fraction), self.seed)
                train, test = (rest, test) if self.val_from == "train" else (train, rest)
        if self.train_filter == "normal":
            train = [r for r in train if r.is_anomalous is False]
        if self.few_shot is not None:
            train = few_shot(train, self.few_shot, self.seed, self.few_shot_per)
        for name, part in (("train", train), ("test", test)):
            if not part:
                raise DataError(f"{self.reader.root}: the {name} split is empty after splitting/filtering")
        return {"train": train, "val": val, "test": test}

    # ----------------------------------------------------------------- datasets and loaders
    def _dataset(self, records: list[SampleRecord], train: bool) -> DefectDataset:
        transform = build_transform(
            self.image_size,
            self.augment if train else "none",
            self.extra_train_transforms if train else None,
        )
        return DefectDataset(records, self.vocabulary, self.object_names, transform, drop_masks=train and self.weak_labels)

    def dataset(self, stage: str) -> DefectDataset:
        """The dataset of ``stage`` (``"train"``, ``"val"``, ``"test"`` or ``"predict"``)."""
        if stage == "predict":
            if self.predict_reader is None:
                return self._dataset(self.split_records()["test"], train=False)
            # names from the images predicted, not from the training reader: its folder may be gone by now
            recs = self.predict_reader.records()
            names = [NORMAL, *sorted({r.defect_type for r in recs} - {NORMAL})]
            objects = sorted({r.object_name for r in recs})
            return DefectDataset(recs, names, objects, build_transform(self.image_size, "none"))
        return self._dataset(self.split_records()[stage], train=stage == "train")

    def _loader(self, stage: str, shuffle: bool, batch_size: int, dataset: DefectDataset | None = None) -> DataLoader:
        return DataLoader(
            dataset if dataset is not None else self.dataset(stage),
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size)

    def reference_dataloader(self) -> DataLoader:
        """The training images without augmentation, in a fixed order, at the evaluation batch size: what a
        reference memory is built from (e.g. CLIP-MDC's normal memory). Not sharded across DDP ranks."""
        return self._loader("train", False, self.eval_batch_size, self._dataset(self.split_records()["train"], False))

    def val_dataloader(self) -> DataLoader | list:
        if not self.split_records()["val"]:
            return []
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", False, self.eval_batch_size)

"""The one DataModule of defectfm: any reader, seeded splits, few-shot subsets, joint transforms."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import albumentations as A
import lightning as L
import torch
from torch.utils.data import DataLoader

from common.data.dataset import DefectDataset, collate_samples
from common.data.errors import DataError
from common.data.readers import ClassIdSegReader, Reader
from common.data.resume import ResumePoint
from common.data.sampling import SeededSampler, TileSampler
from common.data.splits import few_shot, record_groups, stratified_split
from common.data.tiling import TileSpec, check_resize, pair
from common.data.transforms import build_transform
from common.data.types import NORMAL, SampleRecord

SPLITS = ("train", "val", "test")


class DefectDataModule(ResumePoint, L.LightningDataModule):
    """Serves any reader's records as :class:`~common.data.types.DefectBatch` es.

    Splits: with ``split="auto"`` the dataset's own train/val/test splits are used; a missing val split is
    carved (seeded, stratified) from train or test (``val_from``); a dataset with no splits at all is split
    with ``split_ratios``. ``split="random"`` ignores the dataset's splits and splits everything with
    ``split_ratios`` (use it to get defective training samples from MVTec-style sets, whose train split is
    defect-free). The same records, ratios and seed always give the same split.

    What was found is printed (rank 0) when a trainer sets the DataModule up: per split the images, normal,
    defective and unlabelled ones, masks and the classes, so a misread layout is visible at once
    (:meth:`summary`). In predict, a file that cannot be read does not stop the run: it is marked failed with
    its one-line reason (:class:`~common.data.dataset.DefectDataset` ``on_error="mark"``), skipped by the model
    and listed in ``errors.csv`` by :class:`~common.prediction.PredictionWriter`; fit, validate and test stop at
    the first bad file with one line naming it.

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
        captions: ``"given"`` (the dataset's captions, ``None`` where it has none) or ``"templated"`` (missing
            ones written from the labels and mask, :func:`common.data.captions.caption_for`).
        resize: How images of any size become model input (:mod:`common.data.tiling`): ``"stretch"`` (resized to
            ``image_size``), ``"letterbox"`` (aspect ratio kept, padded; padding never scored) or ``"tile"``
            (native scale times ``tile_scale``, overlapping tiles of ``image_size``: training samples one tile per
            item, evaluation and predict serve whole images, one per batch, tiled by the model in batches of
            ``eval_batch_size`` tiles). Stored in every checkpoint; ``defectfm predict`` uses it unless told.
        tile_overlap: Overlap of neighbouring evaluation tiles, a fraction of the tile side.
        tile_scale: Working scale of ``tile`` mode relative to the image files (1: native pixels).
        defect_tile_fraction: ``tile`` mode training: probability that a tile of an image with defect pixels is
            placed over a defect (oversampling defect tiles when masks exist); 0: uniform.
        group_key: Keep groups of images (photographs of one physical part) in one split: the record's ``extra``
            entry naming its group, e.g. ``"group"`` (a ``group`` column of the folder reader's labels CSV, or the
            sub-folder of its ``groups`` layout); see :func:`common.data.splits.record_groups`.
        group_pattern: The same with a regular expression on the image path (first capture group).
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
        captions: str = "given",
        resize: str = "stretch",
        tile_overlap: float = 0.25,
        tile_scale: float = 1.0,
        defect_tile_fraction: float = 0.5,
        group_key: str | None = None,
        group_pattern: str | None = None,
    ) -> None:
        super().__init__()
        for name, value, allowed in (
            ("split", split, ("auto", "random")),
            ("val_from", val_from, ("train", "test")),
            ("train_filter", train_filter, ("all", "normal")),
            ("few_shot_per", few_shot_per, ("defect_type", "object_defect")),
            ("captions", captions, ("given", "templated")),
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
        self.captions = captions
        self.resize = check_resize(resize)
        self.tile_overlap, self.tile_scale = float(tile_overlap), float(tile_scale)
        self.tile_sampler = TileSampler(defect_tile_fraction)
        self.group_key, self.group_pattern = group_key, group_pattern
        self._splits: dict[str, list[SampleRecord]] | None = None
        self._ids: dict[str, int] | None = None
        self._printed: set[str] = set()
        self._resume: dict[str, int] | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """What this DataModule does to the pixels (stored in checkpoints, :func:`common.checkpoint.data_settings`)."""
        size = self.image_size
        return {"image_size": list(size) if isinstance(size, (list, tuple)) else size, "resize": self.resize,
                "tile_overlap": self.tile_overlap, "tile_scale": self.tile_scale}

    def tile_spec(self) -> TileSpec | None:
        """How evaluation images are tiled in ``tile`` mode (``None`` in the other modes)."""
        if self.resize != "tile":
            return None
        return TileSpec(pair(self.image_size), self.tile_overlap, self.eval_batch_size, self.tile_scale)

    # ----------------------------------------------------------------- vocabulary (for link_arguments)
    @property
    def vocabulary(self) -> list[str]:
        """Defect-type names, index 0 = ``"good"``; ids of ``DefectBatch.defect_type_id`` index into it."""
        if self._vocabulary_override is not None:
            names = [NORMAL] + [n for n in self._vocabulary_override if n != NORMAL]
            return list(dict.fromkeys(names))
        if isinstance(self.reader, ClassIdSegReader):
            return [NORMAL, *self.reader.class_names]
        records = self.reader.records()  # class names too: a class may never be an image's main defect type
        found = sorted(({r.defect_type for r in records} | {n for r in records for n in r.class_names}) - {NORMAL})
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
        return self._splits

    # ----------------------------------------------------------------- what was found
    def setup(self, stage: str) -> None:
        """Prints :meth:`summary` once per stage kind (rank 0)."""
        kind = "predict" if stage == "predict" else "data"
        if kind in self._printed:
            return
        self._printed.add(kind)
        text = self.summary(predict=stage == "predict")
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.is_global_zero:
            print(text, flush=True)

    def summary(self, predict: bool = False) -> str:
        """A compact table of what the reader found.

        Args:
            predict: Describe the predict images instead of the train/val/test splits.

        Returns:
            A header line (reader, layout, root, objects) and one row per split: images, normal, defective,
            unlabelled (when any), masks, and the classes with their counts.
        """
        if predict:
            reader = self.predict_reader or self.reader
            recs = self.predict_reader.records() if self.predict_reader is not None else self.split_records()["test"]
            parts = {"predict": recs}
        else:
            reader = self.reader
            parts = dict(self.split_records())
        how = {"groups": "; sub-folders are groups, labels from the masks", "classes": "; sub-folders are classes"}
        how = how.get(getattr(reader, "subfolder_mode", None) or "", "")
        objects = Counter(r.object_name for recs in parts.values() for r in recs)
        head = f"defectfm data: {type(reader).__name__} at {reader.root} ({reader.layout}{how}); objects: {_names(objects)}"
        unlabelled = any(r.is_anomalous is None for recs in parts.values() for r in recs)
        header = ["split", "images", "normal", "defective", *(["unlabelled"] if unlabelled else []), "masks",
                  "classes"]
        rows = []
        for name, recs in parts.items():
            row = [name, len(recs), sum(r.is_anomalous is False for r in recs),
                   sum(r.is_anomalous is True for r in recs)]
            if unlabelled:
                row.append(sum(r.is_anomalous is None for r in recs))
            row += [sum(r.mask_path is not None for r in recs), _names(Counter(r.defect_type for r in recs))]
            rows.append([str(v) for v in row])
        widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
        lines = [head] + ["  ".join(c.rjust(w) if 0 < i < len(header) - 1 else c.ljust(w)
                                    for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
                          for r in (header, *rows)]
        if not predict:
            lines.append(f"vocabulary ({self.num_classes}): {', '.join(self.vocabulary)}")
        return "\n".join(lines)

    def _make_splits(self) -> dict[str, list[SampleRecord]]:
        records = self.reader.records()
        group = record_groups(records, self.group_key, self.group_pattern)
        native = {s: [r for r in records if r.split == s] for s in SPLITS}
        unknown = sorted({r.split for r in records if r.split is not None and r.split not in SPLITS})
        if unknown:
            raise DataError(f"{self.reader.root}: unknown split names {unknown}; expected {SPLITS}")
        if self.split == "random" or not any(native.values()):
            train, val, test = stratified_split(records, self.split_ratios, self.seed, group)
        else:
            train, val, test = native["train"], native["val"], native["test"]
            if not val:
                source = train if self.val_from == "train" else test
                rest, val = stratified_split(source, (1 - self.val_fraction, self.val_fraction), self.seed, group)
                train, test = (rest, test) if self.val_from == "train" else (train, rest)
        if self.train_filter == "normal":
            train = [r for r in train if r.is_anomalous is False]
        if self.few_shot is not None:
            train = few_shot(train, self.few_shot, self.seed, self.few_shot_per)
        for name, part in (("train", train), ("test", test)):
            if not part:
                raise DataError(f"{self.reader.root}: the {name} split is empty after splitting/filtering")
        return {"train": train, "val": val, "test": test}

    def sample_ids(self, records: list[SampleRecord]) -> list[int]:
        """The :attr:`~common.data.types.DefectBatch.sample_id` of each record: its position among the reader's
        images in path order (the same in every split, loader and tile of this DataModule)."""
        if self._ids is None:
            paths = sorted({str(r.image_path) for r in self.reader.records()})
            self._ids = {p: i for i, p in enumerate(paths)}
        return [self._ids.get(str(r.image_path), -1) for r in records]

    # ----------------------------------------------------------------- datasets and loaders
    def _dataset(self, records: list[SampleRecord], train: bool) -> DefectDataset:
        transform = build_transform(
            self.image_size,
            self.augment if train else "none",
            self.extra_train_transforms if train else None,
            resize=self.resize,
        )
        tiles = (self.tile_sampler if train else self.tile_spec()) if self.resize == "tile" else None
        return DefectDataset(records, self.vocabulary, self.object_names, transform, drop_masks=train and self.weak_labels,
                             template_captions=self.captions == "templated", sample_ids=self.sample_ids(records),
                             resize=self.resize, image_size=self.image_size, tiles=tiles)

    def dataset(self, stage: str) -> DefectDataset:
        """The dataset of ``stage`` (``"train"``, ``"val"``, ``"test"`` or ``"predict"``)."""
        if stage == "predict":
            if self.predict_reader is None:
                dataset = self._dataset(self.split_records()["test"], train=False)
            else:
                # names from the images predicted, not from the training reader: its folder may be gone by now
                recs = self.predict_reader.records()
                names = [NORMAL, *sorted({r.defect_type for r in recs} - {NORMAL})]
                objects = sorted({r.object_name for r in recs})
                dataset = DefectDataset(recs, names, objects, build_transform(self.image_size, "none", resize=self.resize),
                                        resize=self.resize, image_size=self.image_size, tiles=self.tile_spec())
            dataset.on_error = "mark"  # one unreadable file never stops a prediction run (see the class doc)
            return dataset
        return self._dataset(self.split_records()[stage], train=stage == "train")

    def _loader(self, stage: str, shuffle: bool, batch_size: int, dataset: DefectDataset | None = None,
                sampler: Any = None) -> DataLoader:
        if stage != "train" and self.resize == "tile" and sampler is None and dataset is None:
            batch_size = 1  # whole images of different sizes; their tiles run in batches of eval_batch_size
        return DataLoader(
            dataset if dataset is not None else self.dataset(stage),
            batch_size=batch_size,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed) if shuffle and sampler is None else None,
        )

    def train_dataloader(self) -> DataLoader:
        """Seeded batches (:class:`~common.data.sampling.SeededSampler`: order, augmentation and tiles follow the
        seed and the epoch, not the workers); a run resumed from a mid-epoch checkpoint skips what it trained on."""
        dataset = self.dataset("train")
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = SeededSampler(dataset, self.seed, shuffle=True, rank=rank, world=world)
        epoch = self._epoch()
        sampler.set_epoch(epoch)
        if self._resume is not None and self._resume["epoch"] == epoch and self._resume["batches"]:
            sampler.skip_once(self._resume["batches"] * self.batch_size)
        self._resume = None
        return self._loader("train", True, self.batch_size, dataset, sampler)

    def reference_dataloader(self, max_images: int | None = None) -> DataLoader:
        """The normal training images without augmentation, in a fixed order, at the evaluation batch size: what
        a reference memory is built from (e.g. CLIP-MDC's normal memory). Not sharded across DDP ranks. In
        ``tile`` mode every tile of those images (at the working scale) is an item.

        Args:
            max_images: Serve at most this many, evenly spread over the list (e.g. for a quick debug run).

        Records labelled defective are left out; unlabelled ones are served (their label comes from their mask,
        if any, so consumers still filter by ``label``).
        """
        recs = [r for r in self.split_records()["train"] if r.is_anomalous is not True]
        if max_images is not None and len(recs) > max_images:
            recs = [recs[i * len(recs) // max_images] for i in range(max_images)]
        dataset = self._dataset(recs, False)
        if self.resize == "tile":
            dataset = dataset.grid_tiles()
        return self._loader("train", False, self.eval_batch_size, dataset)

    def val_dataloader(self) -> DataLoader | list:
        if not self.split_records()["val"]:
            return []
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", False, self.eval_batch_size)

def _names(counts: Counter, limit: int = 5) -> str:
    """``"good 80, scratch 20, ... (+3 more)"``: the most frequent names first."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k} {v}" for k, v in items[:limit])
    return text + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")

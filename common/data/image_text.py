"""Image-text data for text-to-image training: one batch type, a map-style dataset over manifests, and the
DataModule serving manifests or WebDataset-format tar shards, as pixels or as precomputed latents.

Two modes, same :class:`ImageTextBatch`:

* ``"pixels"``: ``image`` ``(B, 3, S, S)`` in [0, 1] (resized to ``image_size``, 512 by default) and ``caption``;
  the model encodes them with its frozen VAE / text / image encoders on the fly.
* ``"latents"``: shards written by ``diffdefect.stage1.precompute`` hold the VAE posterior moments, the text embedding
  (and optionally its token states) and the CLIP image embedding of every sample; no pixels are decoded and no
  encoder runs during training (on-the-fly encoding costs about 1.4x, MosaicML).

Exact resume: the training loader is seeded per epoch (``DistributedSampler`` with ``seed``, or the shard
order/shuffle seeds) and the DataModule saves how many batches of the current epoch were consumed; after a
resume the first epoch skips them (map-style: at the sampler, before any file is read; shards: before
decoding; :mod:`common.data.resume`).

Why in ``common`` (though stage 1 is its only user today): image-text pairs are data, read by the same readers
(:class:`~common.data.readers.ManifestReader`) and written by any captioning tool; nothing here knows a model,
and the frozen encoders that turn a batch into latents live with the model that names them.
"""

from __future__ import annotations

import functools
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from common.data.errors import DataError
from common.data.io import read_image
from common.data.readers.manifest import ManifestReader
from common.data.resume import ResumableDistributedSampler, ResumePoint
from common.data.types import SampleRecord, move_tensor_fields

log = logging.getLogger(__name__)
MODES = ("pixels", "latents")

# sample keys inside shards (WebDataset: one tar member per key and field, "<key>.<field>")
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
FIELD_CAPTION = "txt"
FIELD_META = "json"
FIELD_MOMENTS = "latent.npy"
FIELD_TEXT = "text.npy"
FIELD_TOKENS = "tokens.npy"
FIELD_TOKEN_MASK = "tokmask.npy"
FIELD_IMAGE_EMB = "imgemb.npy"


@dataclass
class ImageTextBatch:
    """A batch of image-text pairs (pixels, or precomputed encodings, or both).

    Attributes:
        key: Sample keys, length B.
        caption: Captions (``None`` where absent), length B.
        has_text: ``(B,)`` bool, the sample has a caption.
        image: ``(B, 3, H, W)`` float32 in [0, 1], or ``None`` in latents mode.
        latent_moments: ``(B, 2C, h, w)`` VAE posterior mean and log-variance (unscaled), or ``None``.
        text_embedding: ``(B, D)`` pooled text embedding (zeros where ``has_text`` is False), or ``None``.
        text_tokens: ``(B, L, D)`` text token states, or ``None``.
        text_mask: ``(B, L)`` bool, real tokens, or ``None``.
        image_embedding: ``(B, D_v)`` frozen CLIP image embedding, or ``None``.
        object_name: Object names (``""`` when unknown), length B.
        defect_type: Defect-type names (``""`` when unknown), length B.
    """

    key: list[str]
    caption: list[str | None]
    has_text: torch.Tensor
    image: torch.Tensor | None = None
    latent_moments: torch.Tensor | None = None
    text_embedding: torch.Tensor | None = None
    text_tokens: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    image_embedding: torch.Tensor | None = None
    object_name: list[str] | None = None
    defect_type: list[str] | None = None

    def __len__(self) -> int:
        return len(self.key)

    def to(self, device: torch.device | str, **kwargs: Any) -> ImageTextBatch:
        """Moves every tensor field to ``device``."""
        return move_tensor_fields(self, device, **kwargs)


# ----------------------------------------------------------------------------- decoding and collation
def resize_image(image: np.ndarray, size: int) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, size, size)`` float32 in [0, 1] (bicubic with antialiasing, clamped)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bicubic", align_corners=False, antialias=True)[0]
    return x.clamp_(0.0, 1.0)


def _npy(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False).copy())


def decode_sample(raw: dict[str, bytes], mode: str, image_size: int) -> dict[str, Any]:
    """Decodes one raw WebDataset sample (``{"__key__": ..., "<field>": bytes}``) into an item dict."""
    key = raw["__key__"]
    meta = json.loads(raw[FIELD_META]) if FIELD_META in raw else {}
    caption = raw[FIELD_CAPTION].decode("utf-8") if FIELD_CAPTION in raw else meta.get("caption")
    item: dict[str, Any] = {
        "key": key if isinstance(key, str) else key.decode(),
        "caption": caption or None,
        "object_name": meta.get("object", ""),
        "defect_type": meta.get("defect_type", ""),
    }
    if mode == "pixels":
        ext = next((e for e in IMAGE_EXTS if e in raw), None)
        if ext is None:
            raise DataError(f"shard sample {item['key']!r} has no image ({'/'.join(IMAGE_EXTS)}); fields: {sorted(raw)}")
        image = np.asarray(Image.open(io.BytesIO(raw[ext])).convert("RGB"))
        item["image"] = resize_image(image, image_size)
    else:
        if FIELD_MOMENTS not in raw:
            raise DataError(f"shard sample {item['key']!r} has no precomputed latents ({FIELD_MOMENTS}); "
                            "write latent shards with `python -m diffdefect.stage1.precompute` or use mode='pixels'")
        item["latent_moments"] = _npy(raw[FIELD_MOMENTS]).float()
        for field, name in ((FIELD_TEXT, "text_embedding"), (FIELD_IMAGE_EMB, "image_embedding"),
                            (FIELD_TOKENS, "text_tokens"), (FIELD_TOKEN_MASK, "text_mask")):
            if field in raw:
                t = _npy(raw[field])
                item[name] = t.bool() if name == "text_mask" else t.float()
        item["has_text"] = bool(meta.get("has_text", item["caption"] is not None))
    return item


def collate_image_text(items: list[dict[str, Any]]) -> ImageTextBatch:
    """Stacks item dicts into one :class:`ImageTextBatch`."""

    def stack(name: str) -> torch.Tensor | None:
        if name not in items[0]:
            return None
        return torch.stack([it[name] for it in items])

    has_text = torch.tensor([bool(it.get("has_text", it["caption"] is not None)) for it in items])
    return ImageTextBatch(
        key=[it["key"] for it in items],
        caption=[it["caption"] for it in items],
        has_text=has_text,
        image=stack("image"),
        latent_moments=stack("latent_moments"),
        text_embedding=stack("text_embedding"),
        text_tokens=stack("text_tokens"),
        text_mask=stack("text_mask"),
        image_embedding=stack("image_embedding"),
        object_name=[it.get("object_name", "") for it in items],
        defect_type=[it.get("defect_type", "") for it in items],
    )


class ManifestImageText(Dataset):
    """Map-style image-text dataset over reader records (a JSONL manifest or any labelled reader).

    Items are dicts with ``key``, ``caption``, ``image`` ``(3, S, S)``, ``object_name``, ``defect_type``.

    Args:
        records: The records.
        image_size: Square output side (512 by default, as the paper).
    """

    def __init__(self, records: Sequence[SampleRecord], image_size: int = 512) -> None:
        self.records = list(records)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        return {
            "key": str(rec.image_path),
            "caption": rec.caption or None,
            "image": resize_image(read_image(rec.image_path), self.image_size),
            "object_name": rec.object_name,
            "defect_type": rec.defect_type,
        }


# ----------------------------------------------------------------------------- the DataModule
class ImageTextDataModule(ResumePoint, L.LightningDataModule):
    """Image-text pairs from a JSONL manifest or WebDataset-format tar shards.

    Args:
        source: A ``.jsonl`` manifest (see :class:`~common.data.readers.manifest.ManifestReader`), or shards:
            a folder of ``*.tar``, a brace pattern ``data/shard-{000000..000099}.tar``, or a list of tar paths.
        mode: ``"pixels"`` or ``"latents"`` (shards written by ``diffdefect.stage1.precompute``).
        image_size: Image side after resizing (pixels mode; the paper's 512).
        batch_size: Per-device batch size (global batch = batch_size x devices x nodes x accumulation).
        eval_batch_size: Validation batch size (defaults to ``batch_size``).
        num_workers: DataLoader workers per device.
        shuffle: Shuffle training samples (per epoch, seeded).
        seed: Seed of the order, the shuffle buffer and the validation split.
        val_source: Held-out data (same kinds as ``source``); ``None`` carves ``val_fraction`` out of a manifest
            source (shards: no validation unless ``val_source`` is given).
        val_fraction: Fraction of a manifest held out for validation (0 disables validation).
        shuffle_buffer: Shard samples: size of the in-worker shuffle buffer.
        equalize: Shard samples: give every (rank, worker) the same number of samples per epoch (needs the
            ``index.json`` the shard writer leaves), dropping the few surplus samples; keeps DDP ranks in step.
    """

    def __init__(
        self,
        source: str | list[str],
        mode: str = "pixels",
        image_size: int = 512,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        shuffle: bool = True,
        seed: int = 0,
        val_source: str | list[str] | None = None,
        val_fraction: float = 0.0,
        shuffle_buffer: int = 1000,
        equalize: bool = False,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.source = source
        self.mode = mode
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.seed = seed
        self.val_source = val_source
        self.val_fraction = val_fraction
        self.shuffle_buffer = shuffle_buffer
        self.equalize = equalize
        self._resume: dict[str, int] | None = None

    # ------------------------------------------------------------------ sources
    @staticmethod
    def is_manifest(source: str | list[str]) -> bool:
        return isinstance(source, str) and source.endswith(".jsonl")

    def _manifest_records(self, source: str) -> list[SampleRecord]:
        return ManifestReader(source).records()

    def _split_manifest(self) -> tuple[list[SampleRecord], list[SampleRecord]]:
        records = self._manifest_records(self.source)  # sorted by path: deterministic
        if self.val_source is not None or self.val_fraction <= 0:
            return records, []
        order = np.random.default_rng(self.seed).permutation(len(records))
        n_val = max(1, int(round(self.val_fraction * len(records))))
        val = sorted(order[:n_val].tolist())
        train = sorted(order[n_val:].tolist())
        return [records[i] for i in train], [records[i] for i in val]

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _shards(self, source: str | list[str], train: bool) -> Any:
        from common.data.shards import ShardDataset

        rank, world = self._world()
        return ShardDataset(
            source,
            decode=functools.partial(decode_sample, mode=self.mode, image_size=self.image_size),
            rank=rank,
            world_size=world,
            shuffle=train and self.shuffle,
            shuffle_buffer=self.shuffle_buffer if train and self.shuffle else 0,
            seed=self.seed,
            equalize=train and self.equalize,
        )

    def _map_dataset(self, records: list[SampleRecord]) -> Dataset:
        if self.mode != "pixels":
            raise ValueError("mode='latents' reads shards written by diffdefect.stage1.precompute, not a manifest")
        return ManifestImageText(records, self.image_size)

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: Any, batch_size: int, sampler: Any = None) -> DataLoader:
        from common.data.resume import EpochDataLoader
        from common.data.shards import ShardDataset

        kwargs = {
            "batch_size": batch_size,
            "num_workers": self.num_workers,
            "collate_fn": collate_image_text,
            "pin_memory": torch.cuda.is_available(),
            "persistent_workers": False,  # shard datasets take the epoch when workers start
            "drop_last": False,
        }
        if isinstance(dataset, ShardDataset):
            return EpochDataLoader(dataset, epoch_fn=self._epoch, **kwargs)
        return DataLoader(dataset, sampler=sampler, **kwargs)

    def train_dataloader(self) -> DataLoader:
        epoch = self._epoch()
        skip = 0
        if self._resume is not None and self._resume["epoch"] == epoch:
            skip = self._resume["batches"]
        self._resume = None
        if self.is_manifest(self.source):
            rank, world = self._world()
            train, _ = self._split_manifest()
            dataset = self._map_dataset(train)
            sampler = ResumableDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=self.shuffle,
                                                  seed=self.seed, drop_last=False)
            sampler.set_epoch(epoch)
            if skip and skip * self.batch_size < len(sampler):
                sampler.skip_once(skip * self.batch_size)
                log.info("resuming epoch %d after %d batches", epoch, skip)
            return self._loader(dataset, self.batch_size, sampler)
        loader = self._loader(self._shards(self.source, train=True), self.batch_size)
        if skip:
            loader.skip_once(skip)
            log.info("resuming epoch %d after %d batches", epoch, skip)
        return loader

    def val_dataloader(self) -> DataLoader | list:
        if self.val_source is not None:
            if self.is_manifest(self.val_source):
                return self._loader(self._map_dataset(self._manifest_records(self.val_source)), self.eval_batch_size)
            return self._loader(self._shards(self.val_source, train=False), self.eval_batch_size)
        if self.is_manifest(self.source) and self.val_fraction > 0:
            rank, world = self._world()
            dataset = self._map_dataset(self._split_manifest()[1])
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
            return self._loader(dataset, self.eval_batch_size, sampler)
        return []

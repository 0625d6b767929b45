"""Typed records, samples and batches shared by every reader, the DataModule and both model families.

Data flows one way: a reader lists :class:`SampleRecord` s (paths and labels, cheap), the dataset loads one
:class:`Sample` (pixels) per record, transforms turn it into tensors, and the collate function stacks them
into one :class:`DefectBatch`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

NORMAL = "good"
"""Defect-type name of a defect-free sample (MVTec AD's folder name for it)."""

MASK_KINDS = ("binary", "class_id", "boxes")
"""How a record's mask is stored (see :attr:`SampleRecord.mask_kind`)."""
MASK_QUALITIES = ("pixel", "box")
"""How exact a mask is: ``"pixel"`` (drawn around the defect) or ``"box"`` (filled bounding boxes, coarse)."""


@dataclass(frozen=True)
class SampleRecord:
    """One entry of a dataset listing: where the pixels are and what is known about them.

    Attributes:
        image_path: The image file.
        object_name: The product/object the image shows (e.g. ``"bottle"``, ``"magnetic_tile"``).
        defect_type: Defect-type name, :data:`NORMAL` for a defect-free sample.
        is_anomalous: Whether the sample shows a defect. ``None`` when unknown (unlabelled data).
        mask_path: Pixel mask file, or ``None`` when the sample has no mask (normal samples, or weak labels).
        mask_kind: How to read the mask: ``"binary"`` (``mask_path`` pixels > ``mask_threshold`` are defect),
            ``"class_id"`` (``mask_path`` pixel values are class ids, see ``class_ids``) or ``"boxes"`` (``boxes``,
            filled; ``mask_path`` is the annotation file they came from, for reference).
        mask_threshold: Threshold for binary masks stored with JPEG-like noise.
        class_names: For ``"class_id"`` and ``"boxes"`` masks, the names of classes 1..K.
        caption: Free-text description, when the dataset has one.
        split: ``"train"``, ``"val"``, ``"test"`` or ``None`` when the dataset defines no split.
        extra: Anything else a reader knows (VisA's original label, manifest labels...).
        class_ids: For ``"class_id"`` masks, the pixel value of each of ``class_names`` when they are not simply
            1..K (e.g. ``(1, 3)``: value 3 is the second class); ``()`` means 1..K.
        ignore_ids: For ``"class_id"`` masks, pixel values that are background, not a defect (e.g. structure
            such as a solar cell's busbars).
        boxes: For ``"boxes"`` masks, ``(x1, y1, x2, y2, k)`` per box in pixels (``x1 <= x < x2``,
            ``y1 <= y < y2``), ``k`` in 1..K naming ``class_names[k - 1]``.
        mask_quality: ``"pixel"`` or ``"box"`` (coarse: filled bounding boxes), see :data:`MASK_QUALITIES`.
    """

    image_path: Path
    object_name: str
    defect_type: str
    is_anomalous: bool | None
    mask_path: Path | None = None
    mask_kind: str = "binary"
    mask_threshold: int = 127
    class_names: tuple[str, ...] = ()
    caption: str | None = None
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    class_ids: tuple[int, ...] = ()
    ignore_ids: tuple[int, ...] = ()
    boxes: tuple[tuple[int, int, int, int, int], ...] = ()
    mask_quality: str = "pixel"


@dataclass
class Sample:
    """One loaded sample.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB image.
        mask: ``(H, W)`` uint8 binary defect mask {0, 1}, or ``None`` when the dataset has no mask for it.
            Normal samples with a mask-bearing dataset get an all-zero mask.
        class_mask: ``(H, W)`` int64 map of defect-type ids (0 = background, i = ``vocabulary[i]``) when the
            dataset gives per-pixel classes; ``None`` otherwise (the DataModule then derives it from ``mask``
            and ``defect_type``).
        is_anomalous: Image label.
        defect_type: Defect-type name (:data:`NORMAL` for defect-free); for multi-class images the class
            covering the largest area.
        object_name: Object/product name.
        caption: Text description or ``None``.
        path: The image file, as a string.
        mask_quality: ``"pixel"``, or ``"box"`` when ``mask`` is filled bounding boxes (coarse).
    """

    image: np.ndarray
    mask: np.ndarray | None
    is_anomalous: bool
    defect_type: str
    object_name: str
    caption: str | None
    path: str
    class_mask: np.ndarray | None = None
    mask_quality: str = "pixel"


@dataclass
class DefectBatch:
    """A collated batch, the one batch type every model consumes.

    Attributes:
        image: ``(B, 3, H, W)`` float32, normalised as configured.
        mask: ``(B, 1, H, W)`` float32 binary defect mask (zeros where ``has_mask`` is False).
        has_mask: ``(B,)`` bool, whether the sample came with a pixel mask.
        label: ``(B,)`` int64 image label, 1 = anomalous.
        defect_type_id: ``(B,)`` int64 index into the DataModule vocabulary (0 = :data:`NORMAL`).
        class_mask: ``(B, H, W)`` int64 per-pixel defect-type ids (0 = background).
        object_id: ``(B,)`` int64 index into the DataModule's object names.
        defect_type: Defect-type names, length B.
        object_name: Object names, length B.
        caption: Captions (``None`` where absent), length B.
        path: Image paths, length B.
        error: Per image ``None``, or why the file could not be read (a one-line :class:`DataError` message).
            Only predict datasets mark unreadable files this way (their pixels are zeros); training, validation
            and test stop at the first bad file. ``None`` for the whole field: no image failed.
        sample_id: ``(B,)`` int64 id of the source image, stable for a DataModule whatever the split, loader or
            tile (the DataModule numbers its reader's images in path order), e.g. the owner of a memory entry.
            ``None`` in hand-made batches.
        orig_size: ``(B, 2)`` int64 ``(H, W)`` of the image file (``None``: the batch's own size).
        content_box: ``(B, 4)`` int64 ``(x0, y0, x1, y1)``, the pixels of the batch image that show the image
            (letterbox: the rest is padding, never scored); ``None``: every pixel.
        tiling: In ``tile`` mode, how evaluation images (whole, at the working scale) are cut into tiles of the
            model input size (:class:`~common.data.tiling.TileSpec`); ``None`` otherwise.
    """

    image: torch.Tensor
    mask: torch.Tensor
    has_mask: torch.Tensor
    label: torch.Tensor
    defect_type_id: torch.Tensor
    class_mask: torch.Tensor
    object_id: torch.Tensor
    defect_type: list[str]
    object_name: list[str]
    caption: list[str | None]
    path: list[str]
    error: list[str | None] | None = None
    sample_id: torch.Tensor | None = None
    orig_size: torch.Tensor | None = None
    content_box: torch.Tensor | None = None
    tiling: Any = None

    def __len__(self) -> int:
        return self.image.shape[0]

    @property
    def failed(self) -> list[int]:
        """Indices of the images that could not be read (see :attr:`error`)."""
        return [i for i, e in enumerate(self.error or []) if e is not None]

    def select(self, indices: list[int]) -> DefectBatch:
        """The sub-batch of ``indices`` (every field, tensors and lists, in that order)."""
        index = torch.tensor(indices, dtype=torch.long)
        values: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                values[f.name] = v[index.to(v.device)]
            elif isinstance(v, list):
                values[f.name] = [v[i] for i in indices]
            else:
                values[f.name] = v
        return DefectBatch(**values)

    def to(self, device: torch.device | str, **kwargs: Any) -> DefectBatch:
        """Moves every tensor field to ``device`` (Lightning calls this through ``transfer_batch_to_device``)."""
        return move_tensor_fields(self, device, **kwargs)


def move_tensor_fields(batch: Any, device: torch.device | str, **kwargs: Any) -> Any:
    """A copy of the dataclass ``batch`` with every tensor field moved by ``Tensor.to(device, **kwargs)``."""
    values = {}
    for f in fields(batch):
        v = getattr(batch, f.name)
        values[f.name] = v.to(device, **kwargs) if isinstance(v, torch.Tensor) else v
    return type(batch)(**values)

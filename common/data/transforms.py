"""Joint image + mask transforms (albumentations), so masks stay aligned with the pixels they label."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2

from common.data.tiling import check_resize

AUGMENT_PRESETS = ("none", "light", "strong")


def _size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def build_transform(
    image_size: int | Sequence[int],
    augment: str = "none",
    extra: Sequence[A.BasicTransform] | None = None,
    resize: str = "stretch",
) -> A.Compose:
    """Builds the joint transform applied to ``image``, ``mask`` and ``class_mask``.

    Images are resized with area/linear interpolation; masks always with nearest neighbour, so they stay binary
    and class ids stay ids.

    Args:
        image_size: Output size, ``int`` for square or ``(H, W)``.
        augment: ``"none"``, ``"light"`` (flips, small brightness/contrast) or ``"strong"`` (adds 90-degree
            rotations, small affine, colour jitter and blur).
        extra: Further albumentations transforms appended after the preset (from YAML via ``class_path``).
        resize: ``"stretch"`` resizes to ``image_size`` here; ``"letterbox"`` and ``"tile"`` do their geometry in
            the dataset (:mod:`common.data.tiling`) and this transform only augments.

    Returns:
        An ``albumentations.Compose`` taking ``image=``, ``mask=`` and ``class_mask=``.
    """
    if augment not in AUGMENT_PRESETS:
        raise ValueError(f"augment must be one of {AUGMENT_PRESETS}, got {augment!r}")
    h, w = _size(image_size)
    ops: list[A.BasicTransform] = []
    if check_resize(resize) == "stretch":
        ops.append(A.Resize(h, w, interpolation=cv2.INTER_AREA, mask_interpolation=cv2.INTER_NEAREST))
    if augment in ("light", "strong"):
        ops += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomBrightnessContrast(0.1, 0.1, p=0.5)]
    if augment == "strong":
        ops += [
            A.RandomRotate90(p=0.5),
            A.Affine(scale=(0.9, 1.1), rotate=(-10, 10), translate_percent=(-0.05, 0.05), p=0.5,
                     interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST),
            A.ColorJitter(0.1, 0.1, 0.1, 0.02, p=0.3),
            A.GaussianBlur(blur_limit=(3, 3), p=0.1),
        ]
    ops += list(extra or [])
    return A.Compose(ops, additional_targets={"class_mask": "mask"})

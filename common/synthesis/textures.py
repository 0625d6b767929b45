"""Anomaly-source textures from an image folder (DRAEM uses DTD), decoded once and cached as tensors.

anomalib's generator decodes and resizes a texture file for every anomalous sample; here each file is read at
most once per output size and kept as a ``uint8`` tensor, so a dataloader worker touches the disk only during
its first pass over the textures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class TextureBank:
    """Lazily listed, lazily decoded folder of texture images.

    The folder is scanned recursively on first use (not in the constructor, so building a config is cheap
    and a missing folder fails where it is needed, with its name in the error).

    Args:
        root: Folder with texture images (any of :data:`IMAGE_SUFFIXES`, searched recursively).
        max_cached: Most decoded ``(texture, size, channels)`` entries kept; ``None`` keeps all (DTD at
            256x256 RGB is about 1.1 GB of ``uint8``; set a bound for big folders and many workers).
    """

    def __init__(self, root: str | Path, max_cached: int | None = None) -> None:
        self.root = Path(root)
        self.max_cached = max_cached
        self._files: list[Path] | None = None
        self._cache: dict[tuple[int, int, int, int], torch.Tensor] = {}

    @property
    def files(self) -> list[Path]:
        """The texture files, sorted (listed once).

        Raises:
            FileNotFoundError: The folder does not exist or holds no image files.
        """
        if self._files is None:
            if not self.root.is_dir():
                raise FileNotFoundError(
                    f"texture folder {str(self.root)!r} does not exist or is not a folder"
                )
            files = sorted(
                p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                raise FileNotFoundError(
                    f"texture folder {str(self.root)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})"
                )
            self._files = files
        return self._files

    def __len__(self) -> int:
        return len(self.files)

    def _decode(self, index: int, height: int, width: int, channels: int) -> torch.Tensor:
        path = self.files[index]
        try:
            with Image.open(path) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                if im.size != (width, height):
                    im = im.resize((width, height), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise OSError(
                f"cannot read texture {str(path)!r} in texture folder {str(self.root)!r}: {err}"
            ) from err
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if channels not in (1, 3):
            arr = np.repeat(arr[:, :, :1], channels, axis=2)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def get(self, index: int, height: int, width: int, channels: int = 3) -> torch.Tensor:
        """One texture resized to ``height x width``.

        Args:
            index: Texture index in ``[0, len(self))``.
            height: Output height H.
            width: Output width W.
            channels: 1 (greyscale), 3 (RGB) or any other count (greyscale repeated).

        Returns:
            ``(C, H, W)`` uint8 tensor (cached; do not modify it in place).
        """
        key = (index, height, width, channels)
        tex = self._cache.get(key)
        if tex is None:
            tex = self._decode(index, height, width, channels)
            if self.max_cached is None or len(self._cache) < self.max_cached:
                self._cache[key] = tex
        return tex

    def stack(self, indices: Sequence[int], height: int, width: int, channels: int = 3) -> torch.Tensor:
        """Several textures as one batch.

        Args:
            indices: Texture indices, length B.
            height: Output height H.
            width: Output width W.
            channels: Channels C.

        Returns:
            ``(B, C, H, W)`` uint8 tensor.
        """
        return torch.stack([self.get(i, height, width, channels) for i in indices])

    def preload(self, height: int, width: int, channels: int = 3) -> None:
        """Decodes every texture now (e.g. before forking dataloader workers, to share the pages)."""
        for i in range(len(self)):
            self.get(i, height, width, channels)

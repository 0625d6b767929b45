"""``FeatureCache``: remembers the frozen extractor's features per image, so later epochs skip the U-Net.

The extractors are deterministic (the diffusion one uses one fixed, seeded noise map), so an image's features
are a function of its pixels: the key is a SHA-1 of the image tensor's bytes plus the extractor's
:meth:`~common.encoders.image.ImageEncoder.cache_key` (checkpoint, timestep, seed, levels...). Keying on the
content rather than the file path keeps augmentation correct: a flipped image is another key (with flips, an
image has at most four variants, all cached after a few epochs).

Entries live in memory on the CPU (optionally as float16 to halve the memory), and optionally on disk
(``directory``: one ``.pt`` file per entry, reused by later runs with the same extractor settings).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch


class FeatureCache:
    """Per-image feature cache (not an ``nn.Module``: nothing in it is a parameter or goes in checkpoints).

    Args:
        max_items: Entries kept in memory (least recently used dropped first); ``None``: no limit.
        dtype: Storage dtype (``"float32"`` exact, ``"float16"`` half the memory).
        directory: Also store entries as files there, and look there on a memory miss.
    """

    def __init__(self, max_items: int | None = None, dtype: str = "float32",
                 directory: str | os.PathLike | None = None) -> None:
        self.max_items = max_items
        self.dtype = getattr(torch, dtype)
        self.directory = None if directory is None else Path(directory)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._store: OrderedDict[str, list[torch.Tensor]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    @staticmethod
    def image_key(image: torch.Tensor, extractor_key: str) -> str:
        """SHA-1 of one ``(3, H, W)`` image's float32 bytes and the extractor key."""
        h = hashlib.sha1(extractor_key.encode())
        h.update(str(tuple(image.shape)).encode())
        h.update(image.detach().float().contiguous().cpu().numpy().tobytes())
        return h.hexdigest()

    def _get(self, key: str) -> list[torch.Tensor] | None:
        if key in self._store:
            self._store.move_to_end(key)
            return self._store[key]
        if self.directory is not None and (self.directory / f"{key}.pt").is_file():
            feats = torch.load(self.directory / f"{key}.pt", weights_only=True)
            self._put(key, feats, write=False)
            return feats
        return None

    def _put(self, key: str, feats: list[torch.Tensor], write: bool = True) -> None:
        self._store[key] = feats
        if self.max_items is not None:
            while len(self._store) > self.max_items:
                self._store.popitem(last=False)
        if write and self.directory is not None:
            torch.save(feats, self.directory / f"{key}.pt")

    def get_or_compute(self, image: torch.Tensor, extract: Callable[[torch.Tensor], list[torch.Tensor]],
                       extractor_key: str) -> list[torch.Tensor]:
        """Features of a batch, computing only the images not cached yet (in one call to ``extract``).

        Args:
            image: ``(B, 3, H, W)``.
            extract: The extractor (``(b, 3, H, W)`` -> ``[(b, C_l, h_l, w_l)]``).
            extractor_key: The extractor's settings key.

        Returns:
            ``[(B, C_l, h_l, w_l)]`` float32 on ``image``'s device.
        """
        keys = [self.image_key(im, extractor_key) for im in image]
        found = [self._get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = extract(image[missing])  # [(m, C_l, h_l, w_l)]
            for j, i in enumerate(missing):
                feats = [f[j].detach().to("cpu", self.dtype).clone() for f in fresh]
                self._put(keys[i], feats)
                found[i] = feats
        levels = len(found[0])
        return [torch.stack([f[lv] for f in found]).to(image.device, torch.float32) for lv in range(levels)]

    def clear(self) -> None:
        """Empties the memory part (files stay)."""
        self._store.clear()

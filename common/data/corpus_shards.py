"""WebDataset-format shards of a corpus (``defectfm corpus --shards``): one folder of shards per split.

Each sample is one manifest line: the image file's own bytes (``png``, ``jpg``...; other formats re-encoded as
PNG), ``json`` (the manifest line), ``txt`` (the caption) and, for images with a mask, ``mask.png``: the decoded
mask as uint8 class indices (0 = background, k = ``class_names[k - 1]`` of the json, or 1 = ``defect_type`` for
binary masks). Samples are in a seeded shuffled order (shards mix domains), written by
:class:`~common.data.shards.ShardWriter` (byte-identical for identical inputs).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from common.data.readers.manifest import ManifestReader
from common.data.shards import ShardWriter

SHARD_IMAGE_EXTS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpeg", ".webp": "webp"}


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_corpus_shards(entries: Sequence[dict[str, Any]], out: Path, seed: int = 0, shard_size: int = 1000,
                        progress: bool | None = None) -> dict[str, int]:
    """Writes ``out/shards/<split>/shard-*.tar`` for the manifest lines ``entries`` of ``out/manifest.jsonl``.

    Returns:
        Samples written per split.
    """
    from tqdm.auto import tqdm

    from common.data.corpus import MANIFEST, SPLITS, record_pixels

    # the lines read back as records (ManifestReader sorts them by image path): one way to decode masks
    by_path: dict[str, list] = {}
    for rec in ManifestReader(out / MANIFEST).records():
        by_path.setdefault(str(rec.image_path), []).append(rec)
    pairs = [(e, by_path[str(out / e["image"])].pop(0)) for e in entries]
    counts = {}
    for split in SPLITS:
        part = [p for p in pairs if p[0].get("split") == split]
        order = np.random.default_rng([seed, SPLITS.index(split)]).permutation(len(part))
        with ShardWriter(out / "shards" / split, maxcount=shard_size) as writer:
            for n, j in enumerate(tqdm(order, desc=f"shards {split}", unit="img",
                                       disable=None if progress is None else not progress)):
                entry, rec = part[j]
                ext = SHARD_IMAGE_EXTS.get(rec.image_path.suffix.lower())
                image = rec.image_path.read_bytes() if ext else _png(np.asarray(Image.open(rec.image_path).convert("RGB")))
                sample = {"__key__": f"{n:08d}", ext or "png": image, "json": entry, "txt": entry["caption"]}
                _, class_mask = record_pixels(rec)
                if class_mask is not None:
                    sample["mask.png"] = _png(class_mask.astype(np.uint8))
                writer.write(sample)
        counts[split] = len(part)
    return counts

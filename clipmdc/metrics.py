"""The CLIP-MDC evaluation metrics of one stage (validation or test), all from :mod:`common.metrics`.

Keys (after the stage prefix, e.g. ``test/``): ``image_auroc``, ``image_ap``, ``image_f1max`` (image scores of
the images with a known label), ``pixel_auroc``, ``pixel_ap``, ``pixel_aupro`` (only images with a mask), and
``type_*`` (image defect type, only images whose type the model's vocabulary names). Lightning computes, logs and
resets the metric objects at the end of the epoch (``self.log_dict(metric_collection)``).

Resolution: pixel metrics are computed on the maps at the model's working resolution: ``image_size`` in
``stretch`` mode (masks resized with nearest neighbour), the image's pixels inside ``image_size`` in
``letterbox`` mode (the padding is cropped away before any metric sees it), the stitched map at native scale
times ``tile_scale`` in ``tile`` mode (native pixels by default).
"""

from __future__ import annotations

import torch
from torch import nn

from common.data.tiling import crop_content
from common.metrics import anomaly_metrics, defect_type_metrics


class CLIPMDCMetrics(nn.Module):
    """Image, pixel and defect-type metrics of one stage.

    Args:
        prefix: Key prefix, e.g. ``"val/"``.
        num_types: Vocabulary size ``K + 1`` (the type metrics follow the vocabulary: :meth:`set_vocabulary`).
        pixel: Compute pixel metrics.
        mode: ``"binned"`` or ``"exact"`` pixel metrics.
    """

    def __init__(self, prefix: str, num_types: int, pixel: bool = True, mode: str = "binned") -> None:
        super().__init__()
        self.prefix = prefix
        self.image = anomaly_metrics(pixel=False).clone(prefix=prefix)
        # apart from the image metrics: updated only on batches that have masks
        self.pixel = anomaly_metrics(mode=mode, image=False).clone(prefix=prefix) if pixel else None  # type: ignore[arg-type]
        self.set_vocabulary(num_types)

    def set_vocabulary(self, num_types: int) -> None:
        """Rebuilds the defect-type metrics for a vocabulary of ``num_types`` names."""
        device = next((b.device for b in self.image.buffers()), None)
        self.types = defect_type_metrics(num_types).clone(prefix=f"{self.prefix}type_")
        if device is not None:
            self.types.to(device)

    @torch.no_grad()
    def update_pixels(self, anomaly_prob: torch.Tensor, masks: torch.Tensor, content_box: torch.Tensor | None) -> None:
        """Adds ``(b, 1, H, W)`` maps and masks; with content boxes (letterbox) only each image's own pixels."""
        if self.pixel is None:
            return
        if content_box is None:
            self.pixel.update(anomaly_maps=anomaly_prob.float(), masks=masks)
            return
        for amap, mask, box in zip(anomaly_prob, masks, content_box, strict=True):
            self.pixel.update(anomaly_maps=crop_content(amap, box)[None].float(), masks=crop_content(mask, box)[None])

"""CLIP-MDC reports metrics that are undefined on the data as NaN, next to the ones that are measured."""

from __future__ import annotations

import math

from torch.utils.data import DataLoader

from clipmdc.module import CLIPMDCModule
from clipmdc.presets import tiny
from tests.clipmdc.helpers import make_batch
from tests.clipmdc.test_module import BatchData, _trainer


class NoMasks(BatchData):
    """Defective and normal images, but no pixel mask anywhere (image labels only): normal images come with
    known all-zero masks, defective ones without a mask, so no defect pixel exists."""

    def _loader(self) -> DataLoader:
        batches = []
        for i in range(2):
            b = make_batch(4, 32, seed=i)
            b.mask.zero_()
            b.class_mask.zero_()
            b.has_mask = b.label == 0
            batches.append(b)
        return DataLoader(batches, batch_size=None)

    train_dataloader = val_dataloader = test_dataloader = predict_dataloader = _loader


def test_pixel_metrics_without_masks_are_nan_not_half(tmp_path) -> None:
    (results,) = _trainer(tmp_path).test(CLIPMDCModule(tiny()), datamodule=NoMasks(), verbose=False)
    assert 0.0 <= results["test/image_auroc"] <= 1.0  # normal and defective images: measured
    for key in ("test/pixel_auroc", "test/pixel_ap", "test/pixel_aupro"):
        assert math.isnan(results[key]), key  # was 0.5 / 0.0 / 0.0
    (results,) = _trainer(tmp_path).test(CLIPMDCModule(tiny()), datamodule=OnlyNormal(), verbose=False)
    assert math.isnan(results["test/image_auroc"])  # no defective image: undefined


class OnlyNormal(NoMasks):
    def _loader(self) -> DataLoader:
        batches = [make_batch(4, 32, seed=i) for i in range(2)]
        for b in batches:
            b.label.zero_()
            b.defect_type_id.zero_()
            b.mask.zero_()
            b.class_mask.zero_()
        return DataLoader(batches, batch_size=None)

    test_dataloader = _loader



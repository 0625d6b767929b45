"""COCO box/mask mAP through pycocotools on hand-made instances with known values; mask helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from common.metrics import DetectionMAP, boxes_from_masks, instances_from_mask

H = W = 32


def rect_mask(x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    """``(H, W)`` bool mask of columns ``x0..x1-1`` and rows ``y0..y1-1``."""
    m = torch.zeros(H, W, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def item(
    masks: list[torch.Tensor],
    scores: list[float] | None = None,
    labels: list[int] | None = None,
    with_boxes: bool = True,
) -> dict[str, torch.Tensor]:
    m = torch.stack(masks) if masks else torch.zeros(0, H, W, dtype=torch.bool)
    out = {"masks": m, "labels": torch.tensor(labels or [0] * len(masks), dtype=torch.long)}
    if with_boxes:
        out["boxes"] = boxes_from_masks(m)
    if scores is not None:
        out["scores"] = torch.tensor(scores, dtype=torch.float32)
    return out


GT = [[rect_mask(2, 2, 12, 12), rect_mask(18, 4, 28, 14)], [rect_mask(5, 16, 15, 26)]]


def test_boxes_from_masks_matches_pycocotools():
    masks = torch.stack([rect_mask(2, 3, 9, 7), rect_mask(0, 0, 1, 1), torch.zeros(H, W, dtype=torch.bool)])
    masks[0, 10, 12] = True  # an isolated pixel extends the tight box
    boxes = boxes_from_masks(masks)
    for m, b in zip(masks[:2], boxes[:2], strict=True):
        rle = mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8)))
        x, y, w, h = mask_utils.toBbox(rle)
        torch.testing.assert_close(b, torch.tensor([x, y, x + w, y + h], dtype=torch.float32))
    torch.testing.assert_close(boxes[0], torch.tensor([2.0, 3.0, 13.0, 11.0]))
    torch.testing.assert_close(boxes[2], torch.zeros(4))


def test_instances_from_mask_uses_8_connectivity():
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[2:5, 2:5] = True
    mask[5, 5] = True  # touches the square diagonally: same instance
    mask[20:24, 10:12] = True
    score = torch.zeros(H, W)
    score[3, 3], score[21, 10] = 0.9, 0.4
    inst = instances_from_mask(mask, score, label=2)
    assert inst["masks"].shape == (2, H, W)
    assert sorted(inst["masks"].flatten(1).sum(1).tolist()) == [8, 10]
    assert sorted(inst["scores"].tolist()) == pytest.approx([0.4, 0.9])
    assert inst["labels"].tolist() == [2, 2]
    assert inst["boxes"].tolist()[0] == [2.0, 2.0, 6.0, 6.0]


@pytest.mark.parametrize("with_boxes", [True, False])
def test_perfect_predictions_give_map_one(with_boxes):
    m = DetectionMAP()
    preds = [item(g, scores=[0.9] * len(g), with_boxes=with_boxes) for g in GT]
    m.update(preds, [item(g, with_boxes=with_boxes) for g in GT])
    out = m.compute()
    assert set(out) == {"bbox_map", "bbox_map_50", "segm_map", "segm_map_50"}
    for v in out.values():
        assert float(v) == pytest.approx(1.0, abs=1e-6)


def test_perturbed_prediction_known_value():
    """One of three instances is predicted with IoU 0.64 (an 8x8 part of a 10x10 square).

    It matches at IoU thresholds 0.50, 0.55, 0.60 and fails at the 7 others, where it is a false positive
    ranked below the two true positives: recall 2/3 at precision 1 -> COCO's 101-point AP = 67/101.
    """
    preds = [item([GT[0][0], GT[0][1]], scores=[0.9, 0.8]), item([rect_mask(5, 16, 13, 24)], scores=[0.7])]
    m = DetectionMAP()
    m.update(preds, [item(g) for g in GT])
    out = m.compute()
    expected = (3 * 1.0 + 7 * 67 / 101) / 10
    for t in ("bbox", "segm"):
        assert float(out[f"{t}_map_50"]) == pytest.approx(1.0, abs=1e-6)
        assert float(out[f"{t}_map"]) == pytest.approx(expected, abs=1e-6)
        assert float(out[f"{t}_map"]) < 1.0


def test_missed_instance_and_false_positive():
    m = DetectionMAP(iou_type="bbox")
    preds = [item([GT[0][0], rect_mask(20, 20, 30, 30)], scores=[0.5, 0.9]), item([], scores=[])]
    m.update(preds, [item(g) for g in GT])
    out = m.compute()
    assert set(out) == {"bbox_map", "bbox_map_50"}
    # ranking: FP (0.9), TP (0.5) -> precision 1/2 at recall 1/3; interpolated AP = 0.5 * 34/101
    assert float(out["bbox_map_50"]) == pytest.approx(0.5 * 34 / 101, abs=1e-6)


def test_no_ground_truth_is_undefined_with_warning():
    m = DetectionMAP(iou_type="segm")
    m.update([item([rect_mask(1, 1, 5, 5)], scores=[0.9])], [item([])])
    with pytest.warns(UserWarning, match="no ground truth"):
        out = m.compute()
    assert torch.isnan(out["segm_map"]) and torch.isnan(out["segm_map_50"])

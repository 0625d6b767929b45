"""Stage-2 targets and inference: id remapping, the open-vocabulary training filter, semantic / instance targets,
boxes from masks on hand-made cases (through common.metrics), semantic post-processing, image classes, the
explained prediction record."""

from __future__ import annotations

import torch

from common.data.vocabulary import id_mapping, remap_ids
from common.metrics import DetectionMAP, boxes_from_masks
from diffdefect.stage2.postprocess import explain, image_classes, instance_predictions, semantic_scores
from diffdefect.stage2.targets import base_only, detection_targets, set_targets


def class_mask() -> torch.Tensor:
    cm = torch.zeros(2, 8, 8, dtype=torch.long)
    cm[0, :2, :2] = 1  # two components of class 1
    cm[0, 5:, 5:] = 1
    cm[0, 3, 3:6] = 2  # one of class 2
    cm[1, 0, 0] = 3  # a class the model does not know (after remapping)
    return cm


def test_remap_by_name_and_novel_images_dropped_or_ignored() -> None:
    mapping = id_mapping(["good", "crack", "hole", "stain"], ["good", "crack", "hole"])
    assert mapping.tolist() == [0, 1, 2, -1]
    cm = remap_ids(class_mask(), mapping)
    assert cm[1, 0, 0] == -1 and cm[0, 3, 3] == 2
    assert remap_ids(torch.tensor([-1, 3, 0]), mapping).tolist() == [-1, -1, 0]
    keep, kept = base_only(cm, "drop")
    assert keep.tolist() == [True, False] and kept.shape == (1, 8, 8)
    keep, kept = base_only(cm, "ignore")
    assert keep.tolist() == [True, True] and (kept[1] == -1).sum() == 1


def test_semantic_and_instance_targets() -> None:
    cm = remap_ids(class_mask(), id_mapping(["good", "a", "b", "c"], ["good", "a", "b"]))
    masks, labels = set_targets(cm, "semantic")
    assert labels[0].tolist() == [0, 1, 2] and masks[0].shape == (3, 8, 8)
    assert masks[0].sum(0).eq(1).all()  # a partition of the image
    assert labels[1].tolist() == [0] and masks[1].sum() == 63  # the unknown pixel is in no target
    masks, labels = set_targets(cm, "instance")
    assert labels[0].tolist() == [0, 1, 1, 2] and masks[0][1:].sum((1, 2)).tolist() == [4, 9, 3]


def test_boxes_from_masks_hand_made_cases() -> None:
    m = torch.zeros(4, 10, 12, dtype=torch.bool)
    m[0, 2:5, 3:7] = True  # rows 2..4, cols 3..6 -> [3, 2, 7, 5] (exclusive max, COCO)
    m[1, 9, 11] = True  # one pixel in the corner -> [11, 9, 12, 10]
    m[2, 0, 0] = m[2, 6, 8] = True  # two blobs: one tight box around both
    boxes = boxes_from_masks(m)
    assert boxes.tolist() == [[3, 2, 7, 5], [11, 9, 12, 10], [0, 0, 9, 7], [0, 0, 0, 0]]
    cm = torch.zeros(1, 10, 12, dtype=torch.long)
    cm[0, 2:5, 3:7] = 1
    cm[0, 9, 11] = 2
    gt = detection_targets(cm)[0]
    assert gt["boxes"].tolist() == [[3, 2, 7, 5], [11, 9, 12, 10]] and gt["labels"].tolist() == [1, 2]


def test_perfect_instances_give_full_map() -> None:
    cm = torch.zeros(1, 16, 16, dtype=torch.long)
    cm[0, 2:6, 2:8] = 1
    cm[0, 10:14, 9:15] = 2
    masks = torch.full((1, 4, 16, 16), -20.0)
    masks[0, 0] = (cm[0] == 1) * 40.0 - 20
    masks[0, 1] = (cm[0] == 2) * 40.0 - 20
    masks[0, 2] = (cm[0] == 0) * 40.0 - 20
    logits = torch.full((1, 4, 4), -10.0)
    logits[0, 0, 1] = logits[0, 1, 2] = logits[0, 2, 0] = logits[0, 3, 3] = 10.0
    preds = instance_predictions(logits, masks, (16, 16))
    top = preds[0]
    assert top["labels"][:2].tolist() == [1, 2] and top["boxes"][:2].tolist() == [[2, 2, 8, 6], [9, 10, 15, 14]]
    assert (top["scores"][2:] < 1e-6).all()  # the background query: ranked last with a negligible score
    metric = DetectionMAP(("bbox", "segm"))
    metric.update(preds, detection_targets(cm))
    res = metric.compute()
    assert float(res["bbox_map"]) > 0.99 and float(res["segm_map_50"]) > 0.99
    scores = semantic_scores(logits, masks, (32, 32))  # upsampled 2x
    assert scores.shape == (1, 3, 32, 32) and torch.allclose(scores.sum(1), torch.ones(1, 32, 32))
    labels = scores.argmax(1)
    assert labels[0, 8, 8] == 1 and labels[0, 24, 24] == 2 and labels[0, 0, 31] == 0
    assert image_classes(labels, 3).tolist() == [1]  # class 1 covers more pixels than class 2 (24 vs 24: tie -> 1)
    assert image_classes(torch.zeros(2, 4, 4, dtype=torch.long), 3).tolist() == [0, 0]


def test_explained_prediction_names_the_classes() -> None:
    scores = torch.zeros(3, 16, 16)
    scores[0] = 1.0
    scores[:, 4:8, 4:10] = torch.tensor([0.1, 0.2, 0.7])[:, None, None]
    pred = explain(torch.rand(3, 16, 16), scores, ["good", "scratch", "oil stain"], "x/img.png")
    rec = pred.record
    assert rec["defect_type"] == "oil stain" and rec["is_anomalous"] and pred.label.startswith("oil stain 0.70")
    seg = rec["segments"][0]
    assert seg["regions"][0]["box"] == (4, 4, 10, 8) and abs(seg["area_percent"] - 100 * 24 / 256) < 1e-6
    assert seg["rle"]["size"] == [16, 16] and pred.anomaly_map.shape == (16, 16) and pred.image.dtype.name == "uint8"
    expected = torch.zeros(16, 16, dtype=torch.long)
    expected[4:8, 4:10] = 2  # the class-id mask written to masks/
    assert torch.equal(torch.as_tensor(pred.label_map), expected)
    clean = explain(torch.rand(3, 16, 16), torch.stack([torch.ones(16, 16)] + [torch.zeros(16, 16)] * 2),
                    ["good", "scratch", "oil stain"], "y.png")
    assert clean.record["defect_type"] == "good" and not clean.record["is_anomalous"]

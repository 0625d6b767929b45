"""Defect-type accuracy / macro-F1 / confusion matrix and segmentation IoU against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, jaccard_score

from common.metrics import (
    DefectTypeAccuracy,
    DefectTypeConfusionMatrix,
    DefectTypeMacroF1,
    MeanIoU,
    PerClassIoU,
    defect_type_metrics,
    segmentation_metrics,
)


def present(*arrays) -> list[int]:
    return sorted(set(np.concatenate([a.ravel() for a in arrays]).tolist()))


def test_classification_matches_sklearn_with_logits():
    rng = np.random.default_rng(0)
    c = 6
    target = rng.integers(0, c - 1, 200)  # class 5 never occurs in the targets ...
    logits = rng.standard_normal((200, c)) + 2.0 * np.eye(c)[target]
    logits[:, 4] -= 10  # ... and class 4 is never predicted
    pred = logits.argmax(1)
    acc, f1, cm = DefectTypeAccuracy(c), DefectTypeMacroF1(c), DefectTypeConfusionMatrix(c)
    for m in (acc, f1, cm):
        for sl in (slice(0, 70), slice(70, 200)):
            m.update(torch.from_numpy(logits[sl]), torch.from_numpy(target[sl]))
    assert float(acc.compute()) == pytest.approx(accuracy_score(target, pred), abs=1e-6)
    labels = present(target, pred)
    assert float(f1.compute()) == pytest.approx(
        f1_score(target, pred, average="macro", labels=labels, zero_division=0), abs=1e-6
    )
    np.testing.assert_array_equal(cm.compute().numpy(), confusion_matrix(target, pred, labels=list(range(c))))


def test_macro_f1_ignores_classes_absent_everywhere():
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 1, 1, 1])
    m = DefectTypeMacroF1(num_classes=10)  # classes 2..9 never seen: no NaN, not counted as 0
    m.update(pred, target)
    assert float(m.compute()) == pytest.approx(f1_score(target, pred, average="macro"), abs=1e-6)


def test_no_samples_and_normalized_confusion_matrix():
    acc, f1 = DefectTypeAccuracy(3), DefectTypeMacroF1(3)
    with pytest.warns(UserWarning):
        assert torch.isnan(acc.compute())  # no sample: undefined, not 0.0
    with pytest.warns(UserWarning):
        assert torch.isnan(f1.compute())
    cm = DefectTypeConfusionMatrix(3, normalize="true")
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]))
    out = cm.compute()
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))


def test_classification_input_errors():
    with pytest.raises(ValueError, match=r"\(4,\).*\(5,\)"):
        DefectTypeAccuracy(3).update(torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 0, 1]))
    with pytest.raises(ValueError, match="class indices"):
        DefectTypeAccuracy(3).update(torch.tensor([0, 3]), torch.tensor([0, 1]))


def test_defect_type_factory_shares_state():
    coll = defect_type_metrics(4, prefix="val/")
    coll.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2, 3]))
    out = coll.compute()
    assert set(out) == {"val/accuracy", "val/macro_f1"}
    assert float(out["val/accuracy"]) == pytest.approx(0.75)
    assert len(coll.compute_groups) == 1


# -------------------------------------------------------------------------------------------- segmentation
def test_iou_matches_sklearn_on_pixel_maps():
    rng = np.random.default_rng(1)
    c = 5
    target = rng.integers(0, c, (4, 16, 16))
    target[target == 3] = 2  # class 3 absent from the ground truth
    scores = rng.standard_normal((4, c, 16, 16)) + 1.5 * np.moveaxis(np.eye(c)[target], -1, 1)
    scores[:, 4] -= 10  # class 4 never predicted (but present in the ground truth)
    pred = scores.argmax(1)
    per, miou = PerClassIoU(c), MeanIoU(c)
    for m in (per, miou):
        m.update(torch.from_numpy(scores[:2]), torch.from_numpy(target[:2]))
        m.update(torch.from_numpy(pred[2:]), torch.from_numpy(target[2:]))  # labels or scores
    ref = jaccard_score(target.ravel(), pred.ravel(), average=None, labels=list(range(c)), zero_division=0)
    np.testing.assert_allclose(per.compute().numpy(), ref, atol=1e-6)
    labels = present(target, pred)
    assert float(miou.compute()) == pytest.approx(float(np.mean(ref[labels])), abs=1e-6)


def test_iou_absent_class_ignore_index_and_background():
    target = torch.tensor([[[0, 0, 1, 255]]])
    pred = torch.tensor([[[0, 1, 1, 2]]])
    per = PerClassIoU(4, ignore_index=255, absent_value=-1.0)
    per.update(pred, target)
    # pixel with target 255 ignored (its prediction 2 too): IoU0 = 1/2, IoU1 = 1/2, class 2/3 absent
    torch.testing.assert_close(per.compute(), torch.tensor([0.5, 0.5, -1.0, -1.0]))
    m = MeanIoU(4, ignore_index=255, include_background=False)
    m.update(pred, target)
    assert float(m.compute()) == pytest.approx(0.5)
    coll = segmentation_metrics(4, ignore_index=255, prefix="test/")
    coll.update(pred, target)
    assert float(coll.compute()["test/miou"]) == pytest.approx(0.5)


def test_iou_degenerate_and_errors():
    m = MeanIoU(3)
    with pytest.warns(UserWarning):
        assert torch.isnan(m.compute())
    per = PerClassIoU(3)
    per.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long))
    assert per.compute()[0] == 1.0 and torch.isnan(per.compute()[1:]).all()  # absent classes: undefined
    m.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long))
    assert float(m.compute()) == 1.0  # only class 0 present, perfectly segmented
    with pytest.raises(ValueError, match=r"\(1, 4, 4\).*\(1, 4, 5\)"):
        MeanIoU(3).update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class labels"):
        MeanIoU(3).update(torch.rand(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


def test_mean_iou_over_a_subset_of_classes() -> None:
    """``classes``: the mean over the given classes that are present (the base / novel split of an
    open-vocabulary test), NaN (undefined) with a warning when none of them is."""
    import pytest

    from common.metrics import MeanIoU, PerClassIoU

    target = torch.tensor([[0, 0, 1, 1, 2, 2]])
    preds = torch.tensor([[0, 1, 1, 1, 2, 0]])
    per_class = PerClassIoU(4)
    per_class.update(preds, target)
    iou = per_class.compute()
    subset = MeanIoU(4, classes=[1, 2])
    subset.update(preds, target)
    torch.testing.assert_close(subset.compute(), iou[[1, 2]].mean())
    absent = MeanIoU(4, classes=[3])
    absent.update(preds, target)
    with pytest.warns(UserWarning, match="no class present"):
        assert math.isnan(float(absent.compute()))

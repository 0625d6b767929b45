"""Stage-2 inference: Mask2Former's semantic and instance post-processing, image classes from the masks, and
the explained per-image predictions that ``lightning predict`` writes.

* semantic: ``S[c] = sum_q softmax(class_logits_q)[c] * sigmoid(mask_q)`` (Mask2Former's
  ``semantic_inference``; no-object column dropped), masks bilinearly upsampled to the image; the label map is
  ``argmax_c S``; normalised over classes, ``1 - S[background]`` is the pixel anomaly map;
* image class (classification "from the masks"): the defect class covering the most pixels of the label map,
  the background class (``"good"``) when no pixel is a defect;
* instances (detection, boxes from masks): every query labelled with its best *defect* class, scored by that
  class probability times the mean mask probability inside its binarised mask (Mask2Former's
  ``instance_inference`` score), the ``top_k`` best kept.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from common.metrics import boxes_from_masks
from common.prediction import ImagePrediction
from common.regions import find_regions


def upsample_masks(pred_masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, Q, h, w)`` logits -> ``(B, Q, H, W)`` logits (bilinear)."""
    if tuple(pred_masks.shape[-2:]) == tuple(size):
        return pred_masks
    return F.interpolate(pred_masks, size=size, mode="bilinear", align_corners=False)


def semantic_scores(class_logits: torch.Tensor, pred_masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-class pixel scores, normalised over classes.

    Args:
        class_logits: ``(B, Q, K + 1)``.
        pred_masks: ``(B, Q, h, w)`` mask logits.
        size: Output ``(H, W)``.

    Returns:
        ``(B, K, H, W)`` float, summing to one over ``K`` at every pixel.
    """
    probs = class_logits.float().softmax(-1)[..., :-1]  # (B, Q, K)
    masks = upsample_masks(pred_masks.float(), size).sigmoid()  # (B, Q, H, W)
    sem = torch.einsum("bqk,bqhw->bkhw", probs, masks)  # (B, K, H, W)
    return sem / sem.sum(1, keepdim=True).clamp(min=1e-6)


def image_classes(labels: torch.Tensor, num_classes: int, background: int = 0) -> torch.Tensor:
    """Image class from a label map: the defect class with the largest area, else ``background``.

    Args:
        labels: ``(B, H, W)`` class ids in ``[0, K)``.
        num_classes: ``K``.
        background: Id of the background class.

    Returns:
        ``(B,)`` int64.
    """
    counts = F.one_hot(labels.long().flatten(1), num_classes).sum(1)  # (B, K)
    counts[:, background] = 0
    best = counts.argmax(1)
    return torch.where(counts.amax(1) > 0, best, torch.full_like(best, background))


def instance_predictions(class_logits: torch.Tensor, pred_masks: torch.Tensor, size: tuple[int, int],
                         background: int = 0, top_k: int = 100, threshold: float = 0.5) -> list[dict[str, torch.Tensor]]:
    """Defect instances per image (background excluded), for :class:`common.metrics.DetectionMAP`.

    Returns:
        Per image ``{"masks": (n, H, W) bool, "boxes": (n, 4) xyxy, "scores": (n,), "labels": (n,)}``.
    """
    probs = class_logits.float().softmax(-1)[..., :-1].clone()  # (B, Q, K)
    probs[..., background] = 0.0
    masks = upsample_masks(pred_masks.float(), size).sigmoid()  # (B, Q, H, W)
    out = []
    for p, m in zip(probs, masks, strict=True):
        score, label = p.max(-1)  # (Q,)
        binary = m > threshold  # (Q, H, W)
        quality = (m * binary).flatten(1).sum(1) / binary.flatten(1).sum(1).clamp(min=1)
        score = score * quality * binary.flatten(1).any(1)
        keep = torch.argsort(score, descending=True)[:top_k]
        keep = keep[score[keep] > 0]
        out.append({"masks": binary[keep], "boxes": boxes_from_masks(binary[keep]), "scores": score[keep],
                    "labels": label[keep]})
    return out


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def explain(image: torch.Tensor, scores: torch.Tensor, names: list[str], path: str, background: int = 0,
            threshold: float = 0.5) -> ImagePrediction:
    """One image's prediction: overlay labelled with the class names found, anomaly map, class-id mask, and a
    JSON record with the image class, and per class its area, score, regions (boxes, locations) and COCO RLE mask.

    Args:
        image: ``(3, H, W)`` in [0, 1].
        scores: ``(K, H, W)`` normalised semantic scores.
        names: The ``K`` class names (``names[background]`` is the defect-free class).
        path: Source image path.
        background: Id of the background class.
        threshold: Anomaly-map level of the overlay contour.
    """
    labels = scores.argmax(0)  # (H, W)
    anomaly = (1.0 - scores[background]).clamp(0, 1)  # (H, W)
    total = labels.numel()
    segments = []
    for c in torch.unique(labels).tolist():
        if c == background:
            continue
        m = (labels == c).cpu().numpy()
        score = float(scores[c][labels == c].mean())
        regions = [r.to_dict() for r in find_regions(m, scores[c].cpu().numpy())]
        segments.append({"class": names[c], "score": score, "area_percent": 100.0 * float(m.sum()) / total,
                         "regions": regions, "rle": _rle(m)})
    segments.sort(key=lambda s: -s["area_percent"])
    cls = segments[0]["class"] if segments else names[background]
    prob = segments[0]["score"] if segments else float(scores[background].mean())
    label = ", ".join(f"{s['class']} {s['score']:.2f}" for s in segments[:3]) or f"{names[background]} {prob:.2f}"
    record = {"defect_type": cls, "probability": prob, "is_anomalous": bool(segments),
              "anomaly_score": float(anomaly.max()), "num_regions": sum(len(s["regions"]) for s in segments),
              "area_percent": sum(s["area_percent"] for s in segments), "segments": segments,
              "vocabulary": list(names),
              "explanation": (f"{len(segments)} defect class(es) found: " + ", ".join(
                  f"{s['class']} over {s['area_percent']:.1f}% of the image" for s in segments)) if segments
              else "no defect found"}
    img = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return ImagePrediction(path=path, image=img, anomaly_map=anomaly.cpu().numpy(), label=label, record=record,
                           threshold=threshold, label_map=labels.cpu().numpy())

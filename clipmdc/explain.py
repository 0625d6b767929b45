"""Natural-language explanations of CLIP-MDC predictions: one sentence and one JSON record per image.

Example sentence: ``"metal_nut: scratch (p=0.97) in the upper left, 2.1% of the surface"``; for a normal image
``"metal_nut: no defect (p=0.99)"``. Decisions and regions agree: an image called anomalous shows at least one
region, an image called normal shows none. Maps, region boxes and areas are in the original image file's pixels
(``map_size`` is its ``[H, W]``): :func:`explain_outputs` brings the model's maps back to it in every resize mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from clipmdc.output import CLIPMDCOutput
from clipmdc.prompts import readable
from common.data.types import NORMAL
from common.prediction import ImagePrediction
from common.regions import Region, find_regions


def sentence(object_name: str, defect_type: str, probability: float, regions: Sequence[Region]) -> str:
    """One sentence naming object, defect type, confidence, location and size.

    Args:
        object_name: Object name.
        defect_type: Predicted defect type (:data:`~common.data.types.NORMAL` for no defect).
        probability: Probability of the stated outcome.
        regions: Regions of the thresholded anomaly map, largest first.
    """
    if defect_type == NORMAL:
        return f"{object_name}: no defect (p={probability:.2f})"
    text = f"{object_name}: {readable(defect_type)} (p={probability:.2f})"
    if regions:
        area = 100.0 * sum(r.area_fraction for r in regions)
        where = regions[0].location
        more = (
            f" and {len(regions) - 1} more region{'s' if len(regions) > 2 else ''}"
            if len(regions) > 1
            else ""
        )
        text += f" in the {where}{more}, {area:.1f}% of the surface"
    return text


def decide(image_prob: torch.Tensor, image_threshold: float, vocabulary_size: int) -> torch.Tensor:
    """``(B,)`` bool: the image decision (``p(anomalous) >= image_threshold``; never with a vocabulary of
    ``"good"`` alone, which has no defect type to report)."""
    return (image_prob >= image_threshold) & (vocabulary_size > 1)


def most_anomalous_region(amap: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool mask of the connected region around the map's maximum: the pixels connected to it that lie
    above half-way between the map's median and its maximum (the region an image called anomalous shows when no
    pixel reaches the pixel threshold)."""
    from scipy import ndimage

    peak = np.unravel_index(int(np.argmax(amap)), amap.shape)
    level = float(np.median(amap)) + 0.5 * (float(amap[peak]) - float(np.median(amap)))
    labels, _ = ndimage.label(amap >= level, structure=np.ones((3, 3), bool))
    return labels == labels[peak]


def image_regions(amap: np.ndarray, pixel_threshold: float, min_area: int) -> tuple[list[Region], np.ndarray, bool]:
    """Regions of an image called anomalous: those of ``amap >= pixel_threshold`` (at least ``min_area``
    pixels), or, when there is none, its most anomalous region (:func:`most_anomalous_region`).

    Returns:
        Regions (largest first), their ``(H, W)`` bool mask, and whether the fallback was used.
    """
    from scipy import ndimage

    labels, _ = ndimage.label(amap >= pixel_threshold, structure=np.ones((3, 3), bool))  # 8-connected
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # background
    mask = (sizes >= min_area)[labels]  # (H, W) regions of at least min_area pixels
    if mask.any():
        return find_regions(mask, amap), mask, False
    mask = most_anomalous_region(amap)
    return find_regions(mask, amap), mask, True


def regions_agree(a: Sequence[dict], b: Sequence[dict], pixels: int = 1) -> bool:
    """Whether two JSON region lists describe the same regions up to ``pixels`` at their borders: as many
    regions, boxes within ``pixels`` per side, areas within ``pixels`` times the box perimeter. Two float32
    implementations of one model (PyTorch, onnxruntime) differ by ~1e-6, which flips the rare border pixel that
    lies that close to the threshold."""
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b, strict=True):
        x0, y0, x1, y1 = ra["box"]
        if max(abs(u - v) for u, v in zip(ra["box"], rb["box"], strict=True)) > pixels:
            return False
        if abs(ra["area"] - rb["area"]) > pixels * 2 * ((x1 - x0) + (y1 - y0)):
            return False
    return True


def explain_probabilities(
    anomaly_prob: np.ndarray,
    image_prob: np.ndarray,
    type_prob: np.ndarray,
    vocabulary: Sequence[str],
    images: np.ndarray,
    object_names: Sequence[str],
    paths: Sequence[str],
    image_threshold: float = 0.5,
    pixel_threshold: float = 0.5,
    threshold_mode: str = "given",
    pixel_threshold_mode: str | None = None,
    target_far: float | None = None,
    closest_prompts: Sequence[str] | None = None,
    min_region_fraction: float = 0.0005,
) -> list[ImagePrediction]:
    """Turns model probabilities into :class:`~common.prediction.ImagePrediction` s (torch and ONNX paths alike).

    The image is called anomalous when its anomaly probability reaches ``image_threshold`` (:func:`decide`). Its
    defect type is then the most probable defect class given "anomalous", reported with probability
    ``p(anomalous) * p(type | anomalous)``, and it shows at least one region (:func:`image_regions`). An image
    called normal shows no region.

    Args:
        anomaly_prob: ``(B, H, W)`` pixel anomaly probabilities.
        image_prob: ``(B,)`` image anomaly probabilities.
        type_prob: ``(B, K+1)`` image defect-type probabilities.
        vocabulary: The ``K + 1`` names of ``type_prob``.
        images: ``(B, H, W, 3)`` uint8 input images.
        object_names: Object name per image.
        paths: Source path per image.
        image_threshold: Image anomaly probability from which an image is called defective.
        pixel_threshold: Pixel anomaly probability from which a pixel belongs to a region.
        threshold_mode: How ``image_threshold`` was set (``"f1"``, ``"far"``, ``"none"``, ``"given"``).
        pixel_threshold_mode: How ``pixel_threshold`` was set (default: ``threshold_mode``).
        target_far: The calibration's target false-alarm rate (``"far"`` mode), else ``None``.
        closest_prompts: Per image, the prompt nearest to its embedding (optional).
        min_region_fraction: Regions smaller than this fraction of the image are ignored.

    Returns:
        One prediction per image, its ``record`` holding the JSON line.
    """
    vocab = list(vocabulary)
    flags = decide(torch.as_tensor(image_prob), image_threshold, len(vocab)).tolist()
    preds = []
    for i, anomalous in enumerate(flags):
        amap = anomaly_prob[i]
        h, w = amap.shape
        defect_probs = type_prob[i, 1:]
        k = int(np.argmax(defect_probs)) + 1 if len(defect_probs) else 0
        cond = float(defect_probs[k - 1] / max(defect_probs.sum(), 1e-12)) if k > 0 else 0.0
        dtype = vocab[k] if anomalous else NORMAL
        prob = float(image_prob[i] * cond) if anomalous else float(1.0 - image_prob[i])
        regions, region_mask, fallback = [], np.zeros((h, w), bool), False
        if anomalous:
            regions, region_mask, fallback = image_regions(amap, pixel_threshold, max(1, int(min_region_fraction * h * w)))
        record = {
            "object": object_names[i],
            "is_anomalous": anomalous,
            "defect_type": dtype,
            "probability": round(prob, 4),
            "anomaly_score": round(float(image_prob[i]), 4),
            "image_threshold": round(float(image_threshold), 6),
            "pixel_threshold": round(float(pixel_threshold), 6),
            "threshold_mode": threshold_mode,
            "pixel_threshold_mode": pixel_threshold_mode or threshold_mode,
            "target_far": target_far,
            "type_probabilities": {vocab[j]: round(float(type_prob[i, j]), 4) for j in range(len(vocab))},
            "num_regions": len(regions),
            "area_percent": round(100.0 * sum(r.area_fraction for r in regions), 3),
            "regions": [r.to_dict() for r in regions],
            "regions_below_pixel_threshold": fallback,
            "map_size": [h, w],
            "closest_prompt": closest_prompts[i] if closest_prompts is not None else None,
            "explanation": sentence(object_names[i], dtype, prob, regions),
        }
        label = f"{'DEFECT: ' + readable(dtype) if anomalous else 'normal'}, score {float(image_prob[i]):.2f}"
        preds.append(ImagePrediction(paths[i], images[i], amap, label, record, pixel_threshold,
                                     region_mask=region_mask))
    return preds


def explain_batch(
    output: CLIPMDCOutput,
    images: torch.Tensor,
    object_names: Sequence[str],
    paths: Sequence[str],
    **kwargs: Any,
) -> list[ImagePrediction]:
    """:func:`explain_probabilities` of a batch of model outputs (any device).

    Args:
        output: Model output for the batch.
        images: ``(B, 3, H, W)`` input images in [0, 1].
        object_names: Object name per image.
        paths: Source path per image.
        **kwargs: Thresholds, their modes, ``closest_prompts``, ``min_region_fraction`` (see
            :func:`explain_probabilities`).
    """
    out = output.cpu()
    imgs = (images.detach().cpu().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return explain_probabilities(
        out.anomaly_prob[:, 0].float().numpy(),  # (B, H, W)
        out.image_prob.float().numpy(),  # (B,)
        out.type_prob_image.float().numpy(),  # (B, K+1)
        out.defect_types,
        imgs,
        object_names,
        paths,
        **kwargs,
    )


def explain_outputs(outputs: dict[str, torch.Tensor], batch: Any, vocabulary: Sequence[str],
                    closest_prompts: Sequence[str] | None = None, **kwargs: Any) -> list[ImagePrediction]:
    """:func:`explain_probabilities` of the outputs of a batch in any resize mode (:func:`common.tiled.mode_outputs`,
    PyTorch or ONNX), each image's map first brought back to the original file's pixels
    (:func:`common.prediction.in_original_pixels`), so regions, boxes, areas and overlays are in them.

    Args:
        outputs: ``anomaly_prob`` ``(B, 1, H, W)``, ``image_prob`` ``(B,)``, ``type_prob`` ``(B, K+1)``.
        batch: The :class:`~common.data.types.DefectBatch` (paths, objects, content boxes, original sizes).
        vocabulary: The ``K + 1`` names.
        closest_prompts: Per image, the prompt nearest to its embedding (optional).
        **kwargs: Thresholds and their modes (see :func:`explain_probabilities`).
    """
    from common.prediction import in_original_pixels

    image_prob = outputs["image_prob"].detach().float().cpu().numpy()
    type_prob = outputs["type_prob"].detach().float().cpu().numpy()
    preds: list[ImagePrediction] = []
    for i, (image, amap) in enumerate(in_original_pixels(batch, outputs["anomaly_prob"])):
        prompts = [closest_prompts[i]] if closest_prompts is not None else None
        preds += explain_probabilities(amap[:1], image_prob[i : i + 1], type_prob[i : i + 1], vocabulary, image[None],
                                       batch.object_name[i : i + 1], batch.path[i : i + 1], closest_prompts=prompts,
                                       **kwargs)
    return preds

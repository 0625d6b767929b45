"""Natural-language explanations of CLIP-MDC predictions: one sentence and one JSON record per image.

Example sentence: ``"metal_nut: scratch (p=0.97) in the upper left, 2.1% of the surface"``; for a normal image
``"metal_nut: no defect (p=0.99)"``.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def explain_batch(
    output: CLIPMDCOutput,
    images: torch.Tensor,
    object_names: Sequence[str],
    paths: Sequence[str],
    image_threshold: float = 0.5,
    pixel_threshold: float = 0.5,
    closest_prompts: Sequence[str] | None = None,
    min_region_fraction: float = 0.0005,
) -> list[ImagePrediction]:
    """Turns a batch of model outputs into :class:`~common.prediction.ImagePrediction` s.

    The defect type is the most probable defect class given "anomalous"; it is reported when the image
    anomaly probability reaches ``image_threshold``, with probability ``p(anomalous) * p(type | anomalous)``.

    Args:
        output: Model output for the batch (any device).
        images: ``(B, 3, H, W)`` input images in [0, 1].
        object_names: Object name per image.
        paths: Source path per image.
        image_threshold: Image anomaly probability from which an image is called defective.
        pixel_threshold: Pixel anomaly probability from which a pixel belongs to a region.
        closest_prompts: Per image, the prompt nearest to its embedding (optional).
        min_region_fraction: Regions smaller than this fraction of the image are ignored.

    Returns:
        One prediction per image, its ``record`` holding the JSON line.
    """
    out = output.cpu()
    amap = out.anomaly_prob[:, 0].float().numpy()  # (B, H, W)
    p_img = out.image_prob.float().numpy()  # (B,)
    type_prob = out.type_prob_image.float().numpy()  # (B, K+1)
    imgs = (images.detach().cpu().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    vocab = out.defect_types
    preds = []
    for i in range(len(p_img)):
        h, w = amap[i].shape
        defect_probs = type_prob[i, 1:]
        k = int(np.argmax(defect_probs)) + 1 if len(defect_probs) else 0
        anomalous = bool(p_img[i] >= image_threshold) and k > 0
        cond = float(defect_probs[k - 1] / max(defect_probs.sum(), 1e-12)) if k > 0 else 0.0
        dtype = vocab[k] if anomalous else NORMAL
        prob = float(p_img[i] * cond) if anomalous else float(1.0 - p_img[i])
        regions = find_regions(
            amap[i] >= pixel_threshold, amap[i], min_area=max(1, int(min_region_fraction * h * w))
        )
        regions = regions if anomalous else []
        text = sentence(object_names[i], dtype, prob, regions)
        record = {
            "object": object_names[i],
            "is_anomalous": anomalous,
            "defect_type": dtype,
            "probability": round(prob, 4),
            "anomaly_score": round(float(p_img[i]), 4),
            "type_probabilities": {vocab[j]: round(float(type_prob[i, j]), 4) for j in range(len(vocab))},
            "num_regions": len(regions),
            "area_percent": round(100.0 * sum(r.area_fraction for r in regions), 3),
            "regions": [r.to_dict() for r in regions],
            "closest_prompt": closest_prompts[i] if closest_prompts is not None else None,
            "explanation": text,
        }
        label = f"{readable(dtype)} {prob:.2f}" if anomalous else f"ok {prob:.2f}"
        preds.append(ImagePrediction(paths[i], imgs[i], amap[i], label, record, pixel_threshold))
    return preds

"""Explanations: the sentence, the JSON record, regions and the normal case."""

from __future__ import annotations

import math

import torch

from clipmdc.explain import explain_batch, sentence
from clipmdc.output import CLIPMDCOutput
from common.regions import Region


def _output(p_img: list[float], type_given_anomalous: list[list[float]], amap: torch.Tensor) -> CLIPMDCOutput:
    p = torch.tensor(p_img)
    cond = torch.tensor(type_given_anomalous)
    type_logits = torch.cat([torch.log1p(-p)[:, None], torch.log(p)[:, None] + torch.log(cond)], 1)
    b, k1 = type_logits.shape
    h, w = amap.shape[-2:]
    return CLIPMDCOutput(
        anomaly_map=torch.logit(amap.clamp(1e-4, 1 - 1e-4)),
        type_map=type_logits[:, :, None, None].expand(b, k1, h, w),
        image_score=torch.logit(p),
        topk_score=torch.logit(p),
        type_logits=type_logits,
        embedding=torch.zeros(b, 4),
        defect_types=["good", "scratch", "hole"],
    )


def test_sentence_format() -> None:
    r = Region((0, 0, 10, 10), 100, 0.021, (5.0, 5.0), "upper left")
    assert sentence("metal_nut", "scratch", 0.971, [r]) == "metal_nut: scratch (p=0.97) in the upper left, 2.1% of the surface"
    two = sentence("pill", "color_stain", 0.5, [r, r, r])
    assert two == "pill: color stain (p=0.50) in the upper left and 2 more regions, 6.3% of the surface"
    assert sentence("bottle", "good", 0.988, []) == "bottle: no defect (p=0.99)"


def test_explain_batch_records() -> None:
    amap = torch.zeros(2, 1, 40, 40)
    amap[0, 0, 2:8, 30:38] = 0.9  # 48 px in the upper right
    out = _output([0.95, 0.1], [[0.2, 0.8], [0.6, 0.4]], amap)
    preds = explain_batch(out, torch.rand(2, 3, 40, 40), ["plate", "plate"], ["a.png", "b.png"],
                          closest_prompts=["p0", "p1"])
    a, b = (p.record for p in preds)
    assert a["defect_type"] == "hole" and a["is_anomalous"]
    assert math.isclose(a["probability"], 0.95 * 0.8, abs_tol=1e-3)
    assert a["num_regions"] == 1 and a["regions"][0]["box"] == (30, 2, 38, 8)
    assert a["regions"][0]["location"] == "upper right" and math.isclose(a["area_percent"], 3.0)
    assert a["explanation"] == "plate: hole (p=0.76) in the upper right, 3.0% of the surface"
    assert a["closest_prompt"] == "p0" and list(a["type_probabilities"]) == ["good", "scratch", "hole"]
    assert b["defect_type"] == "good" and not b["is_anomalous"] and b["regions"] == []
    assert b["explanation"] == "plate: no defect (p=0.90)"
    assert preds[0].image.shape == (40, 40, 3) and preds[0].image.dtype.name == "uint8"
    assert preds[0].label == "hole 0.76"

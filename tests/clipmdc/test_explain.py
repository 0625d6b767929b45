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
    assert preds[0].label == "DEFECT: hole, score 0.95"


def test_an_image_called_anomalous_always_shows_a_region_a_normal_one_none() -> None:
    """The reported failure: flagged images with ``regions: []`` when no pixel passed the pixel threshold."""
    amap = torch.full((3, 1, 40, 40), 0.1)
    amap[0, 0, 30:34, 4:9] = 0.3  # a faint peak in the lower left, below the pixel threshold
    amap[1, 0, 5:15, 5:15] = 0.9  # a clear region
    amap[1, 0, 30, 30] = 0.9  # and a speck under min_region_fraction
    out = _output([0.95, 0.9, 0.2], [[0.5, 0.5]] * 3, amap)
    preds = explain_batch(out, torch.rand(3, 3, 40, 40), ["plate"] * 3, ["a.png", "b.png", "c.png"],
                          image_threshold=0.5, pixel_threshold=0.5, min_region_fraction=0.01)
    faint, clear, normal = (p.record for p in preds)
    assert faint["is_anomalous"] and faint["num_regions"] == 1 and faint["regions_below_pixel_threshold"]
    assert faint["regions"][0]["box"] == (4, 30, 9, 34) and faint["regions"][0]["location"] == "lower left"
    assert "in the lower left" in faint["explanation"]
    assert clear["num_regions"] == 1 and not clear["regions_below_pixel_threshold"]  # the speck is dropped
    assert preds[1].region_mask.sum() == 100 and not preds[1].region_mask[30, 30]
    assert not normal["is_anomalous"] and normal["regions"] == [] and not preds[2].region_mask.any()
    for r in (faint, clear, normal):
        assert (r["image_threshold"], r["pixel_threshold"], r["threshold_mode"]) == (0.5, 0.5, "given")


def test_regions_agree_up_to_a_border_pixel() -> None:
    from clipmdc.explain import regions_agree

    a = [{"box": (10, 10, 20, 30), "area": 150}]
    assert regions_agree(a, [{"box": (10, 10, 21, 30), "area": 158}])  # one border pixel column more
    assert not regions_agree(a, [{"box": (10, 10, 23, 30), "area": 150}])  # 3 px: another region
    assert not regions_agree(a, a + a) and regions_agree([], [])

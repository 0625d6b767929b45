"""Normal-only levers measured on the validation split (``--eval-split val``), never on test.

After the normal-only arm is trained, its image score is re-computed with the memory's PatchCore-style image
score (:func:`clipmdc.memory_score.memory_image_score`) added with weights ``v`` (``CLIPMDC.memory_image_weight``;
a fixed constant, so one trained model serves every ``v``), and alone; the validation I-AUROC of each is
reported. The pixel outputs do not depend on ``v``.
"""

from __future__ import annotations

from typing import Any

import torch

WEIGHTS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)


@torch.inference_mode()
def image_score_levers(module: Any, loader: Any) -> dict[str, Any]:
    """Validation I-AUROC / I-AP of the image score for each memory image weight, and of the memory score alone."""
    from clipmdc.memory_score import memory_image_score
    from common.metrics import anomaly_metrics

    net = module.model.eval()
    if net.memory is None or not net.memory.ready:
        return {"skipped": "no built memory"}
    before = net.memory_image_weight
    net.memory_image_weight = 0.0
    metrics = {f"v={v:g}": anomaly_metrics(mode="exact", pixel=False) for v in WEIGHTS}
    metrics["memory_only"] = anomaly_metrics(mode="exact", pixel=False)
    try:
        for batch in loader:
            known = batch.label >= 0
            out = net(batch.image)
            mem = memory_image_score(net.memory, net.image_encoder(batch.image).tokens)  # (B,)
            for v in WEIGHTS:
                score = torch.sigmoid(out.image_score + v * (mem - 1.0))
                metrics[f"v={v:g}"].update(scores=score[known], labels=batch.label[known])
            metrics["memory_only"].update(scores=mem[known], labels=batch.label[known])
    finally:
        net.memory_image_weight = before
    return {name: {k: float(x) for k, x in m.compute().items()} for name, m in metrics.items()}

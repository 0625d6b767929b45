"""The one typed output of :class:`clipmdc.model.CLIPMDC`, the same in train and eval."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch


@dataclass
class CLIPMDCOutput:
    """Predictions of CLIP-MDC for a batch, all as logits (apply the properties for probabilities).

    The defect-type outputs are factorised: class 0 ("good") has log-probability ``log(1 - p_anomaly)`` and
    defect type ``k`` has ``log p_anomaly + log p(k | anomalous)``. So ``type_map.softmax(1)[:, 0]`` equals
    ``1 - anomaly_prob`` (up to the bilinear upsampling and the model's optional smoothing of the anomaly map), and ``K`` follows the vocabulary in use.

    Attributes:
        anomaly_map: ``(B, 1, H, W)`` per-pixel anomaly logits.
        type_map: ``(B, K+1, H, W)`` per-pixel defect-type logits (log-probabilities), index 0 = normal.
        image_score: ``(B,)`` image anomaly logit (top-k pooled map fused with the global image-text evidence).
        topk_score: ``(B,)`` top-k mean of ``anomaly_map`` logits (the image prediction of the weakly
            supervised regime).
        type_logits: ``(B, K+1)`` image defect-type logits (log-probabilities), index 0 = normal.
        embedding: ``(B, D)`` unit image embedding in the text space, pooled over the anomalous region (for
            explanations: nearest prompt).
        defect_types: The vocabulary the type outputs index, ``K + 1`` names.
    """

    anomaly_map: torch.Tensor
    type_map: torch.Tensor
    image_score: torch.Tensor
    topk_score: torch.Tensor
    type_logits: torch.Tensor
    embedding: torch.Tensor
    defect_types: list[str] = field(default_factory=list)

    @property
    def anomaly_prob(self) -> torch.Tensor:
        """``(B, 1, H, W)`` per-pixel anomaly probability."""
        return self.anomaly_map.sigmoid()

    @property
    def type_prob(self) -> torch.Tensor:
        """``(B, K+1, H, W)`` per-pixel defect-type probabilities."""
        return self.type_map.softmax(1)

    @property
    def image_prob(self) -> torch.Tensor:
        """``(B,)`` image anomaly probability."""
        return self.image_score.sigmoid()

    @property
    def type_prob_image(self) -> torch.Tensor:
        """``(B, K+1)`` image defect-type probabilities."""
        return self.type_logits.softmax(-1)

    @property
    def pred_type(self) -> torch.Tensor:
        """``(B,)`` predicted defect-type id (0 = normal)."""
        return self.type_logits.argmax(-1)

    @property
    def pred_type_map(self) -> torch.Tensor:
        """``(B, H, W)`` predicted per-pixel defect-type id (0 = normal)."""
        return self.type_map.argmax(1)

    def _map(self, fn: Any) -> CLIPMDCOutput:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return CLIPMDCOutput(**{k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in values.items()})

    def detach(self) -> CLIPMDCOutput:
        """A copy with every tensor detached."""
        return self._map(lambda t: t.detach())

    def to(self, *args: Any, **kwargs: Any) -> CLIPMDCOutput:
        """A copy with every tensor moved/cast (``torch.Tensor.to`` arguments)."""
        return self._map(lambda t: t.to(*args, **kwargs))

    def cpu(self) -> CLIPMDCOutput:
        """Detached copy on CPU."""
        return self._map(lambda t: t.detach().cpu())

"""Stage-1 loss: ``L = L_diff + 0.3 L_imp`` as a dict of named terms weighted by a dict.

* ``diff``: mean squared error between the U-Net prediction and its target (epsilon or velocity);
* ``imp``: ``1 - cos(t_imp, e_T)`` averaged over the samples that have a caption (0 when none has);
* ``total``: ``sum(weights[k] * terms[k])``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffdefect.stage1.model import Stage1Output

DEFAULT_WEIGHTS = {"diff": 1.0, "imp": 0.3}


class Stage1Loss(nn.Module):
    """Weighted sum of the diffusion and implicit-captioner alignment losses.

    Args:
        weights: Weight per term name (default ``{"diff": 1.0, "imp": 0.3}``, the paper's).
    """

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        super().__init__()
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        unknown = set(self.weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown loss terms {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}")

    def forward(self, out: Stage1Output) -> dict[str, torch.Tensor]:
        """Computes every term.

        Args:
            out: The model output.

        Returns:
            ``{"diff", "imp", "total"}`` scalar tensors (float32).
        """
        terms = {"diff": F.mse_loss(out.prediction.float(), out.target.float())}
        has = out.has_text.to(out.pseudo_text.device, torch.float32)  # (B,)
        cos = F.cosine_similarity(out.pseudo_text.float(), out.text.float(), dim=-1)  # (B,)
        # masked mean without a host sync; 0 (still in the graph, as DDP wants) when no sample has a caption
        terms["imp"] = ((1.0 - cos) * has).sum() / has.sum().clamp(min=1.0)
        terms["total"] = sum(self.weights.get(k, 0.0) * v for k, v in terms.items())
        return terms

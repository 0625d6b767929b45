"""Hungarian matching of predicted masks to target masks (class + mask BCE + dice costs).

The cost and the assignment are transformers' ``Mask2FormerHungarianMatcher`` (Mask2Former's matcher: the class
cost ``-p(target class)``, pairwise sigmoid BCE and dice costs on ``num_points`` points sampled uniformly and
shared by predictions and targets, ``scipy.optimize.linear_sum_assignment``). :class:`HungarianMatcher` only
adds what the reuse needs: images without targets (transformers' matcher cannot sample points on zero masks),
class-agnostic matching (caption-only supervision: no class column to cost), and a seeded point draw (its
points come from the global RNG; we fork it, so matching neither depends on nor disturbs other random draws).
"""

from __future__ import annotations

import torch
from torch import nn


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets per image.

    Args:
        cost_class: Weight of the class cost (Mask2Former: 2).
        cost_mask: Weight of the sigmoid BCE cost (Mask2Former: 5).
        cost_dice: Weight of the dice cost (Mask2Former: 5).
        num_points: Points sampled per image for the mask costs (Mask2Former: 12544 = 112^2).
        seed: Seed of the point draw (``None``: the global RNG, as transformers).
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int = 12544,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        from transformers.models.mask2former.modeling_mask2former import Mask2FormerHungarianMatcher

        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.num_points = num_points
        self.seed = seed
        self._calls = 0
        self.matcher = Mask2FormerHungarianMatcher(cost_class, cost_mask, cost_dice, num_points)
        self.agnostic = Mask2FormerHungarianMatcher(0.0, cost_mask, cost_dice, num_points)

    @torch.no_grad()
    def forward(
        self,
        pred_masks: torch.Tensor,
        class_logits: torch.Tensor | None,
        target_masks: list[torch.Tensor],
        target_labels: list[torch.Tensor] | None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Matches each image's queries to its targets.

        Args:
            pred_masks: ``(B, Q, h, w)`` mask logits (any resolution: points are sampled in [0, 1]^2).
            class_logits: ``(B, Q, K + 1)`` class logits, or ``None`` for class-agnostic matching.
            target_masks: Per image ``(N_b, H, W)`` {0, 1} masks (any resolution).
            target_labels: Per image ``(N_b,)`` class ids in ``[0, K)``, or ``None`` (class-agnostic).

        Returns:
            Per image ``(query_index, target_index)``, two int64 ``(min(Q, N_b),)`` tensors on the CPU, sorted
            by query index.
        """
        b, q = pred_masks.shape[:2]
        agnostic = class_logits is None or target_labels is None
        if agnostic:
            class_logits = pred_masks.new_zeros(b, q, 1)
            target_labels = [torch.zeros(len(m), dtype=torch.long, device=pred_masks.device) for m in target_masks]
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        matcher = self.agnostic if agnostic else self.matcher
        empty = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
        with torch.random.fork_rng(devices=[pred_masks.device] if pred_masks.is_cuda else []):
            if self.seed is not None:
                torch.manual_seed(self.seed + self._calls)
                self._calls += 1
            for i in range(b):
                if len(target_masks[i]) == 0:
                    out.append(empty)
                    continue
                (idx,) = matcher(
                    pred_masks[i : i + 1].float(),
                    class_logits[i : i + 1].float(),
                    [target_masks[i].float()],
                    [target_labels[i]],
                )
                order = torch.argsort(idx[0])
                out.append((idx[0][order], idx[1][order]))
        return out

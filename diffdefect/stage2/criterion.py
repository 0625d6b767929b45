"""``SetCriterion``: the stage-2 loss as a dict of named terms, weighted by a dict (Mask2Former's SetCriterion).

``L = w_mask L_mask + w_dice L_dice + w_cls L_cls + w_ground L_ground (+ the same on every earlier decoder layer,
summed into "aux")``, with the paper's ``L_Stage2 = L_mask + 0.5 L_cls/ground`` as the default weights
(``mask`` 1, ``dice`` 1, ``cls`` 0.5, ``ground`` 0.5; Mask2Former itself uses 5 / 5 / 2).

* matching: :class:`~diffdefect.stage2.matcher.HungarianMatcher` per decoder layer;
* ``mask``: sigmoid BCE between each matched query's mask (bilinearly upsampled to the target resolution) and its
  target, mean over pixels, summed over matches / number of targets; ``dice``: the dice loss likewise (both are
  transformers' ``sigmoid_cross_entropy_loss`` and ``dice_loss``). Dense, not point-sampled: at our resolutions
  every pixel is cheap, and the loss is then exact and deterministic;
* ``cls``: cross-entropy over the ``K + 1`` logits, matched queries -> their class, the others -> no-object,
  whose weight is ``no_object_weight`` (Mask2Former's ``eos_coef``, 0.1); targets with label -1 (caption-only
  targets without a pseudo-label) are matched but not classified;
* ``ground``: the bidirectional grounding loss of caption-only supervision (:func:`grounding_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffdefect.stage2.matcher import HungarianMatcher
from diffdefect.stage2.model import Stage2Output

DEFAULT_WEIGHTS = {"mask": 1.0, "dice": 1.0, "cls": 0.5, "ground": 0.5}


@dataclass
class Grounding:
    """Caption words of a batch for the grounding loss.

    Attributes:
        words: ``(W, D)`` normalised embeddings of every caption's nouns.
        owner: ``(W,)`` int64, the batch index of the caption each word comes from.
        positive: ``(B, B)`` bool, image ``i`` and caption ``j`` match (same noun set; the diagonal where the
            caption has words).
    """

    words: torch.Tensor
    owner: torch.Tensor
    positive: torch.Tensor


def grounding_loss(mask_embeddings: torch.Tensor, grounding: Grounding, scale: torch.Tensor,
                   word_scale: float = 10.0) -> torch.Tensor:
    """Bidirectional image-caption grounding loss over a batch (ODISE's / OpenSeg's form).

    An image grounds a word by its best-matching masks: ``s(i, w) = sum_q softmax_q(word_scale cos(z_iq, e_w))
    cos(z_iq, e_w)``; an image-caption score is the mean over the caption's words, ``g(i, j)``. The loss is the
    cross-entropy of ``scale * g`` over captions for each image plus over images for each caption, with the
    (possibly several) positives of :attr:`Grounding.positive` as a uniform target.

    Args:
        mask_embeddings: ``(B, Q, D)``.
        grounding: Words, owners and positives.
        scale: Logit scale (the classifier's ``1 / tau``).
        word_scale: Sharpness of the soft assignment of words to masks.

    Returns:
        Scalar; 0 when fewer than two captions have words (nothing to contrast).
    """
    b = mask_embeddings.shape[0]
    has = torch.zeros(b, dtype=torch.bool, device=mask_embeddings.device)
    has[grounding.owner] = True
    if int(has.sum()) < 2:
        return mask_embeddings.sum() * 0.0
    z = F.normalize(mask_embeddings.float(), dim=-1)  # (B, Q, D)
    sim = torch.einsum("bqd,wd->bwq", z, grounding.words.to(z))  # (B, W, Q)
    att = torch.softmax(word_scale * sim, dim=-1)
    per_word = (att * sim).sum(-1)  # (B, W)
    counts = torch.zeros(b, device=z.device).index_add_(0, grounding.owner, torch.ones_like(grounding.owner, dtype=z.dtype))
    g = torch.zeros(b, b, device=z.device).index_add_(1, grounding.owner, per_word) / counts.clamp(min=1)  # (B, B)
    idx = has.nonzero().squeeze(1)
    logits = scale * g[idx][:, idx]  # (B', B') image x caption
    pos = grounding.positive[idx][:, idx].float()
    i2c = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
    c2i = -(pos / pos.sum(0, keepdim=True) * F.log_softmax(logits, 0)).sum(0).mean()
    return 0.5 * (i2c + c2i)


class SetCriterion(nn.Module):
    """Hungarian-matched mask, dice and class losses (+ grounding), per decoder layer.

    Args:
        matcher: The matcher (default: Mask2Former's costs 2 / 5 / 5).
        weights: Term weights (missing terms take :data:`DEFAULT_WEIGHTS`).
        no_object_weight: CE weight of the no-object class.
        deep_supervision: Also apply the loss to every earlier decoder layer (summed into ``aux``).
    """

    def __init__(
        self,
        matcher: HungarianMatcher | None = None,
        weights: dict[str, float] | None = None,
        no_object_weight: float = 0.1,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        self.matcher = matcher or HungarianMatcher()
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        self.no_object_weight = no_object_weight
        self.deep_supervision = deep_supervision

    def mask_losses(self, pred_masks: torch.Tensor, target_masks: list[torch.Tensor],
                    indices: list[tuple[torch.Tensor, torch.Tensor]], num_masks: float) -> dict[str, torch.Tensor]:
        """``mask`` (BCE) and ``dice`` of the matched pairs."""
        from transformers.models.mask2former.modeling_mask2former import dice_loss, sigmoid_cross_entropy_loss

        src, tgt = [], []
        for b, (qi, ti) in enumerate(indices):
            if len(qi) == 0:
                continue
            t = target_masks[b][ti.to(target_masks[b].device)]  # (n, H, W)
            s = F.interpolate(pred_masks[b, qi.to(pred_masks.device)][None], size=t.shape[-2:], mode="bilinear",
                              align_corners=False)[0]  # (n, H, W)
            src.append(s.flatten(1))
            tgt.append(t.flatten(1).to(s))
        if not src:
            zero = pred_masks.sum() * 0.0
            return {"mask": zero, "dice": zero}
        s, t = torch.cat(src), torch.cat(tgt)  # (N, H*W)
        return {"mask": sigmoid_cross_entropy_loss(s, t, num_masks), "dice": dice_loss(s, t, num_masks)}

    def class_loss(self, class_logits: torch.Tensor, target_labels: list[torch.Tensor],
                   indices: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """``cls``: CE with no-object for unmatched queries (weight ``no_object_weight``)."""
        b, q, k1 = class_logits.shape
        target = torch.full((b, q), k1 - 1, dtype=torch.long, device=class_logits.device)
        for i, (qi, ti) in enumerate(indices):
            target[i, qi.to(target.device)] = target_labels[i][ti.to(target_labels[i].device)].to(target.device)
        weight = torch.ones(k1, device=class_logits.device)
        weight[-1] = self.no_object_weight
        return F.cross_entropy(class_logits.float().transpose(1, 2), target, weight, ignore_index=-1)

    def layer_losses(self, out: Stage2Output, target_masks: list[torch.Tensor],
                     target_labels: list[torch.Tensor] | None, num_masks: float) -> dict[str, torch.Tensor]:
        """Matching and the mask / class terms of one decoder layer."""
        match_labels = None
        if target_labels is not None:  # unlabelled (-1) targets are matched on their masks only
            match_labels = [lab.clamp(min=0) for lab in target_labels]
            class_logits = out.class_logits
            if any((lab < 0).any() for lab in target_labels):
                class_logits = None
        else:
            class_logits = None
        indices = self.matcher(out.pred_masks, class_logits, target_masks, None if class_logits is None else match_labels)
        terms = self.mask_losses(out.pred_masks, target_masks, indices, num_masks)
        if target_labels is not None:
            terms["cls"] = self.class_loss(out.class_logits, target_labels, indices)
        return terms

    def forward(
        self,
        output: Stage2Output,
        target_masks: list[torch.Tensor],
        target_labels: list[torch.Tensor] | None,
        grounding: Grounding | None = None,
    ) -> dict[str, torch.Tensor]:
        """The loss terms.

        Args:
            output: The model output (with its ``aux`` layers).
            target_masks: Per image ``(N_b, H, W)`` {0, 1}.
            target_labels: Per image ``(N_b,)`` ids into the ``K`` classes of ``output.class_logits`` (-1: no
                label), or ``None`` (no class term: mask terms and grounding only).
            grounding: Caption words for the grounding term, or ``None``; its logits are scaled by the
                classifier's ``1 / tau`` carried in ``output.logit_scale`` (1 / 0.07 when absent).

        Returns:
            ``mask``, ``dice``, ``cls`` (with labels), ``ground`` (with grounding), ``aux`` (deep supervision:
            the weighted sum over earlier layers) and ``total`` (weighted sum of everything).
        """
        num_masks = float(max(1, sum(len(m) for m in target_masks)))
        terms = self.layer_losses(output, target_masks, target_labels, num_masks)
        if grounding is not None:
            scale = output.logit_scale
            if scale is None:
                scale = torch.tensor(1 / 0.07, device=output.pred_masks.device)
            terms["ground"] = grounding_loss(output.mask_embeddings, grounding, scale)
        total = sum(self.weights[k] * v for k, v in terms.items())
        if self.deep_supervision and output.aux:
            aux = sum(sum(self.weights[k] * v for k, v in self.layer_losses(a, target_masks, target_labels,
                                                                             num_masks).items())
                      for a in output.aux)
            terms["aux"] = aux
            total = total + aux
        terms["total"] = total
        return terms

"""Image-level score of the normal-reference memory, as PatchCore scores an image.

PatchCore's image score is the distance of the image's most anomalous patch to its nearest normal patch,
re-weighted by how typical that nearest neighbour is of its own neighbourhood in the bank (Roth et al., eq. 7:
``s = (1 - softmax(||m* - m_k||)_0) * s*`` over the ``k`` bank entries nearest to the matched entry ``m*``): a
match in a sparse region of the bank counts more. CLIP-MDC's anomaly map already carries the memory distance;
this term brings the same evidence to the image score (``CLIPMDC(memory_image_weight=...)``), where a top-k
mean of a smoothed, decoder-corrected map blurs it.
"""

from __future__ import annotations

import torch

from clipmdc.memory import NormalMemory


def memory_image_score(
    memory: NormalMemory, tokens: list[torch.Tensor], exclude: torch.Tensor | None = None, num_neighbors: int = 9
) -> torch.Tensor:
    """PatchCore's re-weighted max patch distance of each image, divided by the memory's scale.

    Args:
        memory: A built :class:`~clipmdc.memory.NormalMemory`.
        tokens: The frozen image encoder's token maps ``[(B, C_l, h_l, w_l)]``.
        exclude: ``(B,)`` image ids whose own bank entries are ignored (training), or ``None``.
        num_neighbors: ``k`` of the re-weighting (PatchCore's default 9).

    Returns:
        ``(B,)`` scores, about 1 for normal images; zeros while the bank is empty.
    """
    feats = memory.features(tokens)  # (B, C, h, w)
    B, C = feats.shape[:2]
    if not memory.ready:
        return feats.new_zeros(B)
    query = feats.flatten(2).transpose(1, 2)  # (B, N, C)
    bank = memory.bank.to(query.dtype)  # (M, C)
    d2 = query.pow(2).sum(-1, keepdim=True) - 2.0 * query @ bank.T + bank.pow(2).sum(-1)  # (B, N, M)
    if exclude is not None:
        own = (memory.owner[None, :] == exclude.to(memory.owner.device)[:, None]).unsqueeze(1)  # (B, 1, M)
        d2 = torch.where(own.all(-1, keepdim=True), d2, d2.masked_fill(own, float("inf")))
    nearest_d2, nearest = d2.min(-1)  # (B, N), (B, N)
    patch = nearest_d2.argmax(1)  # (B,) the most anomalous patch
    batch = torch.arange(B, device=query.device)
    score = nearest_d2[batch, patch].clamp_min(0.0).sqrt()  # (B,)
    matched = bank[nearest[batch, patch]]  # (B, C) its nearest normal entry m*
    k = min(num_neighbors, bank.shape[0])
    to_bank = torch.linalg.vector_norm(matched[:, None] - bank[None], dim=-1)  # (B, M)
    support = to_bank.topk(k, largest=False).indices  # (B, k) m*'s neighbours in the bank (m* first)
    dist = torch.linalg.vector_norm(query[batch, patch][:, None] - bank[support], dim=-1)  # (B, k)
    weight = 1.0 - dist.softmax(-1)[:, 0]  # (B,)
    return weight * score / memory.scale

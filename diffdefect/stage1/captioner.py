"""The implicit captioner: a two-layer MLP from a frozen CLIP image embedding to the text-embedding space.

``t_imp = W2 GELU(W1 v + b1) + b2`` (paper, Sec. "Implicit Captioner"), ``v = V(I)`` the frozen CLIP image
embedding (512-d for ViT-B), ``t_imp`` a pseudo text embedding (768-d, CLIP-L text space). With the default
hidden width 256 it has ``512*256 + 256 + 256*768 + 768 = 328,704`` parameters (the paper's "0.3M").

It lets stage 2 extract text-conditioned diffusion features from images without captions: stage 1 trains it
with the cosine alignment loss and through the diffusion loss (half of the samples are conditioned on it).
"""

from __future__ import annotations

import torch
from torch import nn


class ImplicitCaptioner(nn.Module):
    """``W2 GELU(W1 v + b1) + b2``.

    Args:
        in_dim: Image-embedding size (512 for CLIP ViT-B/16).
        out_dim: Text-embedding size (768 for CLIP ViT-L/14's text encoder).
        hidden_dim: Hidden width (256 gives 328,704 parameters at 512 -> 768).
    """

    def __init__(self, in_dim: int = 512, out_dim: int = 768, hidden_dim: int = 256) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.hidden_dim = in_dim, out_dim, hidden_dim
        self.fc1 = nn.Linear(in_dim, hidden_dim)  # W1, b1
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim)  # W2, b2

    @staticmethod
    def num_parameters(in_dim: int = 512, out_dim: int = 768, hidden_dim: int = 256) -> int:
        """Closed-form parameter count."""
        return in_dim * hidden_dim + hidden_dim + hidden_dim * out_dim + out_dim

    def forward(self, image_embedding: torch.Tensor) -> torch.Tensor:
        """Maps image embeddings to pseudo text embeddings.

        Args:
            image_embedding: ``(B, in_dim)`` frozen CLIP image embeddings ``v``.

        Returns:
            ``(B, out_dim)`` pseudo text embeddings ``t_imp`` (not normalised).
        """
        h = self.act(self.fc1(image_embedding))  # (B, hidden)
        return self.fc2(h)  # (B, out_dim)

"""How text (or pseudo text) becomes the U-Net's cross-attention context.

Per sample, the condition is the real text embedding ``e_T`` or the implicit captioner's pseudo embedding
``t_imp``, chosen at random with ``p_pseudo = 0.5`` (the paper's random conditioning); samples without a caption
always use ``t_imp``. Optionally, with probability ``cfg_dropout`` the condition is replaced by the null context
(classifier-free guidance training; the paper does not mention it, so it is off by default).

Context layouts (``context``):

* ``"token"`` (default, the paper's): the chosen 768-d vector is a one-token context ``(B, 1, D)``. Both ``e_T``
  and ``t_imp`` are L2-normalised and scaled to norm ``sqrt(D)`` (unit RMS per element) first: ``t_imp`` is
  trained with a cosine loss, so its norm is arbitrary, and the U-Net must not be able to tell real from pseudo
  by scale. The null context is the zero token.
* ``"sequence"``: ``[vector ; CLIP token sequence]`` ``(B, 1 + L, D)`` with an attention mask: samples conditioned
  on real text attend to the vector and the caption's tokens (padding masked), pseudo-conditioned samples to
  the vector only (there is no token sequence for an image), null samples to the zero token only. Needs a text
  encoder with token outputs (:class:`~common.encoders.clip_text.CLIPTextEncoder`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CONTEXTS = ("token", "sequence")


@dataclass
class Conditioning:
    """A batch's cross-attention context.

    Attributes:
        context: ``(B, L, D)``.
        mask: ``(B, L)`` bool attention mask (True = attend), or ``None`` (attend to all; ``"token"`` layout).
        use_pseudo: ``(B,)`` bool, conditioned on ``t_imp`` rather than ``e_T``.
        dropped: ``(B,)`` bool, replaced by the null context (CFG dropout).
    """

    context: torch.Tensor
    mask: torch.Tensor | None
    use_pseudo: torch.Tensor
    dropped: torch.Tensor


class ConditioningMixer(nn.Module):
    """Random text / pseudo-text mixing, CFG dropout and the context layout. No parameters.

    Args:
        p_pseudo: Probability of conditioning a captioned sample on ``t_imp`` (paper: 0.5).
        cfg_dropout: Probability of the null context (0 disables classifier-free-guidance training).
        context: ``"token"`` or ``"sequence"`` (see the module docstring).
    """

    def __init__(self, p_pseudo: float = 0.5, cfg_dropout: float = 0.0, context: str = "token") -> None:
        super().__init__()
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
        if not (0.0 <= p_pseudo <= 1.0 and 0.0 <= cfg_dropout < 1.0):
            raise ValueError(f"p_pseudo must be in [0, 1] and cfg_dropout in [0, 1), got {p_pseudo}, {cfg_dropout}")
        self.p_pseudo = p_pseudo
        self.cfg_dropout = cfg_dropout
        self.context = context

    @staticmethod
    def scale(vec: torch.Tensor) -> torch.Tensor:
        """``(..., D)`` -> L2-normalised times ``sqrt(D)``."""
        return F.normalize(vec, dim=-1) * vec.shape[-1] ** 0.5

    def build(
        self,
        vector: torch.Tensor,
        tokens: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        use_tokens: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Assembles the context from chosen vectors (deterministic; used in training and sampling).

        Args:
            vector: ``(B, D)`` chosen embeddings (``e_T`` or ``t_imp``), unnormalised.
            tokens: ``(B, L, D)`` caption token states (``"sequence"`` layout only).
            token_mask: ``(B, L)`` bool, real tokens.
            use_tokens: ``(B,)`` bool, which samples see their tokens (default: all).
            drop: ``(B,)`` bool, which samples get the null context (default: none).

        Returns:
            ``context`` ``(B, L', D)`` and ``mask`` ``(B, L')`` or ``None``.
        """
        b = vector.shape[0]
        device = vector.device
        drop = torch.zeros(b, dtype=torch.bool, device=device) if drop is None else drop
        head = self.scale(vector) * (~drop)[:, None].to(vector.dtype)  # (B, D), zero where dropped
        if self.context == "token":
            return head[:, None, :], None  # (B, 1, D)
        if tokens is None:
            raise ValueError("the 'sequence' context needs caption token states (a CLIPTextEncoder or precomputed tokens)")
        use_tokens = torch.ones(b, dtype=torch.bool, device=device) if use_tokens is None else use_tokens
        token_mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=device) if token_mask is None else token_mask
        context = torch.cat([head[:, None, :], tokens.to(head.dtype)], dim=1)  # (B, 1 + L, D)
        keep = token_mask.bool() & (use_tokens & ~drop)[:, None]  # (B, L)
        mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=device), keep], dim=1)  # (B, 1 + L)
        return context, mask

    def forward(
        self,
        text: torch.Tensor,
        pseudo: torch.Tensor,
        has_text: torch.Tensor,
        tokens: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        train: bool = True,
    ) -> Conditioning:
        """Chooses real or pseudo text per sample and builds the context.

        Args:
            text: ``(B, D)`` real text embeddings ``e_T`` (rows where ``has_text`` is False are ignored).
            pseudo: ``(B, D)`` pseudo embeddings ``t_imp``.
            has_text: ``(B,)`` bool, the sample has a caption.
            tokens: ``(B, L, D)`` caption token states (``"sequence"`` layout).
            token_mask: ``(B, L)`` bool.
            generator: Random generator of the choices (two ``(B,)`` uniform draws, always made, so the random
                stream does not depend on the settings).
            train: Draw at random (True) or condition every captioned sample on its text, without dropout
                (False: evaluation).

        Returns:
            :class:`Conditioning`.
        """
        b, device = text.shape[0], text.device
        u_pseudo = torch.rand(b, generator=generator, device=device)  # (B,)
        u_drop = torch.rand(b, generator=generator, device=device)  # (B,)
        if train:
            use_pseudo = (u_pseudo < self.p_pseudo) | ~has_text
            dropped = u_drop < self.cfg_dropout
        else:
            use_pseudo = ~has_text
            dropped = torch.zeros(b, dtype=torch.bool, device=device)
        vector = torch.where(use_pseudo[:, None], pseudo, text.to(pseudo.dtype))  # (B, D)
        context, mask = self.build(vector, tokens, token_mask, use_tokens=~use_pseudo, drop=dropped)
        return Conditioning(context=context, mask=mask, use_pseudo=use_pseudo, dropped=dropped)

    def null_context(self, batch_size: int, dim: int, seq_len: int = 0, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
        """The unconditional context for classifier-free guidance: ``(B, L', D)`` and its mask."""
        vector = torch.zeros(batch_size, dim, device=device)
        drop = torch.ones(batch_size, dtype=torch.bool, device=device)
        if self.context == "token":
            return self.build(vector, drop=drop)
        tokens = torch.zeros(batch_size, seq_len, dim, device=device)
        return self.build(vector, tokens, drop=drop)

    def extra_repr(self) -> str:
        return f"p_pseudo={self.p_pseudo}, cfg_dropout={self.cfg_dropout}, context={self.context!r}"

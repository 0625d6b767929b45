"""Trainable parts of CLIP-MDC between the frozen encoders and the outputs: adapters and the fusion decoder.

All of it is vocabulary-agnostic (no layer has ``K`` channels), so the defect-type vocabulary can change at
test time without retraining: class-dependent outputs are always similarities to text embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Adapter(nn.Module):
    """Small trainable map of encoder features into the text-embedding space (acts on the last dim).

    With ``in_dim == out_dim`` it is a residual bottleneck MLP whose output layer starts near zero (std 1e-3),
    so it starts as (almost) the identity: the frozen CLIP joint space, i.e. zero-shot behaviour; otherwise a
    linear projection followed by the same residual MLP.

    Args:
        in_dim: Input features.
        out_dim: Output features (the text embedding size).
        hidden: Bottleneck width.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.proj = nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim)
        self.mlp = nn.Sequential(
            nn.LayerNorm(out_dim), nn.Linear(out_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim)
        )
        nn.init.normal_(self.mlp[-1].weight, std=1e-3)  # ~identity, yet gradients reach the inner layers
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_dim)`` -> ``(..., out_dim)``."""
        x = self.proj(x)
        return x + self.mlp(x)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim, h, w)`` -> ``(B, out_dim, h, w)``."""
        return self(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # explicit perms: ONNX rejects negative ones


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.GroupNorm(min(8, cout), cout),
        nn.GELU(),
    )


class FusionDecoder(nn.Module):
    """Fuses text-similarity maps, adapted patch tokens and backbone features at one resolution.

    Inputs are resized (bilinear) to the output size, projected to ``width`` channels, concatenated and
    refined by two 3x3 conv blocks.

    Args:
        num_layers: Number of token layers ``L``.
        embed_dim: Channels of the adapted tokens (text embedding size ``D``).
        evidence_channels: Similarity-evidence channels per token layer.
        backbone_channels: Channels of each backbone level (empty: no backbone).
        width: Decoder width ``F``.
        extra_evidence: Channels of further evidence maps appended after the per-layer ones (e.g. the
            normal-memory distance).
    """

    def __init__(
        self,
        num_layers: int,
        embed_dim: int,
        evidence_channels: int,
        backbone_channels: Sequence[int],
        width: int = 64,
        extra_evidence: int = 0,
    ) -> None:
        super().__init__()
        self.token_proj = nn.ModuleList(nn.Conv2d(embed_dim, width, 1) for _ in range(num_layers))
        self.backbone_proj = nn.ModuleList(nn.Conv2d(c, width, 1) for c in backbone_channels)
        cin = width * (1 + (1 if backbone_channels else 0)) + evidence_channels * num_layers + extra_evidence
        self.fuse = nn.Sequential(_conv_block(cin, width), _conv_block(width, width))

    def forward(
        self,
        tokens: Sequence[torch.Tensor],
        evidence: Sequence[torch.Tensor],
        backbone: Sequence[torch.Tensor],
        size: tuple[int, int],
    ) -> torch.Tensor:
        """Decodes.

        Args:
            tokens: ``L`` adapted token maps ``(B, D, h_l, w_l)``.
            evidence: ``L`` similarity-evidence maps ``(B, E, h_l, w_l)``, then the extra evidence maps.
            backbone: Backbone maps ``(B, C_j, H_j, W_j)`` (may be empty).
            size: Output ``(h, w)``.

        Returns:
            ``(B, F, h, w)`` fused features.
        """

        def up(x: torch.Tensor) -> torch.Tensor:
            return (
                x
                if tuple(x.shape[-2:]) == size
                else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            )

        parts = [sum(up(p(t)) for p, t in zip(self.token_proj, tokens, strict=True))]  # (B, F, h, w)
        if backbone:
            parts.append(
                sum(up(p(b)) for p, b in zip(self.backbone_proj, backbone, strict=True))
            )  # (B, F, h, w)
        parts += [up(e) for e in evidence]  # L x (B, E, h, w)
        return self.fuse(torch.cat(parts, 1))


def factorized_type_logits(anomaly_logit: torch.Tensor, defect_logits: torch.Tensor) -> torch.Tensor:
    """Defect-type log-probabilities from an anomaly logit and defect-type similarities.

    ``log p(good) = log(1 - sigmoid(a))``; ``log p(k) = log sigmoid(a) + log_softmax(defect_logits)_k``.

    Args:
        anomaly_logit: ``(B, 1, ...)``.
        defect_logits: ``(B, K, ...)`` (``K`` may be 0).

    Returns:
        ``(B, K+1, ...)`` log-probabilities (valid logits for softmax / cross-entropy).
    """
    normal = F.logsigmoid(-anomaly_logit)
    if defect_logits.shape[1] == 0:
        return normal
    return torch.cat([normal, F.logsigmoid(anomaly_logit) + defect_logits.log_softmax(1)], 1)


def topk_mean(logit_map: torch.Tensor, topk: float) -> torch.Tensor:
    """Mean of the ``topk`` largest values per sample (a fraction of the pixels when < 1, else a count).

    Args:
        logit_map: ``(B, 1, h, w)``.

    Returns:
        ``(B,)``.
    """
    flat = logit_map.flatten(1)  # (B, h*w)
    k = int(topk) if topk >= 1 else max(1, round(topk * int(flat.shape[1])))  # int(): a constant when traced
    return flat.topk(min(k, flat.shape[1]), dim=1).values.mean(1)


def gaussian_kernel1d(sigma: float, radius: int) -> list[float]:
    """Normalised 1-D Gaussian taps ``(2 * radius + 1,)`` as Python floats (constants when traced/exported)."""
    taps = [math.exp(-(t * t) / (2.0 * sigma * sigma)) for t in range(-radius, radius + 1)]
    total = sum(taps)
    return [v / total for v in taps]


def gaussian_smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` maps, reflect-padded (the peers' anomaly-map smoothing).

    Written here because torchvision's ``gaussian_blur`` convolves with the full 2-D kernel (33x33 taps at
    sigma 4), about 16x the work of two 1-D passes at the output resolution.

    Exportable: the kernel size and taps depend only on ``sigma`` and the map's (static) height and width, so
    they are Python numbers when the model is traced, and the kernel is a constant of the ONNX graph (a kernel
    built from the runtime shape made the export fail with "convolution for kernel of unknown shape").

    Args:
        x: Maps to smooth.
        sigma: Standard deviation in pixels; ``<= 0`` returns ``x``. The kernel spans +-4 sigma, cut to the map.
    """
    if sigma <= 0:
        return x
    C, H, W = (int(v) for v in x.shape[1:])  # int(): constants when traced (C, H, W are fixed per model input)
    radius = min(int(4.0 * sigma + 0.5), (min(H, W) - 1) // 2)  # reflect padding needs radius < side
    if radius < 1:
        return x
    taps = torch.tensor(gaussian_kernel1d(float(sigma), radius), dtype=x.dtype, device=x.device)  # (2r+1,)
    row = taps.view(1, 1, 1, -1).repeat(C, 1, 1, 1)  # (C, 1, 1, 2r+1)
    col = taps.view(1, 1, -1, 1).repeat(C, 1, 1, 1)  # (C, 1, 2r+1, 1)
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")  # (B, C, H+2r, W+2r)
    x = F.conv2d(x, row, groups=C)  # (B, C, H+2r, W)
    return F.conv2d(x, col, groups=C)  # (B, C, H, W)

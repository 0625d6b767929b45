"""The trainable stage-2 mask generator: a Mask2Former head built from transformers' parts.

Parts reused from transformers (their constructors take sizes or a ``Mask2FormerConfig``, which we build small):

* pixel decoder ``"fpn"`` (the paper's): ``modeling_maskformer.MaskFormerPixelDecoder`` (the FPN of MaskFormer:
  a 3x3 stem on the coarsest level, then per finer level a 1x1 lateral + nearest upsampling + 3x3 conv, and a
  3x3 mask projection on the finest map), ``feature_size``-d (256);
* pixel decoder ``"msdeform"`` (option): ``modeling_mask2former.Mask2FormerPixelDecoder``, Mask2Former's
  multi-scale deformable-attention encoder on the three coarsest levels plus FPN levels down to the finest;
* transformer decoder: ``modeling_mask2former.Mask2FormerTransformerModule`` (learnable queries, masked
  cross-attention cycling over three feature levels, self-attention, FFN; the mask of every layer comes from
  ``Mask2FormerMaskPredictor``, an MLP on the query dotted with the per-pixel mask features).

Written here (glue), and why:

* :class:`LevelAdapter`: an optional trainable bottleneck per input level (1x1 in, ``adapter_blocks`` 3x3 convs,
  1x1 to ``feature_size``). The paper "decodes" the diffusion features into pixel-aligned representations
  before its FPN but does not specify the trainable part; the adapters are that part here and bring the full
  preset to the paper's 45M trainable parameters (about 24M adapters, 4M FPN, 14.5M decoder; the paper gives no
  breakdown);
* the FPN forward: the same calls as ``MaskFormerFPNModel.forward``, but keeping the stem's output too, because
  Mask2Former's decoder attends to the three maps *above* the mask-feature level (strides 32/16/8 around stride
  4 masks) and ``MaskFormerFPNModel`` returns only the finer ones. With fewer than four levels the decoder's
  three attention levels cycle over the available ones;
* the weight init (transformers does it in ``Mask2FormerPreTrainedModel._init_weights``, which needs a
  ``PreTrainedModel``; the same rules are applied here to the parts we use);
* the mask-embedding projection: each query's state -> the ``embed_dim``-d text space (the paper's ``z_i``).

:data:`PRESETS`: ``full`` (the paper: 256-d FPN, 100 queries, 9 masked-attention layers, FFN 2048, about 45M
parameters on SD-1.5's features), ``small`` (the CPU benchmark), ``tiny`` (tests).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

PRESETS: dict[str, dict[str, Any]] = {
    "full": {"feature_size": 256, "hidden_dim": 256, "num_queries": 100, "decoder_layers": 10, "num_heads": 8,
             "dim_feedforward": 2048, "adapter_dim": 512, "adapter_blocks": 2, "encoder_layers": 6,
             "encoder_feedforward_dim": 1024},
    "small": {"feature_size": 64, "hidden_dim": 64, "num_queries": 16, "decoder_layers": 4, "num_heads": 4,
              "dim_feedforward": 256, "adapter_dim": 64, "adapter_blocks": 1, "encoder_layers": 2,
              "encoder_feedforward_dim": 128},
    "tiny": {"feature_size": 32, "hidden_dim": 32, "num_queries": 8, "decoder_layers": 3, "num_heads": 2,
             "dim_feedforward": 64, "adapter_dim": None, "adapter_blocks": 1, "encoder_layers": 1,
             "encoder_feedforward_dim": 64},
}
PIXEL_DECODERS = ("fpn", "msdeform")


def head_config(preset: str = "full", **overrides: Any) -> dict[str, Any]:
    """The :class:`Mask2FormerHead` keyword arguments of ``preset`` with ``overrides`` applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown head preset {preset!r}; choose from {sorted(PRESETS)}")
    return {**PRESETS[preset], **overrides}


def _groups(channels: int) -> int:
    return math.gcd(32, channels)


def _conv(cin: int, cout: int, k: int, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.GroupNorm(_groups(cout), cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class LevelAdapter(nn.Module):
    """Bottleneck adapter of one feature level: 1x1 ``cin -> width``, ``blocks`` x 3x3 ``width -> width``,
    1x1 ``width -> cout`` (GroupNorm after each conv, ReLU between)."""

    def __init__(self, cin: int, cout: int, width: int, blocks: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(_conv(cin, width, 1), *[_conv(width, width, 3) for _ in range(blocks)],
                                 _conv(width, cout, 1, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, cout, h, w)


@dataclass
class HeadOutput:
    """What the head returns.

    Attributes:
        pred_masks: ``(B, Q, h, w)`` mask logits of the last decoder layer at the mask-feature resolution.
        mask_embeddings: ``(B, Q, D)`` query embeddings in the text space (last layer).
        aux: ``(pred_masks, mask_embeddings)`` of the earlier decoder layers (deep supervision).
    """

    pred_masks: torch.Tensor
    mask_embeddings: torch.Tensor
    aux: list[tuple[torch.Tensor, torch.Tensor]]


class Mask2FormerHead(nn.Module):
    """Pixel decoder + masked-attention transformer decoder + projection to the text space.

    Args:
        in_channels: Channels of the input levels, fine to coarse (the extractor's ``channels``).
        in_strides: Pixel strides of the input levels, fine to coarse (``msdeform`` needs them).
        embed_dim: Size ``D`` of the mask embeddings (the text-embedding size).
        pixel_decoder: ``"fpn"`` (paper) or ``"msdeform"``.
        feature_size: Width of the pixel decoder (and of the mask features).
        hidden_dim: Width of the transformer decoder.
        num_queries: Number of queries ``Q``.
        decoder_layers: Mask2Former's ``decoder_layers`` (masked-attention layers + 1: the first mask is
            predicted from the raw queries).
        num_heads: Attention heads.
        dim_feedforward: FFN width of the decoder layers.
        adapter_dim: Width of the per-level :class:`LevelAdapter` (``None``: no adapters, the FPN laterals take
            the raw features).
        adapter_blocks: 3x3 convs per adapter.
        encoder_layers: Deformable encoder layers (``msdeform`` only).
        encoder_feedforward_dim: Their FFN width.
        pre_norm: Pre-norm decoder layers.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        embed_dim: int,
        pixel_decoder: str = "fpn",
        feature_size: int = 256,
        hidden_dim: int = 256,
        num_queries: int = 100,
        decoder_layers: int = 10,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        adapter_dim: int | None = 512,
        adapter_blocks: int = 2,
        encoder_layers: int = 6,
        encoder_feedforward_dim: int = 1024,
        pre_norm: bool = False,
    ) -> None:
        super().__init__()
        from transformers import Mask2FormerConfig
        from transformers.models.mask2former.modeling_mask2former import (
            Mask2FormerPixelDecoder,
            Mask2FormerTransformerModule,
        )
        from transformers.models.maskformer.modeling_maskformer import MaskFormerPixelDecoder

        if pixel_decoder not in PIXEL_DECODERS:
            raise ValueError(f"pixel_decoder must be one of {PIXEL_DECODERS}, got {pixel_decoder!r}")
        if feature_size % 32:
            raise ValueError(f"feature_size must be a multiple of 32 (GroupNorm(32) in the FPN), got {feature_size}")
        chans, strides = [int(c) for c in in_channels], [int(s) for s in in_strides]
        if pixel_decoder == "msdeform" and len(chans) < 3:
            raise ValueError("the msdeform pixel decoder needs at least 3 feature levels")
        self.in_channels, self.in_strides = chans, strides
        self.pixel_decoder_type = pixel_decoder
        self.num_queries = num_queries
        self.embed_dim = embed_dim
        self.adapters = None
        if adapter_dim:
            self.adapters = nn.ModuleList(LevelAdapter(c, feature_size, adapter_dim, adapter_blocks) for c in chans)
            chans = [feature_size] * len(chans)
        # dropout 0: transformers' decoder also uses config.dropout as its layer-drop probability
        self.config = Mask2FormerConfig(
            feature_size=feature_size, mask_feature_size=feature_size, hidden_dim=hidden_dim, num_queries=num_queries,
            decoder_layers=decoder_layers, num_attention_heads=num_heads, dim_feedforward=dim_feedforward,
            encoder_layers=encoder_layers, encoder_feedforward_dim=encoder_feedforward_dim, pre_norm=pre_norm,
            dropout=0.0, feature_strides=strides, common_stride=strides[0], enforce_input_projection=False,
        )
        if pixel_decoder == "fpn":
            self.pixel_decoder = MaskFormerPixelDecoder(
                chans[-1], chans[:-1], feature_size=feature_size, mask_feature_size=feature_size
            )
        else:
            self.pixel_decoder = Mask2FormerPixelDecoder(self.config, feature_channels=chans)
        self.transformer = Mask2FormerTransformerModule(in_features=feature_size, config=self.config)
        self.embed = nn.Linear(hidden_dim, embed_dim)  # query state -> mask embedding z_i in the text space
        self._init_weights()

    @classmethod
    def from_preset(cls, preset: str, in_channels: Sequence[int], in_strides: Sequence[int], embed_dim: int,
                    **overrides: Any) -> Mask2FormerHead:
        """Builds ``preset`` (see :data:`PRESETS`) for the given input levels."""
        return cls(in_channels, in_strides, embed_dim, **head_config(preset, **overrides))

    # ------------------------------------------------------------------ init (transformers' rules)
    def _init_weights(self) -> None:
        from transformers.models.mask2former.modeling_mask2former import (
            Mask2FormerMaskedAttentionDecoderLayer,
            Mask2FormerPixelDecoder,
            Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
        )

        xavier = self.config.init_xavier_std
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, Mask2FormerMaskedAttentionDecoderLayer):
                    for p in m.parameters():
                        if p.dim() > 1:
                            nn.init.xavier_uniform_(p, gain=xavier)
                    nn.init.zeros_(m.cross_attn.in_proj_bias)
                elif isinstance(m, Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention):
                    nn.init.zeros_(m.sampling_offsets.weight)
                    thetas = torch.arange(m.n_heads).float() * (2.0 * math.pi / m.n_heads)
                    grid = torch.stack([thetas.cos(), thetas.sin()], -1)
                    grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(m.n_heads, 1, 1, 2)
                    grid = grid.repeat(1, m.n_levels, m.n_points, 1)
                    for i in range(m.n_points):
                        grid[:, :, i, :] *= i + 1
                    m.sampling_offsets.bias.copy_(grid.view(-1))
                    nn.init.zeros_(m.attention_weights.weight)
                    nn.init.zeros_(m.attention_weights.bias)
                    for lin in (m.value_proj, m.output_proj):
                        nn.init.xavier_uniform_(lin.weight)
                        nn.init.zeros_(lin.bias)
                elif isinstance(m, Mask2FormerPixelDecoder):
                    nn.init.normal_(m.level_embed, std=1.0)  # an uninitialised torch.Tensor otherwise
                elif isinstance(m, nn.Embedding):
                    nn.init.normal_(m.weight, std=1.0)
            for proj in self.transformer.input_projections:
                if isinstance(proj, nn.Conv2d):
                    nn.init.xavier_uniform_(proj.weight, gain=xavier)
                    nn.init.zeros_(proj.bias)

    # ------------------------------------------------------------------ forward
    def pixel_features(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Pixel decoder: returns the decoder's three attention levels (coarse -> fine) and the mask features
        ``(B, feature_size, h_0, w_0)`` at the finest level's resolution."""
        if self.adapters is not None:
            features = [a(f) for a, f in zip(self.adapters, features, strict=True)]  # [(B, F, h_l, w_l)]
        if self.pixel_decoder_type == "msdeform":
            out = self.pixel_decoder(features)
            return list(out.multi_scale_features), out.mask_features
        fpn = self.pixel_decoder.fpn  # MaskFormerFPNModel.forward, keeping the stem output
        x = fpn.stem(features[-1])  # (B, F, h_L, w_L) coarsest
        outs = [x]
        for layer, left in zip(fpn.layers, features[:-1][::-1], strict=True):
            x = layer(x, left)  # upsample x to left's size, add its 1x1 lateral, 3x3 conv
            outs.append(x)
        mask_features = self.pixel_decoder.mask_projection(outs[-1])  # (B, F, h_0, w_0)
        levels = outs[:-1] or outs  # maps above the mask-feature level (coarse -> fine)
        levels = [levels[max(0, len(levels) - 3 + i) % len(levels)] for i in range(3)]  # three, cycled if fewer
        return levels, mask_features

    def forward(self, features: list[torch.Tensor]) -> HeadOutput:
        """Masks and mask embeddings from multi-scale features.

        Args:
            features: ``[(B, in_channels[l], H / in_strides[l], W / in_strides[l])]``, fine to coarse.

        Returns:
            :class:`HeadOutput` with ``pred_masks`` ``(B, Q, H / s_0, W / s_0)`` and ``mask_embeddings`` ``(B, Q, D)``.
        """
        levels, mask_features = self.pixel_features(features)  # 3 x (B, F, h, w); (B, F, h_0, w_0)
        out = self.transformer(levels, mask_features)
        states = [s.transpose(0, 1) for s in out.intermediate_hidden_states]  # per layer (B, Q, hidden)
        masks = list(out.masks_queries_logits)  # per layer (B, Q, h_0, w_0)
        embeddings = [self.embed(s) for s in states]  # per layer (B, Q, D)
        aux = list(zip(masks[:-1], embeddings[:-1], strict=True))
        return HeadOutput(pred_masks=masks[-1], mask_embeddings=embeddings[-1], aux=aux)

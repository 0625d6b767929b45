"""``Stage2Model``: frozen features -> Mask2Former head -> open-vocabulary class logits, one typed output.

Parts (injected, so YAML chooses them): a frozen extractor behind the one frozen-feature interface,
:class:`~common.encoders.image.ImageEncoder` (:class:`~diffdefect.stage2.extractor.DiffusionFeatures`, the paper's,
or any frozen backbone: :class:`~common.encoders.image.EfficientNetFeatures`, :class:`~common.encoders.TimmImage`),
the trainable :class:`~diffdefect.stage2.head.Mask2FormerHead` built here from a preset for the extractor's
levels (the head's input widths are a property of the extractor, so YAML gives the preset and overrides, not
the head object), the :class:`~diffdefect.stage2.classifier.OpenVocabClassifier` (learnable tau and void embedding;
its text encoder is the extractor's unless given), and an optional :class:`~diffdefect.stage2.cache.FeatureCache`.

``forward(image, text_embeddings)`` returns :class:`Stage2Output`, the same in training and evaluation; the loss
is :class:`~diffdefect.stage2.criterion.SetCriterion`. The vocabulary is an argument of ``forward`` (its ``(K, D)`` text
embeddings), never a parameter: any list of names works at test time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from common.encoders.image import ImageEncoder
from diffdefect.stage2.cache import FeatureCache
from diffdefect.stage2.classifier import OpenVocabClassifier
from diffdefect.stage2.head import Mask2FormerHead, head_config


@dataclass
class Stage2Output:
    """What :class:`Stage2Model` returns.

    Attributes:
        pred_masks: ``(B, Q, h, w)`` mask logits at the head's mask resolution (the extractor's finest stride).
        class_logits: ``(B, Q, K + 1)`` class logits, no-object last.
        mask_embeddings: ``(B, Q, D)`` query embeddings in the text space.
        aux: The same for the earlier decoder layers (deep supervision; ``aux`` of those is empty).
        logit_scale: The classifier's ``1 / tau`` (scalar) the logits were computed with, for losses that score
            embeddings against text themselves (grounding); ``None`` when not known.
    """

    pred_masks: torch.Tensor
    class_logits: torch.Tensor
    mask_embeddings: torch.Tensor
    aux: list[Stage2Output] = field(default_factory=list)
    logit_scale: torch.Tensor | None = None


class Stage2Model(nn.Module):
    """The stage-2 open-vocabulary mask generator.

    Args:
        extractor: The frozen feature extractor.
        head: Head preset name (``"full"``, ``"small"``, ``"tiny"``; :data:`~diffdefect.stage2.head.PRESETS`).
        head_overrides: :class:`~diffdefect.stage2.head.Mask2FormerHead` arguments replacing the preset's
            (e.g. ``{"pixel_decoder": "msdeform"}``, ``{"num_queries": 50}``).
        classifier: The open-vocabulary classifier; ``None`` builds one on the extractor's text encoder.
        cache: Feature cache (``None``: the extractor runs on every batch).
    """

    def __init__(
        self,
        extractor: ImageEncoder,
        head: str = "full",
        head_overrides: dict[str, Any] | None = None,
        classifier: OpenVocabClassifier | None = None,
        cache: FeatureCache | None = None,
    ) -> None:
        super().__init__()
        self.extractor = extractor
        if classifier is None:
            if extractor.text_encoder is None:
                raise ValueError("give the classifier a text encoder: the extractor has none")
            classifier = OpenVocabClassifier(int(extractor.text_encoder.dim))
        if classifier.text_encoder is None and extractor.text_encoder is not None:
            classifier.set_text_encoder(extractor.text_encoder)
        self.classifier = classifier
        self.head_preset = head
        cfg = head_config(head, **(head_overrides or {}))
        self.head = Mask2FormerHead(extractor.feature_dims, extractor.feature_strides, classifier.embed_dim, **cfg)
        self.cache = cache

    @property
    def mask_stride(self) -> int:
        """Pixel stride of ``pred_masks``."""
        return int(self.extractor.feature_strides[0])

    def extract(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The extractor's maps ``[(B, C_l, H / s_l, W / s_l)]``, float32, without its global embedding."""
        m = self.extractor.size_multiple
        if image.shape[-2] % m or image.shape[-1] % m:
            raise ValueError(f"image sides {tuple(image.shape[-2:])} must be multiples of {m} (the coarsest "
                             "feature stride)")
        return [f.float() for f in self.extractor(image, embedding=False).tokens]

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Frozen features ``[(B, C_l, H / s_l, W / s_l)]`` (from the cache when one is set)."""
        if self.cache is None:
            return self.extract(image)
        return self.cache.get_or_compute(image, self.extract, self.extractor.cache_key())

    def forward(self, image: torch.Tensor, text_embeddings: torch.Tensor) -> Stage2Output:
        """Masks and class logits for a vocabulary.

        Args:
            image: ``(B, 3, H, W)`` in [0, 1] (sides multiples of the extractor's coarsest stride).
            text_embeddings: ``(K, D)`` class embeddings (:meth:`OpenVocabClassifier.encode_names`).

        Returns:
            :class:`Stage2Output`.
        """
        feats = self.features(image)  # fine -> coarse [(B, C_l, h_l, w_l)], no gradient
        out = self.head(feats)  # (B, Q, h_0, w_0) masks, (B, Q, D) embeddings (+ aux layers)
        logits = self.classifier(out.mask_embeddings, text_embeddings)  # (B, Q, K + 1)
        aux = [Stage2Output(m, self.classifier(e, text_embeddings), e) for m, e in out.aux]
        return Stage2Output(out.pred_masks, logits, out.mask_embeddings, aux, self.classifier.scale)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The head's and the classifier's parameters (the extractor and text encoder are frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

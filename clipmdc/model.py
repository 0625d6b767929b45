"""CLIP-MDC, the network: frozen image/text encoders, trainable adapters, backbone and fusion decoder.

Data flow for a batch of ``B`` images ``(B, 3, H, W)`` in [0, 1] and a vocabulary of ``K + 1`` classes:

1. the frozen image encoder gives patch tokens of ``L`` layers and a global embedding; trainable adapters map
   them into the text space (``D``);
2. per layer, cosine similarities (times a learned inverse temperature) to the normal-class text embedding
   and to the class-agnostic "anomalous" embedding give the normal-vs-anomalous evidence;
3. the decoder fuses evidence, adapted tokens and the trainable timm backbone's high-resolution features at
   stride ``decoder_stride`` into an anomaly logit map and a per-pixel embedding; the type map is the
   similarity of that embedding to the defect-type texts, factorised with the anomaly map;
4. the image head combines the top-k pooled anomaly map with the global image-text evidence.

With a :class:`~clipmdc.memory.NormalMemory`, the nearest-neighbour distance of the frozen patch features to
normal training patches is one more evidence channel of the decoder and an additive term of the anomaly logit.

Nothing has ``K`` channels, so the vocabulary can be replaced at test time (:meth:`CLIPMDC.set_vocabulary`).
The anomaly outputs (``anomaly_map``, ``image_score``, ``topk_score``) depend only on the normal and
class-agnostic anomalous prompts, so replacing or extending the defect-type names changes the type outputs
(and their ``K``) and nothing else. The model never computes the loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clipmdc.decoder import Adapter, FusionDecoder, factorized_type_logits, gaussian_smooth, topk_mean
from clipmdc.memory import NormalMemory
from clipmdc.memory_score import memory_image_score
from clipmdc.output import CLIPMDCOutput
from clipmdc.prompts import PromptBank, Prompts
from common.encoders.backbone import TimmBackbone
from common.encoders.image import ImageEncoder
from common.encoders.text import TextEncoder
from common.prompts import prompt_ensemble

EVIDENCE = 2  # evidence channels per layer: log-softmax over (normal, anomalous)


class CLIPMDC(nn.Module):
    """CLIP-based multimodal defect classification and segmentation.

    Args:
        image_encoder: Frozen image encoder (:class:`~common.encoders.image.OpenCLIPImage`,
            :class:`~common.encoders.image.TimmImage`); its ``layers`` choose the patch-token layers.
        text_encoder: Frozen text encoder (:class:`~common.encoders.text.OpenCLIPText`,
            :class:`~common.encoders.text.MiniLMText`, :class:`~common.encoders.text.TinyText`).
        backbone: Trainable timm ``features_only`` backbone for local detail; ``None`` for none.
        prompts: Prompt bank (templates and state phrases); ``None`` uses the defaults.
        defect_types: Initial vocabulary, index 0 = ``"good"`` (the LightningModule usually replaces it).
        object_names: Initial object names.
        per_object_prompts: Use each sample's own object prompts (needs ``object_id`` in ``forward``);
            otherwise the class embeddings are averaged over objects.
        adapter_hidden: Bottleneck width of the adapters.
        decoder_width: Channels ``F`` of the fusion decoder.
        decoder_stride: Output stride of the decoder (maps are upsampled to the input size afterwards).
        topk: Top-k pooling of the anomaly map for the image score: a fraction of pixels (< 1) or a count.
        temperature: Initial softmax temperature of the image-text similarities (learned).
        memory: Normal-reference memory (:class:`~clipmdc.memory.NormalMemory`) over the frozen patch
            tokens, filled from the normal training images when training starts; ``None`` for none.
        memory_weight: Initial weight ``w`` of the memory term ``w * (distance - 1)`` of the anomaly logit
            (learned). Large: the decoder starts from the memory's verdict and learns corrections.
        smooth_sigma: Gaussian smoothing (pixels, at the input size) of the output anomaly map, as PatchCore
            and SuperSimpleNet smooth theirs (sigma 4); 0 for none. Applied at the decoder grid with
            ``sigma / decoder_stride`` before the upsampling (about the same blur, far cheaper). Part of the model
            in training and eval.
        memory_image_weight: Weight ``v`` of the memory's PatchCore-style image score ``s``
            (:func:`clipmdc.memory_score.memory_image_score`) in the image logit, ``+ v * (s - 1)``; a fixed
            constant (not learned); 0 for none.
    """

    def __init__(
        self,
        image_encoder: ImageEncoder,
        text_encoder: TextEncoder,
        backbone: TimmBackbone | None = None,
        prompts: PromptBank | None = None,
        defect_types: Sequence[str] = ("good", "defect"),
        object_names: Sequence[str] = ("object",),
        per_object_prompts: bool = False,
        adapter_hidden: int = 128,
        decoder_width: int = 64,
        decoder_stride: int = 4,
        topk: float = 0.01,
        temperature: float = 0.07,
        memory: NormalMemory | None = None,
        memory_weight: float = 8.0,
        smooth_sigma: float = 0.0,
        memory_image_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.backbone = backbone
        self.prompt_bank = prompts or PromptBank()
        self.per_object_prompts = per_object_prompts
        self.decoder_stride = decoder_stride
        self.topk = topk
        self.smooth_sigma = smooth_sigma
        self.memory_image_weight = float(memory_image_weight)
        dim = text_encoder.dim
        self.adapters = nn.ModuleList(Adapter(c, dim, adapter_hidden) for c in image_encoder.token_dims)
        self.global_adapter = Adapter(image_encoder.embed_dim, dim, adapter_hidden)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.memory = memory
        self.decoder = FusionDecoder(
            len(image_encoder.token_dims),
            dim,
            EVIDENCE,
            backbone.channels if backbone else [],
            decoder_width,
            extra_evidence=1 if memory is not None else 0,
        )
        self.anomaly_head = nn.Conv2d(decoder_width, 1, 1)
        self.embed_head = nn.Conv2d(decoder_width, dim, 1)
        for head in (self.anomaly_head, self.embed_head):  # start near the zero-shot prior / adapted tokens
            nn.init.normal_(head.weight, std=1e-3)  # not zero: the decoder gets gradients from step one
            nn.init.zeros_(head.bias)
        self.prior_weight = nn.Parameter(torch.tensor(1.0))
        if memory is not None:  # anomaly logit += w * (distance - 1): distance ~1 on normal patches
            self.memory_weight = nn.Parameter(torch.tensor(float(memory_weight)))
        self.image_head = nn.Linear(2, 1)  # [top-k pooled map, global evidence] -> image logit
        with torch.no_grad():
            self.image_head.weight.fill_(1.0)
            self.image_head.bias.zero_()
        # Text embeddings: derived data, recomputed per vocabulary, never saved.
        self.register_buffer("class_text", torch.zeros(0), persistent=False)  # (O, K+1, D)
        self.register_buffer("anomaly_text", torch.zeros(0), persistent=False)  # (O, D)
        self.prompts: Prompts = self.prompt_bank.build(defect_types, object_names)
        self._text_stale = True

    # ------------------------------------------------------------------ vocabulary
    @property
    def defect_types(self) -> list[str]:
        """Current vocabulary, ``K + 1`` names, index 0 = ``"good"``."""
        return self.prompts.defect_types

    @property
    def vocabulary(self) -> list[str]:
        """Current vocabulary as entries: :attr:`defect_types` with ``"name: description"`` for described names."""
        return self.prompts.entries

    @property
    def object_names(self) -> list[str]:
        """Current object names."""
        return self.prompts.object_names

    def set_vocabulary(self, defect_types: Sequence[str], object_names: Sequence[str] | None = None) -> None:
        """Replaces the vocabulary (open vocabulary: no retraining); embeddings are recomputed lazily.

        Args:
            defect_types: Names or ``"name: description"`` entries (the description is embedded, the name
                reported), ``"good"`` first (added when missing).
            object_names: Object names; ``None`` keeps the current ones.
        """
        self.prompts = self.prompt_bank.build(defect_types, object_names or self.object_names)
        self._text_stale = True

    def embed_vocabulary(self) -> None:
        """Embeds the prompts of the current vocabulary now (the mean prompt embedding per class)."""
        p = self.prompts
        groups = [g for per_object in p.per_class for g in per_object] + p.anomalous
        # Ordinary tensors even when called inside inference_mode (a test loop): usable in training later.
        means = prompt_ensemble(self.text_encoder, groups)  # (groups, D)
        with torch.inference_mode(False), torch.no_grad():
            n_obj, n_cls = len(p.object_names), len(p.defect_types)
            self.class_text = means[: n_obj * n_cls].reshape(n_obj, n_cls, -1).clone()  # (O, K+1, D)
            self.anomaly_text = means[n_obj * n_cls :].clone()  # (O, D)
        self._text_stale = False

    def _text_for(self, object_id: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Class embeddings ``(B, K+1, D)`` and anomalous embedding ``(B, D)`` for each sample."""
        if self._text_stale or self.class_text.device != self.logit_scale.device:
            self.embed_vocabulary()
        if self.per_object_prompts and object_id is not None:
            if int(object_id.max()) >= self.class_text.shape[0] or int(object_id.min()) < 0:
                raise IndexError(f"object_id out of range for object names {self.object_names}")
            return self.class_text[object_id], self.anomaly_text[object_id]
        cls = F.normalize(self.class_text.mean(0), dim=-1)  # (K+1, D)
        anom = F.normalize(self.anomaly_text.mean(0), dim=-1)  # (D,)
        return cls.expand(batch, -1, -1), anom.expand(batch, -1)

    # ------------------------------------------------------------------ forward
    def forward(
        self, image: torch.Tensor, object_id: torch.Tensor | None = None, image_ids: torch.Tensor | None = None
    ) -> CLIPMDCOutput:
        """Predicts anomaly and defect-type maps and image scores.

        Args:
            image: ``(B, 3, H, W)`` in [0, 1] (not normalised: each encoder normalises for itself).
            object_id: ``(B,)`` object indices into :attr:`object_names` (used with ``per_object_prompts``).
            image_ids: ``(B,)`` ids (the batch's ``sample_id``) of training images whose own entries
                the memory must ignore (leave-one-image-out); ``None`` at test time.

        Returns:
            :class:`~clipmdc.output.CLIPMDCOutput` (logits), same structure in train and eval.
        """
        B, _, H, W = image.shape
        text, anom_text = self._text_for(object_id, B)  # (B, C, D), (B, D) with C = K+1
        scale = self.logit_scale.exp().clamp(max=100.0)
        feats = self.image_encoder(image)  # tokens [(B, C_l, h_l, w_l)], embedding (B, D_g); no grad
        text = text.to(feats.embedding.dtype)
        anom_text = anom_text.to(feats.embedding.dtype)

        size = (math.ceil(H / self.decoder_stride), math.ceil(W / self.decoder_stride))  # (h, w) decoder grid

        def up(x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

        normal_text, defect_text = text[:, 0], text[:, 1:]  # (B, D), (B, K, D)
        adapted, evidence, prior = [], [], 0.0
        for adapter, tokens in zip(self.adapters, feats.tokens, strict=True):
            a = F.normalize(adapter.forward_map(tokens), dim=1)  # (B, D, h, w)
            s_norm = scale * torch.einsum("bdhw,bd->bhw", a, normal_text).unsqueeze(1)  # (B, 1, h, w)
            s_anom = scale * torch.einsum("bdhw,bd->bhw", a, anom_text).unsqueeze(1)  # (B, 1, h, w)
            evidence.append(torch.cat([s_norm, s_anom], 1).log_softmax(1))  # (B, 2, h, w)
            adapted.append(a)
            prior = prior + up(s_anom - s_norm)  # (B, 1, h, w)

        prior = prior / len(adapted)  # (B, 1, h, w) zero-shot anomaly logit, mean over layers
        if self.memory is not None:
            distance = up(self.memory(feats.tokens, exclude=image_ids, object_id=object_id).to(prior.dtype))  # (B, 1, h, w)
            evidence.append(distance.clamp_min(1e-3).log())  # (B, 1, h, w) log-distance channel
            prior = prior + self.memory_weight * (distance - 1.0)
        local = self.backbone(image) if self.backbone is not None else []  # [(B, C_j, H_j, W_j)]
        x = self.decoder(adapted, evidence, local, size)  # (B, F, h, w)
        anomaly = self.anomaly_head(x) + self.prior_weight * prior  # (B, 1, h, w)
        pixel_emb = sum(up(a) for a in adapted) / len(adapted) + self.embed_head(x)  # (B, D, h, w)
        pixel_emb = F.normalize(pixel_emb, dim=1)
        defect_sim = scale * torch.einsum("bdhw,bkd->bkhw", pixel_emb, defect_text)  # (B, K, h, w)
        type_map = factorized_type_logits(anomaly, defect_sim)  # (B, K+1, h, w)

        # Image head: top-k pooled map + global image-text evidence.
        topk = topk_mean(anomaly, self.topk)  # (B,)
        g = F.normalize(self.global_adapter(feats.embedding), dim=-1)  # (B, D)
        g_evidence = scale * (g * (anom_text - normal_text)).sum(-1)  # (B,) anomalous vs normal
        image_score = self.image_head(torch.stack([topk, g_evidence], -1)).squeeze(-1)  # (B,)
        if self.memory is not None and self.memory_image_weight:  # PatchCore's image score as a base
            mem_score = memory_image_score(self.memory, feats.tokens, exclude=image_ids)  # (B,)
            image_score = image_score + self.memory_image_weight * (mem_score.to(image_score.dtype) - 1.0)
        attn = anomaly.flatten(2).softmax(-1)  # (B, 1, h*w): where the defect is
        region = (pixel_emb.flatten(2) * attn).sum(-1)  # (B, D)
        embedding = F.normalize(region + g, dim=-1)  # (B, D)
        img_def = scale * torch.einsum("bd,bkd->bk", embedding, defect_text)  # (B, K)
        type_logits = factorized_type_logits(image_score.unsqueeze(1), img_def)  # (B, K+1)

        full = (H, W)
        # Smoothing at the decoder grid with sigma / stride, then the bilinear upsampling: about the same blur as
        # sigma at the input size after upsampling (both are a Gaussian convolved with the bilinear kernel), at
        # 1/stride^2 of the cost (at 256 px and stride 8 the full-size blur was ~6% of a batch-16 forward).
        stride = 0.5 * (H / anomaly.shape[-2] + W / anomaly.shape[-1])
        smooth = gaussian_smooth(anomaly, self.smooth_sigma / stride)  # (B, 1, h, w)
        return CLIPMDCOutput(
            anomaly_map=F.interpolate(smooth, size=full, mode="bilinear", align_corners=False),  # (B, 1, H, W)
            type_map=F.interpolate(type_map, size=full, mode="bilinear", align_corners=False),  # (B, C, H, W)
            image_score=image_score,
            topk_score=topk,
            type_logits=type_logits,
            embedding=embedding,
            defect_types=list(self.defect_types),
        )

    def closest_prompts(
        self, embedding: torch.Tensor, object_id: torch.Tensor | None = None, anomalous: torch.Tensor | None = None
    ) -> list[str]:
        """The prompt of the current vocabulary nearest to each image embedding (for explanations).

        Args:
            embedding: ``(B, D)`` unit embeddings (``CLIPMDCOutput.embedding``).
            object_id: ``(B,)`` object indices; restricts each search to that object's prompts.
            anomalous: ``(B,)`` bool image decisions; restricts each search to the defect prompts (defect types
                and the class-agnostic anomalous prompts) or to the normal prompts, so that the prompt never
                contradicts the decision.

        Returns:
            ``B`` prompts.
        """
        p = self.prompts
        cache = getattr(self, "_prompt_cache", None)
        if cache is None or cache[0] is not p:
            texts, owners, defect = [], [], []
            for o, per_object in enumerate(p.per_class):
                for c, group in enumerate([*per_object, p.anomalous[o]]):
                    texts += group
                    owners += [o] * len(group)
                    defect += [c > 0] * len(group)  # class 0 = the normal class
            cache = (p, texts, torch.tensor(owners), torch.tensor(defect), self.text_encoder.encode(texts))  # (N, D)
            self._prompt_cache = cache
        _, texts, owners, defect, emb = cache
        sims = embedding.detach().float().to(emb.device) @ emb.T  # (B, N)
        if object_id is not None:
            other = owners.to(sims.device)[None, :] != object_id.to(sims.device)[:, None]  # (B, N)
            sims = sims.masked_fill(other, float("-inf"))
        if anomalous is not None:
            wrong = defect.to(sims.device)[None, :] != anomalous.to(sims.device).bool()[:, None]  # (B, N)
            sims = sims.masked_fill(wrong, float("-inf"))
        return [texts[int(i)] for i in sims.argmax(-1)]

    # ------------------------------------------------------------------ introspection
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that require gradients (what the optimizer gets)."""
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_counts(self) -> dict[str, int]:
        """``{"trainable": n, "frozen": m}``."""
        trainable = sum(p.numel() for p in self.trainable_parameters())
        return {"trainable": trainable, "frozen": sum(p.numel() for p in self.parameters()) - trainable}

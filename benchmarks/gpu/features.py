"""Part ``stage2``: the frozen stage-1 model as feature extractor (images/s) and the head's training steps/s.

The extractor is :class:`~diffdefect.DiffusionFeatures` over a random-init stage-1 model of the paper's size
(860M ``sd15`` U-Net, SD's VAE architecture, open_clip ViT-B-16 feeding the implicit captioner; a 768-d
stand-in text encoder for the class names): one VAE encode, one U-Net pass at t = 50 and the first VAE-decoder
level, bf16 autocast, ``torch.inference_mode``, at 512 px.

The head step is the real :class:`~diffdefect.Stage2Model` forward (Mask2Former head + open-vocabulary
classifier) on features extracted once, :class:`~diffdefect.SetCriterion` with the paper's matcher (12,544
points), backward, AdamW: what a stage-2 epoch costs once the features are cached (``FeatureCache``). The
uncached step costs about one extraction more (``full_step_s`` adds the two).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from benchmarks.gpu.runner import Clock, cuda_timer, release_memory

if TYPE_CHECKING:
    from common.encoders.image import ImageFeatures

CLASSES = ["good", "inclusion", "patches", "scratches"]
ESTIMATE_S = {True: 15.0, False: 5.0}


class _Fixed(nn.Module):
    """Stands in for the extractor: serves maps computed once (the head step alone is timed)."""

    def __init__(self, extractor: Any) -> None:
        super().__init__()
        self.feature_dims, self.feature_strides = extractor.feature_dims, extractor.feature_strides
        self.size_multiple = extractor.size_multiple
        self.feats: list[torch.Tensor] = []

    def forward(self, image: torch.Tensor, embedding: bool = False) -> ImageFeatures:
        from common.encoders.image import ImageFeatures

        return ImageFeatures(self.feats, None)


def build_extractor(s: Any, device: torch.device) -> Any:
    from diffdefect import DiffusionFeatures, DiffusionUNet, ImplicitCaptioner, Stage1Model
    from diffdefect.stage1.presets import tiny_stage1

    torch.manual_seed(0)
    if s.stage2_unet == "tiny":
        return DiffusionFeatures(stage1=tiny_stage1(), vae_levels=1).to(device)
    from common.encoders import OpenCLIPImage, TinyText
    from common.encoders.vae import FrozenVAE

    with torch.device(device):  # random init on the GPU
        stage1 = Stage1Model(unet=DiffusionUNet(s.stage2_unet), vae=FrozenVAE(preset="sd"), text_encoder=TinyText(768),
                             image_encoder=OpenCLIPImage("ViT-B-16", None, layers=[11]),
                             captioner=ImplicitCaptioner(512, 768, 256))
    return DiffusionFeatures(stage1=stage1, vae_levels=1).to(device)


def random_targets(b: int, px: int, k: int, device: torch.device, g: torch.Generator) -> torch.Tensor:
    """``(B, px, px)`` class ids: background with two rectangles of random classes per image."""
    cm = torch.zeros(b, px, px, dtype=torch.long)
    for i in range(b):
        for _ in range(2):
            y, x = torch.randint(0, px // 2, (2,), generator=g).tolist()
            h, w = torch.randint(px // 8, px // 2, (2,), generator=g).tolist()
            cm[i, y : y + h, x : x + w] = int(torch.randint(1, k, (1,), generator=g))
    return cm.to(device)


def run(s: Any, clock: Clock, reports: dict[str, Any]) -> dict[str, Any]:
    from diffdefect import HungarianMatcher, SetCriterion, Stage2Model
    from diffdefect.stage1.unet import count_parameters
    from diffdefect.stage2.targets import set_targets

    device = torch.device(s.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    extractor = build_extractor(s, device)
    timed = cuda_timer(device)
    g = torch.Generator().manual_seed(0)
    px, b = s.stage2_px, s.stage2_extract_batch
    images = torch.rand(b, 3, px, px, generator=g).to(device)
    out: dict[str, Any] = {"unet": s.stage2_unet, "image_px": px, "precision": "bf16 autocast" if cuda else "fp32",
                           "extractor_parameters": count_parameters(extractor),
                           "levels": {"channels": extractor.channels, "strides": extractor.strides},
                           "skipped": []}
    with torch.inference_mode(), amp:
        extractor(images)  # warm-up
        sec = timed(lambda: extractor(images), s.stage2_extract_iters)
    out["extract"] = {"batch": b, "seconds_per_batch": sec, "images_per_s": b / sec,
                      "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None}
    model = Stage2Model(extractor, head=s.stage2_head).to(device)
    model.extractor = _Fixed(extractor)  # the frozen extractor stays alive in `extractor`
    criterion = SetCriterion(matcher=HungarianMatcher(num_points=12544 if cuda else 256))
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=5e-5, weight_decay=0.05)
    text = model.classifier.encode_names(CLASSES).to(device)
    out["head"] = {"preset": s.stage2_head, "trainable_parameters": sum(p.numel() for p in model.trainable_parameters()),
                   "matcher_points": criterion.matcher.num_points if hasattr(criterion.matcher, "num_points") else None,
                   "batches": {}}
    for hb in s.stage2_head_batches:
        if not clock.allows(ESTIMATE_S[cuda]):
            out["skipped"].append(f"head batch {hb}")
            continue
        imgs = torch.rand(hb, 3, px, px, generator=g).to(device)
        with amp:
            model.extractor.feats = extractor(imgs, embedding=False).tokens
        masks, labels = set_targets(random_targets(hb, px, len(CLASSES), device, g), "semantic")

        def step(imgs: torch.Tensor = imgs, masks: list = masks, labels: list = labels) -> None:
            with amp:
                o = model(imgs, text)
                terms = criterion(o, masks, labels)  # the temperature travels in o.logit_scale
            terms["total"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()
        sec = timed(step, s.stage2_head_steps)
        per_image_extract = out["extract"]["seconds_per_batch"] / b
        out["head"]["batches"][str(hb)] = {"seconds_per_step": sec, "steps_per_s": 1 / sec,
                                           "full_step_s": sec + per_image_extract * hb}
        release_memory()
    return out

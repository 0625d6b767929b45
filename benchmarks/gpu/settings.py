"""Resolved settings of the GPU check: the full run on one GPU, and ``--dry`` (CPU, tiny presets, a few steps).

Every figure the JSON reports comes with these settings (written under ``"settings"``). Budgets are seconds;
together they stay under the 8-minute box of the full run (``total_s``), and ``--budget`` scales them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

GOAL_STAGE1_SAMPLES_PER_S = 175.0  # per H100-class GPU (8 GPUs: 1,400 samples/s per node)
GOAL_VIT_B16_MS = 3.3  # batch 1, per image: half the paper's 6.6 ms on an A100
STRETCH_VIT_B16_MS = 2.2  # EfficientAD-S
H100_CLASS = ("H100", "H200", "GH200", "H800", "H20")


@dataclass
class Settings:
    """Everything the parts read (see :data:`GPU` and :data:`DRY`)."""

    dry: bool
    device: str
    total_s: float
    budgets: dict[str, float]
    # environment
    matmul_n: int
    matmul_iters: int
    copy_mib: int
    # stage 1 throughput
    unet_preset: str
    unet_batch: int
    unet_steps: int
    unet_warmup: int
    compile_options: list[bool]
    compile_backend: str
    checkpointing_options: list[bool]
    compile_with_checkpointing: bool
    batch_search: dict[str, list[int]]
    # lightning fit through the CLI
    fit_configs: list[str]
    fit_images: int
    fit_image_px: int
    fit_batch: int
    fit_steps: int
    fit_resume_steps: int
    fit_subprocess: bool
    fit_timer_skip: int
    fit_compile: bool
    # CLIP-MDC latency
    clip_size: int
    clip_batches: list[int]
    clip_plan: list[tuple[str, str]]
    clip_rounds: int
    clip_iters: dict[int, int]
    # stage 2
    stage2_unet: str
    stage2_px: int
    stage2_extract_batch: int
    stage2_extract_iters: int
    stage2_head: str
    stage2_head_batches: list[int]
    stage2_head_steps: int
    profile_steps: int
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["clip_iters"] = {str(k): v for k, v in self.clip_iters.items()}
        return d


GPU = Settings(
    dry=False,
    device="cuda",
    total_s=465.0,
    budgets={"environment": 15, "stage1_unet": 175, "stage1_fit": 125, "clipmdc": 90, "stage2": 40,
             "profile": 20},
    matmul_n=8192,
    matmul_iters=20,
    copy_mib=2048,
    unet_preset="sd15",
    unet_batch=32,
    unet_steps=8,
    unet_warmup=3,
    compile_options=[False, True],
    compile_backend="inductor",
    checkpointing_options=[False, True],
    compile_with_checkpointing=True,
    batch_search={"no_checkpointing": [64, 128, 256], "checkpointing": [128, 256, 512]},
    fit_configs=["configs/stage1_diffusion.yaml"],
    fit_images=96,
    fit_image_px=512,
    fit_batch=16,
    fit_steps=15,
    fit_resume_steps=30,
    fit_subprocess=True,
    fit_timer_skip=3,
    fit_compile=False,
    clip_size=256,
    clip_batches=[1, 32],
    clip_plan=[("vit_b16", "bf16_eager"), ("vit_b16", "bf16_compile"), ("offline_real", "bf16_eager"),
               ("vit_b16", "fp32_eager"), ("offline_real", "fp32_eager"), ("offline_real", "bf16_compile"),
               ("vit_b16", "fp32_compile"), ("offline_real", "fp32_compile")],  # most wanted first
    clip_rounds=5,
    clip_iters={1: 50, 32: 10},
    stage2_unet="sd15",
    stage2_px=512,
    stage2_extract_batch=8,
    stage2_extract_iters=5,
    stage2_head="full",
    stage2_head_batches=[2, 8],
    stage2_head_steps=8,
    profile_steps=3,
)
"""The full run: one H100/H200, under 8 minutes."""

DRY = replace(
    GPU,
    dry=True,
    device="cpu",
    total_s=340.0,
    budgets={"environment": 10, "stage1_unet": 60, "stage1_fit": 90, "clipmdc": 90, "stage2": 40, "profile": 30},
    matmul_n=256,
    matmul_iters=2,
    copy_mib=16,
    unet_preset="tiny",
    unet_batch=4,
    unet_steps=1,
    unet_warmup=1,
    compile_backend="eager",
    compile_with_checkpointing=False,
    batch_search={"checkpointing": [8]},
    fit_configs=["configs/stage1_diffusion.yaml", "configs/diffdefect/stage1_tiny.yaml"],
    fit_images=12,
    fit_image_px=16,
    fit_batch=4,
    fit_steps=1,
    fit_resume_steps=2,
    fit_subprocess=False,
    fit_timer_skip=0,
    clip_size=32,
    clip_batches=[1, 2],
    clip_plan=[("tiny", "bf16_eager"), ("tiny", "fp32_compile"), ("offline_real", "fp32_eager")],
    clip_rounds=1,
    clip_iters={1: 1, 2: 1},
    stage2_unet="tiny",
    stage2_px=32,
    stage2_extract_batch=2,
    stage2_extract_iters=1,
    stage2_head="tiny",
    stage2_head_batches=[2],
    stage2_head_steps=2,
    profile_steps=1,
    notes=[
        "dry run on the CPU: tiny presets and a few steps exercise every code path of the GPU check; the figures "
        "are not GPU figures",
        "torch.compile runs with backend='eager' here (dynamo tracing, no inductor code generation: inductor takes "
        "minutes on this CPU even for the tiny U-Net); the GPU run uses inductor",
        "stage 1: compile with gradient checkpointing is left out (the same code path as without it)",
        "CLIP-MDC: bf16 and compile on the tiny preset, offline_real fp32 eager; vit_b16 is left out (its random "
        "ViT-B-16 takes about a minute to build and embed prompts on this CPU; tests build it separately)",
    ],
)
"""``--dry``: the same parts on the CPU in tens of seconds (the test suite runs it)."""

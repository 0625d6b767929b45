"""The training noise schedule (DDPM, T = 1000), kept apart from the network.

``z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps`` is diffusers' ``DDPMScheduler.add_noise``; the regression
target is ``eps`` (``"epsilon"``, the paper's) or the velocity ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) z_0``
(``"v_prediction"``). Samplers (DDIM, DPM-Solver) are built from the same config in :mod:`diffdefect.stage1.sampling`,
so they use the betas and prediction type the model was trained with.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

PREDICTION_TYPES = ("epsilon", "v_prediction")


class NoiseSchedule(nn.Module):
    """DDPM forward process and training targets (no parameters, no state in checkpoints).

    Args:
        num_train_timesteps: ``T`` (paper: 1000).
        beta_schedule: diffusers beta schedule (``"scaled_linear"`` as Stable Diffusion, ``"linear"``...).
        beta_start: First beta.
        beta_end: Last beta.
        prediction_type: ``"epsilon"`` (paper) or ``"v_prediction"``.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "scaled_linear",
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        prediction_type: str = "epsilon",
    ) -> None:
        super().__init__()
        from diffusers import DDPMScheduler

        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            beta_start=beta_start,
            beta_end=beta_end,
            prediction_type=prediction_type,
            clip_sample=False,
        )
        self.prediction_type = prediction_type
        self.num_train_timesteps = num_train_timesteps

    @property
    def config(self) -> dict[str, Any]:
        """The diffusers scheduler config (samplers are built ``from_config`` of it)."""
        return dict(self.scheduler.config)

    def sample_timesteps(
        self, batch_size: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Uniform integer timesteps ``(B,)`` in ``[0, T)``."""
        return torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator, device=device)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` clean latents -> noisy latents ``z_t`` (diffusers' ``add_noise``)."""
        return self.scheduler.add_noise(latents, noise, timesteps)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The regression target ``(B, C, h, w)``: ``noise`` or the velocity."""
        if self.prediction_type == "epsilon":
            return noise
        return self.scheduler.get_velocity(latents, noise, timesteps)

    def extra_repr(self) -> str:
        return f"T={self.num_train_timesteps}, prediction_type={self.prediction_type!r}"

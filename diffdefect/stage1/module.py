"""``Stage1Module``: the thin LightningModule of stage 1 (optimisation, EMA, logging, switches).

The network is :class:`~diffdefect.stage1.model.Stage1Model`, the loss :class:`~diffdefect.stage1.loss.Stage1Loss`; both are
constructor arguments (``class_path`` in YAML), as are the optimizer (default AdamW, lr 1e-4) and the LR
scheduler. Sampling lives in :mod:`diffdefect.stage1.sampling`.

Determinism: every random draw of a training step comes from a generator seeded with
``(seed, rank, global_step, micro-batch)``, so a run resumed from a mid-epoch checkpoint continues exactly as the
uninterrupted run (with the resumable :class:`~common.data.image_text.ImageTextDataModule`); the EMA weights are
saved in the checkpoint under ``"ema"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from common.data.image_text import ImageTextBatch
from common.encoders.frozen import expect_frozen_eval_modules
from common.hparams import save_config_hyperparameters
from diffdefect.stage1.ema import EMA
from diffdefect.stage1.loss import Stage1Loss
from diffdefect.stage1.model import Stage1Model


def default_optimizer(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW with the paper's learning rate 1e-4 (weight decay 0.01, as torch's default)."""
    return torch.optim.AdamW(params, lr=1e-4)


def step_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (NumPy's ``SeedSequence``: well mixed, platform independent)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class Stage1Module(L.LightningModule):
    """Trains the stage-1 diffusion U-Net and implicit captioner.

    Args:
        model: The :class:`~diffdefect.stage1.model.Stage1Model`.
        loss: The :class:`~diffdefect.stage1.loss.Stage1Loss` (default: ``diff`` 1.0 + ``imp`` 0.3).
        optimizer: Optimizer factory over the trainable parameters (U-Net + captioner); default AdamW, lr 1e-4.
        scheduler: LR scheduler factory (stepped every optimizer step), or ``None``.
        ema_decay: EMA decay of the trainable weights (used for sampling); ``None`` disables EMA.
        compile: ``torch.compile`` the U-Net (``nn.Module.compile``: state-dict keys unchanged).
        gradient_checkpointing: Recompute U-Net activations in the backward pass.
        channels_last: Channels-last memory format for the U-Net.
        seed: Seed of the per-step random draws and of the fixed validation noise.
        val_timesteps: Fixed timesteps of the held-out denoising loss (``val/diff``).
        validate_with_ema: Compute validation losses with the EMA weights.
    """

    def __init__(
        self,
        model: Stage1Model,
        loss: Stage1Loss | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        ema_decay: float | None = 0.9999,
        compile: bool = False,
        gradient_checkpointing: bool = False,
        channels_last: bool = False,
        seed: int = 0,
        val_timesteps: Sequence[int] = (100, 300, 500, 700, 900),
        validate_with_ema: bool = False,
    ) -> None:
        super().__init__()
        # Under LightningCLI the parsed config (class paths of every part) is stored, so that
        # `Stage1Module.load_from_checkpoint(path)` rebuilds the model; built in Python, the parts are not
        # pickled into the checkpoint (pass them again to load_from_checkpoint).
        save_config_hyperparameters(self, objects=("model", "loss", "optimizer", "scheduler"))
        self.model = model
        self.loss = loss or Stage1Loss()
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.ema_decay = ema_decay
        self.compile_unet = compile
        self.seed = seed
        self.val_timesteps = [int(t) for t in val_timesteps]
        self.validate_with_ema = validate_with_ema
        self.ema: EMA | None = None
        self._step_key = (-1, 0)
        model.set_gradient_checkpointing(gradient_checkpointing)
        model.set_channels_last(channels_last)

    # ------------------------------------------------------------------ setup
    def configure_model(self) -> None:
        if self.compile_unet and not getattr(self, "_compiled", False):
            self.model.unet.compile()
            self._compiled = True

    def on_fit_start(self) -> None:
        expect_frozen_eval_modules(self)  # the frozen VAE/text encoder are in eval mode by design: no warning
        if self.ema_decay is not None and self.ema is None:
            self.ema = EMA(self.model, self.ema_decay)
        if self.ema is not None:
            self.ema.to(self.device)

    def configure_optimizers(self) -> Any:
        opt = self.optimizer(self.model.trainable_parameters())
        if self.scheduler is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler(opt), "interval": "step"}}

    # ------------------------------------------------------------------ randomness
    def step_generator(self, *extra: int) -> torch.Generator:
        """A generator seeded by (seed, rank, *extra) on this module's device."""
        g = torch.Generator(device=self.device)
        g.manual_seed(step_seed(self.seed, self.global_rank, *extra))
        return g

    def _train_generator(self) -> torch.Generator:
        step, micro = self._step_key
        micro = micro + 1 if step == self.global_step else 0
        self._step_key = (self.global_step, micro)
        return self.step_generator(0, self.global_step, micro)

    # ------------------------------------------------------------------ steps
    def forward(self, batch: ImageTextBatch, generator: torch.Generator | None = None) -> Any:
        return self.model(batch, generator)

    def training_step(self, batch: ImageTextBatch, batch_idx: int) -> torch.Tensor:
        out = self.model(batch, self._train_generator())
        terms = self.loss(out)
        b = len(batch)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=b, prog_bar=False)
        self.log("train/pseudo_fraction", out.use_pseudo.float().mean(), batch_size=b)
        self.log("train/loss", terms["total"].detach(), batch_size=b, prog_bar=True)
        return terms["total"]

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the EMA update (before any callback, e.g. a checkpoint, sees the step)."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.model)

    def evaluation_losses(self, batch: ImageTextBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Held-out losses at the fixed ``val_timesteps`` with fixed noise (real text wherever present).

        Returns:
            ``diff`` (mean over timesteps), ``diff_t<T>`` per timestep, ``imp``.
        """
        x = self.model.encode_inputs(batch)
        b = x.latent_moments.shape[0]
        terms: dict[str, torch.Tensor] = {}
        diffs = []
        for t in self.val_timesteps:
            g = self.step_generator(1, batch_idx, t)
            ts = torch.full((b,), t, device=x.latent_moments.device, dtype=torch.long)
            out = self.model(x, g, timesteps=ts, train=False)
            d = self.loss(out)
            terms[f"diff_t{t}"] = d["diff"]
            diffs.append(d["diff"])
            terms["imp"] = d["imp"]
        terms["diff"] = torch.stack(diffs).mean()
        return terms

    def validation_step(self, batch: ImageTextBatch, batch_idx: int) -> None:
        if self.validate_with_ema and self.ema is not None:
            with self.ema.swapped(self.model):
                terms = self.evaluation_losses(batch, batch_idx)
        else:
            terms = self.evaluation_losses(batch, batch_idx)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, batch_size=len(batch), sync_dist=True)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("ema")
        if state is None:
            return
        if self.ema is None and self.ema_decay is not None:
            self.ema = EMA(self.model, self.ema_decay)
        if self.ema is not None:
            self.ema.load_state_dict(state)

    def use_ema_weights(self) -> None:
        """Copies the EMA weights into the model for good (sampling, export)."""
        if self.ema is not None:
            self.ema.copy_to(self.model)


Stage1Diffusion = Stage1Module
"""The former name (configs and checkpoints that name ``diffdefect.Stage1Diffusion`` still work)."""

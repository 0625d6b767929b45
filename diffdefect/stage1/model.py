"""``Stage1Model``: the stage-1 text-conditioned latent diffusion model with the implicit captioner.

Parts (injected, so YAML chooses them): a trainable :class:`~diffdefect.stage1.unet.DiffusionUNet` and
:class:`~diffdefect.stage1.captioner.ImplicitCaptioner`; frozen encoders, each in the one
:class:`~common.encoders.frozen.FrozenEncoder` wrapper (VAE, text encoder, CLIP image encoder); the DDPM
:class:`~diffdefect.stage1.schedule.NoiseSchedule`; the :class:`~diffdefect.stage1.conditioning.ConditioningMixer`.

``forward(batch)`` returns a :class:`Stage1Output` (prediction, target, captioner outputs), the same in training
and evaluation; the loss is computed by :class:`~diffdefect.stage1.loss.Stage1Loss`. Every random draw of a step comes
from one ``torch.Generator`` in a fixed order (VAE posterior sample, real/pseudo choice and CFG dropout,
timesteps, noise), so a step is a function of (weights, batch, generator seed): this is what makes pixel and
precomputed-latent training identical and resumes exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.data.image_text import ImageTextBatch
from common.encoders.image import ImageEncoder
from common.encoders.text import TextEncoder
from common.encoders.vae import FrozenVAE, sample_latents
from diffdefect.stage1.captioner import ImplicitCaptioner
from diffdefect.stage1.conditioning import ConditioningMixer
from diffdefect.stage1.schedule import NoiseSchedule
from diffdefect.stage1.unet import DiffusionUNet


@dataclass
class Stage1Inputs:
    """A batch encoded by the frozen parts (what precomputed-latent shards store).

    Attributes:
        latent_moments: ``(B, 2C, h, w)`` VAE posterior parameters.
        text: ``(B, D)`` text embeddings ``e_T`` (zeros where ``has_text`` is False).
        has_text: ``(B,)`` bool.
        image_embedding: ``(B, D_v)`` frozen CLIP image embeddings ``v``.
        text_tokens: ``(B, L, D)`` token states (``"sequence"`` context only) or ``None``.
        text_mask: ``(B, L)`` bool or ``None``.
    """

    latent_moments: torch.Tensor
    text: torch.Tensor
    has_text: torch.Tensor
    image_embedding: torch.Tensor
    text_tokens: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None


@dataclass
class Stage1Output:
    """What the model returns (identical structure in train and eval).

    Attributes:
        prediction: ``(B, C, h, w)`` U-Net output (epsilon or velocity).
        target: ``(B, C, h, w)`` regression target.
        timesteps: ``(B,)`` timesteps used.
        pseudo_text: ``(B, D)`` implicit-captioner output ``t_imp``.
        text: ``(B, D)`` real text embeddings ``e_T``.
        has_text: ``(B,)`` bool, ``e_T`` is real (the alignment loss uses only these rows).
        use_pseudo: ``(B,)`` bool, conditioned on ``t_imp``.
    """

    prediction: torch.Tensor
    target: torch.Tensor
    timesteps: torch.Tensor
    pseudo_text: torch.Tensor
    text: torch.Tensor
    has_text: torch.Tensor
    use_pseudo: torch.Tensor


def encode_text(
    text_encoder: TextEncoder | None, captions: list[str | None], tokens: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Captions -> ``e_T`` ``(B, D)`` (zeros where the caption is ``None``) and, with ``tokens``, the token
    states ``(B, L, D)`` and their mask ``(B, L)`` (a text encoder with ``encode_text``, e.g. CLIP)."""
    if text_encoder is None:
        raise ValueError("no text encoder: captions must come precomputed (latent shards)")
    texts = [c or "" for c in captions]
    present = torch.tensor([c is not None for c in captions])
    tok = mask = None
    if tokens:
        out = text_encoder.encode_text(texts)
        text, tok, mask = out.pooled, out.tokens, out.mask
    else:
        text = text_encoder.encode(texts)  # (B, D)
    text = text * present.to(text.device, text.dtype)[:, None]
    return text, tok, mask


def encode_batch(
    batch: ImageTextBatch,
    vae: FrozenVAE | None,
    text_encoder: TextEncoder | None,
    image_encoder: ImageEncoder | None,
    tokens: bool = False,
) -> Stage1Inputs:
    """Encodes what ``batch`` does not carry precomputed with the frozen encoders (deterministic).

    Used by :class:`Stage1Model` on the fly and by :mod:`diffdefect.stage1.precompute` once, so both see the same
    numbers.
    """
    moments = batch.latent_moments
    if moments is None:
        if vae is None or batch.image is None:
            raise ValueError("the batch has neither latents nor images with a VAE to encode them")
        moments = vae.encode_moments(batch.image)  # (B, 2C, h, w)
    tok, mask = batch.text_tokens, batch.text_mask
    if batch.text_embedding is not None:
        text = batch.text_embedding
    else:
        text, tok, mask = encode_text(text_encoder, batch.caption, tokens)
    emb = batch.image_embedding
    if emb is None:
        if image_encoder is None or batch.image is None:
            raise ValueError("the batch has neither image embeddings nor images with an image encoder")
        emb = image_encoder(batch.image).embedding  # (B, D_v)
    device = moments.device
    return Stage1Inputs(
        latent_moments=moments.float(),
        text=text.to(device).float(),
        has_text=batch.has_text.to(device),
        image_embedding=emb.to(device).float(),
        text_tokens=None if tok is None else tok.to(device).float(),
        text_mask=None if mask is None else mask.to(device),
    )


class Stage1Model(nn.Module):
    """Text-conditioned latent diffusion with random real/pseudo text conditioning.

    Args:
        unet: The denoiser; its ``cross_attention_dim`` must equal the text-embedding size.
        vae: Frozen VAE (needed for pixel batches and for decoding samples; may be ``None`` when training only
            on precomputed latents).
        text_encoder: Frozen text encoder (``None``: captions must come precomputed).
        image_encoder: Frozen CLIP image encoder feeding the captioner (``None``: embeddings precomputed).
        captioner: The implicit captioner; ``None`` builds one from the image encoder's embedding size to the
            U-Net's context size.
        schedule: DDPM schedule (default: T = 1000, scaled-linear betas, epsilon prediction).
        conditioning: Real/pseudo mixing and context layout (default: p = 0.5, one-token context, no CFG
            dropout).
        sample_posterior: Sample the VAE posterior (True, as SD training) or take its mean.
        scaling_factor: Latent scale of the VAE that encoded the latents. ``None`` takes the VAE's; required
            without a VAE (training on latent shards only: 0.18215 for shards written with SD 1.x's VAE).
    """

    def __init__(
        self,
        unet: DiffusionUNet,
        vae: FrozenVAE | None = None,
        text_encoder: TextEncoder | None = None,
        image_encoder: ImageEncoder | None = None,
        captioner: ImplicitCaptioner | None = None,
        schedule: NoiseSchedule | None = None,
        conditioning: ConditioningMixer | None = None,
        sample_posterior: bool = True,
        scaling_factor: float | None = None,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        if captioner is None:
            if image_encoder is None:
                raise ValueError("give a captioner (its in_dim) when there is no image encoder")
            captioner = ImplicitCaptioner(in_dim=image_encoder.embed_dim, out_dim=unet.context_dim)
        self.captioner = captioner
        self.schedule = schedule or NoiseSchedule()
        self.conditioning = conditioning or ConditioningMixer()
        self.sample_posterior = sample_posterior
        self.channels_last = False
        dims = {"U-Net cross_attention_dim": unet.context_dim, "captioner out_dim": captioner.out_dim}
        if text_encoder is not None:
            dims["text encoder dim"] = int(text_encoder.dim)
        if len(set(dims.values())) != 1:
            raise ValueError(f"text-space sizes differ: {dims}; set the U-Net's cross_attention_dim override")
        if image_encoder is not None and image_encoder.embed_dim != captioner.in_dim:
            raise ValueError(f"image encoder gives {image_encoder.embed_dim}-d embeddings, captioner takes {captioner.in_dim}")
        if self.conditioning.context == "sequence" and text_encoder is not None and not hasattr(text_encoder, "encode_text"):
            raise ValueError("the 'sequence' context needs a text encoder with token outputs (CLIPTextEncoder)")
        if vae is None and scaling_factor is None:
            raise ValueError("without a VAE give scaling_factor: the latent scale of the VAE that wrote the latent "
                             "shards (0.18215 for SD 1.x)")
        if vae is not None and scaling_factor is not None and float(scaling_factor) != vae.scaling_factor:
            raise ValueError(f"scaling_factor {scaling_factor} differs from the VAE's {vae.scaling_factor}")
        self.scaling_factor = float(vae.scaling_factor if vae is not None else scaling_factor)

    @property
    def context_dim(self) -> int:
        return self.unet.context_dim

    # ------------------------------------------------------------------ frozen encoding
    def encode_text(self, captions: list[str | None]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Captions -> ``e_T`` ``(B, D)`` (zeros for ``None``), tokens ``(B, L, D)`` and mask (sequence context)."""
        return encode_text(self.text_encoder, captions, self.conditioning.context == "sequence")

    def encode_inputs(self, batch: ImageTextBatch) -> Stage1Inputs:
        """Runs the frozen encoders on whatever the batch does not carry precomputed (no randomness)."""
        return encode_batch(batch, self.vae, self.text_encoder, self.image_encoder, self.conditioning.context == "sequence")

    # ------------------------------------------------------------------ the step
    def forward(
        self,
        batch: ImageTextBatch | Stage1Inputs,
        generator: torch.Generator | None = None,
        timesteps: torch.Tensor | None = None,
        train: bool = True,
    ) -> Stage1Output:
        """One denoising prediction per sample.

        Args:
            batch: Pixels/captions or precomputed encodings (or already-encoded :class:`Stage1Inputs`).
            generator: Source of every random draw (``None``: global RNG).
            timesteps: ``(B,)`` fixed timesteps (evaluation at fixed t); ``None`` draws them uniformly.
            train: Random real/pseudo choice and CFG dropout (True) or real text wherever present (False).

        Returns:
            :class:`Stage1Output`.
        """
        x = batch if isinstance(batch, Stage1Inputs) else self.encode_inputs(batch)
        b = x.latent_moments.shape[0]
        device = x.latent_moments.device
        # 1. VAE posterior sample, scaled (on precomputed moments exactly as on fresh ones, with or without a VAE)
        z0 = sample_latents(x.latent_moments, self.scaling_factor, generator, self.sample_posterior)  # (B, C, h, w)
        # 2. implicit captioner and real/pseudo conditioning
        pseudo = self.captioner(x.image_embedding)  # (B, D) t_imp
        cond = self.conditioning(x.text, pseudo, x.has_text, x.text_tokens, x.text_mask, generator, train)
        # 3. timesteps and noise, z_t = sqrt(abar) z0 + sqrt(1 - abar) eps
        if timesteps is None:
            timesteps = self.schedule.sample_timesteps(b, device, generator)  # (B,)
        noise = torch.randn(z0.shape, generator=generator, device=device)  # (B, C, h, w)
        zt = self.schedule.add_noise(z0, noise, timesteps)  # (B, C, h, w)
        if self.channels_last:
            zt = zt.contiguous(memory_format=torch.channels_last)
        prediction = self.unet(zt, timesteps, cond.context, cond.mask)  # (B, C, h, w)
        return Stage1Output(
            prediction=prediction,
            target=self.schedule.target(z0, noise, timesteps),
            timesteps=timesteps,
            pseudo_text=pseudo,
            text=x.text,
            has_text=x.has_text,
            use_pseudo=cond.use_pseudo,
        )

    # ------------------------------------------------------------------ switches
    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.unet.set_gradient_checkpointing(enabled)

    def set_channels_last(self, enabled: bool) -> None:
        """Channels-last memory format for the U-Net weights and inputs (faster convolutions on tensor cores)."""
        self.channels_last = enabled
        if enabled:
            self.unet.to(memory_format=torch.channels_last)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The U-Net's and the captioner's parameters (frozen encoders excluded)."""
        return [p for p in self.parameters() if p.requires_grad]

"""``DiffusionFeatures``: the frozen stage-1 diffusion model as stage 2's multi-scale feature extractor.

One pass per image, as in the paper (Sec. "Mask Generation"), with ODISE's recipe for the details it leaves out:

1. ``z_0``: the VAE posterior *mean* of the image (deterministic; stage 1 samples the posterior, stage 2 needs a
   function of the image);
2. conditioning: the implicit captioner's pseudo text ``t_imp = captioner(V(I))`` from the frozen image encoder,
   laid out as stage 1 lays it out (:class:`~diffdefect.stage1.conditioning.ConditioningMixer`); ``condition="null"``
   uses the unconditional (zero) context instead (the paper's "w/o diffusion condition" ablation);
3. ``z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps`` at ``t = 50`` with one *fixed* noise map ``eps`` (seeded,
   shared by all images, so the features are a function of the image only and can be cached);
4. one U-Net forward; forward hooks collect the hidden state of each of the U-Net's resolution levels:

   * ``blocks="up"`` (default, as ODISE): the decoder side, the state of up-block ``i`` just before its
     upsampler (the last up-block's output for the finest level). For SD-1.5 at 512 px: 1280 ch at 8x8,
     1280 at 16x16, 640 at 32x32, 320 at 64x64 (pixel strides 64, 32, 16, 8);
   * ``blocks="down"``: the encoder side, the state of down-block ``i`` just before its downsampler
     (320/640/1280/1280 channels at the same four resolutions).

5. pixel alignment, "the VAE decoder path": the U-Net levels are at most as fine as the latent grid (stride 8
   for SD). The paper restores pixel-aligned features with the VAE decoder. The VAE decoder takes 4-channel
   latents, not U-Net feature maps, so we feed it what the U-Net predicts: the denoised latent
   ``x0_hat = (z_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)`` (from the velocity for ``v_prediction``), and
   keep the output of its first ``vae_levels`` up-blocks (SD: 512 ch at stride 4, 512 at stride 2). The decoder
   is run only up to the last block needed (the later blocks at full resolution are the expensive ones).
   Everything else is brought to pixel resolution by the head: FPN upsampling to the finest level, then
   bilinear upsampling of the mask logits (as Mask2Former does from stride 4).

The whole stage-1 model sits in one :class:`~common.encoders.frozen.FrozenEncoder`: eval mode, no gradients,
none of its weights in a stage-2 checkpoint (they always come from the stage-1 checkpoint).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from common.encoders.frozen import FrozenEncoder
from common.encoders.image import ImageEncoder, ImageFeatures
from common.encoders.text import TextEncoder
from diffdefect.stage1.model import Stage1Model
from diffdefect.stage1.presets import tiny_stage1

BLOCKS = ("up", "down")
CONDITIONS = ("pseudo", "null")


class DiffusionFeatures(ImageEncoder):
    """Frozen multi-scale features of a stage-1 model (see the module docstring for what is computed), behind
    the one frozen-feature interface (:class:`~common.encoders.image.ImageEncoder`): the maps are the
    ``tokens``; the global ``embedding`` is the stage-1 image encoder's (what the implicit captioner reads), so
    CLIP-MDC can take these features as its image encoder too.

    Where the stage-1 model comes from (first that applies):

    1. ``stage1_checkpoint``: a checkpoint written by ``lightning fit`` with a stage-1 config (its stored
       config rebuilds the model; ``stage1_config`` for a checkpoint without one), EMA weights by default
       (:func:`diffdefect.stage1.checkpoint.load_stage1`);
    2. ``stage1``: a :class:`~diffdefect.stage1.model.Stage1Model` built from YAML (``class_path``; weights from its
       parts' own sources, e.g. ``DiffusionUNet(pretrained=...)`` for an exported U-Net);
    3. neither: the random-init tiny model of :func:`tiny_stage1` (CPU smoke tests only: its features are
       random projections, not learned ones).

    Args:
        stage1_checkpoint: Path of the stage-1 checkpoint, or ``None``.
        stage1_config: YAML with the stage-1 ``model:`` section, for checkpoints written outside the CLI.
        stage1: An already-built stage-1 model (used when ``stage1_checkpoint`` is ``None``).
        timestep: Diffusion timestep of the single forward (paper: 50).
        noise_seed: Seed of the fixed noise map.
        blocks: ``"up"`` or ``"down"``: which side of the U-Net gives the four levels.
        vae_levels: Number of VAE-decoder levels (finer than the latent grid) added in front (0 disables the
            decoder path; at most the VAE's up-blocks finer than the latent grid).
        condition: ``"pseudo"`` (implicit-captioner conditioning, the paper) or ``"null"`` (no text).
        use_ema: Load the EMA weights of the checkpoint.
    """

    def __init__(
        self,
        stage1_checkpoint: str | os.PathLike | None = None,
        stage1_config: str | os.PathLike | None = None,
        stage1: Stage1Model | None = None,
        timestep: int = 50,
        noise_seed: int = 0,
        blocks: str = "up",
        vae_levels: int = 1,
        condition: str = "pseudo",
        use_ema: bool = True,
    ) -> None:
        super().__init__()
        if blocks not in BLOCKS or condition not in CONDITIONS:
            raise ValueError(f"blocks must be one of {BLOCKS} and condition one of {CONDITIONS}")
        if stage1_checkpoint is not None:
            from diffdefect.stage1.checkpoint import load_stage1

            if not Path(stage1_checkpoint).is_file():
                raise FileNotFoundError(f"stage-1 checkpoint {stage1_checkpoint} not found (train stage 1 first, or "
                                        "set stage1_checkpoint: null for the random tiny smoke-test model)")
            stage1 = load_stage1(stage1_checkpoint, stage1_config, ema=use_ema).model
        elif stage1 is None:
            stage1 = tiny_stage1()
        if stage1.vae is None or stage1.image_encoder is None:
            raise ValueError("stage-2 features need the stage-1 model's VAE and image encoder (for the captioner)")
        self.checkpoint = None if stage1_checkpoint is None else os.fspath(stage1_checkpoint)
        self.timestep = int(timestep)
        self.noise_seed = int(noise_seed)
        self.blocks = blocks
        self.condition = condition
        self.stage1 = FrozenEncoder(stage1)
        self._noise: dict[tuple[int, ...], torch.Tensor] = {}
        unet_cfg = stage1.unet.net.config
        vae_cfg = stage1.vae.vae.module.config
        f = stage1.vae.downsample
        n = len(unet_cfg.block_out_channels)
        vae_out = list(vae_cfg.block_out_channels)[::-1]  # decoder up-block channels, coarse -> fine
        finer = [j for j in range(len(vae_out)) if self._vae_stride(j, f, len(vae_out)) < f]
        if not 0 <= vae_levels <= len(finer):
            raise ValueError(f"vae_levels must be in [0, {len(finer)}] for this VAE, got {vae_levels}")
        self.vae_levels = int(vae_levels)
        vae_ch = [int(vae_out[j]) for j in range(vae_levels)][::-1]  # fine -> coarse
        vae_st = [self._vae_stride(j, f, len(vae_out)) for j in range(vae_levels)][::-1]
        block_out = [int(c) for c in unet_cfg.block_out_channels]
        unet_ch = block_out  # level i (fine -> coarse) has block_out[i] channels on both sides
        unet_st = [f * 2**i for i in range(n)]
        self.feature_dims = vae_ch + unet_ch
        self.feature_strides = vae_st + unet_st
        self.embed_dim = int(stage1.image_encoder.embed_dim)
        self.image_size = None

    @staticmethod
    def _vae_stride(j: int, f: int, n_blocks: int) -> int:
        """Pixel stride of the output of VAE-decoder up-block ``j`` (each but the last upsamples 2x)."""
        return max(1, f // 2 ** (j + 1)) if j < n_blocks - 1 else 1

    @property
    def model(self) -> Stage1Model:
        """The frozen stage-1 model."""
        return self.stage1.module

    @property
    def text_encoder(self) -> TextEncoder | None:
        return self.model.text_encoder

    def cache_key(self) -> str:
        stamp = ""
        if self.checkpoint is not None and Path(self.checkpoint).is_file():
            st = Path(self.checkpoint).stat()
            stamp = f"{Path(self.checkpoint).resolve()}:{st.st_size}:{int(st.st_mtime)}"
        return (f"{super().cache_key()}:{stamp}:t{self.timestep}:s{self.noise_seed}:{self.blocks}:"
                f"v{self.vae_levels}:{self.condition}")

    # ------------------------------------------------------------------ pieces
    def fixed_noise(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """The seeded noise map ``(1, C, h, w)`` for a latent shape (drawn once per shape, on the CPU)."""
        key = tuple(shape)
        if key not in self._noise:
            g = torch.Generator().manual_seed(self.noise_seed)
            self._noise[key] = torch.randn((1, *shape), generator=g)
        return self._noise[key].to(device)

    def context(self, image: torch.Tensor, image_embedding: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The cross-attention context ``(B, L, D)`` (and mask) of each image: pseudo text or null.

        Args:
            image: ``(B, 3, H, W)`` in [0, 1].
            image_embedding: ``(B, D_v)`` stage-1 image-encoder embeddings of ``image`` when already computed.
        """
        m = self.model
        b = image.shape[0]
        if self.condition == "null":
            return m.conditioning.null_context(b, m.context_dim, 0, image.device)
        if image_embedding is None:
            image_embedding = m.image_encoder(image).embedding.float()  # (B, D_v)
        pseudo = m.captioner(image_embedding)  # (B, D) t_imp
        if m.conditioning.context == "sequence":  # no token states for an image: the vector alone
            tokens = pseudo.new_zeros(b, 0, pseudo.shape[-1])
            return m.conditioning.build(pseudo, tokens, torch.zeros(b, 0, dtype=torch.bool, device=image.device))
        return m.conditioning.build(pseudo)

    @contextmanager
    def _collect(self, store: list[torch.Tensor | None]) -> Any:
        """Hooks storing each U-Net level's state in ``store[level]`` (level 0 = finest) during a forward."""
        net = self.model.unet.net
        blocks = net.up_blocks if self.blocks == "up" else net.down_blocks
        n = len(blocks)
        handles = []

        def keep(level: int, pick: Callable[[Any], torch.Tensor]) -> Callable[..., None]:
            def hook(_module: Any, *args: Any) -> None:
                store[level] = pick(args)

            return hook

        for i, block in enumerate(blocks):
            level = n - 1 - i if self.blocks == "up" else i
            samplers = block.upsamplers if self.blocks == "up" else block.downsamplers
            if samplers:  # the state entering the (up/down)sampler: this level's resolution
                handles.append(samplers[0].register_forward_pre_hook(keep(level, lambda a: a[0][0])))
            else:  # the block at the finest (up) / coarsest (down) level has none: its output
                pick = (lambda a: a[1]) if self.blocks == "up" else (lambda a: a[1][0])
                handles.append(block.register_forward_hook(keep(level, pick)))
        try:
            yield store
        finally:
            for h in handles:
                h.remove()

    def decoder_levels(self, x0: torch.Tensor) -> list[torch.Tensor]:
        """The VAE decoder path: the first ``vae_levels`` up-block outputs of decoding ``x0``, fine -> coarse.

        Runs ``post_quant_conv``, ``conv_in``, ``mid_block`` and only the up-blocks needed (the same calls as
        diffusers' ``AutoencoderKL.decode``, stopped early).
        """
        vae = self.model.vae
        ae = vae.vae.module
        z = x0.to(vae.dtype) / vae.scaling_factor
        if ae.post_quant_conv is not None:
            z = ae.post_quant_conv(z)
        dec = ae.decoder
        h = dec.mid_block(dec.conv_in(z), None)  # (B, C, h, w) at the latent grid
        out = []
        for block in dec.up_blocks[: self.vae_levels]:
            h = block(h, None)
            out.append(h.float())
        return out[::-1]

    # ------------------------------------------------------------------ the pass
    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """Unchanged: the VAE and the stage-1 image encoder each normalise for themselves."""
        return image

    def _features(self, image: torch.Tensor, embedding: bool = True) -> ImageFeatures:
        h, w = image.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(f"image sides {h}x{w} must be multiples of {self.size_multiple} (the coarsest feature "
                             "stride)")
        m = self.model
        b = image.shape[0]
        emb = None
        if embedding or self.condition == "pseudo":
            emb = m.image_encoder(image).embedding.float()  # (B, D_v) what the captioner reads
        z0 = m.vae.sample_latents(m.vae.encode_moments(image), sample=False)  # (B, C, h, w) posterior mean
        t = torch.full((b,), self.timestep, dtype=torch.long, device=image.device)
        noise = self.fixed_noise(tuple(z0.shape[1:]), image.device).expand_as(z0)  # (B, C, h, w)
        zt = m.schedule.add_noise(z0, noise, t)  # (B, C, h, w)
        context, ctx_mask = self.context(image, emb)  # (B, L, D)
        store: list[torch.Tensor | None] = [None] * len(m.unet.net.up_blocks)
        with self._collect(store):
            pred = m.unet(zt, t, context, ctx_mask)  # (B, C, h, w) epsilon or velocity
        levels = [s.float() for s in store]  # fine -> coarse, [(B, C_l, h / 2^l, w / 2^l)]
        if self.vae_levels:
            abar = m.schedule.scheduler.alphas_cumprod.to(image.device)[self.timestep].float()
            if m.schedule.prediction_type == "epsilon":
                x0 = (zt - (1 - abar).sqrt() * pred) / abar.sqrt()  # (B, C, h, w)
            else:
                x0 = abar.sqrt() * zt - (1 - abar).sqrt() * pred
            levels = self.decoder_levels(x0) + levels
        return ImageFeatures(tokens=levels, embedding=emb if embedding else None)

"""Stage 1: the text-conditioned latent-diffusion model trained on industrial image-text pairs.

``unet`` (the denoiser), ``captioner`` (the implicit captioner ``512 -> 768``), ``conditioning`` (real / pseudo
text mixing), ``schedule`` (DDPM), ``model`` (``Stage1Model``: frozen encoders + the parts, one typed output),
``loss`` (``L_diff + 0.3 L_imp``), ``module`` (the thin LightningModule), ``ema``, ``presets`` (tiny models for
tests), ``checkpoint`` (loading a trained stage 1), ``sampling`` (text-to-image), ``captions`` (image-text
manifests), ``precompute`` (latent shards).

Nothing here imports :mod:`diffdefect.stage2`.
"""

"""U-Net presets, the implicit captioner, the noise schedule, EMA and the conditioning mixer."""

from __future__ import annotations

import pytest
import torch

from diffdefect import (
    EMA,
    ConditioningMixer,
    DiffusionUNet,
    ImplicitCaptioner,
    NoiseSchedule,
    build_unet,
    unet_config,
)
from diffdefect.stage1.unet import SD15_PARAMETERS, count_parameters


def test_sd15_preset_has_859_5m_parameters_on_meta_device() -> None:
    unet = build_unet("sd15", device="meta")
    assert next(unet.parameters()).device.type == "meta"
    assert count_parameters(unet) == SD15_PARAMETERS == 859_520_964
    cfg = unet.config
    assert tuple(cfg.block_out_channels) == (320, 640, 1280, 1280)
    assert cfg.cross_attention_dim == 768 and cfg.layers_per_block == 2 and cfg.sample_size == 64
    assert list(cfg.down_block_types).count("CrossAttnDownBlock2D") == 3


def test_unet_config_overrides_and_unknown_preset() -> None:
    cfg = unet_config("tiny", cross_attention_dim=384, block_out_channels=[16, 32])
    assert cfg["cross_attention_dim"] == 384 and cfg["block_out_channels"] == (16, 32)
    with pytest.raises(ValueError, match="unknown U-Net preset"):
        unet_config("sdxl")


def test_tiny_unet_forward_shapes_sdpa_and_seeded_init(tmp_path) -> None:
    a, b = DiffusionUNet("tiny"), DiffusionUNet("tiny")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    procs = {type(p).__name__ for p in a.net.attn_processors.values()}
    assert procs == {"AttnProcessor2_0"}
    z = torch.randn(2, 4, 8, 8)
    ctx = torch.randn(2, 1, 32)
    out = a(z, torch.tensor([1, 500]), ctx)
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
    # masked sequence context: masked tokens do not change the output
    seq = torch.cat([ctx, torch.randn(2, 3, 32)], 1)
    mask = torch.tensor([[True, False, False, False]] * 2)
    torch.testing.assert_close(a(z, torch.tensor([1, 500]), seq, mask), out, atol=1e-5, rtol=1e-5)
    # diffusers-format export and reload
    a.save_pretrained(tmp_path / "unet")
    c = DiffusionUNet(pretrained=tmp_path / "unet")
    torch.testing.assert_close(c(z, torch.tensor([1, 500]), ctx), out)


def test_gradient_checkpointing_switch_gives_same_gradients() -> None:
    unet = DiffusionUNet("tiny")
    z, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.randn(2, 1, 32)
    unet.train()
    unet(z, t, ctx).square().mean().backward()
    ref = [p.grad.clone() for p in unet.parameters()]
    unet.zero_grad()
    unet.set_gradient_checkpointing(True)
    assert unet.net.is_gradient_checkpointing
    unet(z, t, ctx).square().mean().backward()
    for g, p in zip(ref, unet.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)


def test_captioner_parameter_count_is_about_0_3m() -> None:
    cap = ImplicitCaptioner()  # 512 -> 256 -> 768
    n = sum(p.numel() for p in cap.parameters())
    assert n == ImplicitCaptioner.num_parameters() == 328_704
    assert 0.25e6 < n < 0.35e6
    assert cap(torch.randn(3, 512)).shape == (3, 768)
    assert isinstance(cap.act, torch.nn.GELU)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_schedule_add_noise_and_targets(prediction_type: str) -> None:
    s = NoiseSchedule(prediction_type=prediction_type)
    assert s.num_train_timesteps == 1000 and s.config["num_train_timesteps"] == 1000
    z0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([0, 999])
    abar = s.scheduler.alphas_cumprod[t].view(2, 1, 1, 1)
    zt = s.add_noise(z0, eps, t)
    torch.testing.assert_close(zt, abar.sqrt() * z0 + (1 - abar).sqrt() * eps)
    target = s.target(z0, eps, t)
    expected = eps if prediction_type == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * z0
    torch.testing.assert_close(target, expected)
    ts = s.sample_timesteps(1000, "cpu", torch.Generator().manual_seed(0))
    assert ts.min() >= 0 and ts.max() <= 999 and ts.dtype == torch.long
    with pytest.raises(ValueError):
        NoiseSchedule(prediction_type="sample")


def test_ema_warmup_update_swap_and_state() -> None:
    net = torch.nn.Linear(2, 2)
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    holder = torch.nn.ModuleDict({"net": net, "frozen": frozen})
    ema = EMA(holder, decay=0.9)
    assert set(ema.shadow) == {"net.weight", "net.bias"}
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(holder)  # first decay = min(0.9, 1/10) = 0.1
    torch.testing.assert_close(ema.shadow["net.weight"], start + 0.9)
    assert ema.current_decay() == pytest.approx(min(0.9, 2 / 11))
    with ema.swapped(holder):
        torch.testing.assert_close(net.weight, start + 0.9)
    torch.testing.assert_close(net.weight, start + 1.0)
    other = EMA(holder, decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1 and other.decay == 0.9
    torch.testing.assert_close(other.shadow["net.weight"], ema.shadow["net.weight"])


def test_conditioning_mixes_text_and_pseudo_with_p_half() -> None:
    mix = ConditioningMixer(p_pseudo=0.5)
    b, d = 4000, 8
    text, pseudo = torch.randn(b, d), torch.randn(b, d) * 7
    has = torch.ones(b, dtype=torch.bool)
    has[:100] = False
    c = mix(text, pseudo, has, generator=torch.Generator().manual_seed(0))
    assert c.context.shape == (b, 1, d) and c.mask is None
    assert c.use_pseudo[:100].all()  # no caption: always pseudo
    assert abs(c.use_pseudo[100:].float().mean().item() - 0.5) < 0.03
    # each row is the chosen vector, scaled to norm sqrt(d): real and pseudo are indistinguishable by scale
    chosen = torch.where(c.use_pseudo[:, None], pseudo, text)
    torch.testing.assert_close(c.context[:, 0], torch.nn.functional.normalize(chosen, dim=-1) * d**0.5)
    # evaluation: real text wherever present
    e = mix(text, pseudo, has, train=False)
    assert not e.use_pseudo[100:].any() and e.use_pseudo[:100].all()


def test_conditioning_cfg_dropout_and_sequence_layout() -> None:
    mix = ConditioningMixer(p_pseudo=0.5, cfg_dropout=0.3, context="sequence")
    b, length, d = 2000, 5, 8
    tokens = torch.randn(b, length, d)
    tmask = torch.ones(b, length, dtype=torch.bool)
    tmask[:, 3:] = False  # padding
    c = mix(torch.randn(b, d), torch.randn(b, d), torch.ones(b, dtype=torch.bool), tokens, tmask,
            torch.Generator().manual_seed(1))
    assert c.context.shape == (b, 1 + length, d) and c.mask.shape == (b, 1 + length)
    assert abs(c.dropped.float().mean().item() - 0.3) < 0.04
    assert (c.context[c.dropped, 0] == 0).all()  # null context = zero token
    assert c.mask[:, 0].all()  # the vector token is always attended (no all-masked rows)
    real = ~c.use_pseudo & ~c.dropped
    assert c.mask[real, 1:4].all() and not c.mask[:, 4:].any()
    assert not c.mask[c.use_pseudo | c.dropped, 1:].any()
    null, null_mask = mix.null_context(3, d, length)
    assert null.abs().sum() == 0 and null_mask[:, 0].all() and not null_mask[:, 1:].any()
    with pytest.raises(ValueError, match="sequence"):
        mix.build(torch.randn(2, d))
    with pytest.raises(ValueError):
        ConditioningMixer(context="pooled")

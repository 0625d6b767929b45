"""Stage1Model and Stage1Loss on the tiny preset: shapes, finiteness, gradients, conditioning paths."""

from __future__ import annotations

import pytest
import torch

from common.data.image_text import ImageTextBatch
from common.encoders import TinyText
from diffdefect import ConditioningMixer, DiffusionUNet, ImplicitCaptioner, Stage1Loss, Stage1Model
from tests.diffdefect.conftest import tiny_model


def batch(b: int = 4, captions: bool = True) -> ImageTextBatch:
    g = torch.Generator().manual_seed(0)
    caps = [f"a plate with a scratch number {i}" if captions and i % 3 else None for i in range(b)]
    return ImageTextBatch(key=[str(i) for i in range(b)], caption=caps,
                          has_text=torch.tensor([c is not None for c in caps]), image=torch.rand(b, 3, 16, 16, generator=g))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_output_loss_and_gradients_reach_exactly_the_trainable_parts(prediction_type: str) -> None:
    model = tiny_model(prediction_type)
    out = model(batch(), torch.Generator().manual_seed(0))
    assert out.prediction.shape == out.target.shape == (4, 4, 8, 8)
    assert out.pseudo_text.shape == out.text.shape == (4, 32) and out.timesteps.shape == (4,)
    assert out.use_pseudo[~out.has_text].all()
    terms = Stage1Loss()(out)
    assert set(terms) == {"diff", "imp", "total"} and all(torch.isfinite(v) for v in terms.values())
    torch.testing.assert_close(terms["total"], terms["diff"] + 0.3 * terms["imp"])
    terms["total"].backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("unet.", "captioner.")) for n in trainable)
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # frozen encoders stay out of the state dict, and in eval mode under model.train()
    model.train()
    assert not any(k.startswith(("vae.", "text_encoder.", "image_encoder.")) for k in model.state_dict())
    assert not model.vae.vae.training and not model.image_encoder.model.training


def test_same_generator_same_step_and_eval_mode_uses_real_text() -> None:
    model = tiny_model()
    a = model(batch(), torch.Generator().manual_seed(3))
    b = model(batch(), torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.prediction, b.prediction)
    t = torch.full((4,), 500)
    e = model(batch(), torch.Generator().manual_seed(3), timesteps=t, train=False)
    assert (e.timesteps == 500).all()
    assert torch.equal(e.use_pseudo, ~e.has_text)


def test_alignment_loss_ignores_samples_without_caption() -> None:
    model = tiny_model()
    out = model(batch(captions=False), torch.Generator().manual_seed(0))
    terms = Stage1Loss()(out)
    assert terms["imp"] == 0 and out.use_pseudo.all()
    terms["total"].backward()
    assert model.captioner.fc1.weight.grad is not None  # trained through the diffusion loss alone


def test_loss_weights_from_a_dict() -> None:
    out = tiny_model()(batch(), torch.Generator().manual_seed(0))
    terms = Stage1Loss({"diff": 0.0, "imp": 1.0})(out)
    torch.testing.assert_close(terms["total"], terms["imp"])
    with pytest.raises(ValueError, match="unknown loss terms"):
        Stage1Loss({"mask": 1.0})


def test_sequence_context_with_a_clip_text_encoder(tmp_path) -> None:
    from common.encoders.clip_text import CLIPTextEncoder, tiny_clip_text_model

    text = CLIPTextEncoder(tiny_clip_text_model(tmp_path / "clip"), max_length=16)
    base = tiny_model()
    model = Stage1Model(base.unet, base.vae, text, base.image_encoder, base.captioner,
                        conditioning=ConditioningMixer(cfg_dropout=0.5, context="sequence"))
    out = model(batch(), torch.Generator().manual_seed(0))
    Stage1Loss()(out)["total"].backward()
    assert torch.isfinite(out.prediction).all()
    with pytest.raises(ValueError, match="token outputs"):
        Stage1Model(base.unet, base.vae, TinyText(32), base.image_encoder, base.captioner,
                    conditioning=ConditioningMixer(context="sequence"))


def test_size_mismatches_are_reported() -> None:
    with pytest.raises(ValueError, match="text-space sizes differ"):
        Stage1Model(DiffusionUNet("tiny"), text_encoder=TinyText(16), captioner=ImplicitCaptioner(8, 32, 8))
    with pytest.raises(ValueError, match="captioner"):
        Stage1Model(DiffusionUNet("tiny"))

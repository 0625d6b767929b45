"""Stage-2 model: the frozen extractors (levels, determinism, frozen and unsaved), the head (shapes, gradients
reach exactly the trainable parameters, the full preset's ~45M parameters), open vocabulary, the feature cache,
loading a stage-1 checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.encoders import TinyText
from diffdefect import (
    DiffusionFeatures,
    EfficientNetFeatures,
    FeatureCache,
    Mask2FormerHead,
    OpenVocabClassifier,
    Stage2Model,
)
from diffdefect.stage2.classifier import caption_nouns, class_prompts, default_lexicon

SIZE = 32


@pytest.fixture(scope="module")
def extractor() -> DiffusionFeatures:
    return DiffusionFeatures()  # random tiny stage 1


@pytest.fixture(scope="module")
def model(extractor: DiffusionFeatures) -> Stage2Model:
    torch.manual_seed(0)
    return Stage2Model(extractor, head="tiny")


@pytest.mark.parametrize("blocks", ["up", "down"])
@pytest.mark.parametrize("vae_levels", [0, 1])
def test_diffusion_levels_match_their_declared_channels_and_strides(blocks: str, vae_levels: int) -> None:
    ext = DiffusionFeatures(blocks=blocks, vae_levels=vae_levels)
    feats = ext(torch.rand(2, 3, SIZE, SIZE)).tokens
    assert [f.shape[1] for f in feats] == ext.channels
    assert [SIZE // f.shape[-1] for f in feats] == ext.strides == ([1] * vae_levels + [2, 4])
    assert all(torch.isfinite(f).all() for f in feats)


def test_diffusion_features_are_deterministic_conditioned_and_frozen(extractor: DiffusionFeatures) -> None:
    x = torch.rand(2, 3, SIZE, SIZE)
    a, b = extractor(x).tokens, extractor(x).tokens
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))  # fixed noise: a function of the image
    assert all(torch.allclose(u[:1], v, atol=1e-5) for u, v in zip(a, extractor(x[:1]).tokens, strict=True))  # per image
    null = DiffusionFeatures(condition="null")
    assert not torch.allclose(null(x).tokens[-1], a[-1])  # the pseudo-text condition matters
    assert extractor.state_dict() == {} and not any(p.requires_grad for p in extractor.parameters())
    extractor.train()
    assert not extractor.model.unet.training  # the frozen wrapper keeps eval mode
    with pytest.raises(ValueError, match="multiples"):
        extractor(torch.rand(1, 3, 30, 30))


def test_efficientnet_alternative_has_four_levels_and_nothing_to_save() -> None:
    ext = EfficientNetFeatures("test_efficientnet", weights=None, text_encoder=TinyText(32))
    feats = ext(torch.rand(2, 3, 64, 64)).tokens
    assert ext.strides == [4, 8, 16, 32] and [f.shape[1] for f in feats] == ext.channels
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2] and ext.state_dict() == {}
    model = Stage2Model(ext, head="tiny")
    out = model(torch.rand(2, 3, 64, 64), model.classifier.encode_names(["good", "scratch"]))
    assert out.pred_masks.shape == (2, 8, 16, 16) and out.class_logits.shape == (2, 8, 3)


def test_one_frozen_feature_interface_serves_both_families(extractor: DiffusionFeatures) -> None:
    """The diffusion features are an ImageEncoder (maps + the stage-1 image embedding), so CLIP-MDC takes them
    as its image encoder; any frozen timm backbone serves stage 2 through the same door."""
    from clipmdc.model import CLIPMDC
    from common.encoders import ImageEncoder, TimmImage

    x = torch.rand(2, 3, SIZE, SIZE)
    feats = extractor(x)
    assert isinstance(extractor, ImageEncoder) and extractor.feature_dims == [f.shape[1] for f in feats.tokens]
    torch.testing.assert_close(feats.embedding, extractor.model.image_encoder(x).embedding)
    assert extractor(x, embedding=False).embedding is None
    assert all(torch.equal(u, v) for u, v in zip(feats.tokens, extractor(x, embedding=False).tokens, strict=True))
    torch.manual_seed(0)
    clip = CLIPMDC(image_encoder=extractor, text_encoder=TinyText(32), adapter_hidden=16, decoder_width=8)
    out = clip(x)
    assert out.anomaly_map.shape == (2, 1, SIZE, SIZE) and torch.isfinite(out.anomaly_map).all()
    (out.anomaly_map.mean() + out.image_score.mean()).backward()
    assert all(p.grad is None for p in extractor.parameters())  # frozen: no gradient reaches it
    timm = TimmImage("test_efficientnet", layers=(1, 2))
    stage2 = Stage2Model(timm, head="tiny", classifier=OpenVocabClassifier(32, TinyText(32)))
    out2 = stage2(torch.rand(2, 3, SIZE, SIZE), stage2.classifier.encode_names(["good", "scratch"]))
    assert out2.pred_masks.shape == (2, 8, SIZE // 4, SIZE // 4) and stage2.mask_stride == 4


def test_forward_shapes_and_gradients_reach_exactly_the_trainable_parameters(model: Stage2Model) -> None:
    text = model.classifier.encode_names(["good", "scratch", "hole"])  # (3, 32)
    assert text.shape == (3, 32) and torch.allclose(text.norm(dim=-1), torch.ones(3))
    out = model(torch.rand(2, 3, SIZE, SIZE), text)
    assert out.pred_masks.shape == (2, 8, SIZE, SIZE)  # tiny VAE level: stride 1
    assert out.class_logits.shape == (2, 8, 4) and out.mask_embeddings.shape == (2, 8, 32)
    assert len(out.aux) == 2 and out.aux[0].class_logits.shape == (2, 8, 4)
    loss = out.pred_masks.mean() + out.class_logits.mean() + sum(a.pred_masks.mean() + a.class_logits.mean()
                                                                 for a in out.aux)
    model.zero_grad()
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("head.", "classifier.")) for n in trainable)
    assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable
    # the checkpointed state is the head and the classifier only
    assert all(k.startswith(("head.", "classifier.")) for k in model.state_dict())


def test_adding_a_name_adds_one_class_and_changes_nothing_else(model: Stage2Model) -> None:
    x = torch.rand(2, 3, SIZE, SIZE)
    names = ["good", "scratch", "hole"]
    with torch.no_grad():
        a = model(x, model.classifier.encode_names(names))
        b = model(x, model.classifier.encode_names([*names, "oil stain"]))
    assert b.class_logits.shape[-1] == a.class_logits.shape[-1] + 1
    torch.testing.assert_close(b.class_logits[..., :3], a.class_logits[..., :3])  # the known classes
    torch.testing.assert_close(b.class_logits[..., -1], a.class_logits[..., -1])  # the no-object logit
    torch.testing.assert_close(b.pred_masks, a.pred_masks)
    torch.testing.assert_close(b.mask_embeddings, a.mask_embeddings)


def test_full_preset_has_about_45m_trainable_parameters() -> None:
    # SD-1.5 features: VAE-decoder level (512 ch, stride 4) + U-Net levels 320/640/1280/1280, 768-d CLIP text space
    with torch.device("meta"):
        head = Mask2FormerHead.from_preset("full", [512, 320, 640, 1280, 1280], [4, 8, 16, 32, 64], 768)
    n = sum(p.numel() for p in head.parameters() if p.requires_grad)
    assert 43e6 < n < 47e6, n
    assert head.num_queries == 100 and head.config.hidden_dim == head.config.feature_size == 256
    # the classifier adds only its temperature and void embedding
    assert sum(p.numel() for p in OpenVocabClassifier(768).parameters()) == 769


def test_msdeform_pixel_decoder_option() -> None:
    head = Mask2FormerHead.from_preset("tiny", [16, 32, 64], [1, 2, 4], 32, pixel_decoder="msdeform")
    out = head([torch.randn(1, c, SIZE // s, SIZE // s) for c, s in zip([16, 32, 64], [1, 2, 4], strict=True)])
    assert out.pred_masks.shape == (1, 8, SIZE, SIZE) and torch.isfinite(out.pred_masks).all()


def test_feature_cache_skips_the_extractor_and_returns_the_same_features(extractor: DiffusionFeatures,
                                                                         tmp_path: Path) -> None:
    cache = FeatureCache(directory=tmp_path / "cache")
    calls = []

    def counting(x: torch.Tensor) -> list[torch.Tensor]:
        calls.append(len(x))
        return extractor(x).tokens

    x = torch.rand(3, 3, SIZE, SIZE)
    key = extractor.cache_key()
    first = cache.get_or_compute(x, counting, key)
    again = cache.get_or_compute(x[[2, 0]], counting, key)
    assert calls == [3] and cache.hits == 2 and cache.misses == 3
    assert all(torch.equal(f[[2, 0]], g) for f, g in zip(first, again, strict=True))
    flipped = cache.get_or_compute(x.flip(-1), counting, key)  # augmented pixels: another key
    assert calls == [3, 3] and len(flipped) == len(first)
    disk = FeatureCache(directory=tmp_path / "cache")  # a later run reads the files
    assert all(torch.equal(f, g) for f, g in zip(first, disk.get_or_compute(x, counting, key), strict=True))
    assert calls == [3, 3]


def test_stage1_checkpoint_loads_its_ema_weights_frozen(stage1_ckpt: Path) -> None:
    ext = DiffusionFeatures(stage1_checkpoint=stage1_ckpt)
    state = torch.load(stage1_ckpt, weights_only=False)
    w = "unet.net.conv_in.weight"
    torch.testing.assert_close(ext.model.state_dict()[w], state["ema"]["shadow"][w])
    assert ext.state_dict() == {} and ext(torch.rand(1, 3, 16, 16)).tokens[0].shape == (1, 16, 16, 16)
    with pytest.raises(FileNotFoundError, match="stage-1 checkpoint"):
        DiffusionFeatures(stage1_checkpoint=stage1_ckpt.parent / "missing.ckpt")


def test_prompts_and_caption_nouns() -> None:
    from common.data.captions import caption_for
    from common.data.types import SampleRecord

    assert class_prompts("break")[0] == "a photo of edge break."
    assert "defect-free" in class_prompts("good")[0]
    import numpy as np

    mask = np.zeros((32, 32), np.uint8)
    mask[4:9, 4:12] = 1
    defect = caption_for(SampleRecord(Path("a.png"), "magnetic_tile", "crack", True), mask).text
    normal = caption_for(SampleRecord(Path("b.png"), "magnetic_tile", "good", False), mask * 0).text
    assert caption_nouns(defect) == ["crack"]
    assert caption_nouns(normal) == []  # "free of defects: no scratches, holes..." is negated
    assert caption_nouns("A blowhole next to a crack. No stain.") == ["blowhole", "crack"]
    assert caption_nouns("A linear scratch is visible.") == ["scratch"]
    # the data's own class names join the lexicon (NEU-Seg's "inclusions" is no inspection term)
    assert caption_nouns("A small inclusions is visible.", default_lexicon(["good", "inclusions"])) == ["inclusions"]


def test_temperature_is_learnable(model: Stage2Model) -> None:
    clf = model.classifier
    assert abs(float(clf.tau.detach()) - 0.07) < 1e-4 and clf.logit_scale.requires_grad
    z = torch.randn(1, 2, 32, requires_grad=True)
    clf(z, clf.encode_names(["good", "scratch"])).sum().backward()
    assert clf.logit_scale.grad is not None and clf.void_embedding.grad is not None
    clf.zero_grad()


def test_a_batch_of_only_novel_classes_gives_a_zero_loss_on_every_parameter(model: Stage2Model) -> None:
    from common.data.types import DefectBatch
    from diffdefect import Stage2Module

    module = Stage2Module(model, train_classes=["scratch"], data_vocabulary=["good", "scratch", "hole"])
    assert module.names["train"] == ["good", "scratch"] and module.names["test"] == ["good", "scratch", "hole"]
    cm = torch.zeros(2, SIZE, SIZE, dtype=torch.long)
    cm[:, 3:9, 3:9] = 2  # "hole": novel, so both images are dropped
    batch = DefectBatch(image=torch.rand(2, 3, SIZE, SIZE), mask=(cm > 0).float()[:, None], has_mask=torch.ones(2, dtype=torch.bool),
                        label=torch.ones(2, dtype=torch.long), defect_type_id=torch.full((2,), 2), class_mask=cm,
                        object_id=torch.zeros(2, dtype=torch.long), defect_type=["hole"] * 2, object_name=["plate"] * 2,
                        caption=[None, None], path=["a.png", "b.png"])
    loss = module.training_step(batch, 0)
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    assert all(p.grad is not None for p in model.trainable_parameters())
    model.zero_grad()


def test_caption_only_supervision_takes_its_pseudo_labels_from_the_given_captions(model: Stage2Model) -> None:
    from common.data.types import DefectBatch
    from diffdefect import Stage2Module

    # the data set's own label says nothing: the words come from captions
    module = Stage2Module(model, supervision="captions", data_vocabulary=["good", "defect"])
    cm = torch.zeros(3, SIZE, SIZE, dtype=torch.long)
    cm[:2, 3:9, 3:9] = 1
    captions = ["A long scratch runs across the plate.", "A round hole near the edge. There are no stains.", None]
    batch = DefectBatch(image=torch.rand(3, 3, SIZE, SIZE), mask=(cm > 0).float()[:, None],
                        has_mask=torch.ones(3, dtype=torch.bool), label=torch.tensor([1, 1, 0]),
                        defect_type_id=torch.tensor([1, 1, 0]), class_mask=cm, object_id=torch.zeros(3, dtype=torch.long),
                        defect_type=["defect", "defect", "good"], object_name=["plate"] * 3, caption=captions,
                        path=["a.png", "b.png", "c.png"])
    targets = module.training_targets(batch)
    nouns, grounding = targets.nouns, targets.grounding
    assert nouns[:2] == [["scratch"], ["hole"]]  # "no stains" is negated
    assert nouns[2] == []  # defect-free, no caption (the DataModule's templated one would name nothing either)
    assert grounding is not None and grounding.owner.tolist() == [0, 1]
    assert grounding.positive.tolist() == [[True, False, False], [False, True, False], [False, False, False]]
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss) and loss.requires_grad
    model.zero_grad()


def test_every_rank_reports_the_same_metrics_whatever_its_batches_held(model: Stage2Model) -> None:
    """Under DDP each rank computes (and syncs) every metric at the end of an epoch, so the keys may not depend on
    what a rank's batches held: a rank that saw no mask reports the same figures as one that did."""
    from common.data.types import DefectBatch
    from diffdefect.stage2.criterion import SetCriterion
    from diffdefect.stage2.metrics import Stage2Metrics

    names = ["good", "scratch", "hole"]
    cm = torch.zeros(2, SIZE, SIZE, dtype=torch.long)
    cm[0, 3:9, 3:9] = 1

    def batch(has_mask: bool) -> DefectBatch:
        return DefectBatch(image=torch.rand(2, 3, SIZE, SIZE), mask=(cm > 0).float()[:, None],
                           has_mask=torch.full((2,), has_mask), label=torch.tensor([1, 0]),
                           defect_type_id=torch.tensor([1, 0]) if has_mask else torch.full((2,), -1),
                           class_mask=cm, object_id=torch.zeros(2, dtype=torch.long), defect_type=["scratch", "good"],
                           object_name=["plate"] * 2, caption=[None, None], path=["a.png", "b.png"])

    keys = []
    for has_mask in (True, False):
        metrics = Stage2Metrics(names, base=["scratch"])
        b = batch(has_mask)
        with torch.no_grad():
            out = model(b.image, model.classifier.encode_names(names))
        metrics.update(out, b, b.class_mask, b.defect_type_id, SetCriterion())
        if has_mask:
            keys.append(sorted(metrics.compute()))
            continue
        with pytest.warns(UserWarning):  # the rank without masks reports no-data values, and says so
            keys.append(sorted(metrics.compute()))
    assert keys[0] == keys[1]
    assert {"miou", "iou_hole", "base_iou", "novel_iou", "accuracy", "segm_map", "pixel_auroc", "mask"} <= set(keys[0])


def test_modules_built_in_python_save_no_networks_in_their_hyperparameters(model: Stage2Model) -> None:
    from diffdefect import Stage1Module, Stage2Module
    from diffdefect.stage1.presets import tiny_stage1

    for module in (Stage2Module(model, test_classes=["x"]), Stage1Module(tiny_stage1(), ema_decay=None)):
        assert not any(isinstance(v, torch.nn.Module) or callable(v) for v in module.hparams.values()), module.hparams
    assert "test_classes" not in Stage2Module(model).hparams  # an evaluation switch: the command line wins

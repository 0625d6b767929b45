"""``Stage2Module``: the thin LightningModule of stage 2 (wiring, optimisation, logging).

The network is :class:`~diffdefect.stage2.model.Stage2Model`, the loss :class:`~diffdefect.stage2.criterion.
SetCriterion`; both are constructor arguments (``class_path`` in YAML), as are the optimizer (default AdamW, lr
5e-5, the paper's) and the scheduler. What a step does is elsewhere: the vocabularies in
:mod:`~diffdefect.stage2.vocabulary`, the targets of each supervision mode in
:func:`~diffdefect.stage2.targets.build_targets`, the metrics in :mod:`~diffdefect.stage2.metrics`.

Open vocabulary: ``train_classes`` (base) and ``test_classes`` (base + novel, in words only) can be set on the
command line with any checkpoint (``--model.init_args.test_classes "[crack,fray]"``): these evaluation switches
(:data:`EVAL_SWITCHES`) stay out of the checkpoint's hyperparameters, which LightningCLI would apply over the
command line. Class names: ``vocabulary`` (command line) > the checkpoint's (test / predict) > the DataModule's
(``data_vocabulary``, which its batch ids index: linked by :class:`common.cli.DefectCLI`, passed in Python). The
text embeddings of every name a step may need are computed once per ``setup()`` into a non-persistent buffer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn

from common.data.tiling import to_original
from common.data.types import DefectBatch
from common.data.vocabulary import remap_ids
from common.encoders.frozen import expect_frozen_eval_modules
from common.hparams import save_config_hyperparameters
from common.prediction import ImagePrediction, predict_readable
from diffdefect.stage2.criterion import SetCriterion
from diffdefect.stage2.metrics import Stage2Metrics
from diffdefect.stage2.model import Stage2Model
from diffdefect.stage2.postprocess import explain, semantic_scores
from diffdefect.stage2.targets import SUPERVISION, Stage2Targets, build_targets
from diffdefect.stage2.vocabulary import Stage2Vocabulary, checkpoint_names

EVAL_SWITCHES = ("vocabulary", "test_classes", "metrics_mode", "detection_metrics", "top_k", "pixel_threshold")
"""Constructor arguments read from the current config at test / predict time, never from a checkpoint."""


def default_optimizer(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW with the paper's stage-2 learning rate 5e-5 (weight decay 0.05, Mask2Former's)."""
    return torch.optim.AdamW(params, lr=5e-5, weight_decay=0.05)


class Stage2Module(L.LightningModule):
    """Trains and evaluates the open-vocabulary stage-2 head.

    Args:
        model: The :class:`~diffdefect.stage2.model.Stage2Model`.
        criterion: The loss (default :class:`~diffdefect.stage2.criterion.SetCriterion`, the paper's weights).
        optimizer: Optimizer factory over the trainable parameters (head + classifier).
        scheduler: LR scheduler factory (stepped per epoch), or ``None``.
        vocabulary: All class names (background first), overriding the checkpoint's and ``data_vocabulary``.
        data_vocabulary: The DataModule's class names (linked by the CLI), which the batches' ids index.
        train_classes: Base classes trained on (``None``: all but the background).
        test_classes: Classes named at test / predict time (``None``: all but the background).
        supervision: ``"labels"``, ``"captions"`` or ``"both"`` (:func:`~diffdefect.stage2.targets.build_targets`).
        targets: ``"semantic"`` or ``"instance"`` target masks.
        novel: ``"drop"`` or ``"ignore"``: training images showing non-base classes.
        metrics_mode: ``"binned"`` or ``"exact"`` pixel anomaly metrics.
        detection_metrics: Compute COCO mAP (pycocotools; the slowest metric).
        top_k: Instances kept per image for detection.
        pixel_threshold: Overlay contour level of the anomaly map in predictions.
    """

    def __init__(self, model: Stage2Model, criterion: SetCriterion | None = None,
                 optimizer: OptimizerCallable = default_optimizer, scheduler: LRSchedulerCallable | None = None,
                 vocabulary: list[str] | None = None, data_vocabulary: list[str] | None = None,
                 train_classes: list[str] | None = None, test_classes: list[str] | None = None,
                 supervision: str = "labels", targets: str = "semantic", novel: str = "drop",
                 metrics_mode: str = "binned", detection_metrics: bool = True, top_k: int = 100,
                 pixel_threshold: float = 0.5) -> None:
        super().__init__()
        save_config_hyperparameters(self, objects=("model", "criterion", "optimizer", "scheduler"),
                                    ignore=EVAL_SWITCHES)
        if supervision not in SUPERVISION:
            raise ValueError(f"supervision must be one of {SUPERVISION}, got {supervision!r}")
        self.model, self.criterion = model, criterion or SetCriterion()
        self.optimizer, self.scheduler = optimizer, scheduler
        self.vocabulary, self.data_vocabulary = vocabulary, data_vocabulary
        self.train_classes, self.test_classes = train_classes, test_classes
        self.supervision, self.targets, self.novel = supervision, targets, novel
        self.metrics_mode, self.detection_metrics, self.top_k = metrics_mode, detection_metrics, top_k
        self.pixel_threshold = pixel_threshold
        self._checkpoint_names: list[str] | None = None
        self._warned_tiles = False
        self._configure()

    # ------------------------------------------------------------------ vocabularies
    @property
    def names(self) -> dict[str, list[str]]:
        """Class names per stage (``train``, ``val``, ``test``, ``predict``), background first."""
        return self.vocab.names

    def setup(self, stage: str) -> None:
        """Takes the current switches (the command line's at test / predict time): see :meth:`_configure`."""
        self._configure()

    def _configure(self) -> None:
        """Vocabularies, the text embeddings of every name they use (once), and the per-stage metrics."""
        self.vocab = Stage2Vocabulary.build(self.data_vocabulary, self.vocabulary, self.train_classes,
                                            self.test_classes, self._checkpoint_names)
        self._row = {w: i for i, w in enumerate(self.vocab.words)}
        device = self.model.classifier.void_embedding.device
        self.register_buffer("word_text", self.model.classifier.encode_names(self.vocab.words, self.vocab.descriptions).to(device),
                             persistent=False)  # (W, D)
        base = self.names["train"][1:]
        self.metrics = torch.nn.ModuleDict({s: Stage2Metrics(self.names[s], base, self.metrics_mode,
                                                             self.detection_metrics, self.top_k).to(device)
                                            for s in ("val", "test")})

    def text(self, names: list[str]) -> torch.Tensor:
        """``(K, D)`` text embeddings of ``names`` (rows of the buffer computed in ``setup``)."""
        return self.word_text[[self._row[n] for n in names]]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.vocab.save(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Takes the checkpoint's class names (below ``vocabulary``, above the data's) unless resuming a fit."""
        if not (self._trainer is not None and self.trainer.state.fn == "fit"):
            self._checkpoint_names = checkpoint_names(checkpoint)
            self._configure()

    def on_fit_start(self) -> None:
        expect_frozen_eval_modules(self)  # the frozen extractor and text encoder are in eval mode by design

    # ------------------------------------------------------------------ steps
    def forward(self, image: torch.Tensor, stage: str = "test") -> Any:
        return self.model(image, self.text(self.names[stage]))

    def training_targets(self, batch: DefectBatch) -> Stage2Targets | None:
        """The training targets of ``batch`` under this module's supervision mode."""
        return build_targets(batch, self.supervision, self.names["train"], self.text, self.vocab.maps["train"],
                             self.vocab.lexicon, self.targets, self.novel)

    def training_step(self, batch: DefectBatch, batch_idx: int) -> torch.Tensor:
        t = self.training_targets(batch)
        if t is None:  # nothing to learn from (all novel / unmasked): a zero loss touching every trainable
            # parameter, rather than None, so that DDP ranks stay in step
            return sum(p.sum() for p in self.model.trainable_parameters()) * 0.0
        out = self.model(t.image, t.text)
        terms = self.criterion(out, t.masks, t.labels, t.grounding)
        b = len(t.image)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items() if k != "total"}, batch_size=b)
        self.log("train/loss", terms["total"].detach(), batch_size=b, prog_bar=True)
        self.log("train/tau", 1.0 / out.logit_scale.detach(), batch_size=b)
        return terms["total"]

    def _eval_step(self, batch: DefectBatch, stage: str) -> None:
        maps = self.vocab.maps[stage]
        class_mask, type_ids = remap_ids(batch.class_mask, maps), remap_ids(batch.defect_type_id, maps)
        if batch.tiling is not None:  # one whole image: tile losses, stitched maps
            scores = self.tiled_scores(batch, stage, class_mask)
            self.metrics[stage].update_maps(scores, batch, class_mask, type_ids)
            return
        self.metrics[stage].update(self(batch.image, stage), batch, class_mask, type_ids, self.criterion, self.targets)

    def tiled_scores(self, batch: DefectBatch, stage: str, class_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(1, K, H, W)`` semantic scores of a one-image ``tile`` batch: its tiles run ``tiling.batch_size`` at a
        time, their scores stitched with overlap blending; with ``class_mask`` the held-out losses of the tiles
        are added to the stage's metrics."""
        if class_mask is not None and not self._warned_tiles:
            self._warned_tiles = True
            rank_zero_warn("stage 2 in tile mode: COCO mAP is not computed (queries of different tiles are "
                           "different instances); segmentation, anomaly and image-class metrics use stitched maps")
        grid = batch.tiling.grid(*batch.image.shape[-2:])
        tiles = grid.cut(batch.image[0])  # (N, 3, th, tw)
        masks = grid.cut(class_mask[0][None].float())[:, 0].round().long() if class_mask is not None else None
        has = batch.has_mask[:1].bool()
        parts = []
        for i in range(0, len(tiles), batch.tiling.batch_size):
            out = self(tiles[i : i + batch.tiling.batch_size], stage)
            parts.append(semantic_scores(out.class_logits, out.pred_masks, grid.tile))  # (n, K, th, tw)
            if masks is not None:
                n = len(parts[-1])
                self.metrics[stage].update_losses(out, has.expand(n), masks[i : i + n], self.criterion, self.targets)
        return grid.stitch(torch.cat(parts))[None]

    def validation_step(self, batch: DefectBatch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: DefectBatch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self.log_dict({f"val/{k}": v for k, v in self.metrics["val"].compute().items()})

    def on_test_epoch_end(self) -> None:
        self.log_dict({f"test/{k}": v for k, v in self.metrics["test"].compute().items()})

    def predict_step(self, batch: DefectBatch, batch_idx: int, dataloader_idx: int = 0) -> list[ImagePrediction]:
        """One :class:`~common.prediction.ImagePrediction` per image (overlay labelled with the class names,
        anomaly map, JSON record with the classes, their regions and RLE masks), in the original image's pixels
        in every resize mode."""
        if batch.failed:  # unreadable files: placeholders, listed in errors.csv by the writer
            return predict_readable(batch, lambda b: self.predict_step(b, batch_idx, dataloader_idx))
        if batch.tiling is not None:
            scores = self.tiled_scores(batch, "predict")  # (1, K, H, W)
        else:
            out = self(batch.image, "predict")
            scores = semantic_scores(out.class_logits, out.pred_masks, tuple(batch.image.shape[-2:]))  # (B, K, H, W)
        preds = []
        for i, path in enumerate(batch.path):  # in the original image's pixels (letterbox padding cropped)
            box = batch.content_box[i] if batch.content_box is not None else None
            size = batch.orig_size[i] if batch.orig_size is not None else batch.image.shape[-2:]
            preds.append(explain(to_original(batch.image[i], box, size).clamp(0, 1), to_original(scores[i], box, size),
                                 self.names["predict"], path, threshold=self.pixel_threshold))
        return preds

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        """The optimizer over the trainable parameters only (the frozen extractor and text encoder excluded)."""
        opt = self.optimizer(self.model.trainable_parameters())
        if self.scheduler is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler(opt)}}


Stage2OpenVocab = Stage2Module
"""The former name (configs and checkpoints that name ``diffdefect.Stage2OpenVocab`` still work)."""

"""``Stage2OpenVocab``: the thin LightningModule of stage 2 (vocabularies, targets, optimisation, metrics).

The network is :class:`~diffdefect.stage2_model.Stage2Model`, the loss :class:`~diffdefect.criterion.SetCriterion`;
both are constructor arguments (``class_path`` in YAML), as are the optimizer (default AdamW, lr 5e-5, the
paper's) and the scheduler.

Vocabularies (names; the background / defect-free class always first, index 0):

* ``vocabulary``: every class name (default: the DataModule's ``vocabulary``, whose first entry is ``"good"``);
* ``train_classes``: the base classes the head is trained on (default: all). Training images showing any other
  class are dropped from the batch (``novel="drop"``; see :mod:`diffdefect.stage2_data`). Validation uses the
  training vocabulary too, so checkpoint selection never sees a novel name;
* ``test_classes``: the names scored at test / predict time (default: all of ``vocabulary``), given in words
  only. Base on ``train_classes`` and novel on ``test_classes`` is the open-vocabulary switch; both can also be
  set on the command line (``--model.init_args.test_classes "[crack,fray]"``) with any checkpoint (these
  evaluation switches, :data:`EVAL_SWITCHES`, are left out of the checkpoint's hyperparameters, which
  LightningCLI would otherwise apply over the command line).

Text embeddings of the names are computed once per stage in ``setup()`` into non-persistent buffers.

Supervision (``supervision``): ``"labels"`` (class masks -> L_mask + L_cls), ``"captions"`` (the paper's
caption-only regime: class-agnostic defect masks; the nouns of each image's caption, its own or a templated one
from :mod:`diffdefect.captions`, are the pseudo-labels of L_cls over the batch's nouns, plus the bidirectional
grounding loss), ``"both"`` (labels and grounding).

Metrics (all from :mod:`common.metrics`), per ``val/`` and ``test/``: per-class IoU (``iou_<name>``), ``miou``,
``base_iou`` / ``novel_iou`` (means over the base / novel test classes), image ``accuracy`` / ``macro_f1`` (image
class from the masks), COCO ``bbox_map(_50)`` / ``segm_map(_50)`` (boxes from masks), ``pixel_auroc``,
``pixel_aupro``, ``image_auroc`` (anomaly map = 1 - background probability).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

from common.data.types import NORMAL, DefectBatch, SampleRecord
from common.encoders.frozen import expect_frozen_eval_modules
from common.metrics import DetectionMAP, MeanIoU, PerClassIoU, anomaly_metrics, defect_type_metrics
from common.prediction import ImagePrediction, predict_readable
from diffdefect.criterion import Grounding, SetCriterion
from diffdefect.open_vocab import caption_nouns, default_lexicon
from diffdefect.stage2_data import base_only, detection_targets, id_mapping, remap, set_targets
from diffdefect.stage2_inference import explain, image_classes, instance_predictions, semantic_scores
from diffdefect.stage2_model import Stage2Model

SUPERVISION = ("labels", "captions", "both")
EVAL_SWITCHES = ("vocabulary", "test_classes", "metrics_mode", "detection_metrics", "top_k", "pixel_threshold")
"""Constructor arguments read from the current config at test / predict time, never from a checkpoint."""


def default_optimizer(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW with the paper's stage-2 learning rate 5e-5 (weight decay 0.05, Mask2Former's)."""
    return torch.optim.AdamW(params, lr=5e-5, weight_decay=0.05)


class Stage2OpenVocab(L.LightningModule):
    """Trains and evaluates the open-vocabulary stage-2 head.

    Args:
        model: The :class:`~diffdefect.stage2_model.Stage2Model`.
        criterion: The loss (default :class:`~diffdefect.criterion.SetCriterion`, the paper's weights).
        optimizer: Optimizer factory over the trainable parameters (head + classifier).
        scheduler: LR scheduler factory (stepped per epoch), or ``None``.
        vocabulary: All class names (background first); ``None``: the DataModule's.
        train_classes: Base classes trained on (``None``: all but the background).
        test_classes: Classes named at test / predict time (``None``: all but the background).
        supervision: ``"labels"``, ``"captions"`` or ``"both"`` (module docstring).
        targets: ``"semantic"`` or ``"instance"`` target masks (:func:`~diffdefect.stage2_data.set_targets`).
        novel: ``"drop"`` or ``"ignore"``: training images showing non-base classes.
        metrics_mode: ``"binned"`` or ``"exact"`` pixel anomaly metrics.
        detection_metrics: Compute COCO mAP (pycocotools; the slowest metric).
        top_k: Instances kept per image for detection.
        pixel_threshold: Overlay contour level of the anomaly map in predictions.
    """

    def __init__(
        self,
        model: Stage2Model,
        criterion: SetCriterion | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        vocabulary: list[str] | None = None,
        train_classes: list[str] | None = None,
        test_classes: list[str] | None = None,
        supervision: str = "labels",
        targets: str = "semantic",
        novel: str = "drop",
        metrics_mode: str = "binned",
        detection_metrics: bool = True,
        top_k: int = 100,
        pixel_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        # Under LightningCLI the config (class paths of every part) is stored, so load_from_checkpoint rebuilds the
        # model. The evaluation switches are not: LightningCLI lets a checkpoint's hyperparameters override the
        # command line, and `--model.init_args.test_classes` must win at test / predict time.
        eval_only = list(EVAL_SWITCHES)
        if _given_hyperparameters.get() is not None:
            self.save_hyperparameters(ignore=eval_only)
        else:
            self.save_hyperparameters(ignore=["model", "criterion", "optimizer", "scheduler", *eval_only])
        if supervision not in SUPERVISION:
            raise ValueError(f"supervision must be one of {SUPERVISION}, got {supervision!r}")
        self.model = model
        self.criterion = criterion or SetCriterion()
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.vocabulary = vocabulary
        self.train_classes = train_classes
        self.test_classes = test_classes
        self.supervision = supervision
        self.targets = targets
        self.novel = novel
        self.metrics_mode = metrics_mode
        self.detection_metrics = detection_metrics
        self.top_k = top_k
        self.pixel_threshold = pixel_threshold
        self.names: dict[str, list[str]] = {}
        self._maps: dict[str, torch.Tensor | None] = {}
        self._data_names: list[str] | None = None
        self._checkpoint_names: list[str] | None = None
        self.last_metrics: dict[str, dict[str, float]] = {}
        self._configure([NORMAL])

    # ------------------------------------------------------------------ vocabularies
    def _configure(self, data_names: list[str] | None) -> None:
        """Sets the train / eval vocabularies, the data -> model id maps, the text embeddings and the metrics.
        Names: ``vocabulary`` (config / command line) > the checkpoint's (test / predict) > the data's."""
        names = list(self.vocabulary or self._checkpoint_names or data_names or [NORMAL])
        background = NORMAL if NORMAL in names else names[0]
        rest = [n for n in names if n != background]
        train = [background] + [n for n in (self.train_classes or rest) if n != background]
        test = [background] + [n for n in (self.test_classes or rest) if n != background]
        self.names = {"train": train, "val": train, "test": test, "predict": test}
        self._lexicon = default_lexicon(names)  # caption nouns: the inspection terms and the data's class names
        self._data_names = list(data_names) if data_names else None
        self._maps = {s: (id_mapping(self._data_names, v) if self._data_names and self._data_names != v else None)
                      for s, v in self.names.items()}
        for key, vocab in (("train", train), ("eval", test)):
            self.register_buffer(f"text_{key}", self.model.classifier.encode_names(vocab).cpu(), persistent=False)
        self.metrics = torch.nn.ModuleDict({s: self._stage_metrics(len(self.names[s])) for s in ("val", "test")})

    def _stage_metrics(self, k: int) -> torch.nn.ModuleDict:
        m = {"iou": PerClassIoU(k, ignore_index=-1), "miou": MeanIoU(k, ignore_index=-1),
             "image_class": defect_type_metrics(k),
             "anomaly": anomaly_metrics(mode=self.metrics_mode)}  # type: ignore[arg-type]
        if self.detection_metrics:
            m["detection"] = DetectionMAP(("bbox", "segm"))
        return torch.nn.ModuleDict(m)

    def setup(self, stage: str) -> None:
        """Takes the class names from the DataModule (unless ``vocabulary`` overrides them); predict asks the data
        for none (the checkpoint names them, or the data of an earlier stage; the training data may be gone)."""
        if stage == "predict":
            self._configure(self._data_names)
            self.to(self.device)
            return
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_names = list(getattr(dm, "vocabulary", None) or []) or None
        self._configure(data_names)
        self.to(self.device)

    def on_fit_start(self) -> None:
        """The frozen stage-1 U-Net and text encoder are in eval mode by design: no warning about them."""
        expect_frozen_eval_modules(self)

    def text(self, stage: str) -> torch.Tensor:
        """``(K, D)`` class embeddings of the stage's vocabulary."""
        return self.text_train if stage in ("train", "val") else self.text_eval

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["stage2_vocabulary"] = dict(self.names)  # informative: embeddings are recomputed from names
        names = list(dict.fromkeys([*self.names["train"], *self.names["test"]]))  # background first
        checkpoint.setdefault("defectfm", {})["vocabulary"] = {"defect_types": names}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Takes the checkpoint's class names (below ``vocabulary``, above the data's) unless resuming a fit."""
        from common.checkpoint import vocabulary as checkpoint_vocabulary

        names = checkpoint_vocabulary(checkpoint).get("defect_types")
        if names and not (self._trainer is not None and self.trainer.state.fn == "fit"):
            self._checkpoint_names = names
            self._configure(self._data_names)
            self.to(self.device)

    # ------------------------------------------------------------------ steps
    def forward(self, image: torch.Tensor, stage: str = "test") -> Any:
        return self.model(image, self.text(stage))

    def _grounding(self, batch: DefectBatch, keep: torch.Tensor) -> tuple[list[list[str]], Grounding | None]:
        """Caption nouns per kept image (templated captions where a sample has none) and grounding words."""
        from diffdefect.captions import caption_for

        nouns = []
        for i in keep.nonzero().squeeze(1).tolist():
            cap = batch.caption[i]
            if cap is None:
                rec = SampleRecord(Path(batch.path[i]), batch.object_name[i], batch.defect_type[i], bool(batch.label[i]))
                cap = caption_for(rec, batch.mask[i, 0].cpu().numpy() > 0.5).text
            nouns.append(caption_nouns(cap, self._lexicon))
        words = [(b, n) for b, ns in enumerate(nouns) for n in ns]
        if not words:
            return nouns, None
        emb = self.model.classifier.encode_names([n for _, n in words]).to(self.device)  # (W, D)
        owner = torch.tensor([b for b, _ in words], device=self.device)
        sets = [frozenset(ns) for ns in nouns]
        pos = torch.tensor([[bool(a) and a == c for c in sets] for a in sets], device=self.device)
        return nouns, Grounding(emb, owner, pos)

    def training_step(self, batch: DefectBatch, batch_idx: int) -> torch.Tensor:
        cm = remap(batch.class_mask, self._maps.get("train"))  # (B, H, W) model ids, -1 unknown / novel
        keep, _ = base_only(cm, self.novel)
        keep = keep & batch.has_mask.to(keep.device)  # images without masks carry no mask supervision
        cm = cm[keep]
        if not keep.any():  # nothing to learn from (all novel / unmasked): a zero loss touching every trainable
            # parameter, rather than None, so that DDP ranks stay in step
            return sum(p.sum() for p in self.model.trainable_parameters()) * 0.0
        image = batch.image[keep]
        grounding = None
        if self.supervision == "labels":
            out = self.model(image, self.text_train)
            masks, labels = set_targets(cm, self.targets)
        else:
            nouns, grounding = self._grounding(batch, keep)
            if self.supervision == "both":
                out = self.model(image, self.text_train)
                masks, labels = set_targets(cm, self.targets)
            else:  # class-agnostic defect masks, pseudo-labelled with the caption's first noun
                vocab = [self.names["train"][0]] + sorted({n for ns in nouns for n in ns})
                out = self.model(image, self.model.classifier.encode_names(vocab).to(self.device))
                binary = (batch.mask[keep, 0] > 0.5).long()  # (b, H, W)
                masks, labels = set_targets(binary, self.targets)
                labels = [torch.where(lab == 0, lab, torch.full_like(lab, vocab.index(ns[0]) if ns else -1))
                          for lab, ns in zip(labels, nouns, strict=True)]
        terms = self.criterion(out, masks, labels, grounding, self.model.classifier.logit_scale.exp())
        b = int(keep.sum())
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items() if k != "total"}, batch_size=b)
        self.log("train/loss", terms["total"].detach(), batch_size=b, prog_bar=True)
        self.log("train/tau", self.model.classifier.tau.detach(), batch_size=b)
        return terms["total"]

    def _eval_step(self, batch: DefectBatch, stage: str) -> None:
        out = self.model(batch.image, self.text(stage))
        k = out.class_logits.shape[-1] - 1
        size = tuple(batch.image.shape[-2:])
        cm = remap(batch.class_mask, self._maps.get(stage))  # (B, H, W) -1 = unknown to this vocabulary
        scores = semantic_scores(out.class_logits, out.pred_masks, size)  # (B, K, H, W)
        labels = scores.argmax(1)  # (B, H, W)
        m = self.metrics[stage]
        has = batch.has_mask.bool()
        if has.any():
            masks, tlabels = set_targets(cm[has], self.targets)
            sub = type(out)(out.pred_masks[has], out.class_logits[has], out.mask_embeddings[has])
            terms = self.criterion.layer_losses(sub, masks, tlabels, float(max(1, sum(len(x) for x in masks))))
            self.log_dict({f"{stage}/{n}": v for n, v in terms.items()}, batch_size=int(has.sum()), sync_dist=True)
            m["iou"].update(labels[has], cm[has])
            m["miou"].update(labels[has], cm[has])
            if self.detection_metrics:
                m["detection"].update(instance_predictions(out.class_logits[has], out.pred_masks[has], size,
                                                           top_k=self.top_k), detection_targets(cm[has]))
            m["anomaly"].update(anomaly_maps=1 - scores[has, 0], masks=batch.mask[has],
                                scores=(1 - scores[has, 0]).flatten(1).amax(1), labels=batch.label[has])
        target = remap(batch.defect_type_id, self._maps.get(stage))  # (B,)
        known = target >= 0
        if known.any():
            m["image_class"].update(image_classes(labels, k)[known], target[known])

    def validation_step(self, batch: DefectBatch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: DefectBatch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _epoch_end(self, stage: str) -> None:
        m, names = self.metrics[stage], self.names[stage]
        res: dict[str, float] = {}
        # Branch on counts over all processes: compute() is a collective under DDP, so a process deciding on its
        # own data (none masked, or only classes outside the vocabulary) would skip it while the others wait.
        with m["miou"].sync_context():
            confmat = m["miou"].confmat.clone()  # (K, K) summed over every process
        accuracy = m["image_class"]["accuracy"]
        with accuracy.sync_context():
            classified = int(accuracy.confmat.sum())
        if int(confmat.sum()) > 0:
            res["miou"] = float(m["miou"].compute())
            iou = m["iou"].compute()
            present = (confmat.sum(0) + confmat.sum(1)) > 0
            for i, n in enumerate(names):
                res[f"iou_{n}"] = float(iou[i])
            base = set(self.names["train"][1:])
            for key, group in (("base_iou", [i for i, n in enumerate(names) if i and n in base]),
                               ("novel_iou", [i for i, n in enumerate(names) if i and n not in base])):
                group = [i for i in group if present[i]]
                if group:
                    res[key] = float(iou[group].mean())
            res.update({k: float(v) for k, v in m["anomaly"].compute().items()})
            if self.detection_metrics:
                res.update({k: float(v) for k, v in m["detection"].compute().items()})
        if classified > 0:
            res.update({k: float(v) for k, v in m["image_class"].compute().items()})
        for metric in m.values():
            metric.reset()
        self.last_metrics[stage] = res
        self.log_dict({f"{stage}/{k}": v for k, v in res.items()}, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def predict_step(self, batch: DefectBatch, batch_idx: int, dataloader_idx: int = 0) -> list[ImagePrediction]:
        """One :class:`~common.prediction.ImagePrediction` per image (overlay labelled with the class names,
        anomaly map, JSON record with the classes, their regions and RLE masks)."""
        if batch.failed:  # unreadable files: placeholders, listed in errors.csv by the writer
            return predict_readable(batch, lambda b: self.predict_step(b, batch_idx, dataloader_idx))
        out = self.model(batch.image, self.text("predict"))
        scores = semantic_scores(out.class_logits, out.pred_masks, tuple(batch.image.shape[-2:]))  # (B, K, H, W)
        return [explain(img, s, self.names["predict"], p, threshold=self.pixel_threshold)
                for img, s, p in zip(batch.image, scores, batch.path, strict=True)]

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        """The optimizer over the trainable parameters only (the frozen extractor and text encoder excluded)."""
        opt = self.optimizer(self.model.trainable_parameters())
        if self.scheduler is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler(opt)}}


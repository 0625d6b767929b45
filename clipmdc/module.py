"""The thin LightningModule of CLIP-MDC: vocabulary, regime, optimisation, logging and metrics.

The network (:class:`~clipmdc.model.CLIPMDC`) and the loss (:class:`~clipmdc.loss.CLIPMDCLoss`) are injected;
this module only wires them to the data. Open vocabulary: ``defect_types`` / ``object_names`` replace the
data's names (e.g. ``--model.init_args.defect_types "[good,scratch,dent]"`` at test time, with a checkpoint
trained on other names); batch ids are remapped by name, names unknown to the model are ignored by the loss
and the type metrics.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn

from clipmdc.explain import decide, explain_batch
from clipmdc.loss import CLIPMDCLoss
from clipmdc.memory import NoNormalImagesError, image_ids
from clipmdc.model import CLIPMDC
from clipmdc.output import CLIPMDCOutput
from clipmdc.prompts import normalize_vocabulary
from clipmdc.regimes import check_regime, prepare_training_batch, remap_type_ids
from common.calibration import (
    DecisionThresholds,
    ImageThresholdCalibrator,
    PixelThresholdCalibrator,
    decision_rates,
)
from common.checkpoint import vocabulary as checkpoint_vocabulary
from common.checkpoint import vocabulary_entries
from common.data.errors import DataError
from common.data.types import DefectBatch
from common.encoders.frozen import expect_frozen_eval_modules
from common.metrics import anomaly_metrics, defect_type_metrics
from common.prediction import ImagePrediction, predict_readable
from common.synthesis.generator import PerlinAnomalyGenerator


class CLIPMDCModule(L.LightningModule):
    """Trains and evaluates :class:`~clipmdc.model.CLIPMDC`.

    Args:
        model: The network (a preset function or ``clipmdc.model.CLIPMDC`` in YAML).
        loss: The loss; ``None`` = :class:`~clipmdc.loss.CLIPMDCLoss` with default weights.
        regime: ``"supervised"``, ``"weakly_supervised"`` or ``"normal_only"`` (:mod:`clipmdc.regimes`).
        optimizer: Optimizer factory; gets only the trainable parameters.
        scheduler: LR scheduler factory, or ``None``.
        defect_types: Vocabulary override (``"good"`` first); ``None`` takes the DataModule's ``vocabulary``.
        object_names: Object-name override; ``None`` takes the DataModule's ``object_names``. Data object ids
            are mapped by name; with ``per_object_prompts`` every data object must be in the override.
        synthesis: Perlin anomaly generator applied on-device to normal training samples, or ``None``.
        synthetic_defect_type: Vocabulary name given to synthetic anomalies (must be in the vocabulary);
            ``None`` = unknown type (they train the anomaly outputs, not the type outputs).
        metrics_mode: ``"exact"`` or ``"binned"`` pixel metrics (binned: memory independent of the test size).
        pixel_metrics: Compute pixel AUROC/AP/AUPRO (needs masks in val/test data).
        seed: Seed of the synthesis stream (offset by the process rank).
        image_threshold: Image anomaly probability from which ``predict`` calls an image defective; ``None``
            uses the threshold calibrated on the validation split (stored in the checkpoint; 0.5 before any
            calibration). A number given here always wins.
        pixel_threshold: Pixel anomaly probability from which ``predict`` draws a defect region; ``None`` as
            for ``image_threshold``.
        target_far: Target false-alarm rate of the calibration when the validation split holds only normal
            images (with defects it is F1-optimal); see :mod:`common.calibration`.
    """

    def __init__(
        self,
        model: CLIPMDC,
        loss: CLIPMDCLoss | None = None,
        regime: str = "supervised",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        defect_types: list[str] | None = None,
        object_names: list[str] | None = None,
        synthesis: PerlinAnomalyGenerator | None = None,
        synthetic_defect_type: str | None = None,
        metrics_mode: str = "binned",
        pixel_metrics: bool = True,
        seed: int = 0,
        image_threshold: float | None = None,
        pixel_threshold: float | None = None,
        target_far: float = 0.01,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "loss", "synthesis", "optimizer", "scheduler"])
        self.model = model
        self.loss = loss or CLIPMDCLoss()
        self.regime = check_regime(regime)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.defect_types = defect_types
        self.object_names = object_names
        self.synthesis = synthesis
        self.synthetic_defect_type = synthetic_defect_type
        self.seed = seed
        self.image_threshold = image_threshold
        self.pixel_threshold = pixel_threshold
        self.pixel_metrics = pixel_metrics
        self.thresholds = DecisionThresholds(target_far)  # calibrated values: buffers, in every checkpoint
        self.val_image_calibration = ImageThresholdCalibrator(target_far)
        self.val_pixel_calibration = PixelThresholdCalibrator(target_far)
        self.test_image_decisions = ImageThresholdCalibrator(target_far)  # scores kept for rates at threshold
        image_metrics = anomaly_metrics(pixel=False)
        self.val_image_metrics = image_metrics.clone(prefix="val/")
        self.test_image_metrics = image_metrics.clone(prefix="test/")
        if pixel_metrics:  # apart from the image metrics: updated only on batches that have masks
            pixel = anomaly_metrics(mode=metrics_mode, image=False)  # type: ignore[arg-type]
            self.val_pixel_metrics = pixel.clone(prefix="val/")
            self.test_pixel_metrics = pixel.clone(prefix="test/")
        self._type_mapping: torch.Tensor | None = None
        self._synthetic_type_id = -1
        self._generator: torch.Generator | None = None
        self._data_vocabulary: tuple[list[str] | None, list[str] | None] = (None, None)
        self._checkpoint_vocabulary: tuple[list[str] | None, list[str] | None] = (None, None)
        self._configure_vocabulary(None, None)

    # ------------------------------------------------------------------ vocabulary
    def _configure_vocabulary(self, data_types: list[str] | None, data_objects: list[str] | None) -> None:
        """Sets the model vocabulary and the data->model type-id mapping. Precedence: the constructor's
        ``defect_types`` / ``object_names`` (config or command line) > the checkpoint's (test/predict) > the data's
        > the model's default."""
        self._data_vocabulary = (data_types, data_objects)
        ckpt_types, ckpt_objects = self._checkpoint_vocabulary
        entries = normalize_vocabulary(self.defect_types or ckpt_types or data_types or self.model.vocabulary)
        objects = list(self.object_names or ckpt_objects or data_objects or self.model.object_names)
        if entries != self.model.vocabulary or objects != self.model.object_names:
            self.model.set_vocabulary(entries, objects)
        types = self.model.defect_types  # names ("name: description" entries embed the description)
        self._type_mapping = None
        if data_types is not None and list(data_types) != types:
            index = {name: i for i, name in enumerate(types)}
            self._type_mapping = torch.tensor([index.get(n, -1) for n in data_types], dtype=torch.long)
        if self.synthetic_defect_type is None:
            self._synthetic_type_id = -1
        elif self.synthetic_defect_type in types:
            self._synthetic_type_id = types.index(self.synthetic_defect_type)
        else:
            raise ValueError(
                f"synthetic_defect_type {self.synthetic_defect_type!r} is not in the vocabulary {types}"
            )
        type_metrics = defect_type_metrics(len(types))  # K follows the vocabulary
        self.val_type_metrics = type_metrics.clone(prefix="val/type_").to(self.device)
        self.test_type_metrics = type_metrics.clone(prefix="test/type_").to(self.device)

    def setup(self, stage: str) -> None:
        """Takes the vocabulary and object names from the DataModule unless overridden. Predict asks the data for
        none: the command line, the checkpoint or an earlier stage's data name them (the training data may be
        gone)."""
        if stage == "predict":  # the names of an earlier stage's data, if any
            self._configure_vocabulary(*self._data_vocabulary)
            return
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_types = list(getattr(datamodule, "vocabulary", None) or []) or None
        data_objects = list(getattr(datamodule, "object_names", None) or []) or None
        self._configure_vocabulary(data_types, data_objects)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Records the vocabulary in ``checkpoint["defectfm"]`` (the text embeddings are recomputed from it)."""
        vocab = {"defect_types": self.model.defect_types, "object_names": self.model.object_names}
        if self.model.prompts.descriptions:  # "name: description" entries: the words that were embedded
            vocab["descriptions"] = dict(self.model.prompts.descriptions)
        checkpoint.setdefault("defectfm", {})["vocabulary"] = vocab

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Takes the checkpoint's vocabulary (below the command line, above the data) unless resuming a fit, where
        the data's names keep training what the data labels."""
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        vocab = checkpoint_vocabulary(checkpoint)
        if vocab and not fitting:
            self._checkpoint_vocabulary = (vocabulary_entries(checkpoint), vocab.get("object_names"))
            self._configure_vocabulary(*self._data_vocabulary)

    # ------------------------------------------------------------------ normal-reference memory
    def on_fit_start(self) -> None:
        """The frozen encoders are in eval mode by design: no warning about them (any other module still warns)."""
        expect_frozen_eval_modules(self)

    def on_train_start(self) -> None:
        """Fills the model's normal-reference memory from the normal training images (once: a bank loaded from
        a checkpoint is kept). Takes the DataModule's un-augmented ``reference_dataloader`` when it has one
        (augmented patches, e.g. brightness-jittered, would make defects look normal), else the training
        batches. When training is limited (``fast_dev_run``, ``limit_train_batches``) the bank is built from as
        many normal images as those batches hold, so a debug run stays quick (a line says so).

        Raises:
            DataError: The training data holds no normal image (the message says what to do).
        """
        memory = self.model.memory
        if memory is None or memory.ready:
            return
        limit = self._memory_image_limit()
        datamodule = getattr(self.trainer, "datamodule", None)
        if hasattr(datamodule, "reference_dataloader"):  # un-augmented, whole training set on every rank
            loader_fn = datamodule.reference_dataloader
            capped = limit is not None and "max_images" in inspect.signature(loader_fn).parameters
            loader = loader_fn(max_images=limit) if capped else loader_fn()
            tokens = self._normal_tokens(loader, gather=False, limit=limit)
        else:  # augmented training batches; each DDP rank has its shard, so gather
            tokens = self._normal_tokens(self.trainer.train_dataloader, gather=self.trainer.world_size > 1, limit=limit)
        if limit is not None:
            self.print(f"normal-reference memory: built from at most {limit} normal images, because training is "
                       "limited (fast_dev_run / limit_train_batches); a full run uses every normal training image")
        try:
            info = memory.build(tokens, progress=not self._quiet)
        except NoNormalImagesError as e:
            raise DataError(
                "the normal-reference memory (model.init_args.model.init_args.memory) is built from normal "
                "(defect-free) training images, and the training split has none: add defect-free images (e.g. a "
                "good/ folder), or train without the memory (--model.init_args.model.init_args.memory null)"
            ) from e
        self.print(
            f"normal-reference memory: {info['bank']} of {info['patches']} patches from {info['images']} normal "
            f"training images (scale {info['scale']:.4g})"
        )

    @property
    def _quiet(self) -> bool:
        """No progress bars: not rank 0, or the trainer runs without a progress bar."""
        return not self.trainer.is_global_zero or self.trainer.progress_bar_callback is None

    def _memory_image_limit(self) -> int | None:
        """At most this many normal images for the memory when training is limited to a number of batches
        (``fast_dev_run``, an int or fractional ``limit_train_batches``): those batches' images; else ``None``."""
        t = self.trainer
        limit = t.limit_train_batches
        if not (isinstance(limit, int) or float(limit) < 1.0) or not math.isfinite(t.num_training_batches):
            return None
        batch_size = getattr(t.train_dataloader, "batch_size", None) or 1
        return max(1, int(t.num_training_batches) * int(batch_size))

    @torch.no_grad()
    def _normal_tokens(self, loader: Any, gather: bool, limit: int | None = None) -> Any:
        """Yields ``(tokens, image ids, object ids)`` of the normal images of one pass over ``loader`` (with
        ``gather``, all DDP ranks' images, so every rank builds the same bank), stopping after ``limit`` images."""
        from tqdm.auto import tqdm

        seen = 0
        bar = tqdm(loader, desc="memory bank: normal images", leave=False, disable=self._quiet)
        for batch in bar:
            if limit is not None and seen >= limit:
                break
            batch = batch.to(self.device)
            normal = batch.label == 0  # (B,)
            tokens = self.model.image_encoder(batch.image).tokens
            ids = image_ids(batch.path).to(self.device)
            objects = self._object_ids(batch)
            tokens, ids, objects = [t[normal] for t in tokens], ids[normal], objects[normal]
            if gather:  # ragged across ranks: gather as objects
                gathered: list[Any] = [None] * self.trainer.world_size
                torch.distributed.all_gather_object(gathered, ([t.cpu() for t in tokens], ids.cpu(), objects.cpu()))
                tokens = [torch.cat([g[0][i] for g in gathered]) for i in range(len(tokens))]
                ids, objects = torch.cat([g[1] for g in gathered]), torch.cat([g[2] for g in gathered])
            if limit is not None and seen + len(ids) > limit:
                tokens, ids, objects = [t[: limit - seen] for t in tokens], ids[: limit - seen], objects[: limit - seen]
            seen += len(ids)
            if len(ids):
                yield tokens, ids, objects

    # ------------------------------------------------------------------ steps
    def forward(self, image: torch.Tensor, object_id: torch.Tensor | None = None) -> CLIPMDCOutput:
        """``(B, 3, H, W)`` images in [0, 1] -> :class:`~clipmdc.output.CLIPMDCOutput`."""
        return self.model(image, object_id)

    def _object_ids(self, batch: DefectBatch) -> torch.Tensor:
        """``(B,)`` the batch's objects as the model's object ids, matched by name (``-1``: unknown to the model)."""
        index = {name: i for i, name in enumerate(self.model.object_names)}
        return torch.tensor([index.get(n, -1) for n in batch.object_name], dtype=torch.long, device=self.device)

    def _synthesis_generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed + 1000003 * self.global_rank)
        return self._generator

    def training_step(self, batch: DefectBatch, batch_idx: int) -> torch.Tensor:
        batch = remap_type_ids(batch, self._type_mapping)
        batch = prepare_training_batch(
            batch,
            self.regime,
            self.synthesis,
            self._synthetic_type_id,
            self._synthesis_generator() if self.synthesis is not None else None,
        )
        ids = image_ids(batch.path).to(self.device) if self.model.memory is not None else None
        output = self.model(batch.image, self._object_ids(batch), image_ids=ids)  # leave-one-image-out memory
        terms = self.loss(output, batch)
        self.log_dict(
            {f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=len(batch), prog_bar=False
        )
        self.log("train/loss", terms["total"].detach(), batch_size=len(batch), prog_bar=True)
        return terms["total"]

    def _eval_step(self, batch: DefectBatch, stage: str) -> CLIPMDCOutput:
        batch = remap_type_ids(batch, self._type_mapping)
        output = self.model(batch.image, self._object_ids(batch))
        terms = self.loss(output, batch)
        self.log_dict({f"{stage}/{k}": v for k, v in terms.items()}, batch_size=len(batch), sync_dist=True)
        known = batch.label >= 0  # (B,)
        image_metrics = self.val_image_metrics if stage == "val" else self.test_image_metrics
        image_metrics.update(scores=output.image_prob[known].float(), labels=batch.label[known])
        self.log_dict(image_metrics, batch_size=len(batch))
        pixels = batch.has_mask.bool()  # (B,)
        if self.pixel_metrics and pixels.any():
            pixel_metrics = self.val_pixel_metrics if stage == "val" else self.test_pixel_metrics
            pixel_metrics.update(anomaly_maps=output.anomaly_prob[pixels].float(), masks=batch.mask[pixels])
            self.log_dict(pixel_metrics, batch_size=int(pixels.sum()))
        typed = batch.defect_type_id >= 0  # (B,)
        if typed.any():
            type_metrics = self.val_type_metrics if stage == "val" else self.test_type_metrics
            type_metrics.update(output.type_logits[typed].float(), batch.defect_type_id[typed])
            self.log_dict(type_metrics, batch_size=int(typed.sum()))
        return output

    def validation_step(self, batch: DefectBatch, batch_idx: int) -> None:
        output = self._eval_step(batch, "val")
        known = batch.label >= 0  # (B,)
        self.val_image_calibration.update(output.image_prob[known].float(), batch.label[known])
        pixels = batch.has_mask.bool()  # (B,)
        if pixels.any():
            self.val_pixel_calibration.update(output.anomaly_prob[pixels].float(), batch.mask[pixels])

    def test_step(self, batch: DefectBatch, batch_idx: int) -> None:
        output = self._eval_step(batch, "test")
        known = batch.label >= 0  # (B,)
        self.test_image_decisions.update(output.image_prob[known].float(), batch.label[known])

    # ------------------------------------------------------------------ decisions (calibrated thresholds)
    def on_validation_epoch_end(self) -> None:
        """Calibrates the thresholds on this validation epoch (all DDP ranks' scores): F1-optimal when the split
        holds defects, else at ``target_far`` on its normal images. Runs on every validation epoch, so that every
        checkpoint (ModelCheckpoint saves after validation) carries the values of its own weights; not during
        the sanity check."""
        image, pixel = self.val_image_calibration.compute(), self.val_pixel_calibration.compute()
        self.val_image_calibration.reset()
        self.val_pixel_calibration.reset()
        if self.trainer.sanity_checking:
            return
        self.thresholds.set(image, pixel)
        self.log_dict({"val/image_threshold": float(self.thresholds.image),
                       "val/pixel_threshold": float(self.thresholds.pixel)})

    def on_fit_end(self) -> None:
        """Says so when no validation epoch calibrated the thresholds (no validation data)."""
        if self.trainer.is_global_zero and self.decision_thresholds()["threshold_mode"] == "none":
            rank_zero_warn(
                "CLIP-MDC: no validation epoch ran, so the decision thresholds were not calibrated: predict decides "
                "at 0.5. Give a validation split, or image_threshold / pixel_threshold."
            )

    def on_test_epoch_end(self) -> None:
        """Logs the decision threshold and the false-alarm / miss rates of the test images at it (NaN when the
        test data has no normal / no defective image)."""
        scores, labels = self.test_image_decisions.collected()
        self.test_image_decisions.reset()
        threshold = self.decision_thresholds()["image_threshold"]
        rates = decision_rates(scores, labels, threshold)
        nan = float("nan")
        self.log_dict({
            "test/image_threshold": threshold,
            "test/image_far": nan if rates["far"] is None else rates["far"],
            "test/image_miss_rate": nan if rates["miss_rate"] is None else rates["miss_rate"],
        })

    def decision_thresholds(self) -> dict[str, Any]:
        """The thresholds predict decides with (given ones win over calibrated ones) and their modes; see
        :meth:`common.calibration.DecisionThresholds.resolve`."""
        return self.thresholds.resolve(self.image_threshold, self.pixel_threshold)

    def predict_step(self, batch: DefectBatch, batch_idx: int, dataloader_idx: int = 0) -> list[ImagePrediction]:
        """Explained predictions, one per image (written to disk by :class:`~common.prediction.PredictionWriter`).

        The closest prompt is searched among the defect prompts for an image called anomalous and among the
        normal prompts for one called normal, so it never contradicts the decision."""
        if batch.failed:  # unreadable files: placeholders, listed in errors.csv by the writer
            return predict_readable(batch, lambda b: self.predict_step(b, batch_idx, dataloader_idx))
        object_ids = self._object_ids(batch)
        output = self.model(batch.image, object_ids)
        thresholds = self.decision_thresholds()
        anomalous = decide(output.image_prob, thresholds["image_threshold"], len(output.defect_types))  # (B,)
        prompts = self.model.closest_prompts(output.embedding, object_ids, anomalous=anomalous)
        return explain_batch(output, batch.image, batch.object_name, batch.path, closest_prompts=prompts,
                             **thresholds)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        """The optimizer over the trainable parameters only (frozen encoders excluded), plus the scheduler."""
        optimizer = self.optimizer([p for p in self.parameters() if p.requires_grad])
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer)}}

"""The thin LightningModule of CLIP-MDC: vocabulary, regime, optimisation, logging and metrics.

The network (:class:`~clipmdc.model.CLIPMDC`) and the loss (:class:`~clipmdc.loss.CLIPMDCLoss`) are injected;
this module only wires them to the data. Open vocabulary: ``defect_types`` / ``object_names`` replace the
data's names (e.g. ``--model.init_args.defect_types "[good,scratch,dent]"`` at test time, with a checkpoint
trained on other names); batch ids are remapped by name, names unknown to the model are ignored by the loss
and the type metrics.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn

from clipmdc.explain import decide, explain_outputs
from clipmdc.loss import CLIPMDCLoss
from clipmdc.metrics import CLIPMDCMetrics
from clipmdc.model import CLIPMDC
from clipmdc.output import CLIPMDCOutput
from clipmdc.prompts import normalize_vocabulary
from clipmdc.reference import build_memory
from clipmdc.regimes import check_regime, prepare_training_batch, remap_type_ids
from common.calibration import (
    DecisionThresholds,
    ImageThresholdCalibrator,
    PixelThresholdCalibrator,
    decision_rates,
)
from common.checkpoint import vocabulary as checkpoint_vocabulary
from common.checkpoint import vocabulary_entries
from common.data.tiling import crop_content
from common.data.types import DefectBatch
from common.encoders.frozen import expect_frozen_eval_modules
from common.prediction import ImagePrediction, predict_readable
from common.synthesis.generator import PerlinAnomalyGenerator
from common.tiled import Outputs, mode_outputs, tile_batch

STAGES = ("val", "test")


class CLIPMDCModule(L.LightningModule):
    """Trains and evaluates :class:`~clipmdc.model.CLIPMDC`.

    Args:
        model: The network (a preset function or ``clipmdc.model.CLIPMDC`` in YAML).
        loss: The loss; ``None`` = :class:`~clipmdc.loss.CLIPMDCLoss` with default weights.
        regime: ``"supervised"``, ``"weakly_supervised"`` or ``"normal_only"`` (:mod:`clipmdc.regimes`).
        optimizer: Optimizer factory; gets only the trainable parameters.
        scheduler: LR scheduler factory, or ``None``.
        defect_types: Vocabulary override (``"good"`` first); ``None`` takes the data's (``data_vocabulary``).
        object_names: Object-name override; ``None`` takes the data's (``data_object_names``). Data object ids
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
        data_vocabulary: The DataModule's defect-type names, which the batches' ids index (linked by
            :class:`common.cli.DefectCLI`; in Python, pass them or let ``trainer.fit(..., datamodule=dm)`` give them).
        data_object_names: The DataModule's object names (linked likewise).

    Resize modes (:mod:`common.data.tiling`) come with the batches: letterbox content boxes keep the padding out
    of metrics, image scores and thresholds; ``tile`` batches are whole images that the model runs tile by tile
    (:mod:`common.tiled`), with the held-out losses computed per tile. Predictions are in the original image's
    pixels.
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
        data_vocabulary: list[str] | None = None,
        data_object_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "loss", "synthesis", "optimizer", "scheduler", "data_vocabulary",
                                          "data_object_names"])
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
        self.metrics = torch.nn.ModuleDict({s: CLIPMDCMetrics(f"{s}/", len(self.model.defect_types), pixel_metrics,
                                                              metrics_mode) for s in STAGES})
        self._type_mapping: torch.Tensor | None = None
        self._synthetic_type_id = -1
        self.data_vocabulary, self.data_object_names = data_vocabulary, data_object_names
        self._data_vocabulary: tuple[list[str] | None, list[str] | None] = (data_vocabulary, data_object_names)
        self._checkpoint_vocabulary: tuple[list[str] | None, list[str] | None] = (None, None)
        self._configure_vocabulary(data_vocabulary, data_object_names)

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
        for metrics in self.metrics.values():  # K follows the vocabulary
            metrics.set_vocabulary(len(types))

    def setup(self, stage: str) -> None:
        """Configures the vocabulary with the data's names: ``data_vocabulary`` / ``data_object_names`` (linked
        from the DataModule by the CLI, or given in Python), else, for a module driven from Python without them,
        those of the DataModule given to the trainer. Predict asks the data for none: the command line, the
        checkpoint or an earlier stage's data name them (the training data may be gone)."""
        data_types, data_objects = self.data_vocabulary, self.data_object_names
        if stage != "predict" and data_types is None and self._trainer is not None:
            datamodule = getattr(self.trainer, "datamodule", None)  # Python use without the link
            data_types = list(getattr(datamodule, "vocabulary", None) or []) or None
            data_objects = data_objects or list(getattr(datamodule, "object_names", None) or []) or None
        if stage == "predict":
            data_types, data_objects = self._data_vocabulary
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
        """Fills the model's normal-reference memory from the normal training images, once
        (:func:`clipmdc.reference.build_memory`; a bank loaded from a checkpoint is kept)."""
        build_memory(self)

    # ------------------------------------------------------------------ steps
    def forward(self, image: torch.Tensor, object_id: torch.Tensor | None = None) -> CLIPMDCOutput:
        """``(B, 3, H, W)`` images in [0, 1] -> :class:`~clipmdc.output.CLIPMDCOutput`."""
        return self.model(image, object_id)

    def _object_ids(self, batch: DefectBatch) -> torch.Tensor:
        """``(B,)`` the batch's objects as the model's object ids, matched by name (``-1``: unknown to the model)."""
        index = {name: i for i, name in enumerate(self.model.object_names)}
        return torch.tensor([index.get(n, -1) for n in batch.object_name], dtype=torch.long, device=self.device)

    def _sample_ids(self, batch: DefectBatch) -> torch.Tensor:
        """``(B,)`` the batch's :attr:`~common.data.types.DefectBatch.sample_id` s (the memory's owners).

        Raises:
            ValueError: The batch has none (a hand-made batch: give it ``sample_id``).
        """
        if batch.sample_id is None:
            raise ValueError("CLIP-MDC with a normal memory needs batches with sample_id (the image each sample "
                             "comes from); DefectDataModule's batches have them")
        return batch.sample_id.to(self.device)

    def _synthesis_generator(self) -> torch.Generator:
        """The synthesis generator of this step, seeded by (seed, rank, global step): the same stream whether the
        run was interrupted and resumed or not."""
        state = np.random.SeedSequence([self.seed, self.global_rank, self.global_step]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(state))

    def training_step(self, batch: DefectBatch, batch_idx: int) -> torch.Tensor:
        batch = remap_type_ids(batch, self._type_mapping)
        batch = prepare_training_batch(
            batch,
            self.regime,
            self.synthesis,
            self._synthetic_type_id,
            self._synthesis_generator() if self.synthesis is not None else None,
        )
        ids = self._sample_ids(batch) if self.model.memory is not None else None
        output = self.model(batch.image, self._object_ids(batch), image_ids=ids)  # leave-one-image-out memory
        terms = self.loss(output, batch)
        self.log_dict(
            {f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=len(batch), prog_bar=False
        )
        self.log("train/loss", terms["total"].detach(), batch_size=len(batch), prog_bar=True)
        return terms["total"]

    def outputs(self, batch: DefectBatch, on_output: Any = None) -> Outputs:
        """The batch's probabilities in its resize mode (:func:`common.tiled.mode_outputs`): ``anomaly_prob``
        ``(B, 1, H, W)`` at the working resolution, ``image_prob`` ``(B,)``, ``type_prob`` ``(B, K+1)``,
        ``embedding`` ``(B, D)``. ``on_output(output, sub_batch)`` sees every model output with the (tile) batch
        it is of."""
        object_ids = self._object_ids(batch)

        def run(image: torch.Tensor, sub: DefectBatch | None = None) -> Outputs:
            ids = object_ids if len(object_ids) == len(image) else object_ids[:1].expand(len(image))  # tiles
            out = self.model(image, ids)
            if on_output is not None:
                on_output(out, batch if sub is None else sub)
            return {"anomaly_prob": out.anomaly_prob, "image_prob": out.image_prob, "type_prob": out.type_prob_image,
                    "embedding": out.embedding}

        if batch.tiling is None:
            return mode_outputs(run, batch.image, batch.content_box)
        grid = batch.tiling.grid(batch.image.shape[-2], batch.image.shape[-1])
        done = [0]

        def run_tile(image: torch.Tensor) -> Outputs:  # tiles arrive in order: the slice follows a counter
            sub = tile_batch(batch, grid, slice(done[0], done[0] + len(image))) if on_output is not None else None
            done[0] += len(image)
            return run(image, sub)

        return mode_outputs(run_tile, batch.image, tiling=batch.tiling)

    def _eval_step(self, batch: DefectBatch, stage: str) -> Outputs:
        batch = remap_type_ids(batch, self._type_mapping)
        terms: dict[str, list[tuple[torch.Tensor, int]]] = {}

        def held_out(output: CLIPMDCOutput, sub: DefectBatch) -> None:  # the loss of every (tile) batch
            for k, v in self.loss(output, sub).items():
                terms.setdefault(k, []).append((v, len(sub)))

        out = self.outputs(batch, held_out)
        # one model call (stretch, letterbox): its terms as they are; tiles: the mean over the image's tiles
        self.log_dict({f"{stage}/{k}": v[0][0] if len(v) == 1 else sum(t * n for t, n in v) / sum(n for _, n in v)
                       for k, v in terms.items()}, batch_size=len(batch), sync_dist=True)
        metrics = self.metrics[stage]
        known = batch.label >= 0  # (B,)
        metrics.image.update(scores=out["image_prob"][known].float(), labels=batch.label[known])
        self.log_dict(metrics.image, batch_size=len(batch))
        pixels = batch.has_mask.bool()  # (B,)
        if metrics.pixel is not None and pixels.any():
            boxes = batch.content_box[pixels] if batch.content_box is not None else None
            metrics.update_pixels(out["anomaly_prob"][pixels], batch.mask[pixels], boxes)
            self.log_dict(metrics.pixel, batch_size=int(pixels.sum()))
        typed = batch.defect_type_id >= 0  # (B,)
        if typed.any():
            metrics.types.update(out["type_prob"][typed].float(), batch.defect_type_id[typed])
            self.log_dict(metrics.types, batch_size=int(typed.sum()))
        return out

    def validation_step(self, batch: DefectBatch, batch_idx: int) -> None:
        out = self._eval_step(batch, "val")
        known = batch.label >= 0  # (B,)
        self.val_image_calibration.update(out["image_prob"][known].float(), batch.label[known])
        for i in torch.nonzero(batch.has_mask.bool()).flatten().tolist():  # each image's own pixels
            box = batch.content_box[i] if batch.content_box is not None else None
            self.val_pixel_calibration.update(crop_content(out["anomaly_prob"][i], box)[None].float(),
                                              crop_content(batch.mask[i], box)[None])

    def test_step(self, batch: DefectBatch, batch_idx: int) -> None:
        out = self._eval_step(batch, "test")
        known = batch.label >= 0  # (B,)
        self.test_image_decisions.update(out["image_prob"][known].float(), batch.label[known])

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
        """Explained predictions, one per image, in the original image's pixels (written to disk by
        :class:`~common.prediction.PredictionWriter`).

        The closest prompt is searched among the defect prompts for an image called anomalous and among the
        normal prompts for one called normal, so it never contradicts the decision."""
        if batch.failed:  # unreadable files: placeholders, listed in errors.csv by the writer
            return predict_readable(batch, lambda b: self.predict_step(b, batch_idx, dataloader_idx))
        out = self.outputs(batch)
        thresholds = self.decision_thresholds()
        anomalous = decide(out["image_prob"], thresholds["image_threshold"], len(self.model.defect_types))  # (B,)
        prompts = self.model.closest_prompts(out["embedding"], self._object_ids(batch), anomalous=anomalous)
        return explain_outputs(out, batch, self.model.defect_types, closest_prompts=prompts, **thresholds)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        """The optimizer over the trainable parameters only (frozen encoders excluded), plus the scheduler."""
        optimizer = self.optimizer([p for p in self.parameters() if p.requires_grad])
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer)}}

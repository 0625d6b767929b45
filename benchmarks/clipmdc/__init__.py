"""CLIP-MDC on real data (Magnetic Tile) against anomalib's SuperSimpleNet and PatchCore, plus CPU latency.

``python -m benchmarks.clipmdc`` (``--quick``: a tiny subset, 1 epoch, small images: a smoke run for the
test suite). Everything runs in one process, offline (no weights are downloaded), on the CPU:

1. **Accuracy** (``clipmdc_magnetic_tile.json``). One fixed seeded split of ``../shared/data/magnetic_tile``:
   60/20/20 within every class, normal and defective (``DefectDataModule(split="random",
   split_ratios=(0.6, 0.2, 0.2), seed=0)``). CLIP-MDC's ``offline_real`` preset (frozen EfficientNet-Lite0 with
   the packaged ImageNet weights + MiniLM text, trainable Lite0 backbone) is trained through Lightning in the
   three regimes and tested with ``trainer.test``:

   * ``supervised``: masks + defect types;
   * ``weakly_supervised``: image labels (anomalous or not, and the defect type) without masks
     (``weak_labels=True``) + Perlin pseudo-anomalies on normal images;
   * ``normal_only``: normal training images only (``train_filter="normal"``) + Perlin anomalies. Synthetic
     anomalies get no type name (``synthetic_defect_type=None``), so the type head is trained on "good" only:
     its defect-type names on the test set are zero-shot (MiniLM text embeddings of names it never saw).

   Peers on the same split, image size and training batches, each with its own training rule and the same
   EfficientNet-Lite0 weights (see :mod:`benchmarks.peers`): SuperSimpleNet (supervised: real masks and labels)
   and PatchCore (normal-only: memory bank of normal training patches). All models are scored by the same
   :func:`common.metrics.anomaly_metrics` (exact mode) and :func:`~common.metrics.defect_type_metrics`, on the
   test split, with maps at the input size (each model's own upsampling) against the masks resized to the
   same size (nearest). Reported: I-AUROC, P-AUROC, AUPRO (FPR <= 0.3), AP_loc (pixel AP), I-AP, I-F1max,
   defect-type accuracy and macro-F1 (CLIP-MDC only: the peers have no type output).
   No hyper-parameter was chosen on the test split. The last epoch is tested (no checkpoint selection); the
   one setting chosen on the validation split (``--eval-split val``, for development) is CLIP-MDC's initial
   memory weight per regime (``FULL["memory_weight"]``).

   **Decisions**: after training, the thresholds are calibrated on the validation split (F1-optimal; for
   ``normal_only`` at a 1% target false-alarm rate on its normal images only) and the test split's false-alarm
   and miss rates at them are reported, with the agreement of the exported ONNX file with PyTorch (decisions and
   regions on every test image; :mod:`benchmarks._decisions`).

2. **Latency** (``clipmdc_latency.json``). The trained models (``offline_real`` CLIP-MDC of the supervised
   regime, SuperSimpleNet, PatchCore with its memory bank) at 256x256, batch 1 and batch 32, CPU, float32,
   ``torch.inference_mode``, ``torch.set_num_threads`` fixed and recorded; rounds interleaved (ours, SSN,
   PatchCore, ours, ...), best round reported; ratios ours / peer. With CUDA a GPU section times ``vit_b16``
   (random weights: ``pretrained=None``, timing only) and ``offline_real`` in bf16, channels_last, under
   ``torch.compile``.

Goals: CLIP-MDC >= the peer of the matching regime on every anomaly metric; CLIP-MDC latency (batch 1, CPU)
<= SuperSimpleNet's; GPU: ``vit_b16`` <= 3.3 ms per image at batch 1 on an H100.
"""

from __future__ import annotations

from benchmarks.clipmdc.data import evaluate
from benchmarks.clipmdc.latency import measure_latency, run_gpu_latency, run_latency
from benchmarks.clipmdc.run import main
from benchmarks.clipmdc.settings import FULL, PEER_OF, QUICK, REGIMES

__all__ = [
    "FULL",
    "PEER_OF",
    "QUICK",
    "REGIMES",
    "evaluate",
    "main",
    "measure_latency",
    "run_gpu_latency",
    "run_latency",
]

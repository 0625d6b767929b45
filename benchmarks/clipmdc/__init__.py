"""CLIP-MDC against anomalib's SuperSimpleNet and PatchCore on real data, plus CPU latency.

``python -m benchmarks.clipmdc [--data-config configs/data/<x>.yaml] [--regimes ...]`` (``--quick``: a tiny
subset, 1 epoch, small images: the smoke run of the test suite). Everything runs in one process, offline, on the
CPU:

1. **Accuracy** (``clipmdc_<data>[_<regimes>].json``). Every CLIP-MDC arm is a config of the project's CLI,
   ``configs/benchmarks/clipmdc_<regime>.yaml``, run through :class:`common.cli.DefectCLI` stacked with the data
   config (any reader config; default Magnetic Tile) and the run's :class:`~benchmarks.clipmdc.settings.Settings`
   (:mod:`~benchmarks.clipmdc.arms`); the JSON records the resolved configs. The peers of the regime run on the
   same reader, subsample, split, image size and EfficientNet-Lite0 weights (:mod:`~benchmarks.clipmdc.peers`):
   supervised SuperSimpleNet for ``supervised``; PatchCore and unsupervised SuperSimpleNet for ``normal_only``.
   One budget rule for every trained model: an epoch cap and early stopping on the mean validation I-AUROC,
   P-AUROC, AUPRO and AP_loc, best epoch tested. All models are scored by :func:`common.metrics.anomaly_metrics`
   (exact). Thresholds are calibrated on val (:mod:`benchmarks._decisions`); the ONNX file is compared with
   PyTorch, and the INT8 file's metric change is measured (:mod:`~benchmarks.clipmdc.int8`). Levers are chosen with
   ``--eval-split val`` only (:mod:`~benchmarks.clipmdc.levers`).

2. **Latency** (``clipmdc_latency.json``, :mod:`~benchmarks.clipmdc.latency`). CLIP-MDC (the normal_only arm with
   the preset's defaults, memory built from normal images), SuperSimpleNet and PatchCore at 256x256, batch 1 and
   32, 1 thread: torch NCHW and ONNX Runtime (float32; CLIP-MDC also INT8) interleaved in one measurement, then
   torch channels-last; ratios ours / peer. With CUDA a GPU section times ``vit_b16`` and ``offline_real``.

Goals: CLIP-MDC >= the peer of the matching regime on I-AUROC, P-AUROC, AUPRO and AP_loc; CPU batch-1 latency
<= 0.7x SuperSimpleNet's and batch-32 throughput >= SuperSimpleNet's in torch and ONNX Runtime.
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

"""INT8 ONNX files of an exported CLIP-MDC (onnxruntime quantisation), for CPU inference.

Two modes of :mod:`onnxruntime.quantization`:

* ``"dynamic"``: weights of ``MatMul``/``Gemm``/``Conv`` stored as int8, activations quantised per call at run
  time; needs no data.
* ``"static"``: weights and activations int8 (QDQ format, ``QLinearConv`` kernels once onnxruntime fuses them),
  activation ranges calibrated (MinMax) on a few images of the data; the faster one on CPUs with int8 dot
  products, and the one to check on held-out images (``benchmarks/results/clipmdc_*.json`` reports the metric
  change).

The decision thresholds and vocabulary in the float file's metadata are copied over, so
:class:`clipmdc.export.OnnxPredictor` and ``defectfm onnx-predict`` read an INT8 file like any other.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

MODES = ("dynamic", "static")


class _Images:
    """onnxruntime ``CalibrationDataReader`` over ``(B, 3, H, W)`` float32 arrays in [0, 1]."""

    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self._it = iter({"image": np.ascontiguousarray(b, dtype=np.float32)} for b in batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_onnx(
    src: str | Path, dst: str | Path, mode: str = "static", calibration: Iterable[np.ndarray] | None = None
) -> Path:
    """Writes an INT8 copy of the float ONNX file ``src`` to ``dst``.

    Args:
        src: Float ONNX file (:func:`clipmdc.export.export_onnx`).
        dst: Output file.
        mode: ``"dynamic"`` or ``"static"`` (see the module docstring).
        calibration: For ``"static"``: image batches ``(B, 3, H, W)`` in [0, 1] at the file's input size
            (a few dozen images of the training data are enough).

    Returns:
        ``dst``.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in MODES:
        raise ValueError(f"INT8 mode must be one of {MODES}, got {mode!r}")
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)  # shapes + graph clean-up
        if mode == "dynamic":
            quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8)
        else:
            if calibration is None:
                raise ValueError("static INT8 quantisation needs calibration images")
            quantize_static(
                str(prepared),
                str(dst),
                _Images(calibration),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                calibrate_method=CalibrationMethod.MinMax,
            )
    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    proto = onnx.load(str(dst))
    have = {p.key for p in proto.metadata_props}
    for key, value in meta.items():
        if key not in have:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
    entry = proto.metadata_props.add()
    entry.key, entry.value = "int8", mode
    onnx.save(proto, str(dst))
    return dst

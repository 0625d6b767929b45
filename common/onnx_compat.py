"""Making traced models ONNX-exportable where PyTorch ops have no ONNX symbolic.

Antialiased resizing (``F.interpolate(..., antialias=True)``) has none (``aten::_upsample_bilinear2d_aa`` /
``_upsample_bicubic2d_aa`` at opset 18), yet it is in the graph of every preset at some input size: the image
encoders resize to their own input size with it (open_clip ViT-B-16 at any size but 224), and timm ViTs with
``dynamic_img_size`` resample their position embeddings with it (the tiny preset at any size but 160).

With the input size fixed at export, each such resize is a fixed linear map of each image axis, which PyTorch's
kernels apply separably: ``out = A_h @ x @ A_w^T``. :func:`antialias_as_matmul` computes ``A_h`` and ``A_w``
with PyTorch's own kernel (resizing identity matrices, outside the trace) and replaces the resize by two
constant matrix products while the model is traced, so the exported graph gives PyTorch's result (to float
rounding, ~1e-6) with plain ``MatMul`` nodes. ONNX's own ``Resize(antialias=1)`` is not used: its filter is
PIL's, not PyTorch's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

_MODES = ("bilinear", "bicubic")


def resize_matrix(n_in: int, n_out: int, mode: str, interpolate: Any = F.interpolate) -> torch.Tensor:
    """``(n_out, n_in)`` float64 matrix of PyTorch's antialiased 1-D resize along one axis.

    Row ``i`` holds the weights of output sample ``i``. Computed by resizing the identity along the height of
    2-wide images (a width of 1 takes another code path in PyTorch's kernel).
    """
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in, 1).expand(n_in, 1, n_in, 2).contiguous()
    out = interpolate(eye, size=(n_out, 2), mode=mode, align_corners=False, antialias=True)  # (n_in, 1, n_out, 2)
    return out[:, 0, :, 0].T.contiguous()


@contextmanager
def antialias_as_matmul() -> Iterator[None]:
    """While active, ``F.interpolate(x, size=..., mode="bilinear"|"bicubic", antialias=True)`` on 4-D inputs
    is computed as ``A_h @ x @ A_w^T`` with constant matrices (see the module docstring). Other calls are
    unchanged. Use it around ``torch.onnx.export`` only."""
    original = F.interpolate
    cache: dict[tuple[int, int, str], torch.Tensor] = {}

    def matrix(n_in: int, n_out: int, mode: str) -> torch.Tensor:
        key = (n_in, n_out, mode)
        if key not in cache:
            state = torch._C._get_tracing_state()
            torch._C._set_tracing_state(None)  # computed eagerly: a constant of the graph, not traced ops
            try:
                cache[key] = resize_matrix(n_in, n_out, mode, original)
            finally:
                torch._C._set_tracing_state(state)
        return cache[key]

    def interpolate(input: torch.Tensor, size: Any = None, scale_factor: Any = None, mode: str = "nearest",
                    align_corners: bool | None = None, recompute_scale_factor: bool | None = None,
                    antialias: bool = False) -> torch.Tensor:
        if not antialias or mode not in _MODES or input.dim() != 4 or size is None or align_corners:
            return original(input, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias)
        out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        in_h, in_w = int(input.shape[-2]), int(input.shape[-1])  # static at export
        a_h = matrix(in_h, out_h, mode).to(input.dtype)  # (out_h, in_h)
        a_w = matrix(in_w, out_w, mode).to(input.dtype)  # (out_w, in_w)
        return a_h @ input @ a_w.T  # (B, C, out_h, out_w)

    F.interpolate = interpolate
    try:
        yield
    finally:
        F.interpolate = original

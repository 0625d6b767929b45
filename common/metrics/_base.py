"""Shared state of the anomaly metrics: input checks, connected components, exact or binned storage.

Every image- and pixel-level anomaly metric in :mod:`common.metrics` derives from :class:`BinaryScoreMetric`.
The state is the same for all of them, so a ``MetricCollection`` puts e.g. ``PixelAUROC``, ``PixelAP`` and
``AUPRO`` into one compute group and keeps a single copy of the scores:

* ``mode="exact"``: lists of 1-D tensors (``dist_reduce_fx="cat"``): all scores, the scores of the anomalous
  samples/pixels, and for pixel metrics the weight ``1 / |C|`` of every anomalous pixel, ``|C|`` the size of
  its ground-truth connected component (8-connectivity), plus the number of components. Normal counts are
  "all minus anomalous", so an update never has to gather the (many) normal pixels, and ``compute`` never needs
  a mask or an argsort over all pixels (see :mod:`common.metrics.curves`).
* ``mode="binned"``: fixed-size histograms (``dist_reduce_fx="sum"``) of the normal scores, the anomalous
  scores and the component-normalised anomalous scores (each component contributes a histogram that sums to
  one), over ``num_bins`` equal bins of ``score_range``. Memory is O(num_bins) whatever the test-set size.

Binned thresholds: the bins split ``score_range = (lo, hi)`` into ``num_bins`` equal intervals; a score ``s``
falls into bin ``floor((s - lo) / (hi - lo) * num_bins)``, clamped to ``[0, num_bins - 1]`` (scores outside
the range are clamped with a one-time warning). The binned metrics are then *exactly* the exact metrics of
the scores rounded down to their bin's lower edge, so their error only comes from ties created inside a bin.
Scores that are not probabilities (logits, raw distances) can either be mapped with ``sigmoid=True`` or be
given their known range in ``score_range``; the default assumes scores in ``[0, 1]``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn
from torchmetrics.utilities.data import dim_zero_cat

Mode = Literal["exact", "binned"]

UNDEFINED = float("nan")
"""What every metric of :mod:`common.metrics` returns when it is undefined on the data (e.g. an AUROC without
normal samples): NaN, never a number that looks measured."""


def format_metric(value: Any, digits: int = 4) -> str:
    """A metric value for a printed table: ``-`` when undefined (NaN or ``None``), else ``digits`` decimals."""
    if value is None:
        return "-"
    v = float(value)
    return "-" if v != v else f"{v:.{digits}f}"

# Only the middle plane of a 3x3x3 structure is set: 8-connectivity inside each map, none across maps, so one
# ``ndimage.label`` call labels a whole batch (N, H, W) with components unique over the batch.
_STRUCTURE_8 = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE_8[1] = True


def check_same_shape(preds: Tensor, target: Tensor) -> None:
    """Raises ``ValueError`` naming both shapes when ``preds`` and ``target`` differ in shape."""
    if preds.shape != target.shape:
        raise ValueError(
            f"Shape mismatch: predictions have shape {tuple(preds.shape)} but targets have shape "
            f"{tuple(target.shape)}; they must be equal."
        )


def check_scores(scores: Tensor) -> Tensor:
    """Checks that scores are floating point without NaN; returns them as float32 or float64."""
    if not torch.is_floating_point(scores):
        scores = scores.float()
    elif scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()  # float16/bfloat16: numpy has no bfloat16, and sorting needs a numpy dtype
    if torch.isnan(scores).any():
        raise ValueError("Scores contain NaN; anomaly metrics need finite (or +-inf) scores.")
    return scores


def check_binary(target: Tensor, name: str = "target") -> Tensor:
    """Checks that ``target`` holds only 0/1 (or bool) values and returns it as a bool tensor."""
    if target.dtype == torch.bool:
        return target
    if ((target != 0) & (target != 1)).any():
        values = torch.unique(target)[:10].tolist()
        raise ValueError(f"{name} must be binary (0/1 or bool); found values {values}.")
    return target != 0


def as_maps(anomaly_maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Validates and normalises pixel inputs to ``(N, H, W)``.

    Args:
        anomaly_maps: ``(N, H, W)``, ``(N, 1, H, W)`` or ``(H, W)`` float scores, higher = more anomalous.
        masks: ground truth of the same shape (a ``(N, 1, H, W)``/``(N, H, W)`` pair is accepted), {0, 1}.

    Returns:
        ``(maps, masks)``: ``(N, H, W)`` float scores and ``(N, H, W)`` bool masks.

    Raises:
        ValueError: shapes differ (both shapes are named), or the maps are not 2-D images.
    """
    shape_p, shape_t = tuple(anomaly_maps.shape), tuple(masks.shape)
    maps, tgt = anomaly_maps, masks
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if tgt.ndim == 4 and tgt.shape[1] == 1:
        tgt = tgt[:, 0]
    if maps.ndim == 2:
        maps = maps.unsqueeze(0)
    if tgt.ndim == 2:
        tgt = tgt.unsqueeze(0)
    if maps.shape != tgt.shape:
        raise ValueError(
            f"Shape mismatch: anomaly maps have shape {shape_p} but masks have shape {shape_t}; "
            "expected equal (N, H, W) or (N, 1, H, W) shapes."
        )
    if maps.ndim != 3:
        raise ValueError(f"Anomaly maps must be (N, H, W) or (N, 1, H, W); got shape {shape_p}.")
    return check_scores(maps), check_binary(tgt, "masks")


def component_weights(masks: Tensor) -> tuple[Tensor, int]:
    """Labels ground-truth connected components (8-connectivity, per map) and weights anomalous pixels.

    Args:
        masks: ``(N, H, W)`` bool ground truth.

    Returns:
        ``(weights, num_components)``: ``weights`` is ``(P,)`` float64 on ``masks.device``, ``1 / |C|`` for each
        of the ``P`` anomalous pixels in raster order (the order of ``maps[masks]``), ``|C|`` the size of its
        component; the weights of one component sum to one.
    """
    mask_np = masks.detach().cpu().numpy()
    labels, num = ndimage.label(mask_np, structure=_STRUCTURE_8)
    if num == 0:
        return torch.zeros(0, dtype=torch.float64, device=masks.device), 0
    fg = labels[mask_np]  # raster order, same as maps[masks]
    sizes = np.bincount(fg, minlength=num + 1).astype(np.float64)
    weights = 1.0 / sizes[fg]
    return torch.from_numpy(weights).to(masks.device), int(num)


class BinaryScoreMetric(Metric):
    """Base class: stores scores split into normal/anomalous, exactly (lists) or binned (histograms).

    Subclasses implement ``update`` (validate, then call :meth:`_accumulate`) and ``compute``.

    Args:
        mode: ``"exact"`` (all scores kept, results equal the reference definitions) or ``"binned"``
            (fixed-size histograms, O(num_bins) memory).
        num_bins: number of equal-width bins over ``score_range`` in binned mode.
        score_range: ``(lo, hi)`` range the bins cover; scores outside are clamped into the end bins.
        sigmoid: apply a sigmoid to the scores before binning (for logits); binned mode only.
        **kwargs: forwarded to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    track_components: bool = False  # pixel metrics set True: per-component weights for AUPRO

    def __init__(
        self,
        mode: Mode = "exact",
        num_bins: int = 10_000,
        score_range: tuple[float, float] = (0.0, 1.0),
        sigmoid: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in ("exact", "binned"):
            raise ValueError(f"mode must be 'exact' or 'binned'; got {mode!r}.")
        lo, hi = (float(v) for v in score_range)
        if not hi > lo:
            raise ValueError(f"score_range must be (lo, hi) with hi > lo; got {score_range}.")
        if int(num_bins) < 2:
            raise ValueError(f"num_bins must be >= 2; got {num_bins}.")
        self.mode: Mode = mode
        self.num_bins = int(num_bins)
        self.score_range = (lo, hi)
        self.sigmoid = bool(sigmoid)
        self._warned_range = False
        if mode == "exact":
            self.add_state("scores", default=[], dist_reduce_fx="cat")
            self.add_state("anomalous_scores", default=[], dist_reduce_fx="cat")
            if self.track_components:
                self.add_state("anomalous_weights", default=[], dist_reduce_fx="cat")
        else:
            zeros = torch.zeros(self.num_bins, dtype=torch.float64)
            self.add_state("hist_normal", default=zeros.clone(), dist_reduce_fx="sum")
            self.add_state("hist_anomalous", default=zeros.clone(), dist_reduce_fx="sum")
            if self.track_components:
                self.add_state("hist_overlap", default=zeros.clone(), dist_reduce_fx="sum")
        if self.track_components:
            self.add_state("num_components", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    # ------------------------------------------------------------------------------------------------ update
    def bin_index(self, scores: Tensor) -> Tensor:
        """Maps scores ``(M,)`` to bin indices ``(M,)`` int32 in ``[0, num_bins)`` (see module docstring).

        Computed in the scores' own precision (float32 for float32 maps): the mapping is monotone, so the binned
        metrics stay the exact metrics of the quantized scores, and it is ~5x faster than a float64 pass.
        """
        x = torch.sigmoid(scores) if self.sigmoid else scores
        lo, hi = self.score_range
        if not self._warned_range and x.numel():
            x_min, x_max = torch.aminmax(x)
            if x_min < lo or x_max > hi:
                self._warned_range = True
                rank_zero_warn(
                    f"{type(self).__name__}: scores outside score_range={self.score_range} are clamped into the "
                    "end bins; set score_range (or sigmoid=True) to cover the scores for accurate binned metrics.",
                    UserWarning,
                )
        scaled = (torch.clamp(x, lo, hi) - lo).mul_(self.num_bins / (hi - lo))
        return scaled.to(torch.int32).clamp_max_(self.num_bins - 1)  # truncation = floor (values >= 0)

    def _accumulate(
        self,
        scores: Tensor,
        anomalous: Tensor,
        weights: Tensor | None = None,
        num_components: int = 0,
    ) -> None:
        """Adds one batch: all ``scores`` ``(M,)``, the ``anomalous`` ones ``(M1,)`` and their ``weights``."""
        if self.mode == "exact":
            self.scores.append(scores.detach())
            self.anomalous_scores.append(anomalous.detach())
            if self.track_components:
                self.anomalous_weights.append(weights.detach().double())
        else:
            n = self.num_bins
            idx_a = self.bin_index(anomalous)
            h_a = torch.bincount(idx_a, minlength=n).to(self.hist_anomalous)
            self.hist_normal += torch.bincount(self.bin_index(scores), minlength=n).to(self.hist_normal) - h_a
            self.hist_anomalous += h_a
            if self.track_components:
                self.hist_overlap += torch.bincount(idx_a, weights=weights.double(), minlength=n).to(
                    self.hist_overlap
                )
        if self.track_components:
            self.num_components += num_components

    def _update_pixels(self, anomaly_maps: Tensor, masks: Tensor) -> None:
        """Shared pixel update: ``(N, H, W)``/``(N, 1, H, W)`` maps and masks -> scores, anomalous scores."""
        maps, tgt = as_maps(anomaly_maps, masks)
        weights, num = component_weights(tgt) if self.track_components else (None, 0)
        self._accumulate(maps.reshape(-1), maps[tgt], weights, num)

    # ----------------------------------------------------------------------------------------------- compute
    def _exact_state(self) -> tuple[Tensor, Tensor, bool]:
        """``(scores, anomalous, owned)``: concatenated ``(M,)`` and ``(M1,)`` scores (empty before any update).

        ``owned`` is True when ``scores`` is a fresh concatenation that may be sorted in place (False when the
        state is already one tensor, e.g. after a DDP sync, and must not be reordered).
        """

        def cat(x: list[Tensor] | Tensor) -> tuple[Tensor, bool]:
            if isinstance(x, list):
                return (torch.cat(x) if x else torch.zeros(0, device=self.device)), True
            return x, False

        scores, owned = cat(self.scores)
        return scores, cat(self.anomalous_scores)[0], owned

    def _exact_weights(self) -> Tensor:
        if isinstance(self.anomalous_weights, list) and not self.anomalous_weights:
            return torch.zeros(0, dtype=torch.float64, device=self.device)
        return dim_zero_cat(self.anomalous_weights)

    def _result(self, value: float) -> Tensor:
        """Wraps a python float as a scalar float32 tensor on the metric's device."""
        return torch.tensor(value, dtype=torch.float32, device=self.device)

    def _warn(self, message: str) -> None:
        rank_zero_warn(f"{type(self).__name__}: {message}", UserWarning)

"""Image- and pixel-level anomaly metrics: AUROC, average precision (AP) and F1-max.

Image metrics take one score and one 0/1 label per image; pixel metrics take anomaly maps and ground-truth
masks. All of them derive from :class:`~common.metrics._base.BinaryScoreMetric` and share its state, so a
``MetricCollection`` keeps one copy of the scores for all pixel metrics (and one for all image metrics).

A metric that is undefined on the data is reported as undefined: ``NaN`` (a ``UserWarning`` says why), never
a number that looks measured, such as 0.5 for an AUROC without normal images:

* AUROC with only one class present (or no data): NaN (e.g. pixel AUROC on data without masks, whose normal
  images give only normal pixels; image AUROC without normal or without defective images).
* AP and F1-max with no positive: NaN. With no negative they are naturally 1.0.
* Constant predictions are defined and need no special case: AUROC 0.5, AP = positive rate, F1-max = 2p / (1 + p).

NaN travels as such into Lightning's logs and into JSON (``NaN``); printed tables show ``-``
(:func:`format_metric`). A ``ModelCheckpoint`` monitoring an undefined metric treats it as the worst value.

Mismatched shapes raise ``ValueError`` naming both shapes; non-binary targets and NaN scores raise too.
"""

from __future__ import annotations

from torch import Tensor

from common.metrics._base import UNDEFINED, BinaryScoreMetric, check_binary, check_same_shape, check_scores
from common.metrics.curves import (
    auroc_sorted,
    average_precision_sorted,
    binned_auroc,
    binned_average_precision,
    binned_f1_max,
    f1_max_sorted,
    sort_ascending,
)

__all__ = ["ImageAUROC", "ImageAP", "ImageF1Max", "PixelAUROC", "PixelAP", "PixelF1Max"]


class _ImageMetric(BinaryScoreMetric):
    """Image-level base: ``update(scores, labels)``."""

    def update(self, scores: Tensor, labels: Tensor) -> None:
        """Adds a batch.

        Args:
            scores: ``(N,)`` (or any shape equal to ``labels``) image anomaly scores, higher = more anomalous.
            labels: ``(N,)`` 0 = normal, 1 = anomalous.
        """
        check_same_shape(scores, labels)
        s = check_scores(scores).reshape(-1)
        y = check_binary(labels, "labels").reshape(-1)
        self._accumulate(s, s[y])


class _PixelMetric(BinaryScoreMetric):
    """Pixel-level base: ``update(anomaly_maps, masks)``; labels GT components for AUPRO's shared state."""

    track_components = True

    def update(self, anomaly_maps: Tensor, masks: Tensor) -> None:
        """Adds a batch.

        Args:
            anomaly_maps: ``(N, H, W)`` or ``(N, 1, H, W)`` float scores, higher = more anomalous.
            masks: ground truth of the same shape, 0 = normal pixel, 1 = anomalous pixel.
        """
        self._update_pixels(anomaly_maps, masks)


class _CurveMixin:
    """``compute`` for AUROC / AP / F1-max: degenerate checks, then the exact or binned formula."""

    _name = "AUROC"
    _needs_both_classes = True

    @staticmethod
    def _exact_fn(all_sorted: Tensor, pos_sorted: Tensor) -> float:
        return auroc_sorted(all_sorted, pos_sorted)

    @staticmethod
    def _binned_fn(hist_neg: Tensor, hist_pos: Tensor) -> float:
        return binned_auroc(hist_neg, hist_pos)

    def compute(self) -> Tensor:
        """Returns the metric as a scalar float32 tensor in [0, 1], NaN when undefined (module docstring)."""
        if self.mode == "exact":
            scores, pos, owned = self._exact_state()
            n_pos, n_neg = pos.numel(), scores.numel() - pos.numel()
        else:
            n_neg, n_pos = int(self.hist_normal.sum()), int(self.hist_anomalous.sum())
        if n_pos == 0 or (self._needs_both_classes and n_neg == 0):
            self._warn(f"{self._name} undefined with {n_neg} normal and {n_pos} anomalous samples; returning nan.")
            return self._result(UNDEFINED)
        if self.mode == "exact":
            return self._result(self._exact_fn(sort_ascending(scores, inplace=owned), sort_ascending(pos)))
        return self._result(self._binned_fn(self.hist_normal, self.hist_anomalous))


class _APMixin(_CurveMixin):
    _name = "AP"
    _needs_both_classes = False  # without negatives AP is 1.0

    @staticmethod
    def _exact_fn(all_sorted: Tensor, pos_sorted: Tensor) -> float:
        return average_precision_sorted(all_sorted, pos_sorted)

    @staticmethod
    def _binned_fn(hist_neg: Tensor, hist_pos: Tensor) -> float:
        return binned_average_precision(hist_neg, hist_pos)


class _F1Mixin(_APMixin):
    _name = "F1-max"

    @staticmethod
    def _exact_fn(all_sorted: Tensor, pos_sorted: Tensor) -> float:
        return f1_max_sorted(all_sorted, pos_sorted)

    @staticmethod
    def _binned_fn(hist_neg: Tensor, hist_pos: Tensor) -> float:
        return binned_f1_max(hist_neg, hist_pos)


class ImageAUROC(_CurveMixin, _ImageMetric):
    """Image-level AUROC (I-AUROC). Args: see :class:`~common.metrics._base.BinaryScoreMetric`."""


class ImageAP(_APMixin, _ImageMetric):
    """Image-level average precision. Args: see :class:`~common.metrics._base.BinaryScoreMetric`."""


class ImageF1Max(_F1Mixin, _ImageMetric):
    """Image-level F1-max (best F1 over thresholds). Args: see ``BinaryScoreMetric``."""


class PixelAUROC(_CurveMixin, _PixelMetric):
    """Pixel-level AUROC (P-AUROC) over all pixels of all maps. Args: see ``BinaryScoreMetric``."""


class PixelAP(_APMixin, _PixelMetric):
    """Pixel-level average precision (AP_loc). Args: see ``BinaryScoreMetric``."""


class PixelF1Max(_F1Mixin, _PixelMetric):
    """Pixel-level F1-max. Args: see ``BinaryScoreMetric``."""

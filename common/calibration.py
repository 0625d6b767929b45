"""Decision thresholds chosen on validation data: one implementation for every model.

A model gives anomaly probabilities; an inspection needs a yes/no per image and a region per pixel. Decisions
are ``score >= threshold``, and the threshold is chosen on the validation split (:func:`select_threshold`):

* ``"f1"`` when the data holds defective samples: the threshold with the best F1 (defective = positive);
* ``"far"`` when it holds only normal samples: the lowest threshold whose false-alarm rate on them is at most
  ``target_far`` (default 1%);
* ``"none"`` when there is nothing to choose from: the default (0.5) stays.

Among the thresholds that give the same decisions on the calibration data, the middle of that interval is taken
(the largest margin to both neighbouring scores); an unbounded interval (no normal sample above the chosen one)
gets the smallest float above the highest normal score. Image scores (one per image) are kept exactly
(:class:`ImageThresholdCalibrator`). Pixel scores are binned like the binned pixel metrics (10 000 bins over
[0, 1], :class:`~common.metrics._base.BinaryScoreMetric`), so memory does not grow with the data; a pixel
threshold is then a bin edge. Both are torchmetrics states: in DDP every rank computes the threshold of all
ranks' scores. :class:`DecisionThresholds` keeps the chosen values in a model's ``state_dict`` (so they travel
in checkpoints) and resolves them against values given by the user (a given number always wins).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from common.metrics._base import BinaryScoreMetric, as_maps, check_binary, check_scores
from common.metrics.curves import positive_counts_sorted, sort_ascending

MODES = ("none", "f1", "far")
"""Calibration modes, in the order of their codes in :class:`DecisionThresholds` buffers."""
DEFAULT_THRESHOLD = 0.5
DEFAULT_TARGET_FAR = 0.01


@dataclass
class Threshold:  # not frozen: torchmetrics' compute wrapper rejects frozen dataclasses
    """A chosen decision threshold and how it did on the data it was chosen on.

    Attributes:
        value: Decide "anomalous" when ``score >= value``.
        mode: ``"f1"``, ``"far"`` or ``"none"`` (see the module docstring).
        target_far: The target false-alarm rate (``"far"`` mode), else ``None``.
        num_normal: Normal samples (or pixels) it was chosen on.
        num_anomalous: Anomalous samples (or pixels) it was chosen on.
        f1: F1 at ``value`` on that data (``None`` without anomalous samples).
        far: False-alarm rate at ``value`` on its normal samples (``None`` without any).
        miss_rate: Miss rate at ``value`` on its anomalous samples (``None`` without any).
    """

    value: float
    mode: str
    target_far: float | None = None
    num_normal: int = 0
    num_anomalous: int = 0
    f1: float | None = None
    far: float | None = None
    miss_rate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _f32(x: float) -> float:
    """``x`` rounded to float32: thresholds compare with float32 scores, so store what they compare with."""
    return float(np.float32(x))


def _between(low: float, high: float) -> float:
    """A float32 threshold in ``(low, high]``, at the middle when float32 allows it."""
    mid = _f32((low + high) / 2.0)
    return mid if low < mid <= high else _f32(high)


def _just_above(x: float) -> float:
    return float(np.nextafter(np.float32(x), np.float32(np.inf)))


def _outcome(
    value: float, mode: str, target: float | None, normal: Tensor, anomalous: Tensor
) -> Threshold:
    """A :class:`Threshold` with its F1 / false-alarm rate / miss rate on ``normal`` and ``anomalous`` scores."""
    n0, n1 = normal.numel(), anomalous.numel()
    fp = int((normal >= value).sum()) if n0 else 0
    tp = int((anomalous >= value).sum()) if n1 else 0
    return Threshold(
        value=value,
        mode=mode,
        target_far=target,
        num_normal=n0,
        num_anomalous=n1,
        f1=2.0 * tp / (tp + fp + n1) if n1 else None,
        far=fp / n0 if n0 else None,
        miss_rate=(n1 - tp) / n1 if n1 else None,
    )


def f1_threshold(scores: Tensor, labels: Tensor) -> float:
    """The F1-optimal threshold of ``(N,)`` scores with ``(N,)`` 0/1 labels (at least one positive).

    F1 only changes at positive scores (lowering the threshold between two of them only adds false alarms), so
    the best threshold is the best positive score ``s`` (ties: the highest); the value returned lies in the
    middle between ``s`` and the highest score below it, which gives the same decisions on these scores.
    """
    s = check_scores(scores).reshape(-1)
    y = check_binary(labels, "labels").reshape(-1)
    all_s, pos_s = sort_ascending(s), sort_ascending(s[y])
    if pos_s.numel() == 0:
        raise ValueError("f1_threshold needs at least one anomalous sample")
    tp, fp = positive_counts_sorted(all_s, pos_s)
    f1 = (2.0 * tp.double() / (tp + fp + pos_s.numel()).double()).numpy()
    best = float(pos_s[int(np.flatnonzero(f1 == f1.max())[-1])])
    below = all_s[all_s < best]
    return _between(float(below[-1]), best) if below.numel() else _f32(best)


def far_threshold(normal_scores: Tensor, target_far: float = DEFAULT_TARGET_FAR) -> float:
    """The lowest threshold whose false-alarm rate on ``(N,)`` normal scores is at most ``target_far``.

    At most ``floor(target_far * N)`` normal scores may reach it; the value lies in the middle between the
    highest normal score that must stay below and the next higher one (just above the maximum when none may
    reach it).
    """
    s = sort_ascending(check_scores(normal_scores).reshape(-1))
    n = s.numel()
    if n == 0:
        raise ValueError("far_threshold needs at least one normal sample")
    if not 0.0 <= target_far < 1.0:
        raise ValueError(f"target_far must be in [0, 1), got {target_far}")
    allowed = int(np.floor(target_far * n + 1e-9))  # normal scores allowed at or above the threshold
    stay = float(s[n - allowed - 1])  # must stay below, with every score equal to it
    higher = s[s > stay]
    return _between(stay, float(higher[0])) if higher.numel() else _just_above(stay)


def select_threshold(
    scores: Tensor, labels: Tensor, target_far: float = DEFAULT_TARGET_FAR, default: float = DEFAULT_THRESHOLD
) -> Threshold:
    """Chooses an image threshold from exact scores (see the module docstring for the modes).

    Args:
        scores: ``(N,)`` anomaly scores.
        labels: ``(N,)`` 0 = normal, 1 = anomalous.
        target_far: Target false-alarm rate when there is no anomalous sample.
        default: The value when there is no sample at all.
    """
    s = check_scores(scores).reshape(-1).cpu()
    y = check_binary(labels, "labels").reshape(-1).cpu()
    if y.any():
        return _outcome(f1_threshold(s, y), "f1", None, s[~y], s[y])
    if s.numel():
        return _outcome(far_threshold(s, target_far), "far", target_far, s, s[y])
    return Threshold(default, "none")


def select_threshold_binned(
    hist_normal: Tensor,
    hist_anomalous: Tensor,
    score_range: tuple[float, float] = (0.0, 1.0),
    target_far: float = DEFAULT_TARGET_FAR,
    default: float = DEFAULT_THRESHOLD,
) -> Threshold:
    """Chooses a threshold from ``(B,)`` histograms over equal bins of ``score_range`` (a bin's lower edge).

    A score in bin ``i`` reaches the threshold at edge ``e_j`` exactly when ``i >= j``; the counts are those of
    :func:`common.metrics.curves.binned_f1_max`.
    """
    neg, pos = hist_normal.double().cpu(), hist_anomalous.double().cpu()
    bins = neg.numel()
    lo, hi = score_range
    edges = lo + (hi - lo) * torch.arange(bins + 1, dtype=torch.float64) / bins  # (B+1,), e_B = hi
    zero = torch.zeros(1, dtype=torch.float64)
    fp = torch.cat([neg.flip(0).cumsum(0).flip(0), zero])  # (B+1,) normal counts at or above each edge
    tp = torch.cat([pos.flip(0).cumsum(0).flip(0), zero])
    n0, n1 = float(fp[0]), float(tp[0])
    if n1 > 0:
        f1 = (2.0 * tp / (tp + fp + n1)).numpy()
        j, mode, target = int(np.flatnonzero(f1 == f1.max())[-1]), "f1", None
    elif n0 > 0:
        j = int(torch.nonzero(fp <= np.floor(target_far * n0 + 1e-9))[0])
        mode, target = "far", target_far
    else:
        return Threshold(default, "none")
    tp_j, fp_j = float(tp[j]), float(fp[j])
    return Threshold(
        value=_f32(float(edges[j])),
        mode=mode,
        target_far=target,
        num_normal=int(n0),
        num_anomalous=int(n1),
        f1=2.0 * tp_j / (tp_j + fp_j + n1) if n1 else None,
        far=fp_j / n0 if n0 else None,
        miss_rate=(n1 - tp_j) / n1 if n1 else None,
    )


def decision_rates(scores: Tensor, labels: Tensor, threshold: float) -> dict[str, float | int | None]:
    """False-alarm and miss rates of the decisions ``scores >= threshold`` against 0/1 ``labels``.

    Returns:
        ``threshold``, ``far`` (false alarms / normal samples), ``miss_rate`` (misses / anomalous samples),
        ``f1`` and the counts ``num_normal``, ``num_anomalous``, ``false_alarms``, ``misses``; a rate without
        samples to measure it on is ``None``.
    """
    s = check_scores(scores).reshape(-1).cpu()
    y = check_binary(labels, "labels").reshape(-1).cpu()
    flagged = s >= threshold
    n0, n1 = int((~y).sum()), int(y.sum())
    fp, tp = int((flagged & ~y).sum()), int((flagged & y).sum())
    return {
        "threshold": float(threshold),
        "far": fp / n0 if n0 else None,
        "miss_rate": (n1 - tp) / n1 if n1 else None,
        "f1": 2.0 * tp / (tp + fp + n1) if n1 else None,
        "num_normal": n0,
        "num_anomalous": n1,
        "false_alarms": fp,
        "misses": n1 - tp,
    }


class ImageThresholdCalibrator(Metric):
    """Collects image scores and labels (all ranks' in DDP); ``compute()`` gives the :class:`Threshold`.

    Args:
        target_far: Target false-alarm rate when the data holds only normal images.
    """

    full_state_update = False

    def __init__(self, target_far: float = DEFAULT_TARGET_FAR, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target_far = target_far
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, labels: Tensor) -> None:
        """Adds ``(N,)`` scores and ``(N,)`` 0/1 labels."""
        self.scores.append(check_scores(scores).reshape(-1).detach())
        self.labels.append(check_binary(labels, "labels").reshape(-1).detach())

    def collected(self) -> tuple[Tensor, Tensor]:
        """``(scores, labels)``, ``(N,)`` each: everything collected since the last reset (all DDP ranks')."""
        with self.sync_context(should_sync=self._to_sync, should_unsync=True):
            if isinstance(self.scores, list) and not self.scores:
                return torch.zeros(0), torch.zeros(0, dtype=torch.bool)
            return dim_zero_cat(self.scores).cpu(), dim_zero_cat(self.labels).cpu()

    def compute(self) -> Threshold:
        """The threshold of everything collected since the last reset."""
        if isinstance(self.scores, list) and not self.scores:
            return Threshold(DEFAULT_THRESHOLD, "none")
        return select_threshold(dim_zero_cat(self.scores), dim_zero_cat(self.labels), self.target_far)


class PixelThresholdCalibrator(BinaryScoreMetric):
    """Collects pixel scores in histograms (binned mode of the pixel metrics); ``compute()`` gives the
    :class:`Threshold`.

    Args:
        target_far: Target false-alarm rate (of normal pixels) when no anomalous pixel is known.
        num_bins: Histogram bins over ``score_range``.
        score_range: Range of the pixel scores (probabilities: ``(0, 1)``).
    """

    def __init__(self, target_far: float = DEFAULT_TARGET_FAR, num_bins: int = 10_000,
                 score_range: tuple[float, float] = (0.0, 1.0), **kwargs: Any) -> None:
        super().__init__(mode="binned", num_bins=num_bins, score_range=score_range, **kwargs)
        self.target_far = target_far

    def update(self, anomaly_maps: Tensor, masks: Tensor) -> None:
        """Adds ``(N, H, W)`` or ``(N, 1, H, W)`` maps with their 0/1 masks."""
        maps, tgt = as_maps(anomaly_maps, masks)
        self._accumulate(maps.reshape(-1), maps[tgt])

    def compute(self) -> Threshold:
        """The threshold of everything collected since the last reset."""
        return select_threshold_binned(self.hist_normal, self.hist_anomalous, self.score_range, self.target_far)


class DecisionThresholds(nn.Module):
    """Calibrated image and pixel thresholds as persistent buffers (they travel in ``state_dict``).

    Buffers: ``image`` and ``pixel`` (values, 0.5 before any calibration), ``image_mode`` and ``pixel_mode``
    (codes into :data:`MODES`), ``target_far``. A checkpoint written before these existed loads with the
    defaults (mode ``"none"``).

    Args:
        target_far: Target false-alarm rate used when the calibration data holds only normal samples.
    """

    def __init__(self, target_far: float = DEFAULT_TARGET_FAR) -> None:
        super().__init__()
        self.register_buffer("image", torch.tensor(DEFAULT_THRESHOLD, dtype=torch.float32))
        self.register_buffer("pixel", torch.tensor(DEFAULT_THRESHOLD, dtype=torch.float32))
        self.register_buffer("image_mode", torch.tensor(0, dtype=torch.long))
        self.register_buffer("pixel_mode", torch.tensor(0, dtype=torch.long))
        self.register_buffer("target_far", torch.tensor(float(target_far), dtype=torch.float32))

    def set(self, image: Threshold | None = None, pixel: Threshold | None = None) -> None:
        """Stores calibrated thresholds (a ``"none"`` result leaves the stored value unchanged)."""
        for name, t in (("image", image), ("pixel", pixel)):
            if t is None or t.mode == "none":
                continue
            getattr(self, name).fill_(t.value)
            getattr(self, f"{name}_mode").fill_(MODES.index(t.mode))
            if t.target_far is not None:
                self.target_far.fill_(t.target_far)

    def resolve(self, image: float | None = None, pixel: float | None = None) -> dict[str, Any]:
        """The thresholds to decide with: a given number wins over the calibrated one.

        Returns:
            ``image_threshold``, ``pixel_threshold``, ``threshold_mode`` (the image decision's: ``"f1"``,
            ``"far"``, ``"none"`` or ``"given"``), ``pixel_threshold_mode`` and ``target_far`` (``None`` unless a
            mode is ``"far"``).
        """
        modes = [MODES[int(self.image_mode)], MODES[int(self.pixel_mode)]]
        modes = ["given" if g is not None else m for g, m in zip((image, pixel), modes, strict=True)]
        return {
            "image_threshold": float(image) if image is not None else float(self.image),
            "pixel_threshold": float(pixel) if pixel is not None else float(self.pixel),
            "threshold_mode": modes[0],
            "pixel_threshold_mode": modes[1],
            "target_far": round(float(self.target_far), 6) if "far" in modes else None,
        }

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        for name, value in self.named_buffers(recurse=False):  # older checkpoints: keep the defaults
            state_dict.setdefault(prefix + name, value.detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

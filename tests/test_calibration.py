"""Decision thresholds (common.calibration): F1-optimal with defects, target false-alarm rate without, exact and
binned, gathered over DDP ranks, stored as buffers that a given number overrides."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch

from common.calibration import (
    DecisionThresholds,
    ImageThresholdCalibrator,
    PixelThresholdCalibrator,
    decision_rates,
    f1_threshold,
    far_threshold,
    select_threshold,
    select_threshold_binned,
)
from common.metrics.curves import exact_f1_max


def _scores(seed: int = 0, n0: int = 300, n1: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.cat([torch.rand(n0, generator=g) * 0.7, 0.3 + torch.rand(n1, generator=g) * 0.7])
    return s, torch.cat([torch.zeros(n0), torch.ones(n1)]).long()


def test_f1_threshold_reaches_f1_max_and_sits_between_scores() -> None:
    s, y = _scores()
    t = f1_threshold(s, y)
    pred = s >= t
    tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
    assert 2 * tp / (tp + fp + int(y.sum())) == pytest.approx(exact_f1_max(s[y == 0], s[y == 1]))
    assert not torch.isclose(s, torch.tensor(t)).any()  # strictly between two scores: a margin to both
    assert t == float(np.float32(t))  # representable in the scores' float32


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.2])
def test_far_threshold_meets_the_target(target: float) -> None:
    normal = torch.rand(1000, generator=torch.Generator().manual_seed(1))
    t = far_threshold(normal, target)
    assert int((normal >= t).sum()) == int(np.floor(target * 1000 + 1e-9))  # the lowest such threshold
    ties = torch.tensor([0.1] * 50 + [0.9] * 50)
    assert int((ties >= far_threshold(ties, 0.3)).sum()) == 0  # 50% tied at 0.9: above them all
    assert far_threshold(ties, 0.5) == pytest.approx(0.5)  # middle of (0.1, 0.9]


def test_select_threshold_modes() -> None:
    s, y = _scores()
    f1 = select_threshold(s, y)
    assert f1.mode == "f1" and f1.target_far is None and f1.num_anomalous == 60 and f1.num_normal == 300
    far = select_threshold(s[y == 0], y[y == 0], target_far=0.02)
    assert far.mode == "far" and far.target_far == 0.02 and far.far <= 0.02 and far.miss_rate is None
    none = select_threshold(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert none.mode == "none" and none.value == 0.5


def test_binned_threshold_matches_the_exact_one_on_binned_scores() -> None:
    s, y = _scores(2)
    q = torch.floor(s * 1000) / 1000  # scores on the bin edges: binned == exact
    hist = [torch.bincount((q[y == c] * 1000).round().long().clamp_max(999), minlength=1000) for c in (0, 1)]
    b = select_threshold_binned(hist[0], hist[1])
    e = select_threshold(q, y)
    assert b.mode == "f1" and b.f1 == pytest.approx(e.f1)
    assert decision_rates(q, y, b.value)["f1"] == pytest.approx(e.f1)
    bf = select_threshold_binned(hist[0], torch.zeros(1000), target_far=0.05)
    assert bf.mode == "far" and bf.far <= 0.05 and decision_rates(q[y == 0], y[y == 0], bf.value)["far"] <= 0.05
    assert select_threshold_binned(torch.zeros(10), torch.zeros(10)).mode == "none"


def test_decision_rates() -> None:
    r = decision_rates(torch.tensor([0.1, 0.6, 0.4, 0.9]), torch.tensor([0, 0, 1, 1]), 0.5)
    assert r["far"] == 0.5 and r["miss_rate"] == 0.5 and r["false_alarms"] == 1 and r["misses"] == 1


def test_calibrators_collect_batches() -> None:
    s, y = _scores(3)
    img = ImageThresholdCalibrator(target_far=0.01)
    for chunk in range(0, len(s), 64):
        img.update(s[chunk : chunk + 64], y[chunk : chunk + 64])
    assert img.compute().value == select_threshold(s, y).value
    img.reset()
    assert img.compute().mode == "none"
    pix = PixelThresholdCalibrator(target_far=0.01)
    maps = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(4)) * 0.5
    pix.update(maps, torch.zeros_like(maps))  # normal images only: false-alarm mode on their pixels
    t = pix.compute()
    assert t.mode == "far" and (maps >= t.value).float().mean() <= 0.01
    masks = torch.zeros_like(maps)
    masks[:, :, 8:16, 8:16] = 1
    pix.update(torch.where(masks.bool(), maps + 0.5, maps), masks)
    assert pix.compute().mode == "f1"


def test_decision_thresholds_buffers_and_precedence() -> None:
    th = DecisionThresholds()
    assert th.resolve() == {"image_threshold": 0.5, "pixel_threshold": 0.5, "threshold_mode": "none",
                            "pixel_threshold_mode": "none", "target_far": None}
    s, y = _scores()
    th.set(select_threshold(s, y), select_threshold(s[y == 0], y[y == 0], target_far=0.05))
    r = th.resolve()
    assert r["threshold_mode"] == "f1" and r["pixel_threshold_mode"] == "far" and r["target_far"] == 0.05
    given = th.resolve(image=0.9)
    assert given["image_threshold"] == 0.9 and given["threshold_mode"] == "given"
    assert given["pixel_threshold"] == r["pixel_threshold"]
    fresh = DecisionThresholds()
    fresh.load_state_dict(th.state_dict())  # travels in the state_dict
    assert fresh.resolve() == r
    old = DecisionThresholds()
    old.load_state_dict({}, strict=True)  # a checkpoint from before calibration: defaults, no error
    assert old.resolve()["threshold_mode"] == "none"


def _ddp_worker(rank: int, port: int, shards: list, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        cal = ImageThresholdCalibrator()
        cal.update(*shards[rank])
        t = cal.compute()
        with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
            f.write(f"{t.mode} {t.value!r}")
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_calibrate_on_all_ranks_scores(tmp_path) -> None:
    """Each rank holds one class only (alone: a false-alarm threshold on rank 0, an F1 one on rank 1); both
    compute the F1 threshold of the union."""
    import torch.multiprocessing as mp

    s, y = _scores(5)
    shards = [(s[y == 0], y[y == 0]), (s[y == 1], y[y == 1])]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(port, shards, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    expected = select_threshold(s, y)
    got = [(tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert got[0] == got[1] == ["f1", repr(expected.value)]
    assert select_threshold(*shards[0]).mode == "far"

"""AUPRO on an MVTec-size test set: ours (exact, binned) vs the MVTec reference algorithm vs anomalib.

``python -m benchmarks.metrics`` (``--quick`` for a small smoke run). Generates 1725 anomaly maps at 256x256
(about half with defects: 1-4 blobs of varied size and shape per map; scores = blurred ground truth + smooth
structured noise + pixel noise, squashed into (0, 1)), then measures on the same maps:

* ``ours_exact`` / ``ours_binned``: :class:`common.metrics.AUPRO` fed batch by batch, then ``compute()``.
* ``reference_mvtec``: a numpy port of the MVTec AD evaluation code (``compute_pro`` + ``trapezoid``): the
  reference definition on the full set.
* ``anomalib``: ``anomalib.metrics.AUPRO`` (skipped with a note when anomalib is not importable).
* ``plain_loop``: a plain loop over every distinct threshold with ``scipy.ndimage.label`` components, on a
  subset whose scores are quantized (a loop over the ~10^8 distinct scores of the full set is infeasible);
  all methods are also evaluated on that subset and compared with it.
* Peak RAM (``ru_maxrss``) of a fresh process that streams the whole set through the full pixel metric
  collection (``anomaly_metrics``) in binned mode, and in exact mode for comparison.

Writes ``benchmarks/results/metrics.json`` (``metrics_quick.json`` with ``--quick``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from benchmarks import _common
from common.metrics import AUPRO, anomaly_metrics

FULL = {"num_maps": 1725, "size": 256, "chunk": 64, "subset_maps": 96, "repeats": 3}
QUICK = {"num_maps": 48, "size": 64, "chunk": 16, "subset_maps": 8, "repeats": 1}
SUBSET_LEVELS = 256  # subset scores quantized to this many levels for the plain loop


# ------------------------------------------------------------------------------------------------ data
def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, 1, H, W)``."""
    r = int(math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))


def _smooth_field(g: torch.Generator, b: int, size: int, cells: int) -> torch.Tensor:
    """``(B, 1, S, S)`` smooth noise in about [-1, 1]: bicubic upsampling of a coarse random grid."""
    coarse = torch.randn(b, 1, cells, cells, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(-3, 3) / 2


def generate_chunk(index: int, count: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic chunk ``index`` of the data set: ``(maps (B, S, S) float32 in (0, 1), masks (B, S, S) bool)``.

    About half the maps carry 1-4 defects: ellipses with radii from 1.5% to 16% of the image side, random
    aspect and orientation, with frayed borders from a smooth noise field (so components have irregular shapes
    and sometimes split or merge).
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    fray = _smooth_field(g, count, size, 12)[:, 0]
    for i in range(count):
        if torch.rand((), generator=g) < 0.5:
            continue
        for _ in range(int(torch.randint(1, 5, (), generator=g))):
            cy, cx = (torch.rand(2, generator=g) * size).tolist()
            r = size * math.exp(
                math.log(0.015) + (math.log(0.16) - math.log(0.015)) * float(torch.rand((), generator=g))
            )
            aspect = 0.3 + 0.7 * float(torch.rand((), generator=g))
            th = math.pi * float(torch.rand((), generator=g))
            dy, dx = yy - cy, xx - cx
            u = (dx * math.cos(th) + dy * math.sin(th)) / r
            v = (-dx * math.sin(th) + dy * math.cos(th)) / (r * aspect)
            masks[i] |= (u * u + v * v + 0.5 * fray[i]) < 1.0
    gt = masks.float().unsqueeze(1)
    blur = _gaussian_blur(gt, sigma=size / 64)
    structure = _smooth_field(g, count, size, 24)
    strength = 0.5 + torch.rand(count, 1, 1, 1, generator=g)  # some defects are faint
    z = 3.0 * strength * blur + 0.9 * structure + 0.35 * torch.randn(count, 1, size, size, generator=g) - 1.2
    maps = torch.sigmoid(z)[:, 0].contiguous()
    return maps, masks


def generate(cfg: dict[str, Any], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    n, c = cfg["num_maps"], cfg["chunk"]
    return [generate_chunk(i, min(c, n - s), cfg["size"], seed) for i, s in enumerate(range(0, n, c))]


# ------------------------------------------------------------------------------------------ references
def reference_aupro_mvtec(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    """Numpy port of the MVTec AD evaluation code (``pro_curve_util.compute_pro`` + ``generic_util.trapezoid``)."""
    structure = np.ones((3, 3), dtype=int)
    fp_changes = np.zeros(maps.shape, dtype=np.uint32)
    pro_changes = np.zeros(maps.shape, dtype=np.float64)
    num_ok, num_regions = 0, 0
    for i, gt in enumerate(masks):
        labeled, n = ndimage.label(gt, structure)
        num_regions += n
        ok = labeled == 0
        num_ok += int(ok.sum())
        fp_changes[i, ok] = 1
        for k in range(n):
            region = labeled == (k + 1)
            pro_changes[i, region] = 1.0 / region.sum()
    scores = maps.ravel()
    idx = np.argsort(scores, kind="stable")[::-1]
    scores = scores[idx]
    fprs = np.cumsum(fp_changes.ravel()[idx], dtype=np.float64) / num_ok
    pros = np.cumsum(pro_changes.ravel()[idx]) / num_regions
    keep = np.append(np.diff(scores) != 0, np.True_)
    fprs = np.concatenate([[0.0], np.clip(fprs[keep], None, 1.0)])
    pros = np.concatenate([[0.0], np.clip(pros[keep], None, 1.0)])
    # trapezoid(fprs, pros, x_max=fpr_limit)
    correction = 0.0
    if fpr_limit not in fprs:
        ins = int(np.searchsorted(fprs, fpr_limit, side="right"))
        y_interp = pros[ins - 1] + (pros[ins] - pros[ins - 1]) * (fpr_limit - fprs[ins - 1]) / (
            fprs[ins] - fprs[ins - 1]
        )
        correction = 0.5 * (y_interp + pros[ins - 1]) * (fpr_limit - fprs[ins - 1])
    m = fprs <= fpr_limit
    x, y = fprs[m], pros[m]
    return float((np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction) / fpr_limit)


def reference_aupro_loop(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    """Plain loop over every distinct threshold: FPR over normal pixels, mean overlap of 8-connected components."""
    labels = np.zeros(masks.shape, dtype=np.int64)
    total = 0
    for i, gt in enumerate(masks):
        lab, n = ndimage.label(gt, np.ones((3, 3), dtype=int))
        labels[i] = np.where(lab > 0, lab + total, 0)
        total += n
    s, lab = maps.ravel(), labels.ravel()
    sizes = np.bincount(lab, minlength=total + 1)[1:]
    fprs, pros = [0.0], [0.0]
    for t in np.unique(s)[::-1]:
        above = s >= t
        fprs.append(float(np.count_nonzero(above & (lab == 0))) / np.count_nonzero(lab == 0))
        pros.append(float(np.mean(np.bincount(lab[above], minlength=total + 1)[1:] / sizes)))
        if fprs[-1] > fpr_limit:
            break
    x, y = np.array(fprs), np.array(pros)
    i = int(np.searchsorted(x, fpr_limit, side="right"))
    area = float(np.trapezoid(y[:i], x[:i]))
    if i < len(x):
        area += (
            0.5
            * (y[i - 1] + y[i - 1] + (y[i] - y[i - 1]) * (fpr_limit - x[i - 1]) / (x[i] - x[i - 1]))
            * (fpr_limit - x[i - 1])
        )
    return area / fpr_limit


# ---------------------------------------------------------------------------------------------- runners
def run_ours(chunks, mode: str, fpr_limit: float, num_bins: int) -> float:
    m = AUPRO(fpr_limit=fpr_limit, mode=mode, num_bins=num_bins)
    for maps, masks in chunks:
        m.update(maps, masks)
    return float(m.compute())


def anomalib_aupro_cls():
    """anomalib's AUPRO class, or ``None`` with the reason."""
    try:
        from anomalib.metrics import AUPRO as AnomalibAUPRO  # noqa: N811
    except Exception as e:  # ImportError, or a broken optional dependency
        return None, f"anomalib not importable ({type(e).__name__}: {e}); install the `bench` extra"
    return AnomalibAUPRO, None


def run_anomalib(cls, chunks, fpr_limit: float) -> float:
    try:  # anomalib >= 2: metrics read fields of a batch object
        m = cls(fields=["anomaly_map", "gt_mask"], fpr_limit=fpr_limit)
        for maps, masks in chunks:
            m.update(SimpleNamespace(anomaly_map=maps, gt_mask=masks))
    except TypeError:  # anomalib 1.x: update(preds, target)
        m = cls(fpr_limit=fpr_limit)
        for maps, masks in chunks:
            m.update(maps, masks)
    return float(m.compute())


def log(msg: str) -> None:
    print(f"[metrics benchmark] {msg}", file=sys.stderr, flush=True)


def timed(name: str, fn, repeats: int) -> tuple[float, float]:
    """``(value, best wall time over repeats)``; no warm-up run, every run does the full work."""
    out: dict[str, float] = {}

    def call() -> None:
        out["v"] = fn()

    t = _common.timeit(call, repeats=repeats, warmup=0)
    log(f"{name}: {out['v']:.6f} in {t:.3f} s (best of {repeats})")
    return out["v"], t


def peak_rss_child(mode: str, cfg: dict[str, Any], seed: int, threads: int) -> dict[str, float]:
    """Runs a fresh process that streams the data set through ``anomaly_metrics(mode)`` and reports RSS."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.metrics",
        "--_child",
        mode,
        "--threads",
        str(threads),
        "--seed",
        str(seed),
        "--_cfg",
        json.dumps(cfg),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def peak_rss_gib() -> float:
    """Peak resident memory of this process in GiB: ``VmHWM`` (reset by ``exec``, unlike ``ru_maxrss``, which a
    child inherits from the parent it was forked from)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux; an upper bound


def _child(mode: str, cfg: dict[str, Any], seed: int) -> None:
    base = peak_rss_gib()
    coll = anomaly_metrics(mode=mode, image=False)
    t0 = time.perf_counter()
    n, c = cfg["num_maps"], cfg["chunk"]
    for i, s in enumerate(range(0, n, c)):
        maps, masks = generate_chunk(i, min(c, n - s), cfg["size"], seed)
        coll.update(anomaly_maps=maps, masks=masks)
        del maps, masks
    values = {k: float(v) for k, v in coll.compute().items()}
    print(
        json.dumps(
            {
                "peak_rss_gib": peak_rss_gib(),
                "baseline_rss_gib": base,
                "seconds_incl_generation": time.perf_counter() - t0,
                "values": values,
            }
        )
    )


# ------------------------------------------------------------------------------------------------- main
def _subset_loop(
    cfg: dict[str, Any], maps_np: np.ndarray, masks_np: np.ndarray, cls: Any, L: float, num_bins: int, notes: list[str]
) -> tuple[dict[str, Any], dict[str, float | None], float]:
    """Plain threshold loop on a subset with quantized scores (all methods evaluated on the same subset)."""
    ns = cfg["subset_maps"]
    sub_maps = (np.floor(maps_np[:ns] * SUBSET_LEVELS) + 0.5).astype(np.float32) / SUBSET_LEVELS
    sub_masks = masks_np[:ns]
    sub_chunks = [(torch.from_numpy(sub_maps), torch.from_numpy(sub_masks))]
    log(f"plain threshold loop on {ns} maps")
    t0 = time.perf_counter()
    loop = reference_aupro_loop(sub_maps, sub_masks, L)
    loop_time = time.perf_counter() - t0
    sub_values = {
        "ours_exact": run_ours(sub_chunks, "exact", L, num_bins),
        "ours_binned": run_ours(sub_chunks, "binned", L, num_bins),
        "reference_mvtec": reference_aupro_mvtec(sub_maps, sub_masks, L),
        "anomalib": run_anomalib(cls, sub_chunks, L) if cls is not None else None,
    }
    subset = {
        "maps": ns,
        "score_levels": SUBSET_LEVELS,
        "plain_loop": loop,
        "plain_loop_time_s": loop_time,
        "values": sub_values,
        "deviation_from_plain_loop": {
            k: (abs(v - loop) if v is not None else None) for k, v in sub_values.items()
        },
    }
    notes.append(
        f"plain_loop runs on the first {ns} maps with scores quantized to {SUBSET_LEVELS} levels: a loop "
        "over all ~10^8 distinct scores of the full set is infeasible; the full-set reference is the "
        "numpy port of the MVTec evaluation code, which agrees with the loop on the subset."
    )

    return subset, sub_values, loop


def _print(
    values: dict[str, float | None],
    times: dict[str, float | None],
    deviation: dict[str, float | None],
    sub_values: dict[str, float | None],
    loop: float,
    cfg: dict[str, Any],
    data: dict[str, Any],
    L: float,
    ns: int,
    threads: int,
) -> None:
    rows = []
    for k in ("ours_exact", "ours_binned", "reference_mvtec", "anomalib"):
        v, t = values[k], times[k]
        rows.append(
            [
                k,
                "-" if v is None else f"{v:.6f}",
                "-" if t is None else f"{t:.3f}",
                "-" if k == "reference_mvtec" or deviation.get(k) is None else f"{deviation[k]:.2e}",
                "-" if not times.get("anomalib") or t is None else f"{times['anomalib'] / t:.2f}",
                "-" if sub_values[k] is None else f"{abs(sub_values[k] - loop):.2e}",
            ]
        )
    _common.print_table(
        f"AUPRO@{L} on {cfg['num_maps']} maps {cfg['size']}x{cfg['size']} ({data['components']} GT components, "
        f"{threads} thread(s))",
        [
            "method",
            "AUPRO",
            "time_s",
            "|dev| vs MVTec ref",
            "anomalib_time/time",
            f"|dev| vs loop ({ns} maps)",
        ],
        rows,
    )


def _print_memory_notes(memory: dict[str, Any], notes: list[str]) -> None:
    if memory:
        print(
            "peak RSS GiB: "
            + ", ".join(
                f"{m}={d['peak_rss_gib']:.2f} (baseline {d['baseline_rss_gib']:.2f})"
                for m, d in memory.items()
            )
        )
    for n in notes:
        print("note:", n)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.metrics", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: fair and polite on shared CPUs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fpr-limit", type=float, default=0.3)
    p.add_argument("--num-bins", type=int, default=10_000)
    p.add_argument("--no-anomalib", action="store_true", help="skip anomalib even if installed")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RAM subprocesses")
    p.add_argument("--_child", choices=["exact", "binned"], help=argparse.SUPPRESS)
    p.add_argument("--_cfg", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = _parser().parse_args(argv)
    torch.set_num_threads(a.threads)
    if a._child:
        _child(a._child, json.loads(a._cfg), a.seed)
        return {}
    cfg = dict(QUICK if a.quick else FULL)
    L, notes = a.fpr_limit, []

    log(f"generating {cfg['num_maps']} maps of {cfg['size']}x{cfg['size']}")
    chunks = generate(cfg, a.seed)
    maps_np = torch.cat([m for m, _ in chunks]).numpy()
    masks_np = torch.cat([k for _, k in chunks]).numpy()
    n_comp = sum(ndimage.label(k, np.ones((3, 3), dtype=int))[1] for k in masks_np)
    data = {
        **cfg,
        "anomalous_maps": int(masks_np.any(axis=(1, 2)).sum()),
        "components": int(n_comp),
        "anomalous_pixel_fraction": float(masks_np.mean()),
        "fpr_limit": L,
        "num_bins": a.num_bins,
        "threads": a.threads,
        "quick": a.quick,
    }

    values: dict[str, float | None] = {}
    times: dict[str, float | None] = {}
    r = cfg["repeats"]
    for mode in ("exact", "binned"):
        values[f"ours_{mode}"], times[f"ours_{mode}"] = timed(
            f"ours_{mode}", lambda mode=mode: run_ours(chunks, mode, L, a.num_bins), r
        )
    values["reference_mvtec"], times["reference_mvtec"] = timed(
        "reference_mvtec", lambda: reference_aupro_mvtec(maps_np, masks_np, L), 1
    )
    cls, why = (None, "skipped (--no-anomalib)") if a.no_anomalib else anomalib_aupro_cls()
    if cls is not None:
        values["anomalib"], times["anomalib"] = timed(
            "anomalib", lambda: run_anomalib(cls, chunks, L), min(r, 2)
        )
    else:
        values["anomalib"] = times["anomalib"] = None
        notes.append(f"anomalib column skipped: {why}")
    ref = values["reference_mvtec"]
    deviation = {
        k: (abs(v - ref) if v is not None else None) for k, v in values.items() if k != "reference_mvtec"
    }

    def ratio(num: str, den: str) -> float | None:
        return times[num] / times[den] if times.get(num) and times.get(den) else None

    ratios = {
        "anomalib_over_ours_exact": ratio("anomalib", "ours_exact"),
        "anomalib_over_ours_binned": ratio("anomalib", "ours_binned"),
        "reference_mvtec_over_ours_exact": ratio("reference_mvtec", "ours_exact"),
    }

    subset, sub_values, loop = _subset_loop(cfg, maps_np, masks_np, cls, L, a.num_bins, notes)

    notes.append(
        "ours and anomalib return float32 scalars, so deviations near 1e-8 are float32 rounding; "
        "reference_mvtec and plain_loop are float64. Times: best of repeats, no warm-up, data in memory, "
        "update() over 64-map batches + compute()."
    )
    memory = {}
    if not a.no_memory:
        for mode in ("binned",) if a.quick else ("binned", "exact"):
            log(f"peak RAM, {mode} mode, in a fresh process")
            memory[mode] = peak_rss_child(mode, cfg, a.seed, a.threads)
        notes.append(
            "memory: peak RSS (VmHWM) of a fresh process streaming all maps chunk by chunk through "
            "anomaly_metrics(image=False) (pixel AUROC, AP, AUPRO); includes Python+torch (baseline)."
        )

    payload = {
        "config": data,
        "full_set": {
            "values": values,
            "times_s": times,
            "deviation_from_reference": deviation,
            "ratios": ratios,
        },
        "subset_plain_loop": subset,
        "memory": memory,
        "notes": notes,
        "goal": {
            "anomalib_over_ours_exact_at_least": 5.0,
            "met": (ratios["anomalib_over_ours_exact"] or 0) >= 5.0 if cls is not None else None,
        },
    }
    path = _common.write_results("metrics_quick" if a.quick else "metrics", payload)

    _print(values, times, deviation, sub_values, loop, cfg, data, L, ns=subset["maps"], threads=a.threads)
    _print_memory_notes(memory, notes)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()

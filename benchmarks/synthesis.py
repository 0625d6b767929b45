"""Perlin anomaly synthesis throughput on one CPU thread: ours vs anomalib's ``PerlinAnomalyGenerator``.

``python -m benchmarks.synthesis`` (``--quick`` for a small smoke run, ``--no-anomalib`` to skip the peer).
Both generators run in the same process with ``torch.set_num_threads(1)`` (one dataloader worker's share),
on the same pool of smooth random RGB images, timed interleaved (ours, anomalib, ours, ...) and reported as
the best of ``repeats`` rounds, in images per second. Cases, at 256x256 and 512x512:

* ``self_source``: every sample anomalous. Ours takes the texture from the image itself with random
  colour/geometry changes; anomalib's default source (no ``anomaly_source_path``) is the Perlin field itself
  through 3 random torchvision augmentations.
* ``texture_dir``: every sample anomalous, textures from the same generated folder of PNG files (320x320,
  resized on use). anomalib decodes a file per sample; ours decodes each file once and caches it.
* ``default_prob``: both with their default probability 0.5 of leaving a sample normal (self source); the
  realised fractions of anomalous samples are reported next to the rates (``*_anomalous_fraction``).

"ours per-sample" is the dataloader-worker path (one ``__call__`` per image with its own seed); "ours batched"
is ``batch()`` on ``batch`` images at once (on CPU it works through cache-sized chunks). Ratios are ours /
anomalib. Writes ``benchmarks/results/synthesis.json`` (``synthesis_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks import _common
from common.synthesis import PerlinAnomalyGenerator, sample_seed

FULL = {"sizes": [256, 512], "images": {256: 48, 512: 24}, "repeats": 5, "batch": 16, "textures": 16}
QUICK = {"sizes": [64], "images": {64: 4}, "repeats": 1, "batch": 4, "textures": 2}
GOAL = {"size": 256, "case": "self_source", "min_ratio": 3.0}
CASES = ("self_source", "texture_dir", "default_prob")


def _image_pool(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``(n, 3, size, size)`` smooth random images in ``[0, 1]`` (bicubic upsampling of coarse noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g)
    img = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (img + 0.05 * torch.rand(n, 3, size, size, generator=g)).clamp_(0.0, 1.0)


def _texture_folder(root: Path, n: int, size: int = 320) -> Path:
    """Writes ``n`` random striped/blotchy RGB PNG textures into ``root`` and returns it."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        f = rng.uniform(2, 20, 3)
        phase = rng.uniform(0, 2 * np.pi, 3)
        chans = [
            np.sin(2 * np.pi * f[c] * (xx * np.cos(phase[c]) + yy * np.sin(phase[c])) + phase[c])
            for c in range(3)
        ]
        img = (np.stack(chans, -1) * 0.4 + 0.5 + rng.normal(0, 0.05, (size, size, 3))).clip(0, 1)
        Image.fromarray((img * 255).astype(np.uint8)).save(root / f"texture_{i:03d}.png")
    return root


def _anomalib_class() -> tuple[Any, str | None]:
    """anomalib's generator class, or ``None`` and the reason it is unavailable."""
    try:
        from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator as AnomalibGenerator
    except Exception as e:  # ImportError, or anomalib failing to import its own dependencies
        return None, f"anomalib not importable ({type(e).__name__}: {e}); anomalib column skipped"
    return AnomalibGenerator, None


def _peer_run(peer: Any, pool: torch.Tensor, n: int) -> list[Any]:
    """anomalib on ``n`` images, its global-RNG draws re-seeded so that every round does the same work."""
    torch.manual_seed(1)
    return [peer(pool[i % len(pool)]) for i in range(n)]


def _rate(fn: Callable[[], Any], n_images: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n_images / (time.perf_counter() - t0)


def _measure(runners: dict[str, tuple[Callable[[], Any], int]], repeats: int) -> dict[str, float]:
    """Best images/s of each runner over ``repeats`` interleaved rounds (after one warm-up round)."""
    best = dict.fromkeys(runners, 0.0)
    for rnd in range(repeats + 1):
        for name, (fn, n) in runners.items():
            r = _rate(fn, n)
            if rnd > 0 or repeats == 0:
                best[name] = max(best[name], r)
    return best


def _case_generators(case: str, texture_dir: Path, anomalib_cls: Any) -> tuple[Any, Any]:
    if case == "self_source":
        ours = PerlinAnomalyGenerator(normal_prob=0.0, seed=0)
        peer = anomalib_cls(probability=1.0) if anomalib_cls else None
    elif case == "texture_dir":
        ours = PerlinAnomalyGenerator(normal_prob=0.0, texture_dir=texture_dir, seed=0)
        peer = anomalib_cls(anomaly_source_path=texture_dir, probability=1.0) if anomalib_cls else None
    else:
        ours = PerlinAnomalyGenerator(seed=0)
        peer = anomalib_cls() if anomalib_cls else None
    return ours, peer


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.synthesis", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    p.add_argument("--no-anomalib", action="store_true", help="skip the anomalib column")
    a = p.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one dataloader worker's share; restored on return (tests call main in-process)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # anomalib draws from the global RNG
            return _run(a)
    finally:
        torch.set_num_threads(threads)


def _print_rows(rows: list[dict[str, Any]]) -> None:
    """The images/s table of the measured rows."""
    table = [
        [
            r["size"],
            r["case"],
            r["ours_per_sample_ips"],
            r["ours_batched_ips"],
            "-" if r["anomalib_ips"] is None else r["anomalib_ips"],
            "-" if r["ratio_per_sample"] is None else r["ratio_per_sample"],
            "-" if r["ratio_batched"] is None else r["ratio_batched"],
            f"{r['ours_anomalous_fraction']:.2f}"
            + (
                ""
                if r["anomalib_anomalous_fraction"] is None
                else f" / {r['anomalib_anomalous_fraction']:.2f}"
            ),
        ]
        for r in rows
    ]
    _common.print_table(
        "Perlin anomaly synthesis, images/s on 1 CPU thread (higher is better)",
        [
            "size",
            "case",
            "ours per-sample",
            "ours batched",
            "anomalib",
            "ratio per-sample",
            "ratio batched",
            "anomalous ours / anomalib",
        ],
        table,
    )


def _run(a: argparse.Namespace) -> dict[str, Any]:
    cfg = dict(QUICK if a.quick else FULL)

    anomalib_cls, note = (
        (None, "anomalib column skipped (--no-anomalib)") if a.no_anomalib else _anomalib_class()
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="defectfm_textures_") as tmp, torch.no_grad():
        texture_dir = _texture_folder(Path(tmp), cfg["textures"])
        for size in cfg["sizes"]:
            n = cfg["images"][size]
            pool = _image_pool(min(n, 8), size)
            batch = pool[torch.arange(cfg["batch"]) % len(pool)]
            for case in CASES:
                ours, peer = _case_generators(case, texture_dir, anomalib_cls)
                seeds = [sample_seed(0, i) for i in range(n)]
                batch_seeds = [sample_seed(1, i) for i in range(cfg["batch"])]
                runners = {
                    "ours_per_sample": (
                        lambda o=ours, s=seeds, x=pool, k=n: [o(x[i % len(x)], seed=s[i]) for i in range(k)],
                        n,
                    ),
                    "ours_batched": (
                        lambda o=ours, x=batch, s=batch_seeds: o.batch(x, seeds=s),
                        cfg["batch"],
                    ),
                }
                if peer is not None:
                    runners["anomalib"] = (lambda q=peer, x=pool, k=n: _peer_run(q, x, k), n)
                best = _measure(runners, cfg["repeats"])
                # the same work in every round: fixed seeds for ours, the global RNG re-seeded for anomalib
                ours_frac = sum(int(r.label) for r in runners["ours_per_sample"][0]()) / n
                peer_frac = None
                if peer is not None:
                    peer_frac = sum(bool(m.any()) for _, m in runners["anomalib"][0]()) / n
                peer_ips = best.get("anomalib")
                rows.append(
                    {
                        "size": size,
                        "case": case,
                        "images_per_round": n,
                        "ours_per_sample_ips": best["ours_per_sample"],
                        "ours_batched_ips": best["ours_batched"],
                        "anomalib_ips": peer_ips,
                        "ratio_per_sample": best["ours_per_sample"] / peer_ips if peer_ips else None,
                        "ratio_batched": best["ours_batched"] / peer_ips if peer_ips else None,
                        "ours_anomalous_fraction": ours_frac,
                        "anomalib_anomalous_fraction": peer_frac,
                    }
                )

    ratios = {
        f"{r['size']}/{r['case']}": {"per_sample": r["ratio_per_sample"], "batched": r["ratio_batched"]}
        for r in rows
    }
    goal_row = next((r for r in rows if r["size"] == GOAL["size"] and r["case"] == GOAL["case"]), None)
    goal_ratio = goal_row["ratio_per_sample"] if goal_row else None
    payload = {
        "quick": a.quick,
        "settings": {
            **{k: v for k, v in cfg.items() if k != "images"},
            "images_per_round": {str(k): v for k, v in cfg["images"].items()},
            "threads": torch.get_num_threads(),
            "timing": "best of `repeats` interleaved rounds after one warm-up round; images/s",
            "ours": "common.synthesis.PerlinAnomalyGenerator (defaults except normal_prob / texture_dir)",
            "anomalib": "anomalib.data.utils.generators.perlin.PerlinAnomalyGenerator (defaults except probability / anomaly_source_path)",
        },
        "note": note,
        "results": rows,
        "ratios": ratios,
        "goal": {
            **GOAL,
            "ratio": goal_ratio,
            "met": None if goal_ratio is None else goal_ratio >= GOAL["min_ratio"],
        },
    }
    path = _common.write_results("synthesis_quick" if a.quick else "synthesis", payload)
    _print_rows(rows)
    if note:
        print(f"note: {note}")
    print(f"results written to {path}")
    return payload


if __name__ == "__main__":
    main()

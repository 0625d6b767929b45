"""Generation metrics of the stage-1 demo model, without Inception weights: FD-Lite0 per class with two controls,
and text faithfulness judged by the CLIP-MDC demo model.

``python -m benchmarks.generation [--stage1-ckpt CKPT] [--clipmdc-ckpt CKPT] [--quick]`` (part of
``make benchmark``). A missing checkpoint is trained first by its demo (``make demo-diffusion`` /
``make demo`` settings), so the benchmark runs on a fresh machine; ``--quick`` trains both tiny, for a smoke run.

Protocol (one run, one seed; every figure at the same sample count per class):

* Classes: object (``plate``, ``fabric``) x (defect-free, ``scratch``, ``hole``, ``stain``), 8 in all.
* Real test images: ``data/demo`` (seed 0, the data of ``make demo``), ``test/<class>``. Stage 1 was trained on a
  separate corpus (seed 1, ``data/demo_stage1``): no test image was seen by the generator.
* Generated: ``--per-class`` samples per class from the training-caption-style prompt of that class
  (:func:`~diffdefect.stage1.sampling.defect_prompt`), DDIM, classifier-free guidance, EMA weights.
* **FD-Lite0** (:class:`~common.metrics.FrechetDistanceLite0`: the Fréchet distance of FID on frozen ImageNet
  EfficientNet-Lite0 features, not FID) between each class's generated and real test images, all at the generated
  resolution. Controls in the same run, same counts: ``floor``: real stage-1 training images of the class vs the
  real test images (what a perfect generator would score at this sample size); ``shuffled``: samples generated
  from the prompt of another class (a seeded derangement of the classes) vs the class's real test images.
* **Text faithfulness**: the CLIP-MDC demo model (trained on real ``data/demo`` images only, never on generated
  ones) judges every generated image, upsampled to its 128 px input: ``type_accuracy`` is the share of
  defect-prompt samples whose most likely defect type (argmax over the defect types) is the prompt's;
  ``class_accuracy`` the share of all samples (defect-free included) whose argmax over good + types matches.
  Reference in the same run: the same judge on the real test images passed through the same 64 px round trip
  (part of ``data/demo``'s test folders were in the judge's training split: an upper reference, not a test).

Goal (issue 19): ``type_accuracy >= 0.8`` and mean FD-Lite0 well below the shuffled control (we take "well
below" as at most half). Writes ``benchmarks/results/generation.json`` (``generation_quick.json``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import _common

OBJECTS = ("plate", "fabric")
CLASSES = ("good", "scratch", "hole", "stain")
FULL = {"per_class": 20, "steps": 50, "guidance": 4.0, "seed": 0, "judge_size": 128, "data": "data/demo",
        "corpus": "data/demo_stage1", "stage1_out": "runs/demo_diffusion", "clipmdc_out": "runs/demo"}
QUICK = {"per_class": 2, "steps": 2, "guidance": 4.0, "seed": 0, "judge_size": 128}


def class_list() -> list[tuple[str, str]]:
    return [(o, c) for o in OBJECTS for c in CLASSES]


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of ``range(n)`` with no fixed point (the shuffled-prompt control)."""
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return [int(i) for i in perm]


def real_images(root: Path, obj: str, cls: str, split: str, n: int, size: int) -> torch.Tensor:
    """Up to ``n`` images of ``<root>/<obj>/<split>/<cls>`` as ``(n, 3, size, size)`` in [0, 1] (sorted order)."""
    from diffdefect.stage1.sampling import load_images_list

    files = sorted((root / obj / split / cls).glob("*.png"))[:n]
    if len(files) < 2:
        raise FileNotFoundError(f"{root / obj / split / cls}: need at least 2 images, found {len(files)}")
    return load_images_list(files, size)


def frechet(real: torch.Tensor, other: torch.Tensor, metric: Any) -> float:
    """FD-Lite0 of ``other`` against ``real`` (the metric's real statistics reset first)."""
    metric.reset()
    metric.update(real, real=True)
    metric.update(other, real=False)
    return float(metric.compute())


@torch.no_grad()
def judge(module: Any, images: torch.Tensor, obj: str, size: int) -> torch.Tensor:
    """CLIP-MDC's image type log-probabilities ``(N, K+1)`` for ``images`` of ``obj``, upsampled to ``size``."""
    x = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    names = list(module.model.object_names)
    ids = torch.full((len(x),), names.index(obj) if obj in names else -1, dtype=torch.long)
    return module(x, ids).type_logits


def accuracies(logits: torch.Tensor, types: list[str], cls: str) -> tuple[int, int]:
    """Correct ``(type, class)`` counts of one class's samples: the type argmax over defect types (defect
    classes only), the class argmax over good + types."""
    target = types.index(cls)
    full = int((logits.argmax(1) == target).sum())
    if cls == "good":
        return 0, full
    return int((logits[:, 1:].argmax(1) + 1 == target).sum()), full


def ensure_checkpoints(a: argparse.Namespace, cfg: dict[str, Any], work: Path) -> tuple[Path, Path, Path, Path]:
    """The stage-1 and CLIP-MDC checkpoints, the real data and the stage-1 corpus; trains what is missing."""
    from common.data.demo import generate_demo_dataset

    if a.quick:
        import json

        from common.cli import DefectCLI
        from diffdefect.stage1.demo import run_diffusion_demo

        data = generate_demo_dataset(work / "demo", seed=0, n_train_good=6, n_test_good=4, n_test_defect=4)
        run_diffusion_demo(str(work / "corpus"), str(work / "stage1"), quick=True)
        ckpt_cb = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                   "init_args": {"dirpath": str(work / "clipmdc"), "save_last": True}}
        DefectCLI(args=["fit", "--config", "configs/clipmdc/demo.yaml", "--data.init_args.reader.init_args.root",
                        str(data), "--trainer.max_epochs", "1", "--trainer.logger", "false",
                        "--trainer.callbacks", json.dumps([ckpt_cb]), "--trainer.default_root_dir",
                        str(work / "clipmdc"), "--data.init_args.num_workers", "0"])
        return latest(work / "stage1", "last.ckpt"), latest(work / "clipmdc", "last.ckpt"), data, work / "corpus"
    data = generate_demo_dataset(cfg["data"], seed=0)
    stage1 = Path(a.stage1_ckpt) if a.stage1_ckpt else latest(Path(cfg["stage1_out"]), "last.ckpt", missing_ok=True)
    if stage1 is None:
        from diffdefect.stage1.demo import run_diffusion_demo

        run_diffusion_demo(cfg["corpus"], cfg["stage1_out"])
        stage1 = latest(Path(cfg["stage1_out"]), "last.ckpt")
    clip = Path(a.clipmdc_ckpt) if a.clipmdc_ckpt else latest(Path(cfg["clipmdc_out"]) / "checkpoints", "best-*.ckpt",
                                                                 missing_ok=True)
    if clip is None:
        from common.demo import run_demo

        run_demo(cfg["data"])
        clip = latest(Path(cfg["clipmdc_out"]) / "checkpoints", "best-*.ckpt")
    return stage1, clip, Path(data), Path(cfg["corpus"])


def latest(root: Path, pattern: str, missing_ok: bool = False) -> Path | None:
    """The most recently written file matching ``pattern`` under ``root``."""
    found = sorted(root.rglob(pattern), key=lambda p: p.stat().st_mtime) if root.exists() else []
    if not found:
        if missing_ok:
            return None
        raise FileNotFoundError(f"no {pattern} under {root}")
    return found[-1]


def evaluate(stage1: Any, clip: Any, data: Path, corpus: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Every figure of the module docstring, per class and summarised."""
    from common.metrics import FrechetDistanceLite0
    from diffdefect.stage1.sampling import defect_prompt, generate

    n, classes = cfg["per_class"], class_list()
    size = stage1.model.unet.sample_size * stage1.model.vae.downsample
    perm = derangement(len(classes), cfg["seed"])
    metric = FrechetDistanceLite0()
    types = list(clip.model.defect_types)
    kw = {"scheduler": "ddim", "steps": cfg["steps"], "guidance": cfg["guidance"], "batch_size": 16}
    rows, counts = [], {k: 0 for k in ("type", "type_n", "cls", "cls_n", "real_type", "real_cls", "shuf_type")}
    for k, (obj, cls) in enumerate(classes):
        d = None if cls == "good" else cls
        gen = generate(stage1.model, [defect_prompt(obj, d, i) for i in range(n)], seed=cfg["seed"] + 1000 * k, **kw)
        o2, c2 = classes[perm[k]]
        shuf = generate(stage1.model, [defect_prompt(o2, None if c2 == "good" else c2, i) for i in range(n)],
                        seed=cfg["seed"] + 1000 * k, **kw)  # same noise, another class's prompt
        test = real_images(data, obj, cls, "test", n, size)
        train = real_images(corpus, obj, cls, "train" if cls == "good" else "test", n, size)
        fd = {"generated": frechet(test, gen, metric), "shuffled": frechet(test, shuf, metric),
              "floor": frechet(test, train, metric)}
        t_ok, c_ok = accuracies(judge(clip, gen, obj, cfg["judge_size"]), types, cls)
        rt_ok, rc_ok = accuracies(judge(clip, test, obj, cfg["judge_size"]), types, cls)
        st_ok, _ = accuracies(judge(clip, shuf, obj, cfg["judge_size"]), types, cls)
        is_defect = int(cls != "good")
        counts["type"] += t_ok
        counts["type_n"] += is_defect * len(gen)
        counts["cls"] += c_ok
        counts["cls_n"] += len(gen)
        counts["real_type"] += rt_ok
        counts["real_cls"] += rc_ok
        counts["shuf_type"] += st_ok
        rows.append({"object": obj, "class": cls, "n": len(gen), "n_real_test": len(test), "fd_lite0": fd,
                     "shuffled_from": f"{o2}/{c2}", "type_correct": t_ok if is_defect else None,
                     "class_correct": c_ok})
    mean = {k: float(np.mean([r["fd_lite0"][k] for r in rows])) for k in ("generated", "shuffled", "floor")}
    return {
        "per_class": rows,
        "fd_lite0_mean": mean,
        "type_accuracy": counts["type"] / max(1, counts["type_n"]),
        "class_accuracy": counts["cls"] / max(1, counts["cls_n"]),
        "judge_on_real_test": {"type_accuracy": counts["real_type"] / max(1, counts["type_n"]),
                               "class_accuracy": counts["real_cls"] / max(1, counts["cls_n"])},
        "shuffled_type_accuracy": counts["shuf_type"] / max(1, counts["type_n"]),
        "image_size": size,
        "judge_vocabulary": types,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry: runs the protocol, prints the table, writes the JSON."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.generation", description=__doc__.split("\n\n")[0])
    p.add_argument("--stage1-ckpt", default=None, help="stage-1 checkpoint (default: newest under runs/demo_diffusion)")
    p.add_argument("--clipmdc-ckpt", default=None, help="CLIP-MDC judge (default: newest best-*.ckpt under runs/demo)")
    p.add_argument("--per-class", type=int, default=None, help="samples per class (default 20)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default 50)")
    p.add_argument("--corpus", default=None, help="the stage-1 training corpus (default data/demo_stage1)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workdir", default=None, help="quick mode: where the tiny models and data go")
    a = p.parse_args(argv)
    cfg = dict(QUICK if a.quick else FULL)
    if a.per_class:
        cfg["per_class"] = a.per_class
    if a.steps:
        cfg["steps"] = a.steps
    if a.corpus:
        cfg["corpus"] = a.corpus
    import tempfile

    from common.checkpoint import load_module
    from diffdefect.stage1.checkpoint import load_stage1

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.workdir or tmp)
        stage1_ckpt, clip_ckpt, data, corpus = ensure_checkpoints(a, cfg, work)
        stage1 = load_stage1(stage1_ckpt, ema=True)
        clip = load_module(clip_ckpt).eval()
        result = evaluate(stage1, clip, data, corpus, cfg)
    fd = result["fd_lite0_mean"]
    met, not_met = [], []
    (met if result["type_accuracy"] >= 0.8 else not_met).append(
        f"judged type accuracy {result['type_accuracy']:.3f} (goal >= 0.8)")
    (met if fd["generated"] <= 0.5 * fd["shuffled"] else not_met).append(
        f"mean FD-Lite0 {fd['generated']:.2f} vs shuffled control {fd['shuffled']:.2f} (goal: at most half); "
        f"floor (real train vs test) {fd['floor']:.2f}")
    payload = {
        "goal": {"description": "stage-1 demo samples: CLIP-MDC (trained on real images only) judges >= 80% of "
                                "defect-prompt samples as the prompted type, and FD-Lite0 to the real test images is "
                                "well below (at most half of) the shuffled-prompt control",
                 "met": met, "not_met": not_met},
        "settings": {**cfg, "stage1_ckpt": str(stage1_ckpt), "clipmdc_ckpt": str(clip_ckpt), "quick": a.quick,
                     "classes": [f"{o}/{c}" for o, c in class_list()], "sampler": "ddim", "ema": True,
                     "metric": "FD-Lite0 (Frechet distance on frozen ImageNet EfficientNet-Lite0 pooled features; "
                               "not FID)"},
        **result,
        "seconds": time.perf_counter() - t0,
    }
    rows = [[f"{r['object']}/{r['class']}", r["fd_lite0"]["generated"], r["fd_lite0"]["shuffled"],
             r["fd_lite0"]["floor"], "-" if r["type_correct"] is None else f"{r['type_correct']}/{r['n']}",
             f"{r['class_correct']}/{r['n']}"] for r in result["per_class"]]
    rows.append(["mean", fd["generated"], fd["shuffled"], fd["floor"], f"{result['type_accuracy']:.3f}",
                 f"{result['class_accuracy']:.3f}"])
    _common.print_table("generation: FD-Lite0 (lower is closer to real test) and CLIP-MDC judged accuracy",
                        ["class", "FD generated", "FD shuffled", "FD floor", "type ok", "class ok"], rows)
    print(f"judge on real test images (same 64 px round trip): type {result['judge_on_real_test']['type_accuracy']:.3f}"
          f", class {result['judge_on_real_test']['class_accuracy']:.3f}; on shuffled-prompt samples: type "
          f"{result['shuffled_type_accuracy']:.3f}")
    path = _common.write_results("generation_quick" if a.quick else "generation", payload)
    print(f"goal met: {met}\ngoal not met: {not_met}\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()

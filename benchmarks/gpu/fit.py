"""Part ``stage1_fit``: a real ``lightning fit`` of ``configs/stage1_diffusion.yaml`` through the project's CLI.

1. an image-text manifest of random images (512 px) is written, and ``defectfm precompute`` encodes it into
   latent shards with the config's encoder architectures, random-init (nothing downloaded): SD's VAE
   architecture (``FrozenVAE(pretrained=None, preset="sd")``), open_clip ViT-B-16 (``pretrained=None``), and a
   random 2-layer 768-d CLIP text model saved to a folder and loaded by ``CLIPTextEncoder`` through
   ``from_pretrained``, as a downloaded one would be;
2. ``lightning fit`` with the 860M U-Net on those shards (``--data.mode latents``), the config's bf16-mixed and
   gradient accumulation, its strategy reduced to one device, a checkpoint at ``fit_steps`` optimizer steps;
3. ``lightning fit --ckpt_path`` resumes from it to ``fit_resume_steps``.

Checked: both runs exit 0, the checkpoints hold the expected ``global_step`` and the EMA weights, the logged
losses are finite; :class:`StepTimer` (a callback the runs load from this module) gives the samples/s of the
whole Lightning loop (data loader, step, EMA) after the first steps. On the GPU each ``lightning`` run is a
subprocess (killed at the part's deadline); ``--dry`` runs them in-process.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from PIL import Image

from benchmarks.gpu.runner import Clock

REPO = Path(__file__).resolve().parents[2]


class StepTimer(L.Callback):
    """Writes ``{"steps", "seconds", "samples"}`` of the training batches after the first ``skip`` to ``path``.

    Args:
        path: JSON output.
        skip: Batches left out (start-up, allocation, cuDNN autotuning).
    """

    def __init__(self, path: str, skip: int = 3) -> None:
        self.path, self.skip = path, skip
        self.batches, self.samples, self.t0, self.t1 = 0, 0, None, None

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.t0 is None and self.batches == self.skip:
            self.t0 = self._now()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.batches += 1
        if self.batches > self.skip:
            self.samples += len(batch)
            self.t1 = self._now()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sec = (self.t1 - self.t0) if (self.t0 is not None and self.t1 is not None) else None
        Path(self.path).write_text(json.dumps({"batches": self.batches - self.skip, "seconds": sec,
                                               "samples": self.samples,
                                               "samples_per_s": self.samples / sec if sec else None}))


def write_manifest(folder: Path, n: int, px: int, seed: int = 0) -> Path:
    """``n`` random RGB images (smooth noise) with captions, as a JSONL manifest."""
    rng = np.random.default_rng(seed)
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        small = rng.integers(0, 256, (max(2, px // 8), max(2, px // 8), 3), dtype=np.uint8)
        Image.fromarray(small).resize((px, px), Image.BILINEAR).save(folder / "imgs" / f"{i:05d}.png")
        lines.append(json.dumps({"image": f"imgs/{i:05d}.png", "object": "plate",
                                 "caption": f"a metal plate with a scratch number {i}"}))
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def overrides(s: Any, work: Path, max_steps: int) -> dict[str, Any]:
    """The YAML stacked after the config(s): one device, random encoders, latent shards, checkpoints, timer."""
    cuda = s.device == "cuda"
    trainer: dict[str, Any] = {
        "accelerator": "gpu" if cuda else "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto",
        "max_steps": max_steps, "max_epochs": 10_000, "limit_val_batches": 0, "num_sanity_val_steps": 0,
        "log_every_n_steps": 1, "enable_progress_bar": False, "default_root_dir": str(work / "run"),
        "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                   "init_args": {"save_dir": str(work / "run"), "name": "fit"}},
        "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"dirpath": str(work / "ckpt"), "filename": "{step}",
                           "every_n_train_steps": s.fit_steps, "save_top_k": -1}},
            {"class_path": "benchmarks.gpu.fit.StepTimer",
             "init_args": {"path": str(work / f"timer{max_steps}.json"), "skip": s.fit_timer_skip}},
        ],
    }
    model: dict[str, Any] = {"compile": s.fit_compile}
    if not s.dry:  # the config's encoder architectures, random-init: nothing to download
        model["model"] = {"init_args": {
            "vae": {"class_path": "common.encoders.vae.FrozenVAE",
                    "init_args": {"pretrained": None, "subfolder": None, "preset": "sd"}},
            "text_encoder": {"class_path": "common.encoders.clip_text.CLIPTextEncoder",
                             "init_args": {"pretrained": str(work / "clip_text")}},
            "image_encoder": {"class_path": "common.encoders.OpenCLIPImage",
                              "init_args": {"model_name": "ViT-B-16", "pretrained": None, "layers": [11]}},
        }}
    data = {"init_args": {"source": str(work / "shards"), "mode": "latents", "image_size": s.fit_image_px,
                          "batch_size": s.fit_batch, "num_workers": 2, "shuffle_buffer": 32, "equalize": True,
                          "val_fraction": 0.0}}
    return {"trainer": trainer, "model": {"init_args": model}, "data": data}


def cli(argv: list[str], s: Any, clock: Clock, log: Path) -> None:
    """Runs ``defectfm <argv>`` (a subprocess killed at the deadline on the GPU, in-process with ``--dry``)."""
    if not s.fit_subprocess:
        from common.cli import main

        code = main(argv)
        if code != 0:
            raise RuntimeError(f"defectfm {argv[0]} exited with {code}")
        return
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    with log.open("w") as f:
        try:
            proc = subprocess.run([sys.executable, "-m", "common.cli", *argv], cwd=REPO, env=env, stdout=f,
                                  stderr=subprocess.STDOUT, timeout=max(1.0, clock.left()))
        except subprocess.TimeoutExpired as e:
            raise TimeoutError(f"defectfm {argv[0]} still running at the part's deadline") from e
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-25:]
        raise RuntimeError(f"defectfm {argv[0]} exited with {proc.returncode}:\n" + "\n".join(tail))


def _checkpoint(path: Path) -> dict[str, Any]:
    ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    return {"file": path.name, "gib": path.stat().st_size / 2**30, "global_step": int(ckpt["global_step"]),
            "has_ema": ckpt.get("ema") is not None,
            "datamodule_state": next((v for k, v in ckpt.items() if k.endswith("DataModule")), None)}


def _losses(work: Path) -> list[float]:
    import csv

    out = []
    for f in sorted((work / "run").rglob("metrics.csv")):
        with f.open() as fh:
            out += [float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")]
    return out


def run(s: Any, clock: Clock, reports: dict[str, Any]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="defectfm_gpu_fit_"))
    try:
        return _run(s, clock, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(s: Any, clock: Clock, work: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    manifest = write_manifest(work / "source", s.fit_images, s.fit_image_px)
    if not s.dry:
        from common.encoders.clip_text import tiny_clip_text_model

        tiny_clip_text_model(work / "clip_text", hidden_size=768)
    configs = [a for c in s.fit_configs for a in ("--config", str(REPO / c))]
    over = {}
    for steps in (s.fit_steps, s.fit_resume_steps):
        over[steps] = work / f"overrides{steps}.yaml"
        over[steps].write_text(yaml.safe_dump(overrides(s, work, steps)))
    out: dict[str, Any] = {"configs": s.fit_configs, "images": s.fit_images, "image_px": s.fit_image_px,
                           "batch_size": s.fit_batch, "steps": s.fit_steps, "resume_to": s.fit_resume_steps,
                           "compile": s.fit_compile, "subprocess": s.fit_subprocess,
                           "encoders": "tiny preset's" if s.dry else "SD VAE architecture, open_clip ViT-B-16 "
                           "and a 2-layer 768-d CLIP text model, all random-init"}
    from diffdefect.stage1.precompute import main as precompute

    precompute([*configs, "--config", str(over[s.fit_steps]), "--source", str(manifest), "--out",
                str(work / "shards"), "--batch-size", "32", "--num-workers", "2", "--maxcount", "32",
                "--device", s.device])
    out["precompute_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    cli(["fit", *configs, "--config", str(over[s.fit_steps])], s, clock, work / "fit.log")
    out["fit_s"] = time.perf_counter() - t1
    first = sorted((work / "ckpt").glob("*.ckpt"))
    if not first:
        raise RuntimeError(f"no checkpoint written by the first run in {work / 'ckpt'}")
    out["checkpoint"] = _checkpoint(first[-1])
    t2 = time.perf_counter()
    problems = []
    try:
        cli(["fit", *configs, "--config", str(over[s.fit_resume_steps]), "--ckpt_path", str(first[-1])], s, clock,
            work / "resume.log")
    except Exception as e:  # keep the first run's figures
        problems.append(f"resume: {type(e).__name__}: {str(e)[-1500:]}")
    out["resume_s"] = time.perf_counter() - t2
    last = [p for p in sorted((work / "ckpt").glob("*.ckpt")) if p != first[-1]]
    out["resumed_checkpoint"] = _checkpoint(last[-1]) if last else None
    for key, name in (("timer", s.fit_steps), ("resume_timer", s.fit_resume_steps)):
        f = work / f"timer{name}.json"
        out[key] = json.loads(f.read_text()) if f.is_file() else None
    losses = _losses(work)
    out["losses"] = {"count": len(losses), "first": losses[0] if losses else None,
                     "last": losses[-1] if losses else None, "all_finite": all(map(math.isfinite, losses))}
    if out["checkpoint"]["global_step"] != s.fit_steps:
        problems.append(f"first checkpoint at step {out['checkpoint']['global_step']}, expected {s.fit_steps}")
    if not last or out["resumed_checkpoint"]["global_step"] != s.fit_resume_steps:
        problems.append(f"the resumed run did not write a checkpoint at step {s.fit_resume_steps}")
    if not out["checkpoint"]["has_ema"]:
        problems.append("no EMA weights in the checkpoint")
    if not losses or not out["losses"]["all_finite"]:
        problems.append("no finite training losses logged")
    out["problems"] = problems  # non-empty: the runner reports the part as failed, with these figures
    return out

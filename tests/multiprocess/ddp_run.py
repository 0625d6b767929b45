"""Run by ``tests/multiprocess/test_ddp.py``: tiny CLIP-MDC / stage-2 / stage-1 runs under Lightning's DDP on the
CPU (gloo), with any number of processes, writing what rank 0 saw.

    python -m tests.multiprocess.ddp_run --data DIR --out DIR --devices 2 --models clipmdc stage2 stage1

The global batch is the same for every ``--devices`` (each process takes ``global / devices``), and the data
order too: every run, one process included, uses DDP, so Lightning shards the data with the same
``DistributedSampler`` permutation (seeded by ``seed_everything``); process ``r`` of ``n`` takes items
``r, r + n, ...`` of it, so the union of the processes' ``k``-th batches is the ``k``-th global batch. With
per-sample mean losses, no cross-sample state and no random draws, the averaged gradients, hence the weights and
every synchronised metric, equal the one-process run's up to float summation order.

* ``clipmdc``: the tiny preset without its trainable backbone (timm's ``test_efficientnet`` has BatchNorm, whose
  per-process batch statistics differ from one process's; PyTorch's SyncBatchNorm, the fix, needs a GPU),
  supervised, trained for a few steps; then ``validate`` and ``test``.
* ``stage2``: the tiny head trained on the base class only; its random point sampling and set matching depend on
  the batch composition, so the one-process run evaluates the weights the two-process run trained
  (``--weights``) and the metrics are compared on the same weights. The validation vocabulary is the base class,
  and the validation images are laid out so that one process sees only images of the novel class (their image
  class is unknown): the epoch-end branches must not depend on a process's own data. Every process has one thread
  and evaluation takes one image per step in every run, so an image's output is the same bits in every run (the
  thread count and the batch size change the float summation order of the networks, about 2e-6 in the scores,
  which moves pixels across the bins of the binned pixel metrics and AUPRO's thresholds: about 1e-4 of
  ``pixel_aupro``); what is compared is then the metrics' synchronisation alone.
* ``stage1``: the tiny stage-1 model on a caption manifest; its per-step noise is seeded per process, so the
  test replays the same per-process draws in one process (see the test).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

GLOBAL_BATCH = 4
STAGE1_STEPS = 3
STAGE1_LR = 0.05


def trainer(devices: int, **kw: Any) -> L.Trainer:
    args = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
            "enable_model_summary": False, "num_sanity_val_steps": 0} | kw
    return L.Trainer(accelerator="cpu", devices=devices, strategy=DDPStrategy(process_group_backend="gloo"), **args)


def defect_data(manifest: Path, devices: int, eval_batch_size: int | None = None) -> Any:
    from common.data import DefectDataModule, ManifestReader

    return DefectDataModule(ManifestReader(manifest), image_size=32, batch_size=GLOBAL_BATCH // devices,
                            eval_batch_size=eval_batch_size, num_workers=0, split="auto", augment="none", seed=0)


def numbers(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float, torch.Tensor))}


def run_clipmdc(data: Path, devices: int) -> dict[str, Any]:
    from clipmdc.module import CLIPMDCModule
    from clipmdc.presets import tiny

    L.seed_everything(0)
    module = CLIPMDCModule(model=tiny(backbone=False), regime="supervised",
                           optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    dm = defect_data(data / "defects.jsonl", devices)
    fit = trainer(devices, max_epochs=2, limit_val_batches=0)
    fit.fit(module, dm)
    t = trainer(devices)
    val = t.validate(module, dm, verbose=False)[0]
    test = t.test(module, dm, verbose=False)[0]
    return {"val": numbers(val), "test": numbers(test), "steps": fit.global_step,
            "weights": {k: v.double().sum().item() for k, v in module.state_dict().items() if v.is_floating_point()}}


def run_stage2(data: Path, devices: int, weights: Path | None, out: Path) -> dict[str, Any]:
    from diffdefect import DiffusionFeatures, HungarianMatcher, SetCriterion, Stage2Model, Stage2Module

    L.seed_everything(0)
    dm = defect_data(data / "stage2.jsonl", devices, eval_batch_size=1)  # outputs bit-equal in every run
    model = Stage2Model(DiffusionFeatures(vae_levels=1), head="tiny")
    module = Stage2Module(model=model, criterion=SetCriterion(matcher=HungarianMatcher(num_points=256)),
                          data_vocabulary=dm.vocabulary, train_classes=["scratch"],
                          optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    if weights is None:
        trainer(devices, max_epochs=1, limit_val_batches=0).fit(module, dm)
        if int(os.environ.get("RANK", "0")) == 0:
            torch.save(module.state_dict(), out / "stage2_weights.pt")
    else:
        module.load_state_dict(torch.load(weights, weights_only=True))
    t = trainer(devices)
    val = t.validate(module, dm, verbose=False)[0]
    test = t.test(module, dm, verbose=False)[0]
    return {"val": numbers(val), "test": numbers(test)}


def run_stage1(data: Path, devices: int, out: Path) -> dict[str, Any]:
    from common.data.image_text import ImageTextDataModule
    from diffdefect import Stage1Diffusion
    from diffdefect.stage1.presets import tiny_stage1

    L.seed_everything(0)
    # plain SGD: Adam's first steps move every weight by about +-lr whatever the gradient's size, so float noise
    # in a near-zero gradient would flip whole updates; SGD keeps the comparison proportional
    module = Stage1Diffusion(tiny_stage1(), optimizer=lambda p: torch.optim.SGD(p, lr=STAGE1_LR), ema_decay=0.9)
    dm = ImageTextDataModule(str(data / "pairs.jsonl"), image_size=16, batch_size=GLOBAL_BATCH // devices,
                             num_workers=0, shuffle=True, seed=0)
    t = trainer(devices, max_steps=STAGE1_STEPS, gradient_clip_val=1.0, use_distributed_sampler=False)
    t.fit(module, dm)  # the DataModule shards the manifest over the ranks itself, as configs/stage1 does
    if t.global_rank == 0:
        torch.save({k: v for k, v in module.model.state_dict().items()}, out / f"stage1_weights_{devices}.pt")
    return {"steps": t.global_step}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--models", nargs="+", default=["clipmdc", "stage2", "stage1"])
    p.add_argument("--weights", type=Path, default=None, help="stage 2: evaluate these weights (no fit)")
    a = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # else Lightning gives each process (CPUs // processes) threads, and the
    torch.set_num_threads(1)  # thread count changes the float summation order of the networks
    results: dict[str, Any] = {}
    for name in a.models:
        if name == "clipmdc":
            results[name] = run_clipmdc(a.data, a.devices)
        elif name == "stage2":
            results[name] = run_stage2(a.data, a.devices, a.weights, a.out)
        else:
            results[name] = run_stage1(a.data, a.devices, a.out)
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0:
        (a.out / f"results_{a.devices}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

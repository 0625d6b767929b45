"""Multi-process training on the CPU: Lightning DDP with 2 processes (gloo) gives the one-process figures.

What "the same" means here is spelled out in :mod:`tests.multiprocess.ddp_run`: same global batch, same data
order (the one-process reference runs DDP too, so both shard one ``DistributedSampler`` permutation), no BatchNorm
(SyncBatchNorm needs a GPU).

* Stage 2 tiny (fast suite): a short fit with 2 processes; the weights it trained evaluated with 2 processes and
  with 1 give equal metrics, although one process's validation images all belong to a class outside the
  validation vocabulary (what a process computes at the epoch end must not depend on its own data, or the
  processes hang: this test hung when the epoch end branched on a process's own counts before ``compute()``;
  :class:`~diffdefect.stage2.metrics.Stage2Metrics` computes every metric on every process).
* CLIP-MDC tiny (slow): a short fit with 2 processes and with 1: equal weights and validation / test metrics.
* Stage 1 tiny (slow): a 2-process fit against the same steps replayed in one process (the per-process noise
  seeds, the DataModule's per-rank shards, gradient averaging and clipping): equal weights.

Each DDP run is a subprocess (Lightning launches the second process itself) with a time limit: a hang fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.conftest import REPO, blob_pair, write_image
from tests.multiprocess.ddp_run import GLOBAL_BATCH, STAGE1_LR, STAGE1_STEPS

TIMEOUT_S = 300


def _entries(root: Path, rng: np.random.Generator, split: str, types: list[str], prefix: str) -> list[dict]:
    out = []
    for i, t in enumerate(types):
        img, m = blob_pair(rng, size=32, defect=t != "good")
        name = f"{split}_{prefix}{i:02d}_{t}"
        write_image(root / "imgs" / f"{name}.png", img)
        write_image(root / "masks" / f"{name}.png", m * 255)
        e = {"image": f"imgs/{name}.png", "mask": f"masks/{name}.png", "object": "plate", "split": split}
        e |= {"label": "good"} if t == "good" else {"defect_type": t}
        out.append(e)
    return out


def _write(path: Path, entries: list[dict]) -> None:
    path.write_text("\n".join(json.dumps(e) for e in entries) + "\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Manifests with split sizes divisible by the global batch (no sampler padding, no duplicate)."""
    root = tmp_path_factory.mktemp("ddp_data")
    rng = np.random.default_rng(0)
    both = ["good", "scratch", "hole", "scratch"]
    defects = (_entries(root, rng, "train", both * 2, "a") + _entries(root, rng, "val", both, "b")
               + _entries(root, rng, "test", both, "c"))
    _write(root / "defects.jsonl", defects)
    # stage 2: the validation images sorted by path alternate scratch / hole, so that with 2 processes (items
    # r, r + 2, ...) process 1 sees only `hole`, a class outside the validation (= training) vocabulary
    stage2 = (_entries(root, rng, "train", ["scratch", "good"] * 4, "d")
              + _entries(root, rng, "val", ["scratch", "hole"] * 2, "e")
              + _entries(root, rng, "test", both, "f"))
    _write(root / "stage2.jsonl", stage2)
    pairs = []
    for i in range(3 * GLOBAL_BATCH):  # one epoch of STAGE1_STEPS steps
        img, _ = blob_pair(rng, size=16)
        write_image(root / "pairs" / f"{i:02d}.png", img)
        pairs.append({"image": f"pairs/{i:02d}.png", "caption": f"a plate with a scratch number {i}"})
    _write(root / "pairs.jsonl", pairs)
    return root


def ddp(data: Path, out: Path, devices: int, models: list[str], weights: Path | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "tests.multiprocess.ddp_run", "--data", str(data), "--out", str(out),
           "--devices", str(devices), "--models", *models] + (["--weights", str(weights)] if weights else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", PL_DISABLE_FORK="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        env.pop(k, None)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the process it started
        log = proc.communicate()[0]
        pytest.fail(f"DDP run with {devices} processes hung (> {TIMEOUT_S} s):\n{log[-3000:]}")
    assert proc.returncode == 0, log[-5000:]
    return json.loads((out / f"results_{devices}.json").read_text())


def close(a: dict[str, float], b: dict[str, float], keys: list[str], rel: float = 1e-4) -> list[str]:
    # equal_nan: a metric undefined on the data (e.g. image AUROC without normal images) is NaN in both runs
    return [k for k in keys if not np.isclose(a[k], b[k], rtol=rel, atol=1e-6, equal_nan=True)]


def test_stage2_metrics_with_two_processes_equal_one(data: Path, tmp_path: Path) -> None:
    two = ddp(data, tmp_path / "two", 2, ["stage2"])  # hangs if an epoch-end branch follows a process's own data
    one = ddp(data, tmp_path / "one", 1, ["stage2"], weights=tmp_path / "two" / "stage2_weights.pt")
    s2, s1 = two["stage2"], one["stage2"]
    for stage in ("val", "test"):
        # the synchronised metrics; the loss terms depend on the batch composition (random matching points)
        keys = [k for k in s1[stage] if not any(t in k for t in ("/mask", "/dice", "/cls", "/aux"))]
        assert {f"{stage}/miou", f"{stage}/pixel_auroc", f"{stage}/accuracy"} <= set(keys)
        assert set(keys) <= set(s2[stage]) and close(s2[stage], s1[stage], keys) == [], stage


@pytest.mark.slow
def test_clipmdc_fit_with_two_processes_equals_one(data: Path, tmp_path: Path) -> None:
    c2 = ddp(data, tmp_path / "two", 2, ["clipmdc"])["clipmdc"]
    c1 = ddp(data, tmp_path / "one", 1, ["clipmdc"])["clipmdc"]
    assert c2["steps"] == c1["steps"] > 0
    assert set(c2["weights"]) == set(c1["weights"])
    assert close(c2["weights"], c1["weights"], sorted(c1["weights"])) == []
    for stage in ("val", "test"):
        assert set(c2[stage]) == set(c1[stage]) and c1[stage]
        assert close(c2[stage], c1[stage], sorted(c1[stage])) == [], stage


def _trainer_stub(rank: int, world: int) -> SimpleNamespace:
    progress = SimpleNamespace(current=SimpleNamespace(processed=0), is_last_batch=False)
    loop = SimpleNamespace(epoch_progress=SimpleNamespace(current=SimpleNamespace(processed=0)),
                           epoch_loop=SimpleNamespace(batch_progress=progress))
    return SimpleNamespace(global_rank=rank, world_size=world, fit_loop=loop)


@pytest.mark.slow
def test_stage1_with_two_processes_equals_its_replay_in_one(data: Path, tmp_path: Path) -> None:
    import lightning as L

    from common.data.image_text import ImageTextDataModule
    from diffdefect import Stage1Diffusion
    from diffdefect.stage1.module import step_seed
    from diffdefect.stage1.presets import tiny_stage1

    ddp(data, tmp_path, 2, ["stage1"])
    trained = torch.load(tmp_path / "stage1_weights_2.pt", weights_only=True)
    L.seed_everything(0)
    module = Stage1Diffusion(tiny_stage1(), ema_decay=None)
    init = {k: v.clone() for k, v in module.model.state_dict().items()}
    model = module.model.train()
    opt = torch.optim.SGD(model.trainable_parameters(), lr=STAGE1_LR)
    loaders = []
    for rank in (0, 1):  # the batches each process gets from the DataModule
        dm = ImageTextDataModule(str(data / "pairs.jsonl"), image_size=16, batch_size=GLOBAL_BATCH // 2,
                                 num_workers=0, shuffle=True, seed=0)
        dm.trainer = _trainer_stub(rank, 2)
        loaders.append(iter(dm.train_dataloader()))
    for step in range(STAGE1_STEPS):
        opt.zero_grad()
        for rank in (0, 1):  # each process's noise: Stage1Diffusion seeds it by (seed, rank, step, micro-batch)
            g = torch.Generator().manual_seed(step_seed(0, rank, 0, step, 0))
            (module.loss(model(next(loaders[rank]), g))["total"] / 2).backward()  # DDP averages the gradients
        torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), 1.0)
        opt.step()
    replay = model.state_dict()
    assert set(trained) == set(replay)
    diff = torch.cat([(trained[k] - replay[k]).flatten() for k in replay])
    update = torch.cat([(replay[k] - init[k]).flatten() for k in replay])
    assert (update != 0).sum() > 10_000, "training changed almost nothing"
    # float summation order only (measured: 3e-6 of the update's norm); a process given the other's noise
    # differs by about 0.1 of it, a wrong sample split or gradient average by more
    assert diff.norm() / update.norm() < 1e-4
    assert diff.abs().max() < 1e-4 * update.abs().max()

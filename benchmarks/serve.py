"""Load test of ``defectfm serve`` on this CPU, loopback only: latency and throughput at 1, 4 and 16 concurrent
clients, dynamic batching on vs off, no lost or mixed-up response, memory flat over the run.

A CLIP-MDC checkpoint is trained for one epoch on generated demo data (``--model demo``: the demo config's
offline-real model, EfficientNet-Lite0 + MiniLM at 128 px; ``--model tiny``: the test preset), or ``--ckpt_path``
is served as given. The same server command runs twice, with ``--max_batch_size 8 --batch_timeout 0.01``
(batching on) and ``--max_batch_size 1`` (off), and once more batching on with ``--no_record`` (no overlay,
map or image kept: the model's share of the time). For each, ``--requests`` distinct generated images (256x256 PNG,
multipart, each with its own id) are sent by 1, 4 and 16 client threads (each level at most ``--max_seconds``).

Checks: every response is 200 and carries its own request's id and file name; its anomaly score equals the score
of that image answered alone (batching off, one client) within 1e-4, so no response went to another request;
the resident memory of the server's processes (API server + model worker, ``psutil``) after the last level is
within ``--rss_slack_mb`` of its value after warm-up (the request record rotates every ``--part_size``
requests, so the run crosses rotations).

    python -m benchmarks.serve [--quick] [--model demo|tiny] [--ckpt_path CKPT] [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import print_table, write_results

LEVELS = (1, 4, 16)
MODES = {"batching on": ["--max_batch_size", "8", "--batch_timeout", "0.01"], "batching off": ["--max_batch_size", "1"],
         "batching on, no record": ["--max_batch_size", "8", "--batch_timeout", "0.01", "--no_record"]}
CONFIGS = {"demo": ["configs/clipmdc/demo.yaml"], "tiny": ["configs/clipmdc/demo.yaml", "configs/clipmdc/model/tiny.yaml"]}
QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def train_checkpoint(model: str, folder: Path) -> Path:
    """A checkpoint of ``model`` (``demo`` or ``tiny``) trained one epoch on small generated demo data."""
    from common.cli import main as cli
    from common.data.demo import generate_demo_dataset

    data = generate_demo_dataset(folder / "demo", image_size=128, n_train_good=4, n_test_good=2, n_test_defect=2)
    callbacks = json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                             "init_args": {"dirpath": str(folder / "ckpt"), "save_last": True}}])
    configs = [x for c in CONFIGS[model] for x in ("--config", c)]
    code = cli(["fit", *configs, *QUIET, "--data.init_args.reader.init_args.root", str(data),
                "--data.init_args.num_workers", "0", "--trainer.max_epochs", "1", "--trainer.callbacks", callbacks,
                "--trainer.default_root_dir", str(folder / "runs")])
    if code != 0:
        raise RuntimeError(f"training the {model} checkpoint failed (exit {code})")
    return folder / "ckpt" / "last.ckpt"


def make_images(n: int, folder: Path, side: int = 256) -> list[Path]:
    """``n`` distinct images (random texture, a bright defect of varying size and place), as PNG files."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        img = rng.integers(60, 140, (side, side, 3), dtype=np.uint8)
        if i % 3:
            y, x = rng.integers(0, side - 64, 2)
            img[y : y + 8 + i % 48, x : x + 6 + i % 31] = 230 - i % 40
        files.append(folder / f"img_{i:04d}.png")
        Image.fromarray(img).save(files[-1])
    return files


def send_all(url: str, files: list[Path], clients: int, max_seconds: float) -> dict[str, Any]:
    """Sends every file once from ``clients`` threads (stopping after ``max_seconds``); per request: latency,
    status, and whether the response's id and file name are the request's."""
    import requests

    local = threading.local()
    stop_at = time.monotonic() + max_seconds

    def one(i: int) -> dict[str, Any] | None:
        if time.monotonic() > stop_at:
            return None
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        t0 = time.perf_counter()
        with files[i].open("rb") as f:
            r = session.post(url + "/predict", files={"image": (files[i].name, f)}, data={"id": f"r{i}"}, timeout=120)
        ms = 1000 * (time.perf_counter() - t0)
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        return {"i": i, "ms": ms, "status": r.status_code, "own": body.get("id") == f"r{i}"
                and body.get("filename") == files[i].name, "score": body.get("anomaly_score")}

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = [x for x in pool.map(one, range(len(files))) if x is not None]
    wall = time.perf_counter() - t0
    ms = np.array([d["ms"] for d in done]) if done else np.array([np.nan])
    return {"clients": clients, "requests": len(done), "seconds": wall, "images_per_s": len(done) / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "errors": sum(d["status"] != 200 for d in done),
            "not_own": sum(not d["own"] for d in done), "scores": {d["i"]: d["score"] for d in done}}


def run_mode(name: str, ckpt: Path, files: list[Path], folder: Path, a: argparse.Namespace) -> dict[str, Any]:
    """One server (``name``'s batching settings): warm-up, the client levels, RSS sampled all along."""
    from common.serve.launch import launch

    args = ["--ckpt_path", str(ckpt), *MODES[name], "--part_size", str(a.part_size), "--keep_parts", "2"]
    with launch(args, folder / name.replace(" ", "_"), threads=a.threads) as server:
        send_all(server.url, files[: a.warmup], 4, a.max_seconds)
        rss = {"after_warmup": server.rss_bytes()}
        samples, stop = [rss["after_warmup"]], threading.Event()

        def sample() -> None:
            while not stop.wait(0.25):
                samples.append(server.rss_bytes())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        levels = []
        for clients in a.levels:
            levels.append(send_all(server.url, files, clients, a.max_seconds))
            rss[f"after_{clients}_clients"] = server.rss_bytes()
        stop.set()
        sampler.join()
        rss |= {"end": samples[-1], "max": max(samples), "samples": len(samples)}
    return {"mode": name, "server_args": args, "levels": levels, "rss_bytes": rss}


def mismatches(runs: list[dict[str, Any]], tol: float = 1e-4) -> tuple[dict[int, float], int]:
    """The reference scores (batching off, one client: each image answered alone) and how many responses of any
    level differ from the reference score of their image."""
    off = next(r for r in runs if r["mode"] == "batching off")
    reference = next(lv for lv in off["levels"] if lv["clients"] == 1)["scores"]
    bad = 0
    for run in runs:
        for lv in run["levels"]:
            bad += sum(1 for i, s in lv["scores"].items()
                       if i in reference and (s is None or abs(s - reference[i]) > tol))
    return reference, bad


def verdict(runs: list[dict[str, Any]], mixed: int, slack_mb: float) -> dict[str, Any]:
    """The goal, with what was met and what was not."""
    met, not_met = [], []
    lost = sum(lv["errors"] + lv["not_own"] for r in runs for lv in r["levels"])
    (met if lost == 0 else not_met).append(f"no lost response or response with another request's id ({lost})")
    (met if mixed == 0 else not_met).append(f"every score equals its image's score answered alone ({mixed} differ)")
    for r in runs:
        grow = (r["rss_bytes"]["end"] - r["rss_bytes"]["after_warmup"]) / 2**20
        (met if grow <= slack_mb else not_met).append(f"{r['mode']}: RSS flat ({grow:+.1f} MB after warm-up, "
                                                      f"allowed {slack_mb:.0f} MB)")
    top = max(LEVELS)
    on, off = ({lv["clients"]: lv["images_per_s"] for lv in r["levels"]} for r in runs[:2])
    if top in on and top in off:
        (met if on[top] > off[top] else not_met).append(
            f"batching raises images/s at {top} clients ({on[top]:.1f} vs {off[top]:.1f})")
    return {"description": "defectfm serve under 1/4/16 concurrent clients on loopback, dynamic batching on vs off: "
                           "no lost or mixed-up response, memory flat, batching helps under load",
            "met": met, "not_met": not_met}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model, 40 requests: a smoke run")
    p.add_argument("--model", choices=tuple(CONFIGS), default="demo")
    p.add_argument("--ckpt_path", default=None, help="serve this checkpoint instead of training one")
    p.add_argument("--requests", type=int, default=300, help="requests per level")
    p.add_argument("--warmup", type=int, default=16)
    p.add_argument("--max_seconds", type=float, default=120.0, help="time bound per level")
    p.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    p.add_argument("--part_size", type=int, default=200, help="record rotation (requests per part)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    p.add_argument("--rss_slack_mb", type=float, default=64.0)
    p.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    a = p.parse_args(argv)
    if a.quick:
        a.model, a.requests, a.warmup, a.levels, a.part_size = "tiny", min(a.requests, 40), 4, [1, 4], 16
    with tempfile.TemporaryDirectory(prefix="serve_bench_", dir=a.dir) as tmp:
        folder = Path(tmp)
        ckpt = Path(a.ckpt_path) if a.ckpt_path else train_checkpoint(a.model, folder / "model")
        files = make_images(a.requests, folder / "images")
        runs = [run_mode(name, ckpt, files, folder, a) for name in MODES]
    reference, mixed = mismatches(runs)
    for r in runs:
        for lv in r["levels"]:
            lv.pop("scores")
    result = {"settings": {**{k: v for k, v in vars(a).items() if k != "dir"}, "modes": MODES,
                           "model": a.ckpt_path or a.model, "image_side": 256, "compared_scores": len(reference)},
              "runs": runs, "mixed_responses": mixed}
    result["goal"] = verdict(runs, mixed, a.rss_slack_mb)
    rows = [[r["mode"], lv["clients"], lv["requests"], lv["errors"] + lv["not_own"], lv["p50_ms"], lv["p95_ms"],
             lv["p99_ms"], lv["images_per_s"]] for r in runs for lv in r["levels"]]
    print_table(f"defectfm serve load test ({a.ckpt_path or a.model} model, loopback, this CPU)",
                ["mode", "clients", "requests", "lost/mixed", "p50 ms", "p95 ms", "p99 ms", "images/s"], rows)
    for r in runs:
        mb = {k: round(v / 2**20, 1) for k, v in r["rss_bytes"].items() if k != "samples"}
        print(f"{r['mode']}: RSS MB {mb}")
    print(f"goal met: {result['goal']['met']}\ngoal not met: {result['goal']['not_met']}")
    write_results("serve_quick" if a.quick else "serve", result)
    return result


if __name__ == "__main__":
    main()

"""``make demo``: generate the demo data, train CLIP-MDC on CPU, test, predict, print a table.

Runs the same ``lightning fit/test/predict`` commands a user would type, in one process::

    python -m common.demo [--data data/demo] [--config configs/clipmdc/demo.yaml] [--max-epochs N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from common.cli import DefectCLI
from common.data.demo import generate_demo_dataset
from common.metrics import format_metric

REPORTED = (
    ("test/image_auroc", "I-AUROC"),
    ("test/pixel_auroc", "P-AUROC"),
    ("test/pixel_aupro", "AUPRO"),
    ("test/pixel_ap", "AP_loc"),
    ("test/image_ap", "I-AP"),
    ("test/image_f1max", "I-F1max"),
    ("test/type_accuracy", "type accuracy"),
    ("test/type_macro_f1", "type macro-F1"),
)


def _cli(subcommand: str, config: str, data: str, extra: Sequence[str] = ()) -> DefectCLI:
    return DefectCLI(args=[subcommand, "--config", config, "--data.init_args.reader.init_args.root", data, *extra])


def run_demo(data: str = "data/demo", config: str = "configs/clipmdc/demo.yaml", max_epochs: int | None = None,
             seed: int = 0) -> dict[str, float]:
    """Runs the demo end to end and returns the test metrics.

    Args:
        data: Demo data folder (generated when missing).
        config: Experiment YAML.
        max_epochs: Overrides the config's ``trainer.max_epochs``.
        seed: Seed of the generated data.
    """
    t0 = time.perf_counter()
    generate_demo_dataset(data, seed=seed)
    extra = [] if max_epochs is None else ["--trainer.max_epochs", str(max_epochs)]
    fit = _cli("fit", config, data, extra)
    ckpt_cb = fit.trainer.checkpoint_callback
    ckpt = (ckpt_cb.best_model_path or ckpt_cb.last_model_path) if ckpt_cb is not None else ""
    if not ckpt:
        raise RuntimeError("training wrote no checkpoint; check the ModelCheckpoint callback in " + config)
    fit_seconds = time.perf_counter() - t0
    test = _cli("test", config, data, ["--ckpt_path", ckpt])
    metrics = {k: float(v) for k, v in test.trainer.callback_metrics.items() if k.startswith("test/")}
    pred = _cli("predict", config, data, ["--ckpt_path", ckpt])
    writers = [cb for cb in pred.trainer.callbacks if hasattr(cb, "output_dir")]
    print("\n" + "=" * 60)
    print(f"defectfm demo: CLIP-MDC trained in {fit_seconds / 60:.1f} min, checkpoint {ckpt}")
    print(f"{'metric':<16}{'value':>10}")
    for key, name in REPORTED:
        if key in metrics:
            print(f"{name:<16}{format_metric(metrics[key]):>10}")  # "-": undefined on this data
    for w in writers:
        out = Path(w.output_dir)
        print(f"pictures: {out}/contact_sheet.png, {out}/overlays/, maps in {out}/maps/")
        print(f"explanations: {out}/predictions.jsonl, summary {out}/summary.csv")
    print("=" * 60)
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry of ``make demo``."""
    p = argparse.ArgumentParser(prog="python -m common.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/demo")
    p.add_argument("--config", default="configs/clipmdc/demo.yaml")
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    run_demo(a.data, a.config, a.max_epochs, a.seed)


if __name__ == "__main__":
    main()

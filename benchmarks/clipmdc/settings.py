"""Settings of the CLIP-MDC benchmark: where the arm configs are, regimes, metric keys and labels, and the run's
sizes (:class:`Settings`, full and quick)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ARMS_DIR = REPO / "configs" / "benchmarks"
"""``clipmdc_<regime>.yaml``: each CLIP-MDC arm as a config of the project's CLI."""
DEFAULT_DATA_CONFIG = REPO / "configs" / "data" / "magnetic_tile.yaml"
REGIMES = ("supervised", "weakly_supervised", "normal_only")
ANOMALY_KEYS = ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap")
"""The anomaly metrics of the goal: I-AUROC, P-AUROC, AUPRO, AP_loc."""
EXTRA_KEYS = ("image_ap", "image_f1max")
TYPE_KEYS = ("type_accuracy", "type_macro_f1")
PEER_OF = {"supervised": "supersimplenet", "normal_only": "patchcore"}
"""The peer each regime's goal is judged against."""
PEERS_OF = {"supervised": ("supersimplenet",), "normal_only": ("patchcore", "supersimplenet_unsupervised")}
"""Every peer run beside a regime (the goal peer first)."""
LABELS = {
    "image_auroc": "I-AUROC",
    "pixel_auroc": "P-AUROC",
    "pixel_aupro": "AUPRO",
    "pixel_ap": "AP_loc",
    "image_ap": "I-AP",
    "image_f1max": "I-F1max",
    "type_accuracy": "type acc",
    "type_macro_f1": "type mF1",
}
DISPLAY = {"magnetic_tile": "Magnetic Tile"}
"""Display names of data configs (default: the config's file name)."""
GPU_GOAL_MS = 3.3
LAYOUTS = ("nchw", "channels_last")


@dataclass(frozen=True)
class Settings:
    """What the benchmark sets on top of the arm configs (``None``: the config's value).

    Attributes:
        image_size: Training/test image side.
        max_epochs: Epoch cap of every trained model (CLIP-MDC and SuperSimpleNet); patience comes from the
            arm config's ``EarlyStopping`` and is used for SuperSimpleNet too.
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size.
        per_class: Subsample: at most this many images per (split, class), the first by path (``None``: all).
        coreset_ratio: Coreset fraction of CLIP-MDC's memory and PatchCore's bank.
        latency_size: Image side of the latency section.
        latency_batches: Batch sizes timed.
        latency_rounds: Interleaved timing rounds (best reported).
        latency_iters: Calls per round, per batch size.
        latency_memory_images: Normal images the latency models' memory banks are built from.
    """

    image_size: int | None = None
    max_epochs: int = 15
    batch_size: int | None = None
    eval_batch_size: int | None = None
    per_class: int | None = None
    coreset_ratio: float = 0.01
    latency_size: int = 256
    latency_batches: tuple[int, ...] = (1, 32)
    latency_rounds: int = 5
    latency_iters: dict[int, int] = field(default_factory=lambda: {1: 10, 32: 1})
    latency_memory_images: int = 64

    def record(self) -> dict[str, Any]:
        """The settings as JSON-ready values."""
        out = asdict(self)
        out["latency_iters"] = {str(k): v for k, v in self.latency_iters.items()}
        return out


FULL = Settings(per_class=160, max_epochs=10)
"""The published run: every class cut to 160 images per split (25 min of CPU per data set and regime, see
README), 10 epochs at most."""
QUICK = Settings(
    image_size=96,  # SuperSimpleNet's Perlin noise needs a feature grid >= 17 (image >= 68)
    max_epochs=1,
    batch_size=8,
    eval_batch_size=16,
    per_class=10,
    coreset_ratio=0.1,
    latency_size=64,
    latency_batches=(1, 4),
    latency_rounds=1,
    latency_iters={1: 2, 4: 1},
    latency_memory_images=4,
)


def log(msg: str) -> None:
    print(msg, flush=True)

"""The time box of the GPU check: a global deadline, per-part budgets, each part isolated.

A part is a function ``part(settings, clock, reports) -> dict`` (``reports``: the earlier parts' reports); it checks ``clock.left()`` before each piece of work it
can drop (a variant, a batch size) and records what it skipped. :func:`run_parts` runs the parts in order, each
under ``try/except`` (a failing part is reported with its error and the rest still run), and gives each the
smaller of its budget and what is left of the global deadline.
"""

from __future__ import annotations

import gc
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


class Clock:
    """Seconds left for one part (its budget, capped by the global deadline)."""

    def __init__(self, budget_s: float, deadline: float) -> None:
        self.start = time.perf_counter()
        self.end = min(self.start + budget_s, deadline)

    def left(self) -> float:
        return self.end - time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, seconds: float) -> bool:
        """True when ``seconds`` more work still ends inside the budget."""
        return self.left() > seconds


@dataclass
class Part:
    """One isolated piece of the check."""

    name: str
    run: Callable[[Any, Clock, dict[str, Report]], dict[str, Any]]
    budget_s: float
    description: str = ""


@dataclass
class Report:
    """What a part returned, or how it failed."""

    status: str
    seconds: float
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "seconds": round(self.seconds, 2)}
        if self.error:
            out["error"] = self.error
        return out | self.result


def release_memory() -> None:
    """Frees what a finished (or failed) part left behind, so that the next part starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_parts(parts: Sequence[Part], settings: Any, total_s: float, log: Callable[[str], None] = print,
              min_left_s: float = 5.0, cleanup: Callable[[], None] | None = None) -> dict[str, Report]:
    """Runs ``parts`` in order within ``total_s`` seconds (a part is not started with less than ``min_left_s``
    left), each followed by ``cleanup`` (default :func:`release_memory`); returns one :class:`Report` per part."""
    cleanup = cleanup or release_memory
    deadline = time.perf_counter() + total_s
    reports: dict[str, Report] = {}
    for part in parts:
        left = deadline - time.perf_counter()
        if left < min_left_s:
            reports[part.name] = Report("skipped", 0.0, error=f"global deadline ({total_s:.0f} s) reached")
            log(f"[{part.name}] skipped: global deadline reached")
            continue
        clock = Clock(part.budget_s, deadline)
        log(f"[{part.name}] start (budget {min(part.budget_s, left):.0f} s) {part.description}")
        try:
            result = part.run(settings, clock, reports)
            status = "failed" if result.get("problems") else "partial" if result.get("skipped") else "ok"
            reports[part.name] = Report(status, clock.elapsed(), result,
                                        error="; ".join(result["problems"]) if result.get("problems") else None)
        except Exception as e:  # one failing part must not lose the others' figures
            tb = traceback.format_exc().strip().splitlines()
            reports[part.name] = Report("failed", clock.elapsed(), error=f"{type(e).__name__}: {e}"[:2000])
            reports[part.name].result["traceback"] = tb[-12:]
            log(f"[{part.name}] FAILED: {type(e).__name__}: {str(e)[:300]}")
        finally:
            cleanup()
        log(f"[{part.name}] {reports[part.name].status} in {reports[part.name].seconds:.1f} s")
    return reports


def cuda_timer(device: torch.device) -> Callable[[Callable[[], Any], int], float]:
    """A timer of ``n`` calls of ``fn`` in seconds per call: CUDA events on a GPU, ``perf_counter`` on the CPU."""

    def timed(fn: Callable[[], Any], n: int) -> float:
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            for _ in range(n):
                fn()
            stop.record()
            stop.synchronize()
            return start.elapsed_time(stop) / 1e3 / n
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n

    return timed


def is_oom(e: BaseException) -> bool:
    """Out of device memory (CUDA's error, or the allocator's message on other backends)."""
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()

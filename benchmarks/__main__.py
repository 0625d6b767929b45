"""``python -m benchmarks`` (``make benchmark``): runs every benchmark, each writing its JSON and table."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    """Benchmark module names: every public ``benchmarks/<name>.py`` with a ``main()``, except helper modules
    that declare ``IS_BENCHMARK = False`` (e.g. ``peers.py``, whose ``main()`` is a self-check)."""
    here = Path(__file__).parent
    names = []
    for m in pkgutil.iter_modules([str(here)]):
        if m.name.startswith("_"):
            continue
        try:
            mod = importlib.import_module(f"benchmarks.{m.name}")
        except ImportError:  # listed anyway: running it then reports what is missing
            names.append(m.name)
            continue
        if hasattr(mod, "main") and getattr(mod, "IS_BENCHMARK", True):
            names.append(m.name)
    return sorted(names)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {available()})")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    a = p.parse_args(argv)
    names = a.names or available()
    failed = []
    for name in names:
        print(f"\n=== benchmark: {name} ===", flush=True)
        mod = importlib.import_module(f"benchmarks.{name}")
        try:
            mod.main(["--quick"] if a.quick else [])
        except Exception as e:  # keep going: one broken benchmark must not hide the others' results
            print(f"benchmark {name} failed: {type(e).__name__}: {e}", file=sys.stderr)
            failed.append(name)
    if failed:
        print(f"failed benchmarks: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

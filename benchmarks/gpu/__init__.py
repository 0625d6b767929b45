"""The GPU check (``make gpu-check``, ``python -m benchmarks.gpu``) and its wheels (``make gpu-wheels``).

Not one of ``make benchmark``'s CPU benchmarks (``IS_BENCHMARK = False``): it runs on a lent GPU machine, or
on the CPU with ``--dry`` (tiny presets, every code path, in the test suite).
"""

IS_BENCHMARK = False

"""Per-sample seeds that do not depend on which dataloader worker handles a sample.

A sample's synthetic anomaly is a pure function of its seed. :func:`sample_seed` derives that seed from
``(base_seed, epoch, index)`` with SplitMix64 mixing, so the same run gives the same anomalies whatever the
number of workers, the batch composition or the device, and every epoch gets fresh ones.
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*values: int) -> int:
    """Hashes integers into one well-mixed 63-bit seed (order matters).

    Args:
        *values: Integers (any sign, any size; taken modulo 2^64).

    Returns:
        A seed in ``[0, 2^63)``, valid for ``torch.Generator.manual_seed`` and numpy.
    """
    h = 0x243F6A8885A308D3
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h >> 1


def sample_seed(base_seed: int, index: int, epoch: int = 0) -> int:
    """The seed of sample ``index`` in ``epoch`` of a run seeded with ``base_seed``.

    Args:
        base_seed: The run's seed.
        index: The sample's index in the (map-style) dataset.
        epoch: The epoch, so each epoch draws different anomalies.

    Returns:
        A seed in ``[0, 2^63)``.

    Example:
        >>> sample_seed(0, 5) == sample_seed(0, 5)
        True
        >>> sample_seed(0, 5) != sample_seed(0, 5, epoch=1)
        True
    """
    return mix_seed(base_seed, epoch, index)

"""Synthetic anomalies: DRAEM-style Perlin-noise anomaly generation (CPU workers or batched on GPU).

Public API:
    * :class:`PerlinAnomalyGenerator`, :class:`SynthesisResult` (``generator.py``)
    * :class:`PerlinAnomalyDataset` (``dataset.py``), :func:`sample_seed` (``seeding.py``)
    * :func:`perlin_noise_2d`, :func:`perlin_noise_batch`, :func:`lattice_geometry` (``perlin.py``)
    * :class:`TextureAugment` (``augment.py``), :class:`TextureBank` (``textures.py``)
"""

from common.synthesis.augment import TextureAugment
from common.synthesis.dataset import PerlinAnomalyDataset
from common.synthesis.generator import PerlinAnomalyGenerator, SynthesisResult
from common.synthesis.perlin import LatticeGeometry, lattice_geometry, perlin_noise_2d, perlin_noise_batch
from common.synthesis.seeding import mix_seed, sample_seed
from common.synthesis.textures import TextureBank

__all__ = [
    "LatticeGeometry",
    "PerlinAnomalyDataset",
    "PerlinAnomalyGenerator",
    "SynthesisResult",
    "TextureAugment",
    "TextureBank",
    "lattice_geometry",
    "mix_seed",
    "perlin_noise_2d",
    "perlin_noise_batch",
    "sample_seed",
]

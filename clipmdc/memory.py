"""Normal-reference memory: nearest-neighbour distance of patch features to normal training patches.

Text prompts tell CLIP-MDC what a defect *is called*; a memory of normal patches tells it what this product
*looks like* when it is fine. CLIP-based anomaly detectors add such a reference memory in their few-normal-shot
settings (WinCLIP+, APRIL-GAN, AnomalyCLIP); PatchCore is the memory alone. Here the distance map is one more
evidence channel of the fusion decoder (and a direct additive term of the anomaly logit), so the decoder
learns how far to trust it, e.g. from Perlin anomalies in the normal-only regime.

The features are the frozen image encoder's patch tokens of the chosen levels, locally averaged (3x3, as
PatchCore's neighbourhood aggregation), brought to the finest chosen grid and concatenated. The bank is built
once from the normal training images (:meth:`NormalMemory.build`), subsampled by greedy k-center coreset
selection, and saved with the checkpoint (it is data of the trained model, unlike the frozen weights).

Leave-one-image-out: every bank entry remembers the image it came from (the batch's ``sample_id``,
:attr:`common.data.types.DefectBatch.sample_id`). During training a sample's own entries are masked out, so training images see the same kind of
distances as unseen test images instead of exact zeros.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


class NoNormalImagesError(ValueError):
    """:meth:`NormalMemory.build` got no normal image to build the bank from."""


def greedy_coreset(
    features: torch.Tensor, size: int, projection_dim: int | None = 128, seed: int = 0, progress: bool = False
) -> torch.Tensor:
    """Indices of a greedy k-center coreset (Sener & Savarese; PatchCore's subsampling).

    Written here because the algorithm is a dozen lines and anomalib (which has one) is a heavy optional
    dependency. Distances are taken on a seeded Gaussian random projection (Johnson-Lindenstrauss), as
    PatchCore does, to cut the cost.

    Args:
        features: ``(N, C)`` points.
        size: Number of points to keep (``>= N`` keeps all).
        projection_dim: Projection width (``None`` or ``>= C``: no projection).
        seed: Seed of the projection and of the first center.
        progress: Show a progress bar (one step per selected point: minutes on large banks).

    Returns:
        ``(size,)`` int64 indices into ``features``, in selection order.
    """
    n = features.shape[0]
    if size >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    x = features.float()
    if projection_dim is not None and projection_dim < x.shape[1]:
        proj = torch.randn(x.shape[1], projection_dim, generator=g) / projection_dim**0.5
        x = x @ proj.to(x.device)  # (N, P)
    sq = x.pow(2).sum(1)  # (N,)
    selected = torch.empty(size, dtype=torch.long)
    idx = int(torch.randint(n, (1,), generator=g))
    min_d2 = torch.full((n,), float("inf"), device=x.device)
    for i in tqdm(range(size), desc="memory bank: coreset", disable=not progress, leave=False, mininterval=0.5):
        selected[i] = idx
        d2 = sq - 2.0 * (x @ x[idx]) + sq[idx]  # (N,) squared distance to the new center: one mat-vec
        min_d2 = torch.minimum(min_d2, d2)  # (N,) squared distance to the nearest center
        min_d2[idx] = -1.0  # chosen: never again (guards against rounding in the expanded form)
        idx = int(min_d2.argmax())
    return selected


def _min_distance(query: torch.Tensor, bank: torch.Tensor, exclude: torch.Tensor | None, owner: torch.Tensor) -> torch.Tensor:
    """``(B, N, C)`` queries -> ``(B, N)`` Euclidean distance to the nearest bank row not owned by ``exclude``."""
    d2 = (
        query.pow(2).sum(-1, keepdim=True)  # (B, N, 1)
        - 2.0 * query @ bank.T  # (B, N, M)
        + bank.pow(2).sum(-1)  # (M,)
    )
    if exclude is not None:
        own = (owner[None, :] == exclude[:, None]).unsqueeze(1)  # (B, 1, M)
        # A sample owning the whole bank (tiny data) keeps its own entries rather than getting an infinite distance.
        d2 = torch.where(own.all(-1, keepdim=True), d2, d2.masked_fill(own, float("inf")))  # (B, N, M)
    return d2.min(-1).values.clamp_min(0.0).sqrt()


class NormalMemory(nn.Module):
    """Memory bank of normal patch features; its forward gives the normalised nearest-neighbour distance map.

    Args:
        levels: Indices into the image encoder's token list whose maps form the patch feature (the first one
            sets the grid).
        coreset_ratio: Fraction of the collected patches kept (greedy k-center).
        max_bank: Upper bound on the bank size (``None``: no bound).
        pool: Local average-pooling window applied to every level (1: none).
        projection_dim: Random-projection width used only for the coreset selection.
        seed: Seed of the coreset selection and of the normaliser's sample.
    """

    def __init__(
        self,
        levels: Sequence[int] = (0, 1),
        coreset_ratio: float = 0.01,
        max_bank: int | None = 50_000,
        pool: int = 3,
        projection_dim: int | None = 128,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < coreset_ratio <= 1.0:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {coreset_ratio}")
        self.levels = [int(i) for i in levels]
        self.coreset_ratio = coreset_ratio
        self.max_bank = max_bank
        self.pool = pool
        self.projection_dim = projection_dim
        self.seed = seed
        # Persistent: the bank is part of the trained model (sizes adapt on load, see _load_from_state_dict).
        self.register_buffer("bank", torch.zeros(0, 0))  # (M, C)
        self.register_buffer("owner", torch.zeros(0, dtype=torch.long))  # (M,) image ids
        self.register_buffer("scale", torch.ones(()))  # mean leave-one-out distance of normal patches

    @property
    def ready(self) -> bool:
        """Whether the bank has been built (or loaded)."""
        return self.bank.shape[0] > 0

    def features(self, tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        """Patch features ``(B, C, h, w)`` from the encoder's token maps (grid of ``levels[0]``)."""
        maps = [tokens[i].float() for i in self.levels]
        size = tuple(maps[0].shape[-2:])
        out = []
        for m in maps:
            if self.pool > 1:
                m = F.avg_pool2d(m, self.pool, stride=1, padding=self.pool // 2, count_include_pad=False)
            if tuple(m.shape[-2:]) != size:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            out.append(m)
        return torch.cat(out, 1)  # (B, C, h, w)

    def forward(self, tokens: Sequence[torch.Tensor], exclude: torch.Tensor | None = None,
                object_id: torch.Tensor | None = None) -> torch.Tensor:
        """Distance map.

        Args:
            tokens: The frozen image encoder's token maps ``[(B, C_l, h_l, w_l)]``.
            exclude: ``(B,)`` image ids (the batch's ``sample_id``) whose own bank entries are ignored (training);
                ``None`` at test time.
            object_id: Ignored: one bank serves every object (:class:`~clipmdc.object_memory.ObjectMemory` keeps
                one per object).

        Returns:
            ``(B, 1, h, w)`` nearest-neighbour distance divided by :attr:`scale` (about 1 on normal patches);
            zeros while the bank is empty.
        """
        feats = self.features(tokens)  # (B, C, h, w)
        B, C, h, w = feats.shape
        if not self.ready:
            return feats.new_zeros(B, 1, h, w)
        if self.bank.shape[1] != C:
            raise ValueError(f"memory bank has {self.bank.shape[1]}-d entries but the encoder gives {C}-d features")
        query = feats.flatten(2).transpose(1, 2)  # (B, h*w, C)
        if exclude is not None:
            exclude = exclude.to(self.owner.device)
        d = _min_distance(query, self.bank.to(query.dtype), exclude, self.owner)  # (B, h*w)
        return (d / self.scale).reshape(B, 1, h, w)

    @torch.no_grad()
    def build(
        self, batches: Iterable[tuple[Sequence[torch.Tensor], torch.Tensor]], sample: int = 8192, progress: bool = False
    ) -> dict[str, float]:
        """Fills the bank from normal images.

        Args:
            batches: ``(tokens, ids[, object ids])``: the encoder's token maps of a batch of normal images and
                their ``sample_id`` s (object ids, when given, are not used: one bank for every object).
            sample: Patches used to estimate :attr:`scale` (their leave-one-image-out nearest-neighbour
                distance, averaged).
            progress: Show a progress bar over the coreset selection.

        Returns:
            ``{"images", "patches", "bank"}`` counts and ``scale``.

        Raises:
            NoNormalImagesError: No patches were given (no normal training image).
        """
        feats, owners = [], []
        for tokens, ids, *_ in batches:  # (tokens, ids[, object ids])
            f = self.features(tokens)  # (B, C, h, w)
            hw = f.shape[-2] * f.shape[-1]
            feats.append(f.flatten(2).transpose(1, 2).reshape(-1, f.shape[1]).cpu())  # (B*h*w, C)
            owners.append(ids.cpu().repeat_interleave(hw))
        if not feats:
            raise NoNormalImagesError("the normal-reference memory needs normal training images, and none were given")
        all_feats, all_owners = torch.cat(feats), torch.cat(owners)  # (N, C), (N,)
        n = all_feats.shape[0]
        size = max(1, round(self.coreset_ratio * n))
        if self.max_bank is not None:
            size = min(size, self.max_bank)
        keep = greedy_coreset(all_feats, size, self.projection_dim, self.seed, progress=progress)
        bank, owner = all_feats[keep], all_owners[keep]
        g = torch.Generator().manual_seed(self.seed + 1)
        probe = torch.randperm(n, generator=g)[: min(sample, n)]
        dists = torch.cat(
            [
                _min_distance(all_feats[chunk][:, None], bank, all_owners[chunk], owner)[:, 0]
                for chunk in probe.split(1024)
            ]
        )
        finite = dists[torch.isfinite(dists)]
        scale = float(finite.mean()) if finite.numel() else 1.0
        device = self.scale.device
        self.bank = bank.to(device)
        self.owner = owner.to(device)
        self.scale = torch.tensor(max(scale, 1e-6), device=device)
        return {"images": int(all_owners.unique().numel()), "patches": n, "bank": size, "scale": float(self.scale)}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        # The bank's size is data-dependent: take the checkpoint's shapes instead of failing on a mismatch.
        for name in ("bank", "owner"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

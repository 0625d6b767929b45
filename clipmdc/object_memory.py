"""One normal-reference memory per object: a generalist CLIP-MDC serving many products keeps each product's own
picture of "fine" (issue 16).

A single :class:`~clipmdc.memory.NormalMemory` over several products answers "how far is this patch from any
normal patch of any product": a crack on a solar cell may sit close to the texture of a normal road and look
fine. :class:`ObjectMemory` keeps the entries of every object apart (a tag per bank entry) and measures each
sample only against its own object's entries, normalised by that object's own scale (mean leave-one-image-out
distance of its normal patches), so a distance of about 1 means "as normal as this product's normal patches" for
every product. The coreset is selected per object with the same ratio, so a large domain cannot crowd a small
one out of the bank.

A new product is one more object: :meth:`ObjectMemory.add_object` builds its entries from its good images with no
gradient step (``defectfm newline``, :mod:`clipmdc.newline`). A sample whose object has no entries (an object the
model was never shown and no memory was built for) is measured against every object's entries with the global
scale: the plain memory's answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from clipmdc.memory import NoNormalImagesError, NormalMemory, _min_distance, greedy_coreset


class ObjectMemory(NormalMemory):
    """Memory bank of normal patch features kept per object (same arguments as
    :class:`~clipmdc.memory.NormalMemory`; ``coreset_ratio`` and ``max_bank`` apply to each object)."""

    def __init__(self, levels: Sequence[int] = (0, 1), coreset_ratio: float = 0.01, max_bank: int | None = 50_000,
                 pool: int = 3, projection_dim: int | None = 128, seed: int = 0) -> None:
        super().__init__(levels, coreset_ratio, max_bank, pool, projection_dim, seed)
        self.register_buffer("bank_object", torch.zeros(0, dtype=torch.long))  # (M,) object id of each entry
        self.register_buffer("object_scale", torch.zeros(0))  # (O,) per-object scale (0: no entries)

    def objects(self) -> list[int]:
        """Object ids that have entries."""
        return [int(o) for o in self.bank_object.unique().tolist()]

    def forward(self, tokens: Sequence[torch.Tensor], exclude: torch.Tensor | None = None,
                object_id: torch.Tensor | None = None) -> torch.Tensor:
        """Distance map, each sample against its own object's entries.

        Args:
            tokens: The frozen image encoder's token maps ``[(B, C_l, h_l, w_l)]``.
            exclude: ``(B,)`` image ids whose own entries are ignored (training); ``None`` at test time.
            object_id: ``(B,)`` object ids (``-1`` or an object without entries: every object's entries, global
                scale); ``None``: every sample against every entry.

        Returns:
            ``(B, 1, h, w)`` nearest-neighbour distance divided by the object's scale.
        """
        if object_id is None or not self.ready:
            return super().forward(tokens, exclude)
        feats = self.features(tokens)  # (B, C, h, w)
        B, C, h, w = feats.shape
        if self.bank.shape[1] != C:
            raise ValueError(f"memory bank has {self.bank.shape[1]}-d entries but the encoder gives {C}-d features")
        query = feats.flatten(2).transpose(1, 2)  # (B, h*w, C)
        object_id = object_id.to(self.bank_object.device)
        if exclude is not None:
            exclude = exclude.to(self.owner.device)
        out = query.new_empty(B, h * w)
        known = set(self.objects())
        for obj in object_id.unique().tolist():
            rows = (object_id == obj).nonzero().squeeze(1)  # samples of this object
            ex = exclude[rows] if exclude is not None else None
            if obj in known:
                keep = self.bank_object == obj
                d = _min_distance(query[rows], self.bank[keep].to(query.dtype), ex, self.owner[keep])
                out[rows] = d / self.object_scale[obj]
            else:
                d = _min_distance(query[rows], self.bank.to(query.dtype), ex, self.owner)
                out[rows] = d / self.scale
        return out.reshape(B, 1, h, w)

    @torch.no_grad()
    def build(self, batches: Iterable[tuple], sample: int = 8192, progress: bool = False) -> dict[str, float]:
        """Fills the bank from normal images, object by object.

        Args:
            batches: ``(tokens, image ids, object ids)`` triples of normal images (object ids ``(B,)``; a pair
                without object ids counts as object 0).
            sample: Patches per object used to estimate its scale.
            progress: Progress bars over the coreset selections.

        Returns:
            ``{"images", "patches", "bank", "objects"}`` counts and the global ``scale``.

        Raises:
            NoNormalImagesError: No patches were given.
        """
        per_object: dict[int, list[tuple[list[torch.Tensor], torch.Tensor]]] = {}
        for batch in batches:
            tokens, ids = batch[0], batch[1]
            objects = batch[2] if len(batch) > 2 else torch.zeros_like(ids)
            for obj in objects.unique().tolist():
                sel = objects == obj
                per_object.setdefault(int(obj), []).append(([t[sel].cpu() for t in tokens], ids[sel].cpu()))
        if not per_object or min(per_object) < 0:
            unknown = " (normal images of an object the model does not know)" if per_object else ""
            raise NoNormalImagesError(f"the normal-reference memory needs normal training images{unknown}, and "
                                      "none were given")
        self._reset()
        totals = {"images": 0, "patches": 0, "bank": 0}
        for obj in sorted(per_object):
            info = self.add_object(obj, per_object[obj], sample=sample, progress=progress)
            for k in totals:
                totals[k] += info[k]
        return {**totals, "objects": len(per_object), "scale": float(self.scale)}

    def _reset(self) -> None:
        device = self.scale.device
        self.bank = torch.zeros(0, 0, device=device)
        self.owner = torch.zeros(0, dtype=torch.long, device=device)
        self.bank_object = torch.zeros(0, dtype=torch.long, device=device)
        self.object_scale = torch.zeros(0, device=device)

    @torch.no_grad()
    def add_object(self, object_id: int, batches: Iterable[tuple], sample: int = 8192,
                   progress: bool = False) -> dict[str, float]:
        """Builds (or rebuilds) one object's entries from its normal images; other objects keep theirs.

        Args:
            object_id: The object's id (index into the model's object names).
            batches: ``(tokens, image ids[, ...])`` of the object's normal images.
            sample: Patches used to estimate the object's scale.
            progress: Progress bar over the coreset selection.

        Returns:
            ``{"images", "patches", "bank"}`` counts and the object's ``scale``.
        """
        single = NormalMemory(self.levels, self.coreset_ratio, self.max_bank, self.pool, self.projection_dim,
                              self.seed + object_id)
        info = single.build(((b[0], b[1]) for b in batches), sample=sample, progress=progress)
        device = self.scale.device
        keep = self.bank_object != object_id
        dim = single.bank.shape[1]
        old_bank = self.bank[keep] if self.bank.numel() else torch.zeros(0, dim, device=device)
        self.bank = torch.cat([old_bank, single.bank.to(device)])
        self.owner = torch.cat([self.owner[keep], single.owner.to(device)])
        self.bank_object = torch.cat([self.bank_object[keep],
                                      torch.full((single.bank.shape[0],), object_id, dtype=torch.long, device=device)])
        scales = torch.zeros(max(object_id + 1, self.object_scale.numel()), device=device)
        scales[: self.object_scale.numel()] = self.object_scale
        scales[object_id] = single.scale.to(device)
        self.object_scale = scales
        present = scales[scales > 0]
        self.scale = present.mean()  # for samples of objects without entries
        return info

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        for name in ("bank_object", "object_scale"):  # data-dependent sizes, as the bank's
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


__all__ = ["NoNormalImagesError", "ObjectMemory", "greedy_coreset"]

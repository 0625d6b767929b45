"""Model outputs in every resize mode (:mod:`common.data.tiling`), the same for PyTorch and ONNX.

A model is seen as a function of a batch of input-size images returning probabilities: ``anomaly_prob``
``(n, 1, h, w)``, ``image_prob`` ``(n,)``, ``type_prob`` ``(n, K+1)`` (index 0 = normal), and any further
per-image tensors (e.g. an embedding). :func:`mode_outputs` turns them into the outputs of the images of a batch:

* ``stretch``: the function's outputs as they are;
* ``letterbox`` (the batch has ``content_box`` es): the map as it is, but the image score is the map's maximum
  over the image's pixels (the padding is never scored: the model's own image head pools the whole input);
* ``tile`` (the batch has a :class:`~common.data.tiling.TileSpec`): one whole image, cut into overlapping tiles
  run ``batch_size`` at a time, the tile maps stitched with overlap blending; the image score is the stitched
  map's maximum, the other per-image outputs those of the tile holding it.

In the last two modes the defect-type probabilities keep the model's split of the defect classes given
"anomalous" and take the image score as ``p(anomalous)``: ``[1 - s, s * p_k / sum_j p_j]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from common.data.tiling import TileGrid, TileSpec, crop_content, run_tiles
from common.data.types import DefectBatch

Outputs = dict[str, torch.Tensor]


def rescored_types(type_prob: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """``(B, K+1)`` type probabilities with ``p(anomalous) = score`` ``(B,)`` and the defect classes' split kept."""
    defects = type_prob[:, 1:]
    cond = defects / defects.sum(1, keepdim=True).clamp_min(1e-12)
    return torch.cat([(1 - score)[:, None], score[:, None] * cond], 1)


def map_score(anomaly_prob: torch.Tensor, content_box: torch.Tensor | None) -> torch.Tensor:
    """``(B,)`` the maximum of ``(B, 1, H, W)`` maps over each image's content box (all pixels when ``None``)."""
    if content_box is None:
        return anomaly_prob.flatten(1).amax(1)
    return torch.stack([crop_content(m, b).amax() for m, b in zip(anomaly_prob, content_box, strict=True)])


def tiled_outputs(fn: Callable[[torch.Tensor], Outputs], image: torch.Tensor, spec: TileSpec,
                  on_tiles: Callable[[slice, TileGrid, Outputs], None] | None = None) -> Outputs:
    """The outputs of one whole image ``(3, H, W)`` in ``tile`` mode (module docstring).

    Args:
        fn: The model as a function of ``(n, 3, th, tw)`` tiles.
        image: The image at the working scale.
        spec: Tile size, overlap, tiles per call.
        on_tiles: Called with ``(tile slice, grid, outputs)`` after each call (e.g. to add held-out losses).

    Returns:
        Outputs of a batch of one image; ``anomaly_prob`` ``(1, 1, H, W)`` stitched.
    """
    grid = spec.grid(image.shape[-2], image.shape[-1])
    tiles = grid.cut(image)  # (N, 3, th, tw)
    parts = []
    for i, out in enumerate(run_tiles(fn, tiles, spec.batch_size)):
        if on_tiles is not None:
            on_tiles(slice(i * spec.batch_size, i * spec.batch_size + len(out["image_prob"])), grid, out)
        parts.append(out)
    outs = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    stitched = grid.stitch(outs["anomaly_prob"])[None]  # (1, 1, H, W)
    peaks = outs["anomaly_prob"].flatten(1).amax(1)  # (N,)
    best = int(torch.argmax(peaks))
    score = stitched.flatten(1).amax(1)  # (1,)
    result = {k: v[best : best + 1] for k, v in outs.items() if k not in ("anomaly_prob", "image_prob", "type_prob")}
    result.update(anomaly_prob=stitched, image_prob=score.to(outs["image_prob"].dtype),
                  type_prob=rescored_types(outs["type_prob"][best : best + 1], score))
    return result


def mode_outputs(fn: Callable[[torch.Tensor], Outputs], image: torch.Tensor, content_box: torch.Tensor | None = None,
                 tiling: TileSpec | None = None,
                 on_tiles: Callable[[slice, TileGrid, Outputs], None] | None = None) -> Outputs:
    """The outputs of a batch ``(B, 3, H, W)`` in its resize mode (module docstring); ``tile`` mode takes
    batches of one image."""
    if tiling is not None:
        if image.shape[0] != 1:
            raise ValueError(f"tile mode evaluates one whole image per batch, got {image.shape[0]}")
        return tiled_outputs(fn, image[0], tiling, on_tiles)
    out = dict(fn(image))
    if content_box is not None:  # letterbox: the padding never reaches the image score
        score = map_score(out["anomaly_prob"], content_box)
        out["image_prob"], out["type_prob"] = score.to(out["image_prob"].dtype), rescored_types(out["type_prob"], score)
    return out


def tile_batch(batch: DefectBatch, grid: TileGrid, tiles: slice) -> DefectBatch:
    """The tiles ``tiles`` of the one-image ``batch`` as a batch of their own (labels from each tile's mask when
    the image has one: a tile without defect pixels is normal), e.g. for held-out losses in ``tile`` mode."""
    n = len(grid.positions[tiles])
    sub = TileGrid(grid.height, grid.width, grid.tile, grid.positions[tiles], grid.overlap)
    image = sub.cut(batch.image[0])
    mask = sub.cut(batch.mask[0])
    class_mask = sub.cut(batch.class_mask[0][None].float())[:, 0].round().long()
    defect = mask.flatten(1).amax(1) > 0  # (n,)
    known = bool(batch.has_mask[0])
    if known:
        label = defect.long()
        type_id = torch.where(defect, batch.defect_type_id[0], torch.zeros_like(batch.defect_type_id[0]))
    else:
        label, type_id = batch.label[:1].expand(n), batch.defect_type_id[:1].expand(n)
    return DefectBatch(
        image=image, mask=mask, has_mask=batch.has_mask[:1].expand(n), label=label.long(),
        defect_type_id=type_id.long(), class_mask=class_mask, object_id=batch.object_id[:1].expand(n),
        defect_type=batch.defect_type[:1] * n, object_name=batch.object_name[:1] * n, caption=batch.caption[:1] * n,
        path=batch.path[:1] * n, sample_id=None if batch.sample_id is None else batch.sample_id[:1].expand(n),
    )

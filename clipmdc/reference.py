"""Building CLIP-MDC's normal-reference memory from the normal training images (one pass of the frozen encoder),
for :meth:`clipmdc.module.CLIPMDCModule.on_train_start`.

The images come from the DataModule's un-augmented ``reference_dataloader`` when it has one (augmented patches,
e.g. brightness-jittered, would make defects look normal; in ``tile`` mode it serves every tile of the normal
images, so the memory works per tile), else from the training batches. Each bank entry is owned by its image's
:attr:`~common.data.types.DefectBatch.sample_id` (leave-one-image-out during training).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import lightning as L
import torch

from clipmdc.memory import NoNormalImagesError
from common.data.errors import DataError


def build_memory(module: L.LightningModule) -> None:
    """Fills ``module.model.memory`` unless it is absent or ready. When training is limited (``fast_dev_run``,
    ``limit_train_batches``) the bank is built from as many normal images as those batches hold, so a debug run
    stays quick (a line says so).

    Raises:
        DataError: The training data holds no normal image (the message says what to do).
    """
    memory = module.model.memory
    if memory is None or memory.ready:
        return
    trainer = module.trainer
    quiet = not trainer.is_global_zero or trainer.progress_bar_callback is None
    limit = memory_image_limit(trainer)
    datamodule = getattr(trainer, "datamodule", None)
    if hasattr(datamodule, "reference_dataloader"):  # un-augmented, whole training set on every rank
        loader_fn = datamodule.reference_dataloader
        capped = limit is not None and "max_images" in inspect.signature(loader_fn).parameters
        loader = loader_fn(max_images=limit) if capped else loader_fn()
        tokens = normal_tokens(module, loader, gather=False, limit=None if capped else limit, quiet=quiet)
    else:  # augmented training batches; each DDP rank has its shard, so gather
        tokens = normal_tokens(module, trainer.train_dataloader, gather=trainer.world_size > 1, limit=limit,
                               quiet=quiet)
    if limit is not None:
        module.print(f"normal-reference memory: built from at most {limit} normal images, because training is "
                     "limited (fast_dev_run / limit_train_batches); a full run uses every normal training image")
    try:
        info = memory.build(tokens, progress=not quiet)
    except NoNormalImagesError as e:
        raise DataError(
            "the normal-reference memory (model.init_args.model.init_args.memory) is built from normal "
            "(defect-free) training images, and the training split has none: add defect-free images (e.g. a "
            "good/ folder), or train without the memory (--model.init_args.model.init_args.memory null)"
        ) from e
    module.print(
        f"normal-reference memory: {info['bank']} of {info['patches']} patches from {info['images']} normal "
        f"training images (scale {info['scale']:.4g})"
    )


def memory_image_limit(trainer: L.Trainer) -> int | None:
    """At most this many normal images for the memory when training is limited to a number of batches
    (``fast_dev_run``, an int or fractional ``limit_train_batches``): those batches' images; else ``None``."""
    limit = trainer.limit_train_batches
    if not (isinstance(limit, int) or float(limit) < 1.0) or not math.isfinite(trainer.num_training_batches):
        return None
    batch_size = getattr(trainer.train_dataloader, "batch_size", None) or 1
    return max(1, int(trainer.num_training_batches) * int(batch_size))


@torch.no_grad()
def normal_tokens(module: L.LightningModule, loader: Any, gather: bool, limit: int | None = None,
                  quiet: bool = False) -> Any:
    """Yields ``(tokens, sample ids, object ids)`` of the normal images (tiles) of one pass over ``loader`` (with
    ``gather``, all DDP ranks' images, so every rank builds the same bank), stopping after ``limit`` items."""
    from tqdm.auto import tqdm

    seen = 0
    trainer = module.trainer
    for batch in tqdm(loader, desc="memory bank: normal images", leave=False, disable=quiet):
        if limit is not None and seen >= limit:
            break
        batch = batch.to(module.device)
        normal = batch.label == 0  # (B,)
        tokens = module.model.image_encoder(batch.image).tokens
        ids, objects = module._sample_ids(batch), module._object_ids(batch)
        tokens, ids, objects = [t[normal] for t in tokens], ids[normal], objects[normal]
        if gather:  # ragged across ranks: gather as objects
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, ([t.cpu() for t in tokens], ids.cpu(), objects.cpu()))
            tokens = [torch.cat([g[0][i] for g in gathered]) for i in range(len(tokens))]
            ids, objects = torch.cat([g[1] for g in gathered]), torch.cat([g[2] for g in gathered])
        if limit is not None and seen + len(ids) > limit:
            tokens, ids, objects = [t[: limit - seen] for t in tokens], ids[: limit - seen], objects[: limit - seen]
        seen += len(ids)
        if len(ids):
            yield tokens, ids, objects

"""One normal memory per object (issue 16): each sample is measured against its own object's normal patches,
normalised by that object's scale; a new object is added without touching the others; checkpoints round-trip;
``lightning fit`` builds one bank per object of the data."""

from __future__ import annotations

import dataclasses
import zlib

import torch
from torch.utils.data import DataLoader

from clipmdc.memory import NormalMemory
from clipmdc.module import CLIPMDCModule
from clipmdc.object_memory import ObjectMemory
from clipmdc.presets import tiny
from tests.clipmdc.helpers import make_batch
from tests.clipmdc.test_module import BatchData, _trainer


def image_ids(names: list[str]) -> torch.Tensor:
    """Distinct ``(B,)`` int64 ids for named test images (a batch's ``sample_id`` in real runs)."""
    return torch.tensor([zlib.crc32(n.encode()) for n in names], dtype=torch.long)


def _object_tokens(offset: float, n: int, seed: int) -> list[torch.Tensor]:
    """``n`` images of one object: 4-d features around ``offset``, 5x5 patches."""
    g = torch.Generator().manual_seed(seed)
    return [offset + 0.1 * torch.randn(n, 4, 5, 5, generator=g)]


def _built() -> tuple[ObjectMemory, list[torch.Tensor], list[torch.Tensor]]:
    a, b = _object_tokens(0.0, 3, 0), _object_tokens(5.0, 3, 1)
    memory = ObjectMemory(levels=(0,), coreset_ratio=1.0, pool=1)
    info = memory.build([(a, image_ids(["a0", "a1", "a2"]), torch.zeros(3, dtype=torch.long)),
                         (b, image_ids(["b0", "b1", "b2"]), torch.ones(3, dtype=torch.long))])
    assert info == {**info, "images": 6, "patches": 150, "bank": 150, "objects": 2}
    return memory, a, b


def test_each_object_is_measured_against_its_own_normals() -> None:
    memory, a, b = _built()
    assert memory.objects() == [0, 1] and memory.object_scale.shape == (2,)
    a_new, b_new = _object_tokens(0.0, 2, 2), _object_tokens(5.0, 2, 3)
    # A patch normal for object 1 is far from object 0's normals: per object it is an anomaly, one bank hides it.
    as_a = memory(b_new, object_id=torch.zeros(2, dtype=torch.long))
    as_b = memory(b_new, object_id=torch.ones(2, dtype=torch.long))
    pooled = memory(b_new)  # no object ids: every entry, the plain memory's answer
    assert float(as_a.min()) > 10 * float(as_b.max())
    assert float(pooled.max() * memory.scale) < 1.0
    # Each object's scale makes its own normal patches score about 1 (leave-one-image-out, as in training).
    for tokens, obj, names in ((a, 0, ["a0", "a1", "a2"]), (b, 1, ["b0", "b1", "b2"])):
        loo = memory(tokens, exclude=image_ids(names), object_id=torch.full((3,), obj))
        assert abs(float(loo.mean()) - 1.0) < 1e-3
    # Mixed batches: every sample against its own object.
    mixed = memory([torch.cat([a_new[0], b_new[0]])], object_id=torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(mixed[:2], memory(a_new, object_id=torch.zeros(2, dtype=torch.long)))
    torch.testing.assert_close(mixed[2:], as_b)
    # An object without entries: every object's entries with the global scale.
    unknown = memory(b_new, object_id=torch.full((2,), 7))
    torch.testing.assert_close(unknown * memory.scale, pooled * memory.scale)


def test_adding_an_object_leaves_the_others_and_round_trips() -> None:
    memory, a, b = _built()
    before = memory(a, object_id=torch.zeros(3, dtype=torch.long))
    c = _object_tokens(-5.0, 3, 4)
    memory.add_object(2, [(c, image_ids(["c0", "c1", "c2"]))])
    assert memory.objects() == [0, 1, 2]
    torch.testing.assert_close(memory(a, object_id=torch.zeros(3, dtype=torch.long)), before)
    assert float(memory(c, object_id=torch.full((3,), 2)).max()) < 0.2  # its own images are its bank (vs ~1)
    fresh = ObjectMemory(levels=(0,), pool=1)
    fresh.load_state_dict(memory.state_dict())
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in memory.state_dict().items())
    torch.testing.assert_close(fresh(c, object_id=torch.full((3,), 2)), memory(c, object_id=torch.full((3,), 2)))
    # Rebuilding an object replaces its entries only.
    memory.add_object(1, [(_object_tokens(9.0, 2, 5), image_ids(["d0", "d1"]))])
    assert int((memory.bank_object == 1).sum()) == 50
    torch.testing.assert_close(memory(a, object_id=torch.zeros(3, dtype=torch.long)), before)


def test_plain_memory_ignores_object_ids_and_accepts_triples() -> None:
    g = torch.Generator().manual_seed(0)
    tokens = [torch.randn(3, 4, 5, 5, generator=g)]
    plain = NormalMemory(levels=(0,), coreset_ratio=1.0, pool=1)
    plain.build([(tokens, image_ids(["a", "b", "c"]), torch.tensor([0, 1, 1]))])
    torch.testing.assert_close(plain(tokens, object_id=torch.tensor([0, 1, 1])), plain(tokens))


class TwoObjects(BatchData):
    object_names = ["bottle", "cable"]

    def _loader(self) -> DataLoader:
        batches = []
        for i in range(2):
            batch = make_batch(4, 32, seed=i)
            names = ["bottle", "bottle", "cable", "cable"]
            batches.append(dataclasses.replace(batch, object_name=names, path=[f"{i}_{p}" for p in batch.path],
                                               sample_id=torch.arange(4) + 4 * i))
        return DataLoader(batches, batch_size=None)

    train_dataloader = val_dataloader = test_dataloader = predict_dataloader = _loader


def test_fit_builds_one_bank_per_object_of_the_data(tmp_path) -> None:
    module = CLIPMDCModule(tiny(per_object_prompts=True, memory=ObjectMemory(coreset_ratio=1.0)))
    _trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(module, datamodule=TwoObjects())
    memory = module.model.memory
    assert module.model.object_names == ["bottle", "cable"]
    # normal images (even indices of make_batch) are the 1st of each object pair: sample 0 -> bottle, 2 -> cable
    assert memory.objects() == [0, 1]
    owners = {obj: set(memory.owner[memory.bank_object == obj].tolist()) for obj in (0, 1)}
    assert owners == {0: {0, 4}, 1: {2, 6}}


def test_onnx_export_of_one_object_carries_its_own_memory(tmp_path) -> None:
    import numpy as np

    from clipmdc.export import ExportWrapper, OnnxPredictor, export_onnx

    size = 32
    torch.manual_seed(0)
    model = tiny(defect_types=["good", "scratch"], object_names=["plate", "wood"], per_object_prompts=True,
                 memory=ObjectMemory(coreset_ratio=0.5)).eval()
    g = torch.Generator().manual_seed(2)
    plate, wood = torch.rand(3, 3, size, size, generator=g), 0.5 * torch.rand(3, 3, size, size, generator=g)
    with torch.no_grad():
        model.memory.build([(model.image_encoder(plate).tokens, image_ids(["p0", "p1", "p2"]), torch.zeros(3).long()),
                            (model.image_encoder(wood).tokens, image_ids(["w0", "w1", "w2"]), torch.ones(3).long())])
    path = export_onnx(model, tmp_path / "wood.onnx", size, object_index=1)
    x = torch.rand(2, 3, size, size, generator=g)
    got = OnnxPredictor(path)(x.numpy())
    with torch.no_grad():
        ref = ExportWrapper(model, 1)(x)
        other = ExportWrapper(model, 0)(x)
    for name, r in zip(("anomaly_map", "image_score", "type_probs"), ref, strict=True):
        assert np.abs(got[name] - r.numpy()).max() <= 1e-4, name
    assert not torch.allclose(ref[0], other[0])  # the wood graph measures against wood's normals, not plate's

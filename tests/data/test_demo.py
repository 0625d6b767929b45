"""The generated demo dataset: layout, determinism, exact masks, distinct defect types."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from common.data import NORMAL, MVTecReader
from common.data.demo import DEFECTS, SURFACES, generate_demo_dataset, main, make_defect


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_demo_layout_and_counts(tmp_path: Path) -> None:
    root = generate_demo_dataset(tmp_path / "demo", seed=1, image_size=48, n_train_good=3, n_test_good=2,
                                 n_test_defect=2)
    recs = MVTecReader(root).records()
    assert {r.object_name for r in recs} == {"plate", "fabric"}
    assert Counter(r.defect_type for r in recs) == {NORMAL: 10, "scratch": 4, "hole": 4, "stain": 4}
    for s in MVTecReader(root):
        assert s.image.shape == (48, 48, 3)
        if s.is_anomalous:
            assert 0 < s.mask.sum() < 0.5 * 48 * 48


def test_demo_is_deterministic(tmp_path: Path) -> None:
    kw = dict(image_size=32, n_train_good=2, n_test_good=1, n_test_defect=1)
    a = _digest(generate_demo_dataset(tmp_path / "a", seed=5, **kw))
    b = _digest(generate_demo_dataset(tmp_path / "b", seed=5, **kw))
    c = _digest(generate_demo_dataset(tmp_path / "c", seed=6, **kw))
    assert a == b != c


@pytest.mark.parametrize("surface", sorted(SURFACES))
@pytest.mark.parametrize("defect", DEFECTS)
def test_masks_are_exactly_the_changed_pixels(surface: str, defect: str) -> None:
    rng = np.random.default_rng(0)
    clean = SURFACES[surface](rng, 64)
    state = rng.bit_generator.state
    img, mask = make_defect(rng, clean, defect)
    changed = (img != np.clip(np.rint(clean * 255), 0, 255).astype(np.uint8)).any(-1)
    assert np.array_equal(changed, mask.astype(bool)) and mask.any()
    rng.bit_generator.state = state
    assert np.array_equal(make_defect(rng, clean, defect)[0], img)


def test_defect_types_look_different() -> None:
    # mean colour change inside the mask differs between types: scratch/hole are sharp extremes, stain is tinted
    rng = np.random.default_rng(0)
    stats = {}
    for defect in DEFECTS:
        vals = []
        for _ in range(6):
            clean = SURFACES["plate"](rng, 64)
            img, mask = make_defect(rng, clean, defect)
            m = mask.astype(bool)
            vals.append([mask.mean(), np.abs(img[m].astype(float) - clean[m] * 255).mean(),
                         np.std(img[m].astype(float), axis=-1).mean()])
        stats[defect] = np.mean(vals, 0)
    assert stats["stain"][2] > 3 * max(stats["scratch"][2], stats["hole"][2])  # only stains are coloured
    assert stats["hole"][0] > 1.5 * stats["scratch"][0]  # holes cover more area than thin scratches


def test_demo_cli_reuses_and_refuses_to_mix(tmp_path: Path, capsys) -> None:
    out = tmp_path / "d"
    args = ["--out", str(out), "--image-size", "32", "--n-train-good", "1", "--n-test-good", "1", "--n-test-defect", "1"]
    main(args)
    assert "PNG files" in capsys.readouterr().out
    main(args)  # same settings: kept as is
    with pytest.raises(FileExistsError, match="other settings"):
        main([*args[:-1], "2"])

"""Every configs/clipmdc/*.yaml runs fit and test (tiny preset, debug trainer) on generated data in its layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.cli import main
from common.data.demo import generate_demo_dataset
from tests.conftest import REPO

CASES = {
    "demo.yaml": None,  # generated demo data
    "mvtec.yaml": "mvtec_root",
    "visa.yaml": "visa_root",
    "ksdd2.yaml": "ksdd2_root",
    "magnetic_tile.yaml": "magnetic_tile_root",
    "folder.yaml": "folder_root",
    "generalist.yaml": "corpus_manifest",
}


@pytest.fixture
def folder_root(tmp_path: Path, rng) -> Path:
    """configs/clipmdc/folder.yaml's layout: class folders (good + defect types) and a masks/ folder."""
    from tests.conftest import blob_pair, write_image

    root = tmp_path / "my_line"
    for cls, n in (("good", 6), ("scratch", 4), ("dent", 4)):
        for i in range(n):
            img, m = blob_pair(rng, defect=cls != "good")
            write_image(root / cls / f"{cls}_{i}.png", img)
            if cls != "good":
                write_image(root / "masks" / f"{cls}_{i}_mask.png", m * 255)
    return root


@pytest.fixture
def corpus_manifest(tmp_path: Path) -> Path:
    """configs/clipmdc/generalist.yaml's data: a ``defectfm corpus`` manifest (two generated domains)."""
    import json

    from common.cli import main
    from common.data.demo import generate_demo_dataset

    sources = []
    for i, obj in enumerate(("plate", "wood")):
        root = generate_demo_dataset(tmp_path / obj, objects=(obj,), image_size=48, n_train_good=3, n_test_good=2,
                                     n_test_defect=1, seed=i)
        cfg = {"data": {"init_args": {"reader": {"class_path": "common.data.MVTecReader", "init_args": {"root": str(root)}}}}}
        (tmp_path / f"{obj}.yaml").write_text(json.dumps(cfg))
        sources.append(str(tmp_path / f"{obj}.yaml"))
    assert main(["corpus", *sources, "--out", str(tmp_path / "corpus")]) in (0, None)
    return tmp_path / "corpus" / "manifest.jsonl"


def test_every_clipmdc_config_is_covered() -> None:
    assert {p.name for p in (REPO / "configs" / "clipmdc").glob("*.yaml")} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_fit_and_test_smoke(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    fixture = CASES[name]
    if fixture is None:
        root = generate_demo_dataset(tmp_path / "demo", image_size=48, n_train_good=3, n_test_good=2, n_test_defect=2)
    else:
        root = request.getfixturevalue(fixture)
    masks = ["--data.init_args.reader.init_args.mask_dir", "masks", "--data.init_args.reader.init_args.mask_suffix",
             "_mask"] if name == "folder.yaml" else []
    args = [
        "--config", str(REPO / "configs" / "clipmdc" / name),
        "--config", str(REPO / "configs" / "clipmdc" / "model" / "tiny.yaml"),
        "--config", str(REPO / "configs" / "trainer" / "debug.yaml"),
        "--data.init_args.reader.init_args.root", str(root),
        "--data.init_args.image_size", "64",
        "--data.init_args.batch_size", "4",
        "--data.init_args.num_workers", "0",
        *masks,
    ]  # the configs' own callbacks stay: the debug preset must work with them (README)
    assert main(["fit", *args]) == 0
    assert main(["test", *args]) == 0

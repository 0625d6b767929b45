"""``defectfm corpus``: unified names, splits, deterministic manifest and shards, read back by the DataModule."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from common.cli import main as cli_main
from common.data import NORMAL, DataError, DefectBatch, DefectDataModule, ManifestReader
from common.data.corpus import build_corpus, main
from common.data.io import load_sample
from common.data.names import DefectNames, normalise, singular
from common.data.reader_config import load_sources
from common.data.shards import iter_tar_samples
from tests.data.layouts import config_node, read_jsonl, write_deeppcb, write_pv_el


def test_name_unification() -> None:
    names = DefectNames.load()  # the shipped configs/corpus/names.yaml
    assert names("Scratches") == names("scratch") == "scratch"
    assert names("Inclusions") == names("inclusion") == "inclusion"
    assert names("patches") == "patch" and names("Dark Area") == "dark_area" and names("cross-crack") == "cross_crack"
    assert names("pin-hole") == "pinhole" and names("Spurious copper") == "spurious_copper"
    assert names("open") == "open_circuit" and names("good") == NORMAL
    assert [singular(w) for w in ("impurities", "boxes", "holes", "glass", "status", "debris")] == \
        ["impurity", "box", "hole", "glass", "status", "debris"]
    assert normalise("  Broken__Large ") == "broken_large"
    custom = DefectNames({"dent": "deformation"}, keep=["lens"], domains={"pcb": {"open": "opening"}})
    assert custom("Dents") == "deformation" and custom("lens") == "lens" and custom("lenses") == "lense"
    assert custom("open", "pcb") == "opening" and custom("open", "other") == "open"
    assert DefectNames(singularize=False)("scratches") == "scratches"


def test_names_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "names.yaml"
    bad.write_text("synonym: {a: b}\n")
    with pytest.raises(DataError, match=r"names\.yaml: expected a mapping with keys"):
        DefectNames.load(bad)
    bad.write_text("synonyms: [a, b]\n")
    with pytest.raises(DataError, match=r"'synonyms' must be a dict"):
        DefectNames.load(bad)
    with pytest.raises(DataError, match="does not exist"):
        DefectNames.load(tmp_path / "nope.yaml")


@pytest.fixture
def sources(tmp_path: Path, rng: np.random.Generator, mvtec_root: Path, classid_root: Path) -> list[str]:
    """Four domains as reader configs: MVTec layout, NEU-like class ids, PV-EL-like ids + busbars, DeepPCB boxes."""
    data = tmp_path / "data"
    write_pv_el(data, rng)
    write_deeppcb(data, rng)
    cfgs = tmp_path / "cfg"
    cfgs.mkdir()
    (cfgs / "parts.yaml").write_text(yaml.safe_dump(  # an experiment-style config
        {"data": {"class_path": "common.data.DefectDataModule", "init_args": {"reader": {
            "class_path": "common.data.MVTecReader", "init_args": {"root": str(mvtec_root)}}}}}))
    (cfgs / "steel.yaml").write_text(yaml.safe_dump(  # a bare reader config
        {"class_path": "common.data.ClassIdSegReader", "init_args": {"root": str(classid_root)}}))
    for name in ("pv_el_crackseg", "deeppcb"):
        (cfgs / f"{name}.yaml").write_text(yaml.safe_dump({"reader": config_node(name, data)}))
    return [str(cfgs / "pv_el_crackseg.yaml"), f"boards={cfgs / 'deeppcb.yaml'}", str(cfgs / "parts.yaml"),
            str(cfgs / "steel.yaml")]


def test_corpus_manifest_is_deterministic_unified_and_split(sources: list[str], tmp_path: Path, capsys) -> None:
    main([*sources, "--out", str(tmp_path / "a")])
    printed = capsys.readouterr().out
    first = (tmp_path / "a" / "manifest.jsonl").read_bytes()
    main([*sources[::-1], "--out", str(tmp_path / "a")])  # again, sources in another order
    assert (tmp_path / "a" / "manifest.jsonl").read_bytes() == first
    main([*sources, "--out", str(tmp_path / "b")])
    assert (tmp_path / "b" / "manifest.jsonl").read_bytes() == first
    assert (tmp_path / "b" / "corpus.json").read_text() == (tmp_path / "a" / "corpus.json").read_text()

    lines = read_jsonl(tmp_path / "a" / "manifest.jsonl")
    by_domain = Counter(e["domain"] for e in lines)
    assert by_domain == {"boards": 9, "parts": 24, "pv_el_crackseg": 12, "steel": 12}
    assert [e["domain"] for e in lines] == sorted(e["domain"] for e in lines)  # sorted by domain, then path
    assert all(e["split"] in ("train", "val", "test") and e["caption"] and e["object"] for e in lines)
    # unified names: NEU-like "Scratches"/"Patches" and MVTec "scratch" are one type
    assert {e["defect_type"] for e in lines if e["domain"] == "steel"} == {"inclusion", "patch", "scratch"}
    assert {e["defect_type"] for e in lines if e["domain"] == "parts"} == {NORMAL, "hole", "scratch"}
    assert {e["defect_type"] for e in lines if e["domain"] == "boards"} == {NORMAL, "mouse_bite", "pinhole",
                                                                             "short_circuit", "spur"}
    # own splits kept (MVTec test stays test; PV's testset is test), val carved from train where missing
    parts = [e for e in lines if e["domain"] == "parts"]
    assert all(e["split"] == "test" for e in parts if e["label"] == 1)
    assert Counter(e["split"] for e in parts) == {"train": 6, "val": 2, "test": 16}
    assert Counter(e["split"] for e in lines if e["domain"] == "pv_el_crackseg") == {"train": 4, "val": 4, "test": 4}
    assert Counter(e["split"] for e in lines if e["domain"] == "boards") == {"train": 6, "val": 1, "test": 2}
    # masks: binary with threshold, class ids with ignored busbars, boxes inline and flagged coarse
    pv = next(e for e in lines if e["image"].endswith("EL2_val.jpg"))
    assert pv["mask_kind"] == "class_id" and pv["ignore_ids"] == [4] and pv["class_ids"] == [1, 2, 3]
    assert pv["class_names"] == ["dark_area", "cross_crack", "crack"] and pv["labels"] == ["dark_area", "cross_crack"]
    assert pv["mask_quality"] == "pixel" and pv["defect_type"] == "cross_crack" and pv["label"] == 1
    busbar_only = next(e for e in lines if e["image"].endswith("EL0_val.jpg"))
    assert busbar_only["label"] == 0 and busbar_only["defect_type"] == NORMAL and "labels" not in busbar_only
    board = next(e for e in lines if e["image"].endswith("00041000_test.png"))
    assert board["mask_quality"] == "box" and board["mask_kind"] == "boxes" and board["mask"].endswith("00041000.txt")
    assert board["boxes"] == [[2, 3, 10, 9, "open_circuit"], [12, 14, 20, 30, "mouse_bite"]]
    summary = json.loads((tmp_path / "a" / "corpus.json").read_text())
    assert summary["domains"]["steel"]["renamed"] == {"patches": "patch", "scratches": "scratch"}
    assert summary["objects"]["solar_cell"] == ["crack", "cross_crack", "dark_area"]
    # the printed table: one row per domain with images, normals, defective, splits and defect types
    rows = {ln.split()[0]: ln for ln in printed.splitlines() if ln.split() and ln.split()[0] in by_domain}
    assert rows["pv_el_crackseg"].split()[1:5] == ["solar_cell", "12", "3", "9"]
    assert "4/4/4" in rows["pv_el_crackseg"] and "2: crack 3, cross_crack 6" in rows["pv_el_crackseg"]
    assert "box 4" in rows["boards"] and "renamed inclusion" not in printed and "scratches -> scratch" in printed


def test_datamodule_serves_the_corpus_manifest(sources: list[str], tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    loaded = load_sources(sources)
    build_corpus(loaded, out, progress=False)
    lines = read_jsonl(out / "manifest.jsonl")
    dm = DefectDataModule(ManifestReader(out / "manifest.jsonl"), image_size=32, batch_size=64, num_workers=0,
                          augment="none")
    assert dm.object_names == ["bottle", "pcb", "screw", "solar_cell", "steel_strip"]
    assert set(dm.vocabulary) == {NORMAL, "hole", "scratch", "inclusion", "patch", "dark_area", "cross_crack", "crack",
                                  "open_circuit", "short_circuit", "mouse_bite", "spur", "spurious_copper", "pinhole"}
    splits = dm.split_records()  # the manifest's splits, as written
    assert {k: len(v) for k, v in splits.items()} == dict(Counter(e["split"] for e in lines))
    by_path = {str(out / e["image"]): e for e in lines}
    seen = Counter()
    for stage in ("train", "val", "test"):
        loader = dm.train_dataloader() if stage == "train" else getattr(dm, f"{stage}_dataloader")()
        for batch in loader:
            assert isinstance(batch, DefectBatch) and batch.image.shape[1:] == (3, 32, 32)
            for i, path in enumerate(batch.path):
                entry = by_path[path]
                assert entry["split"] == stage
                assert batch.object_name[i] == entry["object"] and batch.defect_type[i] == entry["defect_type"]
                assert dm.vocabulary[batch.defect_type_id[i]] == entry["defect_type"] and batch.label[i] == entry["label"]
                present = {dm.vocabulary[k] for k in batch.class_mask[i].unique().tolist() if k > 0}
                assert present == set(entry.get("labels", [])) or not batch.has_mask[i]
                seen[stage] += 1
    assert seen == Counter(e["split"] for e in lines)
    # pixel for pixel, the manifest's masks are the source's (ignored busbars, boxes, binary masks)
    by_image = {str(r.image_path.resolve()): r for r in ManifestReader(out / "manifest.jsonl").records()}
    for src in loaded:
        for rec in src.reader.records():
            a, b = load_sample(rec), load_sample(by_image[str(rec.image_path.resolve())])
            assert (a.mask is None and b.mask is None) or np.array_equal(a.mask, b.mask)
            assert b.mask_quality == rec.mask_quality


def test_corpus_shards(sources: list[str], tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    main([*sources, "--out", str(out), "--shards", "--shard-size", "5"])
    lines = read_jsonl(out / "manifest.jsonl")
    got = {}
    for split in ("train", "val", "test"):
        index = json.loads((out / "shards" / split / "index.json").read_text())
        assert index["total"] == sum(e["split"] == split for e in lines)
        for shard in sorted((out / "shards" / split).glob("*.tar")):
            for s in iter_tar_samples(shard):
                meta = json.loads(s["json"])
                assert meta["split"] == split and s["txt"].decode() == meta["caption"]
                got[meta["image"]] = (s, meta)
    assert sorted(got) == sorted(e["image"] for e in lines)
    board, meta = got[next(e["image"] for e in lines if e["image"].endswith("00041002_test.png"))]
    mask = np.asarray(Image.open(io.BytesIO(board["mask.png"])))
    assert meta["class_names"][mask[10, 10] - 1] == "spurious_copper" and meta["class_names"][mask[6, 6] - 1] == "short_circuit"
    assert board["png"] == (out / meta["image"]).read_bytes()  # the image file's own bytes
    tars = {p.relative_to(out): p.read_bytes() for p in (out / "shards").rglob("*.tar")}
    main([*sources, "--out", str(out), "--shards", "--shard-size", "5"])
    assert {p.relative_to(out): p.read_bytes() for p in (out / "shards").rglob("*.tar")} == tars


def test_unlabelled_images_are_left_out_and_counted(tmp_path: Path, rng: np.random.Generator, capsys) -> None:
    from tests.data.layouts import write_crackforest

    root = write_crackforest(tmp_path, rng, labelled=4, unlabelled=3)
    cfg = tmp_path / "roads.yaml"
    cfg.write_text(yaml.safe_dump({"class_path": "common.data.FolderReader", "init_args": {
        "root": str(root / "image"), "mask_dir": "../masks_png", "default_defect_type": "cracks"}}))
    main([str(cfg), "--out", str(tmp_path / "c")])
    row = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("roads"))
    assert row.split()[2:6] == ["4", "0", "4", "3"]  # images, normal, defective, left out
    assert {e["defect_type"] for e in read_jsonl(tmp_path / "c" / "manifest.jsonl")} == {"crack"}


def test_bad_sources_give_one_line_errors(sources: list[str], tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "o")
    cases = [
        ([str(tmp_path / "missing.yaml")], r"reader config .*missing\.yaml does not exist"),
        ([sources[0], sources[0]], r"domain 'pv_el_crackseg' given twice"),
        ([sources[0], "--root", "nope=/x"], r"--root given for unknown domains \['nope'\]"),
        ([sources[0], "--root", f"pv_el_crackseg={tmp_path / 'gone'}"], r"pv_el_crackseg .*: dataset root .*gone does not exist"),
        ([sources[0], "--names", str(tmp_path / "n.yaml")], r"defect-name file .*n\.yaml does not exist"),
    ]
    (tmp_path / "empty.yaml").write_text("trainer: {max_epochs: 1}\n")
    cases.append(([str(tmp_path / "empty.yaml")], r"empty\.yaml: no reader config found"))
    (tmp_path / "bad.yaml").write_text("class_path: common.data.NoSuchReader\ninit_args: {root: x}\n")
    cases.append(([str(tmp_path / "bad.yaml")], r"bad\.yaml: bad reader config 'common\.data\.NoSuchReader'"))
    for argv, pattern in cases:
        with pytest.raises(SystemExit) as e:
            main([*argv, "--out", out])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
        assert re.search(pattern, err), (pattern, err)


def test_registered_in_the_cli(sources: list[str], tmp_path: Path, capsys) -> None:
    assert cli_main(["corpus", sources[0], "--out", str(tmp_path / "c")]) == 0
    assert "wrote 12 images" in capsys.readouterr().out


def test_manifest_mask_fields_errors(tmp_path: Path, rng: np.random.Generator) -> None:
    from tests.conftest import blob_pair, write_image

    write_image(tmp_path / "a.png", blob_pair(rng)[0])
    path = tmp_path / "m.jsonl"
    good = {"image": "a.png", "defect_type": "dent", "mask_kind": "boxes", "boxes": [[1, 1, 5, 5, "dent"]]}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "class_names": ["scratch"]}) + "\n")
    with pytest.raises(DataError, match=r"m\.jsonl:2: box class 'dent' is not in class_names \['scratch'\]"):
        ManifestReader(path).records()
    path.write_text(json.dumps({**good, "mask_kind": "polygon"}) + "\n")
    with pytest.raises(DataError, match=r"m\.jsonl:1: mask_kind must be one of"):
        ManifestReader(path).records()
    path.write_text(json.dumps(good) + "\n")
    rec = ManifestReader(path).records()[0]
    assert rec.class_names == ("dent",) and rec.mask_quality == "box" and load_sample(rec).mask.sum() == 16

"""Templated expert-style captions and image-text manifests from labelled datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.data import ClassIdSegReader, MagneticTileReader, ManifestReader, MVTecReader, VisAReader
from common.data.captions import caption_for, mask_location, size_and_severity
from common.data.types import SampleRecord
from diffdefect.stage1.captions import build_manifest, main


def test_location_size_and_severity_from_the_mask() -> None:
    mask = np.zeros((90, 90), np.uint8)
    mask[5:15, 3:12] = 1
    assert mask_location(mask) == "upper left"
    mask2 = np.zeros((90, 90), np.uint8)
    mask2[70:80, 40:50] = 1
    assert mask_location(mask2) == "bottom center"
    assert size_and_severity(0.001) == ("tiny", "minor")
    assert size_and_severity(0.05) == ("medium-sized", "moderate")
    assert size_and_severity(0.5) == ("extensive", "severe")
    rec = SampleRecord(Path("x/001.png"), "metal_nut", "scratch", True)
    cap = caption_for(rec, mask)
    assert "upper left" in cap.text and "linear scratch" in cap.text and "metal nut" in cap.text
    assert cap.nouns == ("metal nut", "scratch") and cap.location == "upper left"
    assert 30 <= len(cap.text.split()) <= 55
    assert caption_for(rec, mask) == cap  # deterministic


def test_normal_and_unmasked_captions() -> None:
    normal = caption_for(SampleRecord(Path("a.png"), "bottle", "good", False))
    assert "free of defects" in normal.text or "No defect" in normal.text
    assert normal.nouns == ("bottle",)
    weak = caption_for(SampleRecord(Path("b.png"), "plate", "dent", True))
    assert "dent" in weak.text and weak.location is None


def test_manifest_from_demo_data_is_deterministic_and_readable(demo_root: Path, demo_manifest: Path, tmp_path) -> None:
    lines = [json.loads(x) for x in demo_manifest.read_text().splitlines()]
    assert len(lines) == 24
    words = [len(e["caption"].split()) for e in lines]
    assert 38 <= sum(words) / len(words) <= 48  # IMDD-1M averages 42 words
    defective = [e for e in lines if e["label"] == 1]
    assert defective and all(e["defect_type"] in e["nouns"] and "location" in e for e in defective)
    assert all(e["location"] in e["caption"] for e in defective)
    again = build_manifest(MVTecReader(demo_root), tmp_path / "again.jsonl")
    assert [json.loads(x)["caption"] for x in again.read_text().splitlines()] == [e["caption"] for e in lines]
    records = ManifestReader(demo_manifest).records()
    assert len(records) == 24 and all(r.caption for r in records)
    assert {r.defect_type for r in records} == {"good", "scratch", "hole", "stain"}


def test_other_readers(visa_root, magnetic_tile_root, classid_root, tmp_path) -> None:
    for reader in (VisAReader(visa_root), MagneticTileReader(magnetic_tile_root), ClassIdSegReader(classid_root)):
        out = build_manifest(reader, tmp_path / f"{reader.layout}.jsonl")
        entries = [json.loads(x) for x in out.read_text().splitlines()]
        assert len(entries) == len(reader.records())
        assert any(e["label"] == 1 and "location" in e for e in entries)
        assert len(ManifestReader(out).records()) == len(entries)


def test_command_line(mvtec_root, tmp_path, capsys) -> None:
    out = tmp_path / "pairs.jsonl"
    main(["--reader", "mvtec", "--root", str(mvtec_root), "--out", str(out), "--show", "1"])
    assert "image-text pairs" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == len(MVTecReader(mvtec_root).records())

"""Smoke run of ``python -m benchmarks.clipmdc --quick`` on real Magnetic Tile data: JSON fields and tables.

Needs ``../shared/data/magnetic_tile`` (skipped with a reason otherwise) and anomalib (the peers). The quick run
uses 10 images per class, 1 epoch at 96 px and single-thread timing; it takes ~15-30 s on 2 CPU cores.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import shared_data

HAS_ANOMALIB = importlib.util.find_spec("anomalib") is not None
METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap")


def test_quick_run_writes_results(tmp_path, capsys):
    root = shared_data("magnetic_tile")
    if not HAS_ANOMALIB:
        pytest.skip("anomalib (the `bench` extra) is not installed: the peers cannot be built")
    from benchmarks import clipmdc as bench

    out = bench.main(["--quick", "--data", str(root), "--results-dir", str(tmp_path)])
    acc = json.loads((tmp_path / "clipmdc_magnetic_tile_quick.json").read_text())
    lat = json.loads((tmp_path / "clipmdc_latency_quick.json").read_text())
    assert acc["benchmark"] == "clipmdc_magnetic_tile_quick" and acc["quick"] is True
    assert acc["eval_split"] == "test" and "versions" in acc["machine"]
    settings = acc["settings"]
    assert settings["image_size"] == bench.QUICK.image_size and settings["epochs"] == 1
    assert settings["peers"]["layers"] == ["blocks.2", "blocks.4"]
    assert set(settings["split_counts"]) == {"train", "val", "test"}
    assert settings["split_counts"]["test"]["good"] >= 1

    res = acc["results"]
    assert set(res) == set(bench.REGIMES)
    for regime in bench.REGIMES:
        ours = res[regime]["clipmdc"]
        for key in (*METRICS, "type_accuracy", "type_macro_f1"):
            assert 0.0 <= ours[key] <= 1.0, (regime, key)
        assert ours["vocabulary"][0] == "good" and len(ours["vocabulary"]) == 6
    assert res["supervised"]["clipmdc"]["shared_eval_max_abs_diff"] < 1e-6  # trainer.test == shared loop
    for regime in bench.REGIMES:  # decisions at the thresholds calibrated on val, and ONNX == PyTorch
        d, o = res[regime]["clipmdc"]["decisions"], res[regime]["clipmdc"]["onnx"]
        normal_only = regime == "normal_only"
        assert d["threshold_mode"] == ("far" if normal_only else "f1")
        assert d["target_far"] == (0.01 if normal_only else None)
        assert (d["calibration_images"]["anomalous"] == 0) == normal_only
        assert 0.0 < d["image_threshold"] < 1.0 and d["test_image_threshold"] == pytest.approx(d["image_threshold"])
        assert 0.0 <= d["test_far"] <= 1.0 and 0.0 <= d["test_miss_rate"] <= 1.0
        assert o["images"] == sum(settings["split_counts"]["test"].values())
        assert o["decision_agreement"] == 1.0 and o["region_agreement_1px"] == 1.0
        assert o["region_agreement"] >= 0.75  # identical to the pixel but for the rare ~1e-6 border flip
        assert o["max_abs_diff_map"] < 1e-4 and o["max_abs_diff_score"] < 1e-4
        assert o["thresholds"]["image_threshold"] == d["image_threshold"]
    assert acc["decisions_goal"]["met"] is True and acc["decisions_goal"]["not_met"] == []
    for regime, peer in bench.PEER_OF.items():
        theirs = res[regime][peer]
        assert all(0.0 <= theirs[k] <= 1.0 for k in METRICS)
        assert "type_accuracy" not in theirs  # only CLIP-MDC reports defect types
    assert res["normal_only"]["patchcore"]["memory_bank"][1] == 152  # 40 + 112 channels
    # the second peer of normal_only, and the budget rule: epochs, best epoch, train time for every model
    assert res["normal_only"]["supersimplenet_unsupervised"]["mode"] == "unsupervised"
    for regime in bench.REGIMES:
        for model, r in res[regime].items():
            assert 1 <= r["best_epoch"] <= r["epochs"] <= 1 and r["train_s"] > 0, (regime, model)
    # every CLIP-MDC arm is a config of the project's CLI, and the JSON holds what it resolved to
    for regime in bench.REGIMES:
        assert res[regime]["clipmdc"]["config"] == f"configs/benchmarks/clipmdc_{regime}.yaml"
        resolved = settings["resolved_configs"][regime]
        assert resolved["model"]["init_args"]["regime"] == regime
        assert resolved["data"]["init_args"]["image_size"] == bench.QUICK.image_size
        assert resolved["trainer"]["max_epochs"] == 1
        int8 = res[regime]["clipmdc"]["int8"]
        assert int8["int8_mb"] < int8["float_mb"] and set(int8["change_vs_torch"]) >= set(METRICS)
    assert settings["subsample"]["per_class"] == bench.QUICK.per_class

    assert len(acc["comparisons"]) == 2 * len(METRICS)
    for c in acc["comparisons"]:
        assert c["clipmdc_ge_peer"] == (c["clipmdc"] >= c["peer_value"])
    assert isinstance(acc["goal"]["met"], bool)
    assert acc["goal"]["met"] == (not acc["goal"]["not_met"])

    assert lat["settings"]["threads"] == 1 and lat["settings"]["latency_size"] == bench.QUICK.latency_size
    for layout in lat["cpu"]:
        for model in ("clipmdc_offline_real", "supersimplenet", "patchcore"):
            row = lat["cpu"][layout][model]
            assert row["b1_ms_per_batch"] > 0 and row["b4_images_per_s"] > 0
        ratio = lat["ratios"][layout]["supersimplenet"]["b1_latency_ratio"]
        expected = (
            lat["cpu"][layout]["clipmdc_offline_real"]["b1_ms_per_batch"]
            / lat["cpu"][layout]["supersimplenet"]["b1_ms_per_batch"]
        )
        assert abs(ratio - expected) < 1e-9
    assert isinstance(lat["goal"]["met"], bool)
    assert set(lat["onnxruntime"]) == {"onnxruntime_fp32", "onnxruntime_int8"}
    assert lat["onnxruntime"]["onnxruntime_int8"]["clipmdc_offline_real"]["b1_ms_per_batch"] > 0
    assert "clipmdc_offline_real" in lat["onnxruntime"]["onnxruntime_fp32"]
    assert "skipped" in lat["gpu"] or "models" in lat["gpu"]
    assert out["accuracy"]["results"].keys() == res.keys()

    printed = capsys.readouterr().out
    assert "Magnetic Tile" in printed and "I-AUROC" in printed and "CPU latency" in printed
    assert "decisions at the calibrated thresholds" in printed and "test FAR" in printed


def test_missing_data_is_a_clear_error(tmp_path):
    from benchmarks import clipmdc as bench

    with pytest.raises(SystemExit, match="Magnetic Tile not found"):
        bench.main(["--quick", "--data", str(tmp_path / "nowhere"), "--results-dir", str(tmp_path)])


@pytest.mark.skipif(not HAS_ANOMALIB, reason="anomalib (the `bench` extra) is not installed")
def test_peers_load_the_packaged_lite0_weights(capsys):
    """Both anomalib peers are built offline and their extractors reproduce our Lite0 features exactly."""
    from benchmarks import peers

    out = peers.main([])
    for name in ("supersimplenet", "patchcore"):
        assert out[name]["layers"] == list(peers.PEER_LAYERS)
        assert out[name]["channels"] == [40, 112]
        assert out[name]["max_abs_diff"] == 0.0
    assert "max |diff|" in capsys.readouterr().out

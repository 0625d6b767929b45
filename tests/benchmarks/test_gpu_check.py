"""The GPU check (``python -m benchmarks.gpu``) on the CPU in ``--dry`` mode, its time box, and its wheel set."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import pytest
import torch

from benchmarks.gpu import wheels
from benchmarks.gpu.__main__ import main as gpu_main
from benchmarks.gpu.runner import Part, run_parts
from tests.conftest import REPO


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops on a shared 2-core machine
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- the time box
def test_a_failing_part_is_reported_and_the_rest_still_run() -> None:
    def boom(s, clock, reports):
        raise ValueError("broken part")

    def fine(s, clock, reports):
        return {"saw": sorted(reports), "left": clock.left()}

    def slow(s, clock, reports):
        time.sleep(max(0.0, clock.left() - 0.5))  # its budget is capped by the global deadline: 0.5 s stay
        return {}

    parts = [Part("a", boom, 10), Part("b", fine, 10), Part("c", slow, 100), Part("d", fine, 10)]
    reports = run_parts(parts, None, total_s=4, log=lambda m: None, min_left_s=1, cleanup=lambda: None)
    assert reports["a"].status == "failed" and "ValueError: broken part" in reports["a"].error
    assert reports["a"].result["traceback"]
    assert reports["b"].status == "ok" and reports["b"].result["saw"] == ["a"]
    assert 0 < reports["b"].result["left"] <= 4  # its budget, capped by the global deadline
    assert reports["c"].status == "ok"
    assert reports["d"].status == "skipped"  # under min_left_s left of the global deadline after c


def test_a_part_returning_problems_is_failed_but_keeps_its_figures() -> None:
    reports = run_parts([Part("p", lambda s, c, r: {"x": 1, "problems": ["no checkpoint"]}, 10)], None, 60,
                        log=lambda m: None, cleanup=lambda: None)
    assert reports["p"].status == "failed" and reports["p"].error == "no checkpoint"
    assert reports["p"].as_dict()["x"] == 1


# ----------------------------------------------------------------------------- --dry
def _check_common(data: dict, parts: list[str]) -> None:
    assert data["benchmark"] == "gpu_dry" and data["settings"]["dry"] is True
    assert set(data["parts"]) == set(parts)
    for name in parts:
        assert data["parts"][name]["status"] == "ok", (name, data["parts"][name])
    g = data["goal"]
    assert {"description", "met", "not_met", "checks"} <= set(g) and g["not_met"] == []
    assert g["checks"]["stage1_175_samples_per_s"] is None  # speed goals are not judged on a CPU


def test_dry_core_parts(tmp_path: Path, one_thread, capsys) -> None:
    out = tmp_path / "gpu_dry.json"
    parts = ["environment", "stage1_unet", "stage2", "profile"]
    gpu_main(["--dry", "--parts", *parts, "--out", str(out)])
    data = json.loads(out.read_text())
    _check_common(data, parts)
    env = data["parts"]["environment"]
    assert env["matmul"]["tflops"] > 0 and env["copy"]["gb_per_s"] > 0 and env["versions"]["torch"]
    unet = data["parts"]["stage1_unet"]
    assert [(v["compile"], v["gradient_checkpointing"]) for v in unet["variants"]] == [
        (False, False), (False, True), (True, False)]
    assert all(v["samples_per_s"] > 0 and v["mfu"] > 0 for v in unet["variants"])
    assert unet["peak_source"].startswith("measured") and unet["largest_batch"]["checkpointing"]["fits"] == [8]
    s2 = data["parts"]["stage2"]
    assert s2["extract"]["images_per_s"] > 0 and s2["head"]["batches"]["2"]["steps_per_s"] > 0
    assert abs(sum(data["parts"]["profile"]["fraction_by_category"].values()) - 1) < 1e-6
    assert "samples/s" in capsys.readouterr().out


@pytest.mark.slow
def test_dry_run_exercises_every_part(tmp_path: Path, one_thread) -> None:
    out = tmp_path / "gpu_dry.json"
    gpu_main(["--dry", "--out", str(out)])
    data = json.loads(out.read_text())
    _check_common(data, ["environment", "stage1_unet", "stage1_fit", "clipmdc", "stage2", "profile"])
    fit = data["parts"]["stage1_fit"]
    assert fit["checkpoint"]["global_step"] == 1 and fit["resumed_checkpoint"]["global_step"] == 2
    assert fit["checkpoint"]["has_ema"] and fit["losses"]["all_finite"] and fit["timer"]["samples_per_s"] > 0
    clip = data["parts"]["clipmdc"]["models"]
    assert set(clip) == {"tiny", "offline_real"}
    assert clip["tiny"]["bf16_eager"]["b1_ms_per_image"] > 0 and clip["tiny"]["fp32_compile"]["b2_images_per_s"] > 0
    assert clip["offline_real"]["fp32_eager"]["b1_ms_per_image"] > 0
    assert data["goal"]["checks"]["fit_checkpoint_resume"] is True


@pytest.mark.slow
def test_vit_b16_builds_with_random_weights_and_runs(one_thread) -> None:
    from benchmarks.gpu.clip import build

    net, weights = build("vit_b16")  # what the GPU run times (no download)
    assert "random ViT-B-16" in weights
    net.set_vocabulary(["good", "crack"], ["tile"])
    net.eval().embed_vocabulary()
    with torch.inference_mode():
        out = net(torch.rand(1, 3, 32, 32))
    assert torch.isfinite(out.anomaly_map).all()


# ----------------------------------------------------------------------------- wheels
def _fake_wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


def test_wheel_check_finds_missing_duplicate_and_extra_requirements(tmp_path: Path) -> None:
    _fake_wheel(tmp_path, "alpha", "1.0", ["torch>=2.4", "beta>=2", "gamma[fast]", 'winonly; sys_platform == "win32"'])
    _fake_wheel(tmp_path, "beta", "2.1", ["numpy"])
    _fake_wheel(tmp_path, "gamma", "1.0", ['delta; extra == "fast"', 'epsilon; extra == "slow"'])
    res = wheels.check(tmp_path, extras={})
    assert res["problems"] == ["gamma needs delta; extra == \"fast\": neither carried nor on the GPU machine"]
    _fake_wheel(tmp_path, "delta", "0.1", ["torch<2"])  # the GPU machine's torch is 2.11
    _fake_wheel(tmp_path, "beta", "3.0", [])
    problems = wheels.check(tmp_path, extras={})["problems"]
    assert any("beta: 2 versions" in p for p in problems)
    assert any("delta needs torch<2, the GPU machine has torch 2.11.0" in p for p in problems)


def test_every_project_dependency_is_on_the_gpu_machine_or_pinned() -> None:
    import tomllib

    from packaging.requirements import Requirement

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    bare = {wheels.canonical(n) for n in wheels.BARE}
    pinned = {wheels.canonical(n) for n in wheels.PINS}
    missing = [d for d in deps if wheels.canonical(Requirement(d).name) not in bare | pinned]
    assert missing == [], f"add wheels for {missing} to benchmarks/gpu/wheels.py PINS"
    jsonargparse = next(Requirement(d) for d in deps if d.startswith("jsonargparse"))
    assert jsonargparse.specifier.contains(wheels.PINS["jsonargparse"])


def test_the_built_wheel_folder_is_complete_when_present() -> None:
    folder = wheels.WHEEL_DIR
    if not any(folder.glob("*.whl")):
        pytest.skip("no .whl/ folder: run `make gpu-wheels` (downloads) to build and check it")
    res = wheels.check(folder)
    assert res["problems"] == [] and res["mib"] + wheels.tree_mib() < 0.75 * wheels.CARRY_LIMIT_MIB
    assert {wheels.canonical(n) for n in wheels.PINS} | {"defectfm"} == set(res["wheels"])

"""No top-level name collisions: the packages, and every class a config names, import from outside the repository
as this project's modules, without the name ``tests`` (torch-fidelity installs a top-level ``tests`` package)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import yaml

from tests.conftest import REPO

PACKAGES = ("common", "clipmdc", "diffdefect")


def class_paths(node: object) -> set[str]:
    """Every ``class_path`` value in a parsed YAML document."""
    if isinstance(node, dict):
        found = {node["class_path"]} if isinstance(node.get("class_path"), str) else set()
        return found.union(*(class_paths(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(class_paths(v) for v in node))
    return set()


def test_packages_config_classes_and_the_suite_do_not_depend_on_owning_the_name_tests(tmp_path: Path) -> None:
    """From outside the repository, with a foreign top-level ``tests`` package imported first (as torch-fidelity's
    is when site-packages comes before the repository on ``sys.path``): the packages are this project's, every
    class a config names imports, and the test suite still collects."""
    paths = set().union(*(class_paths(yaml.safe_load(p.read_text())) for p in (REPO / "configs").rglob("*.yaml")))
    paths.add("common.testing.TinySegModule")  # what the CLI tests' generated configs name
    foreign = tmp_path / "site" / "tests"
    foreign.mkdir(parents=True)
    (foreign / "__init__.py").write_text("FOREIGN = True\n")
    script = (
        "import importlib, json, sys\n"
        f"sys.path.insert(0, {str(foreign.parent)!r})\n"
        "import tests\n"
        f"files = {{n: importlib.import_module(n).__file__ for n in {PACKAGES!r}}}\n"
        "missing = []\n"
        f"for path in {sorted(paths)!r}:\n"
        "    module, _, name = path.rpartition('.')\n"
        "    if not hasattr(importlib.import_module(module), name):\n"
        "        missing.append(path)\n"
        "import pytest\n"
        f"code = pytest.main(['--co', '-q', '-p', 'no:cacheprovider', '-o', 'pythonpath=', '--rootdir', {str(REPO)!r},\n"
        f"                    {str(REPO / 'tests' / 'clipmdc' / 'test_regimes.py')!r}])\n"
        "print(json.dumps({'files': files, 'missing': missing, 'foreign': sys.modules['tests'].FOREIGN, 'code': code}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for name, file in result["files"].items():
        assert Path(file).resolve().is_relative_to(REPO), f"{name} imported from {file}, not from {REPO}"
    assert result["missing"] == [] and result["foreign"]
    assert result["code"] == 0, out.stdout[-2000:]  # collection failed: a test imports a top-level tests.<module>


def test_no_other_distribution_claims_our_top_level_names() -> None:
    owners = packages_distributions()
    for name in PACKAGES:
        assert set(owners.get(name, [])) <= {"defectfm"}, f"{name} is also installed by {owners[name]}"


def test_nothing_outside_the_test_suite_imports_tests() -> None:
    for folder in (*PACKAGES, "benchmarks"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n == "tests" or n.startswith("tests.") for n in names), path

"""The package shows its two stages: stage 2 reaches stage 1 through one door (the feature extractor)."""

from __future__ import annotations

import ast
from pathlib import Path

import diffdefect

PACKAGE = Path(diffdefect.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (module level and inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_stage2_imports_stage1_only_through_the_extractor() -> None:
    users = {p.name for p in (PACKAGE / "stage2").glob("*.py")
             if any(m.startswith("diffdefect.stage1") for m in imported_modules(p))}
    assert users == {"extractor.py"}


def test_stage1_never_imports_stage2() -> None:
    for p in (PACKAGE / "stage1").glob("*.py"):
        assert not any(m.startswith("diffdefect.stage2") for m in imported_modules(p)), p


def test_no_flat_modules_besides_the_package_init() -> None:
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py"]


def test_modules_speak_alike_and_the_former_names_still_resolve() -> None:
    assert diffdefect.Stage1Diffusion is diffdefect.Stage1Module
    assert diffdefect.Stage2OpenVocab is diffdefect.Stage2Module
    assert diffdefect.FeatureExtractor is diffdefect.DiffusionFeatures.__mro__[1]  # the one frozen-feature interface
    for path in (PACKAGE / "stage1" / "module.py", PACKAGE / "stage2" / "module.py"):
        assert "_given_hyperparameters" not in path.read_text()  # Lightning's private hook

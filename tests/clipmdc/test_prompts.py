"""Prompt bank: vocabulary order, prompt content, validation."""

from __future__ import annotations

import pytest

from clipmdc.prompts import PromptBank, normalize_vocabulary, readable


def test_vocabulary_puts_good_first() -> None:
    assert normalize_vocabulary(["scratch", "dent"]) == ["good", "scratch", "dent"]
    assert normalize_vocabulary(["good", "scratch", "scratch"]) == ["good", "scratch"]
    with pytest.raises(ValueError):
        normalize_vocabulary(["scratch", "good"])


def test_prompts_per_object_and_class() -> None:
    bank = PromptBank(templates=["a photo of a {}."], defect_states=["{o} with {d}"])
    p = bank.build(["good", "broken_large"], ["metal_nut", "bottle"])
    assert p.defect_types == ["good", "broken_large"]
    assert len(p.per_class) == 2 and len(p.per_class[0]) == 2
    assert "a photo of a metal nut with broken large." in p.per_class[0][1]
    assert "a photo of a flawless bottle." in p.per_class[1][0]
    assert all("broken" not in s for s in p.per_class[1][0])
    assert "a photo of a damaged bottle." in p.anomalous[1]
    assert readable("broken_large") == "broken large"


def test_bad_templates_rejected() -> None:
    with pytest.raises(ValueError):
        PromptBank(defect_states=["{o} only"])
    with pytest.raises(ValueError):
        PromptBank(templates=[])

"""The stage-2 vocabularies: class names per stage, the data -> model id maps, the caption lexicon.

Names (the background / defect-free class always first, index 0):

* all names: ``vocabulary`` if given (config or command line), else the checkpoint's at test / predict time
  (:func:`checkpoint_names`), else the DataModule's (``data_vocabulary``, whose first entry is ``"good"``);
* training (and validation): the background and ``train_classes`` (default: every other name), so checkpoint
  selection never sees a novel name;
* test / predict: the background and ``test_classes`` (default: every other name), given in words only.

Base on ``train_classes`` and novel on ``test_classes`` is the open-vocabulary switch. The lexicon maps caption
phrases to canonical names (the inspection terms and the names above, :func:`~diffdefect.stage2.classifier.
default_lexicon`); :attr:`Stage2Vocabulary.words` is every name whose text embedding a step may need, embedded
once per setup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from common.checkpoint import KEY, vocabulary_entries
from common.data.types import NORMAL
from common.data.vocabulary import id_mapping, parse_vocabulary
from diffdefect.stage2.classifier import default_lexicon

STAGES = ("train", "val", "test", "predict")


@dataclass
class Stage2Vocabulary:
    """Names per stage, id maps and the caption lexicon.

    Attributes:
        names: ``{stage: names}``, background first.
        maps: ``{stage: (K_data,) int64 model id per data id}``, ``None`` where the data ids are the model's.
        lexicon: Caption phrase -> canonical name.
        words: Every name of ``names`` and ``lexicon`` (sorted, no repeats).
        descriptions: ``{name: description}`` of names given as ``"name: description"`` entries: the description
            is what the text encoder embeds, the name what is reported.
    """

    names: dict[str, list[str]]
    maps: dict[str, torch.Tensor | None]
    lexicon: dict[str, str]
    words: list[str]
    descriptions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, data_names: Sequence[str] | None, vocabulary: Sequence[str] | None = None,
              train_classes: Sequence[str] | None = None, test_classes: Sequence[str] | None = None,
              checkpoint_names: Sequence[str] | None = None) -> Stage2Vocabulary:
        """The vocabularies of a run (module docstring).

        Args:
            data_names: The DataModule's names (ids of its batches index them), or ``None`` (ids are the model's).
            vocabulary: All names, overriding the checkpoint's and the data's.
            train_classes: Base classes (default: all but the background).
            test_classes: Classes named at test / predict time (default: all but the background).
            checkpoint_names: The names a loaded checkpoint recorded, overriding the data's.
        """
        names, descriptions = parse_vocabulary(vocabulary or checkpoint_names or data_names or [NORMAL])
        train_names, train_described = parse_vocabulary(train_classes or [])
        test_names, test_described = parse_vocabulary(test_classes or [])
        for extra in (train_described, test_described):
            for name, text in extra.items():
                if descriptions.setdefault(name, text) != text:
                    raise ValueError(f"class {name!r} has two descriptions: {descriptions[name]!r} and {text!r}")
        background = NORMAL if NORMAL in names else names[0]
        rest = [n for n in names if n != background]
        train = [background] + [n for n in (train_names or rest) if n != background]
        test = [background] + [n for n in (test_names or rest) if n != background]
        per_stage = {"train": train, "val": train, "test": test, "predict": test}
        data = list(data_names) if data_names else None
        maps = {s: id_mapping(data, v) if data and data != v else None for s, v in per_stage.items()}
        lexicon = default_lexicon(names)  # caption nouns: the inspection terms and the data's class names
        words = sorted({*train, *test, *lexicon.values()})
        return cls(per_stage, maps, lexicon, words, descriptions)

    def save(self, checkpoint: dict[str, Any]) -> None:
        """Records the names in ``checkpoint`` (every name, background first, as ``defect_types`` in
        ``checkpoint["defectfm"]["vocabulary"]``; per stage under ``stage2_vocabulary``, informative). The text
        embeddings are recomputed from the names, so a checkpoint holds no embeddings."""
        checkpoint["stage2_vocabulary"] = dict(self.names)
        every = list(dict.fromkeys([*self.names["train"], *self.names["test"]]))
        checkpoint.setdefault(KEY, {})["vocabulary"] = {"defect_types": every}
        if self.descriptions:  # "name: description" entries: the words that were embedded
            checkpoint[KEY]["vocabulary"]["descriptions"] = dict(self.descriptions)


def checkpoint_names(checkpoint: Mapping[str, Any]) -> list[str] | None:
    """The class names :meth:`Stage2Vocabulary.save` recorded in ``checkpoint``, described ones as ``"name:
    description"`` entries (``None`` when it has none)."""
    return vocabulary_entries(checkpoint)

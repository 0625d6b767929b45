"""Prompts are data: the templates, state words and the prompt bank of object x defect type.

Each class of the vocabulary (index 0 = the normal class ``"good"``, then the K defect types) gets, for each
object, a list of prompts = every template filled with every state phrase of that class:

* normal class: "a photo of a flawless bottle.", "a close-up photo of a bottle without defect." ...
* defect type d: "a photo of a bottle with scratch.", "a photo of a scratch on a bottle." ...
* plus a class-agnostic "anomalous" prompt set ("a photo of a damaged bottle.") used for the
  vocabulary-independent normal-vs-anomalous evidence.

The model embeds the prompts once per vocabulary (mean of the unit prompt embeddings per class, renormalised)
into non-persistent buffers; see :meth:`clipmdc.model.CLIPMDC.set_vocabulary`. Everything here is plain
Python: no tensors, no encoder. The filling and the ensemble embedding are the mechanism both families share
(:mod:`common.prompts`); ``readable`` and ``normalize_vocabulary`` are :mod:`common.data.vocabulary`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from common.data.types import NORMAL
from common.data.vocabulary import join_vocabulary, normalize_vocabulary, parse_vocabulary, readable
from common.prompts import fill_templates

TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of the {}.",
    "an industrial inspection photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a photo of the {} on a production line.",
)
"""Sentence templates; ``{}`` receives a state phrase."""

NORMAL_STATES: tuple[str, ...] = (
    "{o}",
    "flawless {o}",
    "perfect {o}",
    "unblemished {o}",
    "{o} without flaw",
    "{o} without defect",
    "{o} without damage",
)
"""State phrases of the normal class (WinCLIP's compositional prompt ensemble); ``{o}`` = object name."""

ANOMALY_STATES: tuple[str, ...] = (
    "damaged {o}",
    "broken {o}",
    "{o} with flaw",
    "{o} with defect",
    "{o} with damage",
)
"""State phrases of the class-agnostic anomalous prompt set."""

DEFECT_STATES: tuple[str, ...] = (
    "{o} with {d}",
    "{o} with a {d} defect",
    "{d} on a {o}",
    "defective {o} showing {d}",
)
"""State phrases of a named defect type; ``{d}`` = defect-type name."""


@dataclass
class Prompts:
    """Prompt lists for one vocabulary.

    Attributes:
        defect_types: The vocabulary, ``K + 1`` names, index 0 = ``"good"``.
        object_names: ``O`` object names.
        per_class: ``per_class[o][c]`` = prompts of class ``c`` for object ``o``.
        anomalous: ``anomalous[o]`` = class-agnostic anomalous prompts for object ``o``.
        descriptions: ``{name: description}`` of the described defect types (their prompts word the description).
    """

    defect_types: list[str]
    object_names: list[str]
    per_class: list[list[list[str]]]
    anomalous: list[list[str]]
    descriptions: dict[str, str] = field(default_factory=dict)

    @property
    def entries(self) -> list[str]:
        """The vocabulary as entries (``"name: description"`` for described names)."""
        return join_vocabulary(self.defect_types, self.descriptions)


class PromptBank:
    """Builds the prompts of object x defect type from templates and state phrases.

    Args:
        templates: Sentence templates with one ``{}``.
        normal_states: Normal-class phrases with ``{o}``.
        anomaly_states: Class-agnostic anomalous phrases with ``{o}``.
        defect_states: Defect-type phrases with ``{o}`` and ``{d}``.
    """

    def __init__(
        self,
        templates: Sequence[str] = TEMPLATES,
        normal_states: Sequence[str] = NORMAL_STATES,
        anomaly_states: Sequence[str] = ANOMALY_STATES,
        defect_states: Sequence[str] = DEFECT_STATES,
    ) -> None:
        for name, items, fields in (
            ("templates", templates, ("{}",)),
            ("normal_states", normal_states, ("{o}",)),
            ("anomaly_states", anomaly_states, ("{o}",)),
            ("defect_states", defect_states, ("{o}", "{d}")),
        ):
            if not items:
                raise ValueError(f"{name} must not be empty")
            bad = [s for s in items if not all(f in s for f in fields)]
            if bad:
                raise ValueError(f"{name} entries must contain {fields}: {bad}")
        self.templates = list(templates)
        self.normal_states = list(normal_states)
        self.anomaly_states = list(anomaly_states)
        self.defect_states = list(defect_states)

    def _fill(self, states: Sequence[str], obj: str, defect: str = "") -> list[str]:
        phrases = [s.replace("{o}", readable(obj)).replace("{d}", defect) for s in states]
        return fill_templates(self.templates, phrases)

    def class_prompts(self, defect_type: str, object_name: str, description: str | None = None) -> list[str]:
        """Prompts of one class for one object (normal phrases for ``"good"``); a ``description`` replaces the
        name's words in the defect phrases."""
        if defect_type == NORMAL:
            return self._fill(self.normal_states, object_name)
        return self._fill(self.defect_states, object_name, description or readable(defect_type))

    def anomalous_prompts(self, object_name: str) -> list[str]:
        """Class-agnostic anomalous prompts for one object."""
        return self._fill(self.anomaly_states, object_name)

    def build(self, defect_types: Sequence[str], object_names: Sequence[str]) -> Prompts:
        """All prompts of a vocabulary.

        Args:
            defect_types: Defect-type entries, names or ``"name: description"`` (``"good"`` is put first when
                missing).
            object_names: Object names (at least one; use a generic word like ``"object"`` when unknown).
        """
        vocabulary, descriptions = parse_vocabulary(normalize_vocabulary(defect_types))
        objects = list(object_names) or ["object"]
        return Prompts(
            defect_types=vocabulary,
            object_names=objects,
            per_class=[[self.class_prompts(d, o, descriptions.get(d)) for d in vocabulary] for o in objects],
            anomalous=[self.anomalous_prompts(o) for o in objects],
            descriptions=descriptions,
        )

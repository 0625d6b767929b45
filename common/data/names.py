"""Unified defect names across datasets: case, separators, plurals and synonyms, from an editable YAML file.

Data sets name the same defect differently (NEU-Seg's ``Scratches``, MVTec's ``scratch``, DeepPCB's ``pin-hole``).
:class:`DefectNames` maps every name to one canonical form, in this order:

1. a per-domain rename (``domains: {neu_seg: {others: other}}``), when the name comes from that domain;
2. normalisation: lower case, spaces and hyphens -> ``_``, repeated/outer ``_`` removed (``"Spurious copper"`` ->
   ``spurious_copper``);
3. ``synonyms`` (``pin_hole: pinhole``);
4. if still unmapped and ``singularize`` is on: the last word made singular (``scratches`` -> ``scratch``,
   ``inclusions`` -> ``inclusion``, ``impurities`` -> ``impurity``), unless it is in ``keep`` or ends in
   ``ss``/``us``/``is``; then ``synonyms`` again.

The defect-free name (:data:`~common.data.types.NORMAL`) is never changed. The default file is
``configs/corpus/names.yaml``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from common.data.errors import DataError
from common.data.types import NORMAL

DEFAULT_NAMES_FILE = Path(__file__).resolve().parents[2] / "configs" / "corpus" / "names.yaml"
_SEPARATORS = re.compile(r"[\s\-_]+")


def normalise(name: str) -> str:
    """``"Spurious copper"`` -> ``"spurious_copper"``; ``"pin-hole"`` -> ``"pin_hole"``."""
    return _SEPARATORS.sub("_", str(name).strip().lower()).strip("_")


def singular(word: str, keep: Iterable[str] = ()) -> str:
    """English singular of one lower-case word by suffix rules (``patches`` -> ``patch``, ``holes`` -> ``hole``);
    words in ``keep``, short words and words ending in ``ss``/``us``/``is`` are returned unchanged."""
    if word in set(keep) or len(word) <= 3 or not word.endswith("s") or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses", "zes")):
        return word[:-2]
    return word[:-1]


class DefectNames:
    """Maps defect names to unified ones.

    Args:
        synonyms: Normalised name -> unified name.
        singularize: Make the last word singular when no synonym applies.
        keep: Words never singularised (``lens``, ``series``...).
        domains: Domain -> {raw or normalised name -> unified name}, applied first for that domain only.
    """

    def __init__(
        self,
        synonyms: Mapping[str, str] | None = None,
        singularize: bool = True,
        keep: Iterable[str] = (),
        domains: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.synonyms = {normalise(k): normalise(v) for k, v in (synonyms or {}).items()}
        self.singularize = singularize
        self.keep = frozenset(normalise(k) for k in keep)
        self.domains = {d: {normalise(k): normalise(v) for k, v in m.items()} for d, m in (domains or {}).items()}

    @classmethod
    def load(cls, path: str | Path | None = DEFAULT_NAMES_FILE) -> DefectNames:
        """Reads a names file (see the module docstring); ``None`` gives normalisation and plurals only.

        Raises:
            DataError: Missing file, bad YAML or unknown keys (names the file).
        """
        if path is None:
            return cls()
        path = Path(path)
        if not path.is_file():
            raise DataError(f"defect-name file {path} does not exist (pass --names FILE, or --names none)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise DataError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
        allowed = {"synonyms", "singularize", "keep", "domains"}
        if not isinstance(data, dict) or set(data) - allowed:
            raise DataError(f"{path}: expected a mapping with keys {sorted(allowed)}, got "
                            f"{sorted(data) if isinstance(data, dict) else type(data).__name__}")
        for key, kind in (("synonyms", dict), ("keep", list), ("domains", dict)):
            if key in data and not isinstance(data[key] or kind(), kind):
                raise DataError(f"{path}: '{key}' must be a {kind.__name__}")
        if any(not isinstance(v, dict) for v in (data.get("domains") or {}).values()):
            raise DataError(f"{path}: 'domains' must map each domain to a mapping of names")
        return cls(data.get("synonyms"), bool(data.get("singularize", True)), data.get("keep") or (),
                   data.get("domains"))

    def __call__(self, name: str, domain: str | None = None) -> str:
        """The unified form of ``name`` (coming from ``domain``)."""
        if name == NORMAL:
            return name
        n = normalise(name)
        if domain is not None and n in self.domains.get(domain, {}):
            return self.domains[domain][n]
        if n in self.synonyms:
            return self.synonyms[n]
        if self.singularize:
            *head, last = n.split("_")
            n = "_".join([*head, singular(last, self.keep)])
        return self.synonyms.get(n, n)

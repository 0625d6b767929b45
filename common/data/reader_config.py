"""Reader configs -> readers: the reader part of any config file, instantiated with jsonargparse.

Used by ``defectfm corpus`` (:mod:`common.data.corpus`). A config file may be a ``configs/data/<name>.yaml``
snippet or an experiment config (``data.init_args.reader``), a ``reader:`` mapping, or a bare
``class_path``/``init_args`` mapping. Relative roots are relative to the working directory, as with
``lightning --config``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from common.data.errors import DataError
from common.data.readers.base import Reader


def reader_node(path: Path) -> dict[str, Any]:
    """The reader config (``{"class_path": ..., "init_args": {...}}``) inside a YAML file.

    Raises:
        DataError: Missing file, bad YAML, or no reader config in it.
    """
    if not path.is_file():
        raise DataError(f"reader config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    node = None
    if isinstance(data, dict):
        if isinstance(data.get("data"), dict):
            node = (data["data"].get("init_args") or data["data"]).get("reader")
        elif "reader" in data:
            node = data["reader"]
        elif "class_path" in data:
            node = data
    if not isinstance(node, dict) or "class_path" not in node:
        raise DataError(f"{path}: no reader config found; expected data.init_args.reader.class_path, "
                        "reader.class_path or a top-level class_path")
    return node


def build_reader(node: dict[str, Any], where: str) -> Reader:
    """Instantiates a reader config with jsonargparse (types checked as LightningCLI checks them).

    Raises:
        DataError: Unknown class or bad arguments (one line, naming ``where``).
    """
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Reader, "reader", required=True)
    try:
        cfg = parser.parse_object({"reader": node})
        return parser.instantiate_classes(cfg).reader
    except DataError:
        raise
    except Exception as e:  # jsonargparse raises several types, with multi-line messages
        detail = " ".join(str(e).split())
        raise DataError(f"{where}: bad reader config {node.get('class_path')!r}: {detail[:400]}") from e


@dataclasses.dataclass
class Source:
    """One input of the corpus: a domain name, where its config came from, the reader config and the reader."""

    domain: str
    config: str
    node: dict[str, Any]
    reader: Reader


def load_sources(specs: Sequence[str], roots: Sequence[str] = ()) -> list[Source]:
    """``[NAME=]CONFIG.yaml`` specs -> sources; ``roots`` holds ``NAME=PATH`` overrides of the reader roots.

    Raises:
        DataError: Duplicate domains, a root override for an unknown domain, or a bad config.
    """
    overrides = {}
    for spec in roots:
        name, sep, root = spec.partition("=")
        if not sep or not name or not root:
            raise DataError(f"--root {spec!r}: expected NAME=PATH")
        overrides[name] = root
    sources: list[Source] = []
    for spec in specs:
        name, sep, cfg = spec.partition("=")
        if not sep or "/" in name or name.endswith((".yaml", ".yml")):
            name, cfg = Path(spec).stem, spec
        if any(s.domain == name for s in sources):
            raise DataError(f"{cfg}: domain {name!r} given twice; name one of them with NAME=CONFIG")
        node = json.loads(json.dumps(reader_node(Path(cfg))))  # a plain copy
        if name in overrides:
            node.setdefault("init_args", {})["root"] = overrides[name]
        sources.append(Source(name, cfg, node, build_reader(node, cfg)))
    unknown = sorted(set(overrides) - {s.domain for s in sources})
    if unknown:
        raise DataError(f"--root given for unknown domains {unknown}; domains are {[s.domain for s in sources]}")
    if not sources:
        raise DataError("no sources given")
    return sorted(sources, key=lambda s: s.domain)
